"""fit(config): train a ResNet, with mixed precision, a per-step schedule, checkpoints, exact resume and DDP.

    from reslab.config import make_config
    from reslab.train import fit
    result = fit(make_config(epochs=2))       # result.test_acc, result.run_dir, result.model

The loop, top to bottom: devices and process group -> run folder (new, or the one being resumed) -> data -> model ->
optimizer and schedule -> epochs of `train_one_epoch` + `evaluate` -> metrics, plots, checkpoints.

Resume is exact: the loader's order and augmentation are pure functions of (seed, epoch, step, rank), so a checkpoint
only needs the model, optimizer, scaler, RNG and step counters; on the CPU a run stopped at any step and resumed ends
with the same bits as the run left alone.

Under `torchrun` each process trains on its own shard of every epoch, `--batch-size` is per process and the learning
rate is multiplied by the number of processes (linear scaling, Goyal et al. 2017); rank 0 alone writes and prints.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reslab import __version__
from reslab import distributed as D
from reslab.checkpoint import FORMAT_VERSION, copy_checkpoint, read_checkpoint, save_checkpoint
from reslab.config import TrainConfig
from reslab.errors import ReslabError
from reslab.evaluate import evaluate

# Test hook (used by tests/test_distributed.py only): the last rank exits abruptly after this global step on
# torchrun's first attempt, so that a `--max-restarts` restart and the resume from the checkpoint can be checked.
_CRASH_ENV = "RESLAB_TEST_CRASH_AT_STEP"


class NonFiniteLossError(ReslabError):
    """The loss became NaN or infinite: the run stopped without touching its checkpoints."""


@dataclass
class FitResult:
    completed: bool  # all epochs trained (False when --max-steps stopped the run first; it can be resumed)
    run_dir: Path
    history: list[dict[str, Any]]  # one row per epoch, as in metrics.csv
    best_val_acc: float | None  # None without a validation split
    test_acc: float | None  # of the final weights
    model: nn.Module  # unwrapped, in eval mode
    step: int = 0  # optimizer steps taken in all
    images_per_s: float | None = None  # training throughput of this call (all ranks, evaluation excluded)
    confusion: torch.Tensor | None = field(default=None, repr=False)  # (K, K) on the test set, rows = true class


# ----------------------------------------------------------------------------------------------------------------------
# building blocks


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """`--amp` -> the autocast dtype (None = full fp32).

    auto: bf16 where the hardware does it natively (CUDA with bf16 support, CPUs with AVX512-BF16/AMX per oneDNN),
    fp16 on older GPUs (with a GradScaler), fp32 elsewhere (MPS, CPUs without bf16, where it would be slower).
    """
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        mkldnn_bf16 = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        return torch.bfloat16 if mkldnn_bf16 is not None and mkldnn_bf16() else None
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


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


def build_optimizer(model: nn.Module, config: TrainConfig, *, lr: float) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum), Adam or AdamW; no weight decay on BatchNorm weights and biases (any 0-/1-d tensor),
    whose scale carries no capacity to regularise (Goyal et al. 2017, sec. 5.1)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.opt == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, nesterov=config.momentum > 0)
    if config.opt == "adam":
        return torch.optim.Adam(groups, lr=lr)
    return torch.optim.AdamW(groups, lr=lr)


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, *, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per optimizer step; its only state is the step count."""
    total = config.epochs * steps_per_epoch
    warmup = round(config.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        return lr_factor(step, sched=config.sched, total_steps=total, warmup_steps=warmup)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def seek_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, step: int) -> None:
    """Put the schedule at optimizer step `step` with this run's peak learning rates (which may differ from the
    checkpoint's: another world size scales them differently)."""
    scheduler.last_epoch = step
    lrs = [base * fn(step) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)]
    for group, base, lr in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, lrs, strict=True):
        group["initial_lr"], group["lr"] = base, lr
    scheduler._last_lr = lrs


