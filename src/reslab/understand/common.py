"""What every measurement of `reslab.understand` shares: scoring a model on fixed tensors, and leaving it as it was.

Every function in this package takes a trained (or freshly built) model and hands it back unchanged: the same
modules, the same parameter and buffer values bit for bit, the same train/eval flags, no hooks, no `.grad`.
The context managers below are how; the tests check each measurement against them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reslab.errors import ReslabError

Evaluate = Callable[[nn.Module], dict[str, float]]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """model.eval() inside the block; each module's own train/eval flag restored after (not just the top one's)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in flags:
            m.training = training


@contextlib.contextmanager
def preserved_state(model: nn.Module) -> Iterator[nn.Module]:
    """Whatever happens inside (BatchNorm in train mode updating running stats, weights moved), restore exactly.

    Snapshots every parameter and buffer (clones), each module's train/eval flag and each parameter's
    requires_grad, and copies them back on exit; `copy_` from a clone is bit-exact.
    """
    params = [(p, p.detach().clone(), p.requires_grad) for p in model.parameters()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    flags = [(m, m.training) for m in model.modules()]
    try:
        yield model
    finally:
        with torch.no_grad():
            for p, saved, requires_grad in params:
                p.copy_(saved)
                p.requires_grad_(requires_grad)
            for b, saved in buffers:
                b.copy_(saved)
        for m, training in flags:
            m.training = training


def check_images(images: torch.Tensor, labels: torch.Tensor | None = None, *, what: str = "images") -> None:
    """A float (N, C, H, W) batch (and, if given, int64 (N,) labels): the form every function here expects."""
    if images.dim() != 4 or not images.is_floating_point():
        raise ReslabError(
            f"{what}: expected a float (N, C, H, W) batch, already normalised as the model was trained "
            f"(e.g. reslab.data.transforms.prepare_batch), got {images.dtype} {tuple(images.shape)}"
        )
    if labels is not None and (labels.dim() != 1 or len(labels) != len(images)):
        raise ReslabError(f"{what}: expected {len(images)} labels, got a tensor of shape {tuple(labels.shape)}")


@torch.inference_mode()
def _forward_batches(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.cat([model(images[i : i + batch_size].to(device)).float() for i in range(0, len(images), batch_size)])


def classification_metrics(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 1000
) -> dict[str, float]:
    """Mean cross-entropy, error and accuracy of `model` on fixed tensors, in eval mode, without autograd.

    images: float (N, C, H, W), normalised as in training; labels: int64 (N,). Returns {"loss", "error", "accuracy"}
    (fractions in [0, 1]); the model's flags are restored after.
    """
    check_images(images, labels)
    with eval_mode(model):
        logits = _forward_batches(model, images, batch_size)
    labels = labels.to(logits.device)
    loss = F.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(1) == labels).double().mean().item()
    if not math.isfinite(loss):
        loss = math.inf  # a broken network (a lesion, a far point of the landscape) can overflow: report it as such
    return {"loss": loss, "error": 1.0 - accuracy, "accuracy": accuracy}


def evaluator(images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 1000) -> Evaluate:
    """`classification_metrics` bound to a fixed set of tensors: the `evaluate` callable the lesion study takes."""
    check_images(images, labels)

    def evaluate(model: nn.Module) -> dict[str, float]:
        return classification_metrics(model, images, labels, batch_size=batch_size)

    return evaluate


def module_state(model: nn.Module) -> dict[str, Any]:
    """Everything `reslab.understand` promises to leave alone, for tests and sanity checks: a comparable snapshot.

    Tensors are cloned; compare two snapshots with `same_state`.
    """
    return {
        "modules": [(name, id(m), m.training) for name, m in model.named_modules()],
        "tensors": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "hooks": sum(
            len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
        ),
    }


def same_state(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """True if two `module_state` snapshots agree exactly (module objects, flags, bits of every tensor, hooks)."""
    if a["modules"] != b["modules"] or a["requires_grad"] != b["requires_grad"] or a["hooks"] != b["hooks"]:
        return False
    if a["tensors"].keys() != b["tensors"].keys():
        return False
    if any(not torch.equal(a["tensors"][k], b["tensors"][k]) for k in a["tensors"]):
        return False
    return all(
        (ga is None and gb is None) or (ga is not None and gb is not None and torch.equal(ga, gb))
        for ga, gb in zip(a["grads"], b["grads"], strict=True)
    )
