"""The state of one training run: what it trains and with what, what it is, and where it stands.

    state = setup_run(plan, dist_info)        # reslab.train: the one place a RunState is made
    resume(state, checkpoint)                  # reslab.train: the one place a checkpoint is read back into it
    train_one_epoch(state, stop=stop)          # reslab.loop reads it
    save_last(state, step=..., ...)            # reslab.rundir writes it to last.pt

Three parts: `RunInfo`, fixed for the run (its config, folder, processes, the model description every checkpoint
records); the live objects (model, optimizer, scaler, schedule, EMA, loaders); `RunPosition`, where the run stands,
which with the model and optimizer is what a checkpoint records.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reslab import distributed as D
from reslab.checkpoint import EpochProgress
from reslab.config import TrainConfig
from reslab.data import BatchLoader
from reslab.ema import EMA
from reslab.optim import Schedule
from reslab.precise_bn import PreciseBN


@dataclass
class RunPosition:
    """Where a run is; with the model and optimizer, what its checkpoint records."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps in all
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_acc: float | None = None
    saved_step: int | None = None  # the step of the last.pt on disk, if any
    elapsed_before: float = 0.0  # the run's wall time before this fit() call: elapsed_s counts on from it
    step_in_epoch: int = 0  # where the epoch in progress continues (0 but after a mid-epoch resume)
    progress: EpochProgress = field(default_factory=EpochProgress)  # that epoch's running sums so far

    def next_epoch(self) -> None:
        """The next call of the loop starts an epoch from its first step."""
        self.step_in_epoch, self.progress = 0, EpochProgress()


@dataclass(frozen=True)
class RunInfo:
    """What a run is: fixed from setup to the end."""

    config: TrainConfig
    run_dir: Path
    dist: D.DistInfo
    meta: dict[str, Any]  # model_name, model_kwargs, input_size, classes, preprocess: what every checkpoint records
    amp_dtype: torch.dtype | None
    say: Callable[..., None]  # print on rank 0 with progress on; nothing elsewhere
    t_start: float  # perf_counter() when fit() began: elapsed_s counts from it
    data_line: str  # "55,000 train, 5,000 val, 10,000 test images at 28x28 (source)"

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def world_size(self) -> int:
        return self.dist.world_size

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]


@dataclass
class RunState:
    run: RunInfo
    model: nn.Module  # unwrapped: what checkpoints save
    train_model: nn.Module  # what the loop calls: the model, DDP-wrapped under torchrun
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None  # fp16 only
    schedule: Schedule
    ema: EMA | None  # the weights' moving average (--ema): saved as "model", the weights as "live_model"
    loaders: dict[str, BatchLoader]  # "train", and "val" and "test" where they exist
    frozen: list[nn.Module]  # kept in eval mode while training (--freeze backbone)
    precise: PreciseBN | None = None  # --precise-bn: the BatchNorm statistics evaluation and checkpoints use
    splits: Any = None  # reslab.data's splits (uint8 images and labels): the report analyses the test (or val) one
    pos: RunPosition = field(default_factory=RunPosition)
    confusion: torch.Tensor | None = None  # the test split's (or val's) at its latest evaluation, for the plot
    images_trained: int = 0  # by this fit() call, all ranks: its throughput
    seconds_trained: float = 0.0

    @property
    def config(self) -> TrainConfig:
        return self.run.config

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loaders["train"])

    @property
    def delivered(self) -> nn.Module:
        """The network the run delivers, as training leaves it: the moving average with --ema."""
        return self.ema.module if self.ema is not None else self.model

    def served(self, step: int) -> nn.Module:
        """What evaluation judges and the checkpoint's "model" holds at `step`: `delivered`, or with --precise-bn a
        copy of it with BatchNorm statistics recomputed for these weights (every rank must call it: all-reduce)."""
        return self.precise.network(step) if self.precise is not None else self.delivered