def make_splits(data, config: TrainConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"train", "val", "test"} -> (uint8 images, labels); the validation images are held out of the training set,
    fixed by `seed`; "val" is absent with --val-size 0."""
    from reslab.data import split_train_val

    train_x, train_y = data.train_images, data.train_labels
    splits = {}
    val_size = config.val_size
    if val_size is None:
        val_size = 5000 if config.dataset == "fashion-mnist" else len(train_x) // 10
    if val_size > 0:
        train_x, train_y, val_x, val_y = split_train_val(train_x, train_y, val_size, seed=config.seed)
        splits["val"] = (val_x, val_y)
    if config.train_subset is not None:
        if config.train_subset < 1:
            raise ReslabError(f"--train-subset: expected a positive number of images, got {config.train_subset}")
        train_x, train_y = train_x[: config.train_subset], train_y[: config.train_subset]
    splits["train"] = (train_x, train_y)
    splits["test"] = (data.test_images, data.test_labels)
    return splits


class _StopRequest:
    """Ctrl-C (SIGINT) asks the loop to stop after the current step and save a resumable checkpoint; a second Ctrl-C
    stops at once. torchrun forwards the SIGINT it receives to every worker."""

    def __init__(self, *, announce: bool):
        self.requested = False
        self._announce = announce
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self._announce:
            print("\nstopping after this step to save a checkpoint (Ctrl-C again to quit now)", file=sys.stderr)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@dataclass
class _Run:
    """What the loop works with, gathered once so that functions take one argument instead of fifteen."""

    config: TrainConfig
    dist: D.DistInfo
    model: nn.Module  # unwrapped: what is saved and evaluated
    train_model: nn.Module  # the DDP wrapper under torchrun, else the model itself
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    amp_dtype: torch.dtype | None
    loaders: dict[str, Any]
    stop: _StopRequest
    run_dir: Path
    meta: dict[str, Any]  # model_name, model_kwargs, input_size, classes: fixed for the run
    step: int = 0  # optimizer steps so far, all epochs
    epoch: int = 0  # epochs completed
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_acc: float | None = None
    crash_at_step: int | None = None
    saved_step: int | None = None  # the step of the last.pt on disk, if any: what a NaN leaves untouched
    images_trained: int = 0  # in this process's fit() call, over all ranks: for the throughput
    train_time: float = 0.0
    elapsed_before: float = 0.0  # the run's wall time before this fit() call (resume): elapsed_s counts on from it

    @property
    def device(self) -> torch.device:
        return self.dist.device

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]


def _state(run: _Run, *, step_in_epoch: int, progress: dict[str, float]) -> dict[str, Any]:
    """The checkpoint dict (see reslab.checkpoint for the schema)."""
    cuda_rng = torch.cuda.get_rng_state_all() if run.device.type == "cuda" else None
    return {
        "format_version": FORMAT_VERSION,
        "reslab_version": __version__,
        "config": run.config.to_dict(),
        **run.meta,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "epoch": run.epoch,
        "step": run.step,
        "step_in_epoch": step_in_epoch,
        "steps_per_epoch": len(run.loaders["train"]),
        "world_size": run.dist.world_size,
        "rng": {"torch": torch.get_rng_state(), "cuda": cuda_rng},
        "history": run.history,
        "best_val_acc": run.best_val_acc,
        "epoch_progress": progress,
    }


def _save_last(run: _Run, *, step_in_epoch: int, progress: dict[str, float]) -> None:
    """last.pt from rank 0; every rank calls it, so that all know which step is on disk."""
    if run.dist.is_main:
        save_checkpoint(_state(run, step_in_epoch=step_in_epoch, progress=progress), run.run_dir / "last.pt")
    run.saved_step = run.step


# ----------------------------------------------------------------------------------------------------------------------
# one epoch


def _progress_bar(run: _Run, total: int, initial: int, epoch: int):
    if not (run.config.progress and run.dist.is_main and sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=f"epoch {epoch + 1}/{run.config.epochs}",
        leave=False,
        dynamic_ncols=True,
        file=sys.stderr,
    )


def train_one_epoch(run: _Run, *, start_step: int = 0, progress: dict[str, float] | None = None) -> dict[str, Any]:
    """Train `run.model` for the rest of epoch `run.epoch` (from `start_step`); returns the epoch's statistics and
    `stopped`: None (epoch done), "max_steps" or "interrupt" (the state is then at a step boundary, ready to save).

    Running sums stay on the device; the only per-step host sync is the finiteness check of the loss, which under
    DDP is all-reduced together with the Ctrl-C flag so that every rank stops at the same step.
    """
    config, model, loader = run.config, run.train_model, run.loaders["train"]
    device, world = run.device, run.dist.world_size
    progress = progress or {}
    loss_sum = torch.tensor(progress.get("loss_sum", 0.0), device=device, dtype=torch.float32)
    correct = torch.tensor(int(progress.get("correct", 0)), device=device)
    seen = seen_at_start = int(progress.get("seen", 0))  # images, summed over ranks
    elapsed = float(progress.get("train_time", 0.0))
    steps = len(loader)
    bar = _progress_bar(run, steps, start_step, run.epoch)
    stopped = None
    step_in_epoch = start_step

    model.train()
    loader.set_epoch(run.epoch)
    t0 = shown = time.perf_counter()
    for x, y in loader.iter_from(start_step):
        with autocast(device, run.amp_dtype):
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
        run.optimizer.zero_grad(set_to_none=True)
        if run.scaler is not None:
            run.scaler.scale(loss).backward()
        else:
            loss.backward()

        bad, stop = _check_step(run, loss)
        if bad:
            if bar is not None:
                bar.close()
            raise _non_finite(run, loss, step_in_epoch)

        if run.scaler is not None:
            run.scaler.step(run.optimizer)
            run.scaler.update()
        else:
            run.optimizer.step()
        run.scheduler.step()
        run.step += 1
        step_in_epoch += 1

        loss_sum += loss.detach().float() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y) * world
        if bar is not None:
            now = time.perf_counter()
            if now - shown > 0.5:  # reading the running sums waits for the device: twice a second is enough
                shown, mine = now, (seen - seen_at_start) / world + seen_at_start
                bar.set_postfix_str(
                    f"loss {loss_sum.item() / mine:.4f}, acc {correct.item() / mine:.3f}, "
                    f"{seen / (elapsed + now - t0):.0f} img/s",
                    refresh=False,
                )
            bar.update()

        if run.crash_at_step == run.step and run.dist.rank == world - 1 and D.restart_count() == 0:
            print(f"[test hook] {_CRASH_ENV}: rank {run.dist.rank} exits at step {run.step}", flush=True)
            os._exit(1)
        if stop:
            stopped = "interrupt"
            break
        if config.max_steps is not None and run.step >= config.max_steps:
            stopped = "max_steps"
            break
        if config.ckpt_interval and run.step % config.ckpt_interval == 0 and step_in_epoch < steps:
            sums = _global_sums(run, loss_sum, correct, seen, elapsed + time.perf_counter() - t0)
            _save_last(run, step_in_epoch=step_in_epoch, progress=sums)

    if bar is not None:
        bar.close()
    dt = time.perf_counter() - t0
    elapsed += dt
    run.images_trained += seen - seen_at_start
    run.train_time += dt
    return {"stopped": stopped, "step_in_epoch": step_in_epoch, **_global_sums(run, loss_sum, correct, seen, elapsed)}


def _global_sums(run: _Run, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int, elapsed: float) -> dict:
    """The epoch's running sums over all ranks (a checkpoint stores these; on resume rank 0 restarts from them)."""
    t = torch.stack([loss_sum.double(), correct.double()])
    D.all_reduce_sum(t)
    loss_total, correct_total = t.tolist()
    return {"loss_sum": loss_total, "correct": correct_total, "seen": seen, "train_time": elapsed}


