"""The optimiser and the learning-rate schedule.

The schedule is a pure function of the step (`lr = peak * lr_factor(step, ...)`, as nanoGPT and airbench do): the loop
sets every parameter group's lr from it before each step, so there is no scheduler object whose state a resume must
restore; the step count in the checkpoint is all it needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from reslab.config import TrainConfig


def lr_factor(step: int, *, sched: str, total_steps: int, warmup_steps: int) -> float:
    """The learning rate at optimizer step `step` (0-based) as a fraction of the peak.

    Linear warmup over `warmup_steps`, then onecycle: linear decay to 0; cosine: cosine decay to 0; step: x0.1 at 50%
    and again at 75% of training; none: constant.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if sched == "none":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if sched == "onecycle":
        return max(0.0, 1.0 - progress)
    if sched == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    if sched == "step":
        return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
    raise ValueError(f"unknown schedule {sched!r}")


@dataclass(frozen=True)
class Schedule:
    """The learning rate of every optimizer step of a run."""

    peak_lr: float  # for the global batch: --lr x world size
    sched: str
    total_steps: int
    warmup_steps: int

    @classmethod
    def for_run(cls, config: TrainConfig, *, steps_per_epoch: int, world_size: int = 1) -> Schedule:
        return cls(
            peak_lr=config.lr * world_size,  # linear scaling: the global batch is batch_size x world_size
            sched=config.sched,
            total_steps=config.epochs * steps_per_epoch,
            warmup_steps=round(config.warmup_epochs * steps_per_epoch),
        )

    def __call__(self, step: int) -> float:
        """The lr for optimizer step `step` (0-based)."""
        return self.peak_lr * lr_factor(
            step, sched=self.sched, total_steps=self.total_steps, warmup_steps=self.warmup_steps
        )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group's lr: `lr`, times the group's "lr_scale" where it has one (the BatchNorm biases' --bn-bias-lr)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"] if "lr_scale" in group else lr


def build_optimizer(model: nn.Module, config: TrainConfig, *, lr: float) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum), Adam or AdamW; no weight decay on BatchNorm weights and biases (any 0-/1-d tensor),
    whose scale carries no capacity to regularise (Goyal et al. 2017, sec. 5.1). With `config.bn_bias_lr` != 1 the
    BatchNorm biases get a group of their own whose lr is that multiple of the schedule's (airbench's 64x: a bias
    barely moves at the conv weights' lr, while it sets what each channel lets through the ReLU)."""
    params = [p for p in model.parameters() if p.requires_grad]
    bn_biases = set()
    if config.bn_bias_lr != 1:
        bn_biases = {
            id(m.bias) for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase) and m.bias is not None
        }
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim <= 1 and id(p) not in bn_biases], "weight_decay": 0.0},
    ]
    if bn_biases:
        biases = [p for p in params if id(p) in bn_biases]
        groups.append({"params": biases, "weight_decay": 0.0, "lr_scale": config.bn_bias_lr})
    if config.opt == "sgd":
        return torch.optim.SGD(
            groups, lr=lr, momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0
        )
    if config.opt == "adam":
        return torch.optim.Adam(groups, lr=lr)
    return torch.optim.AdamW(groups, lr=lr)
