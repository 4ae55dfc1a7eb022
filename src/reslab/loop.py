"""One epoch of training, and the Ctrl-C request that can stop it at a step boundary.

    result = train_one_epoch(model, loader, optimizer, schedule=Schedule(...), step=0, epoch=0)

Running sums stay on the device; the only per-step host sync is the finiteness check of the loss, which under DDP is
all-reduced together with the Ctrl-C flag so that every rank stops at the same step.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from reslab import distributed as D
from reslab.checkpoint import EpochProgress
from reslab.data import BatchLoader
from reslab.device import autocast
from reslab.ema import EMA
from reslab.optim import set_lr


class StopRequest:
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

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@dataclass(frozen=True)
class EpochResult:
    progress: EpochProgress  # the epoch's running sums so far, over all ranks
    step: int  # optimizer steps in all, after this call
    step_in_epoch: int  # == len(loader) when the epoch is done
    stopped: str | None  # None (the epoch is done), "max_steps", "interrupt" or "non_finite"
    images: int  # trained in this call, all ranks
    seconds: float  # spent training in this call
    lr: float  # of the last step taken (or attempted, when "non_finite")
    bad_loss: float | None = None  # the loss that was not finite; the weights are those from before its step


def train_one_epoch(
    model: nn.Module,
    loader: BatchLoader,
    optimizer: torch.optim.Optimizer,
    *,
    schedule: Callable[[int], float],
    step: int,
    epoch: int,
    start_step: int = 0,
    progress: EpochProgress | None = None,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    label_smoothing: float = 0.0,
    ema: EMA | None = None,
    stop: StopRequest | None = None,
    max_steps: int | None = None,
    ckpt_interval: int = 0,
    save: Callable[[int, int, EpochProgress], None] | None = None,
    bar_desc: str | None = None,
    frozen: Sequence[nn.Module] = (),
    on_step: Callable[[int, torch.Tensor, float], None] | None = None,
) -> EpochResult:
    """Train `model` on the rest of epoch `epoch` of `loader`, from `start_step` (global step `step`).

    `schedule(step)` is the learning rate of each optimizer step. Every `ckpt_interval` global steps inside the epoch,
    `save(step, step_in_epoch, progress)` is called (all ranks). `progress` carries the running sums of an epoch
    resumed mid-way. `ema`, if given, is updated after every step. `bar_desc` shows a progress bar with that title on
    stderr. The loop stops early, at a step boundary, on Ctrl-C, at `max_steps`, or before applying a step whose loss
    is not finite. `frozen` modules stay in eval mode (a frozen backbone's BatchNorm keeps its statistics).
    `on_step(step, loss, lr)`, if given, is called after each optimizer step with the step count (1-based), the
    step's loss (a 0-dim tensor on the device) and its learning rate (TensorBoard's per-step scalars).
    """
    device = loader.device
    world = D.world_size()
    progress = progress or EpochProgress()
    loss_sum = torch.tensor(progress.loss_sum, device=device, dtype=torch.float32)
    correct = torch.tensor(int(progress.correct), device=device)
    seen = seen_at_start = progress.seen  # images, summed over ranks
    steps = len(loader)
    bar = tqdm(
        total=steps,
        initial=start_step,
        desc=bar_desc,
        leave=False,
        dynamic_ncols=True,
        file=sys.stderr,
        disable=bar_desc is None,
    )
    stopped, bad_loss, lr = None, None, schedule(step)
    step_in_epoch = start_step

    def sums(elapsed: float) -> EpochProgress:
        """The running sums over all ranks (a checkpoint stores these; on resume rank 0 restarts from them)."""
        t = D.all_reduce_sum(torch.stack([loss_sum.double(), correct.double()]))
        loss_total, correct_total = t.tolist()
        return EpochProgress(loss_sum=loss_total, correct=correct_total, seen=seen, train_time=elapsed)

    model.train()
    for module in frozen:
        module.eval()
    loader.set_epoch(epoch)
    t0 = shown = time.perf_counter()
    for x, y in loader.iter_from(start_step):
        lr = schedule(step)
        set_lr(optimizer, lr)
        with autocast(device, amp_dtype):
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()

        not_finite, stop_now = _check_step(loss, stop)
        if not_finite:
            stopped, bad_loss = "non_finite", float(loss.detach())
            break
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        step += 1
        step_in_epoch += 1
        if ema is not None:
            ema.update(step)
        if on_step is not None:
            on_step(step, loss.detach(), lr)

        loss_sum += loss.detach().float() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y) * world
        if not bar.disable:
            now = time.perf_counter()
            if now - shown > 0.5:  # reading the running sums waits for the device: twice a second is enough
                shown, mine = now, (seen - seen_at_start) / world + seen_at_start
                bar.set_postfix_str(
                    f"loss {loss_sum.item() / mine:.4f}, acc {correct.item() / mine:.3f}, "
                    f"{seen / (progress.train_time + now - t0):.0f} img/s",
                    refresh=False,
                )
            bar.update()

        if stop_now:
            stopped = "interrupt"
            break
        if max_steps is not None and step >= max_steps:
            stopped = "max_steps"
            break
        if save is not None and ckpt_interval and step % ckpt_interval == 0 and step_in_epoch < steps:
            save(step, step_in_epoch, sums(progress.train_time + time.perf_counter() - t0))

    bar.close()
    seconds = time.perf_counter() - t0
    return EpochResult(
        progress=sums(progress.train_time + seconds),
        step=step,
        step_in_epoch=step_in_epoch,
        stopped=stopped,
        images=seen - seen_at_start,
        seconds=seconds,
        lr=lr,
        bad_loss=bad_loss,
    )


def _check_step(loss: torch.Tensor, stop: StopRequest | None) -> tuple[bool, bool]:
    """(the loss is not finite on some rank, Ctrl-C was pressed on some rank): one sync, one tiny all-reduce."""
    requested = stop is not None and stop.requested
    if not D.active():
        return not bool(torch.isfinite(loss.detach())), requested
    flags = torch.stack([(~torch.isfinite(loss.detach())).float(), torch.tensor(float(requested), device=loss.device)])
    bad, stop_now = D.all_reduce_sum(flags).tolist()
    return bad > 0, stop_now > 0