def _check_step(run: _Run, loss: torch.Tensor) -> tuple[bool, bool]:
    """(the loss is not finite on some rank, Ctrl-C was pressed on some rank): one sync, one tiny all-reduce."""
    if not D.active():
        return not bool(torch.isfinite(loss.detach())), run.stop.requested
    stop = torch.tensor(float(run.stop.requested), device=loss.device)
    flags = D.all_reduce_sum(torch.stack([(~torch.isfinite(loss.detach())).float(), stop]))
    bad, stop = flags.tolist()
    return bad > 0, stop > 0


def _non_finite(run: _Run, loss: torch.Tensor, step_in_epoch: int) -> NonFiniteLossError:
    kept = (
        f"{run.run_dir / 'last.pt'} (step {run.saved_step}) is left untouched as the last good checkpoint"
        if run.saved_step is not None
        else "no checkpoint had been written yet"
    )
    return NonFiniteLossError(
        f"the loss became {loss.item()} at epoch {run.epoch + 1}, step {run.step + 1} "
        f"(step {step_in_epoch + 1} of the epoch), lr {run.lr():.4g}; training stopped, {kept}. "
        f"Try a lower --lr, a longer --warmup-epochs, or --amp off"
    )


# ----------------------------------------------------------------------------------------------------------------------
# run folder, resume


def _default_name(config: TrainConfig) -> str:
    if D.under_torchrun():
        # every rank and every torchrun restart must agree on the folder, so no clock in the name
        rid = D.run_id()
        if rid is None:
            raise ReslabError(
                "--name: required under torchrun unless --rdzv-id (or --standalone) is given, so that all "
                "processes and restarts write to and resume from the same run folder"
            )
        return f"{config.model}-{rid}"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name, i = f"{config.model}-{stamp}", 2
    while (Path(config.output) / name).exists():
        name, i = f"{config.model}-{stamp}-{i}", i + 1
    return name


def find_resume_checkpoint(config: TrainConfig, *, restarted: bool | None = None) -> tuple[Path, Path | None]:
    """(run folder, checkpoint to resume or None) for `config`.

    --resume PATH: that checkpoint (a run folder means its last.pt), in its own folder. --resume auto, or a torchrun
    restart: --output/--name's last.pt if there is one. Otherwise a new run folder, which must not hold a run yet.
    """
    if config.resume and config.resume != "auto":
        p = Path(config.resume)
        if p.is_dir():
            p = p / "last.pt"
        if not p.is_file():
            raise ReslabError(f"--resume: no checkpoint at {str(p)!r} (expected a last.pt or a run folder)")
        return p.parent, p
    if restarted is None:
        restarted = D.restart_count() > 0
    auto = config.resume == "auto" or restarted
    if config.resume == "auto" and config.name is None and not D.under_torchrun():
        raise ReslabError("--resume auto: needs --name, the run folder under --output to continue")
    run_dir = Path(config.output) / (config.name or _default_name(config))
    last = run_dir / "last.pt"
    if last.is_file():
        if auto:
            return run_dir, last
        raise ReslabError(
            f"--name: {str(run_dir)!r} already holds a run (last.pt); pass --resume auto to continue it, "
            f"or choose another --name"
        )
    return run_dir, None


def _prepare_run(
    config: TrainConfig, explicit: Collection[str] | None, *, restarted: bool
) -> tuple[TrainConfig, Path, dict | None]:
    """On rank 0: the config to use, the run folder and the checkpoint to resume (or None)."""
    run_dir, path = find_resume_checkpoint(config, restarted=restarted)
    if path is None:
        return config, run_dir, None
    ckpt = read_checkpoint(path)
    if explicit is not None:
        # a resumed run keeps its own settings; only the flags given now override them
        merged = {**ckpt["config"], **{k: getattr(config, k) for k in explicit}, "resume": config.resume}
        config = TrainConfig.from_dict(merged)
    if ckpt["model_name"] != config.model:
        raise ReslabError(f"--resume: {path} holds a {ckpt['model_name']} but --model is {config.model}")
    return config, run_dir, ckpt


def _restore(run: _Run, ckpt: dict[str, Any]) -> tuple[int, dict[str, float]]:
    """Load a checkpoint into `run`; returns (step in the current epoch to start at, the epoch's running sums)."""
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    if run.scaler is not None and ckpt.get("scaler") is not None:
        run.scaler.load_state_dict(ckpt["scaler"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if run.device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
        states = ckpt["rng"]["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    run.epoch, run.history, run.best_val_acc = ckpt["epoch"], list(ckpt["history"]), ckpt["best_val_acc"]
    run.saved_step = ckpt["step"]
    step_in_epoch, progress = ckpt["step_in_epoch"], dict(ckpt.get("epoch_progress") or {})
    # time between the stop and the resume is not counted; the stopped epoch's training time is
    run.elapsed_before = (run.history[-1]["elapsed_s"] if run.history else 0.0) + progress.get("train_time", 0.0)
    steps = len(run.loaders["train"])
    if ckpt["world_size"] == run.dist.world_size and ckpt["steps_per_epoch"] == steps:
        run.step = ckpt["step"]
    else:
        # another world size (or batch size) gives another number of steps per epoch: continue at the same fraction
        # of the epoch; the running sums still count the images already seen
        step_in_epoch = min(steps, round(step_in_epoch * steps / ckpt["steps_per_epoch"]))
        run.step = run.epoch * steps + step_in_epoch
    seek_schedule(run.scheduler, run.step)
    if not run.dist.is_main:
        progress = {}  # rank 0 carries the sums over all ranks
    return step_in_epoch, progress


def _write_metrics(run: _Run) -> None:
    if not run.history:
        return
    path = run.run_dir / "metrics.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(run.history[0]))
        w.writeheader()
        w.writerows(run.history)


def _write_plots(run: _Run, confusion: torch.Tensor | None, classes: tuple[str, ...]) -> None:
    from reslab.plots import plot_confusion_matrix, plot_curves

    if run.history:
        plot_curves(run.history, run.run_dir / "curves.png", title=run.run_dir.name)
    if confusion is not None:
        plot_confusion_matrix(confusion, classes, run.run_dir / "confusion_matrix.png")


# ----------------------------------------------------------------------------------------------------------------------
# fit


def fit(config: TrainConfig, *, data=None, explicit: Collection[str] | None = None) -> FitResult:
    """Train as `config` says; returns a FitResult. `data` (a reslab.data.Dataset) replaces config.dataset.

    With config.resume, the run continues from the checkpoint. `explicit` (what the CLI passes: the flags given on
    the command line) makes a resumed run keep the checkpoint's config except for those fields; without it,
    `config` is used as is.

    Raises NonFiniteLossError (a ReslabError) if the loss diverges, and KeyboardInterrupt after saving a resumable
    last.pt on Ctrl-C.
    """
    t_start = time.perf_counter()
    threads = torch.get_num_threads()
    dist_info = D.setup(config.device)
    try:
        return _fit(config, data, explicit, dist_info, t_start)
    finally:
        D.cleanup(dist_info)
        torch.set_num_threads(threads)  # --threads is for this run, not for the rest of the caller's process


def _decide_run(config: TrainConfig, explicit, dist_info: D.DistInfo) -> tuple[TrainConfig, Path, dict | None]:
    """The config, run folder and checkpoint to resume, decided once on rank 0 and shared with every rank (so no
    shared filesystem is needed and a user error stops every rank with the same message)."""
    # torchrun counts restarts per node: a healthy node's workers, restarted for another node's failure, see 0
    restarted = D.all_reduce_sum(torch.tensor([D.restart_count()], device=dist_info.device)).item() > 0
    decision = None
    if dist_info.is_main:
        try:
            decision = ("ok", _prepare_run(config, explicit, restarted=restarted))
        except ReslabError as e:
            decision = ("error", str(e))
    decision = D.broadcast_object(decision)
    if decision[0] == "error":
        raise ReslabError(decision[1])
    return decision[1]


def _load_data(config: TrainConfig, dist_info: D.DistInfo):
    from reslab.data import load_dataset

    if not D.active():
        return load_dataset(config.dataset, config.data_dir)
    # local rank 0 first, so that a download happens once per machine; the others then find the files
    data, error = None, None
    if dist_info.local_rank == 0:
        try:
            data = load_dataset(config.dataset, config.data_dir)
        except ReslabError as e:
            error = e
    torch.distributed.barrier()
    if error is not None:
        raise error
    return data if data is not None else load_dataset(config.dataset, config.data_dir)


def _make_loaders(config: TrainConfig, splits: dict, dist_info: D.DistInfo) -> dict[str, Any]:
    from reslab.data import BatchLoader

    world = dist_info.world_size
    common = dict(
        resize=config.resize,
        rank=dist_info.rank,
        world_size=world,
        device=dist_info.device,
        channels_last=config.channels_last,
    )
    train_x, train_y = splits["train"]
    if len(train_x) < world:
        raise ReslabError(f"--train-subset: {len(train_x)} training images cannot be shared by {world} processes")
    loaders = {
        "train": BatchLoader(
            train_x,
            train_y,
            batch_size=config.batch_size,
            train=True,
            seed=config.seed,
            crop_padding=config.crop_padding,
            hflip=config.hflip,
            **common,
        ),
    }
    eval_batch = max(2 * config.batch_size, 256)  # no gradients to keep: twice the batch fits
    for split in ("val", "test"):
        if split in splits:
            loaders[split] = BatchLoader(*splits[split], batch_size=eval_batch, train=False, **common)
    return loaders


def _make_model(config: TrainConfig, data, dist_info: D.DistInfo, say) -> tuple[nn.Module, nn.Module, dict]:
    """(model, the module to train: DDP-wrapped under torchrun, build_model's kwargs)."""
    from reslab.models import build_model

    device = dist_info.device
    model_kwargs = {**config.model_kwargs, "in_chans": 1, "num_classes": len(data.classes)}  # (N, H, W) images
    if config.zero_init_residual:
        model_kwargs["zero_init_residual"] = True
    model = build_model(config.model, **model_kwargs)
    model.to(device, memory_format=torch.channels_last if config.channels_last else torch.preserve_format)
    if config.sync_bn:
        if device.type == "cuda" and D.active():
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            say("note: --sync-bn only acts with several CUDA processes under torchrun; ignored")
    train_model = model
    if D.active():
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return model, train_model, model_kwargs


def _fit(config, data, explicit, dist_info: D.DistInfo, t_start: float) -> FitResult:
    device, is_main, world = dist_info.device, dist_info.is_main, dist_info.world_size
    config, run_dir, ckpt = _decide_run(config, explicit, dist_info)
    say = print if (is_main and config.progress) else (lambda *a, **k: None)

    if config.threads:
        torch.set_num_threads(config.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(config.seed)

    if data is None:
        data = _load_data(config, dist_info)
    splits = make_splits(data, config)
    loaders = _make_loaders(config, splits, dist_info)
    model, train_model, model_kwargs = _make_model(config, data, dist_info, say)
    amp_dtype = resolve_amp(config.amp, device)
    lr = config.lr * world  # linear scaling: the global batch is batch_size x world
    optimizer = build_optimizer(model, config, lr=lr)
    run = _Run(
        config=config,
        dist=dist_info,
        model=model,
        train_model=train_model,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, config, steps_per_epoch=len(loaders["train"])),
        scaler=torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None,
        amp_dtype=amp_dtype,
        loaders=loaders,
        stop=_StopRequest(announce=is_main),
        run_dir=run_dir,
        meta={
            "model_name": config.model,
            "model_kwargs": model_kwargs,
            "input_size": list(loaders["train"].input_size),
            "classes": list(data.classes),
        },
    )
    crash = os.environ.get(_CRASH_ENV)
    run.crash_at_step = int(crash) if crash else None

    start_step, progress = 0, {}
    if ckpt is not None:
        start_step, progress = _restore(run, ckpt)
        other = "" if ckpt["world_size"] == world else f"; saved by {ckpt['world_size']} processes, now {world}"
        where = f"epoch {run.epoch + 1}, step {run.step} (step {start_step} of the epoch{other})"
        say(f"resuming from {ckpt['path']} at {where}")
        del ckpt  # the optimizer state can be large

    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    _print_header(run, splits, data, say)

    confusion = None
    steps = len(loaders["train"])
    try:
        with run.stop:
            while run.epoch < config.epochs and (config.max_steps is None or run.step < config.max_steps):
                stats = train_one_epoch(run, start_step=start_step, progress=progress)
                start_step, progress = 0, {}
                if stats["step_in_epoch"] == steps:
                    confusion = _end_epoch(run, stats, t_start, say)
                else:  # stopped mid-epoch: save exactly where it is
                    sums = {k: stats[k] for k in ("loss_sum", "correct", "seen", "train_time")}
                    _save_last(run, step_in_epoch=stats["step_in_epoch"], progress=sums)
                    seen, secs = max(1, stats["seen"]), max(stats["train_time"], 1e-9)
                    why = "interrupted" if stats["stopped"] == "interrupt" else "stopped at --max-steps"
                    say(
                        f"{why} in epoch {run.epoch + 1} (step {stats['step_in_epoch']} of {steps}): "
                        f"loss {stats['loss_sum'] / seen:.4f}, train acc {stats['correct'] / seen:.3f}, "
                        f"{seen / secs:.0f} img/s"
                    )
                if stats["stopped"] is not None:
                    say(f"saved {run_dir / 'last.pt'} at step {run.step}; continue with --resume {run_dir}")
                    if stats["stopped"] == "interrupt":
                        raise KeyboardInterrupt
                    break
    finally:
        if is_main:
            _write_metrics(run)
            _write_plots(run, confusion, data.classes)

    if D.active():
        same = D.ranks_agree(D.state_fingerprint(model))
        say(f"DDP check: parameters and buffers are {'identical' if same else 'DIFFERENT'} on all {world} ranks")
        if not same:
            raise RuntimeError("DDP ranks ended with different weights; please report this as a reslab bug")
    model.eval()
    return FitResult(
        completed=run.epoch >= config.epochs,
        run_dir=run_dir,
        history=run.history,
        best_val_acc=run.best_val_acc,
        test_acc=run.history[-1]["test_acc"] if run.history else None,
        model=model,
        step=run.step,
        images_per_s=run.images_trained / run.train_time if run.train_time else None,
        confusion=confusion,
    )


def _print_header(run: _Run, splits: dict, data, say) -> None:
    config, device, world = run.config, run.device, run.dist.world_size
    n_params = sum(p.numel() for p in run.model.parameters())
    amp_name = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[run.amp_dtype]
    sizes = ", ".join(f"{len(splits[s][0]):,} {s}" for s in ("train", "val", "test") if s in splits)
    _, h, w = run.loaders["train"].input_size
    threads = f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else ""
    say(f"run folder: {run.run_dir}")
    say(f"data: {sizes} images at {h}x{w} ({data.source})")
    say(
        f"model: {config.model}, {n_params / 1e6:.2f}M parameters; {device}{threads}, {amp_name}"
        f"{', channels_last' if config.channels_last else ''}{f', DDP over {world} processes' if world > 1 else ''}"
    )
    scaled = f" (= {config.lr:g} x {world} processes)" if world > 1 else ""
    say(
        f"optimiser: {config.opt} lr {config.lr * world:g}{scaled}, {config.sched} "
        f"schedule, batch {config.batch_size}{f' x {world}' if world > 1 else ''}, "
        f"{len(run.loaders['train'])} steps per epoch, {config.epochs} epochs"
    )


def _end_epoch(run: _Run, stats: dict[str, Any], t_start: float, say) -> torch.Tensor:
    """Evaluate, record, print and checkpoint a finished epoch; returns the test confusion matrix."""
    t0 = time.perf_counter()
    D.broadcast_buffers(run.model)  # one copy of the BatchNorm statistics for evaluation and the checkpoint
    num_classes = len(run.meta["classes"])
    results = {
        split: evaluate(run.model, run.loaders[split], num_classes=num_classes, amp_dtype=run.amp_dtype)
        for split in ("val", "test")
        if split in run.loaders
    }
    run.epoch += 1
    images = stats["seen"]  # over all ranks
    row = {
        "epoch": run.epoch,
        "train_loss": stats["loss_sum"] / max(1, images),
        "train_acc": stats["correct"] / max(1, images),
        "val_acc": results["val"]["accuracy"] if "val" in results else None,
        "test_acc": results["test"]["accuracy"],
        "lr": run.scheduler.get_last_lr()[0],
        "time_s": stats["train_time"] + time.perf_counter() - t0,
        "images_per_s": images / max(stats["train_time"], 1e-9),
        "elapsed_s": run.elapsed_before + time.perf_counter() - t_start,
        "step": run.step,
    }
    run.history.append(row)
    improved = row["val_acc"] is not None and (run.best_val_acc is None or row["val_acc"] > run.best_val_acc)
    if improved:
        run.best_val_acc = row["val_acc"]
    val = f", val acc {row['val_acc']:.3f}" if row["val_acc"] is not None else ""
    say(
        f"epoch {run.epoch}, loss {row['train_loss']:.4f}, train acc {row['train_acc']:.3f}{val}, "
        f"test acc {row['test_acc']:.3f}, time {row['time_s']:.1f} sec, {row['images_per_s']:.0f} img/s",
        flush=True,
    )
    _save_last(run, step_in_epoch=0, progress={})
    if run.dist.is_main:
        _write_metrics(run)
        if improved or "val" not in run.loaders:
            # without a validation split there is nothing to choose by: best.pt is the latest epoch
            copy_checkpoint(run.run_dir / "last.pt", run.run_dir / "best.pt")
    return results["test"]["confusion"]
