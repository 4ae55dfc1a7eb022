"""One epoch of training, and the Ctrl-C request that can stop it at a step boundary.

    result = train_one_epoch(state, stop=stop, save=save)     # state: reslab.runstate.RunState

Running sums stay on the device; the only per-step host sync is the finiteness check of the loss, which under DDP is
all-reduced together with the Ctrl-C flag so that every rank stops at the same step.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from reslab import distributed as D
from reslab.checkpoint import EpochProgress
from reslab.device import autocast
from reslab.optim import set_lr
from reslab.runstate import RunState


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
    state: RunState,
    *,
    stop: StopRequest | None = None,
    save: Callable[[int, int, EpochProgress], None] | None = None,
    bar_desc: str | None = None,
    on_step: Callable[[int, torch.Tensor, float], None] | None = None,
) -> EpochResult:
    """Train state.train_model on the rest of epoch state.pos.epoch, from state.pos.step_in_epoch (global step
    state.pos.step, the epoch's running sums so far state.pos.progress); `state` itself is not moved on.

    The lr of each step is state.schedule(step); the EMA, if any, is updated after every step, then `on_step(step,
    loss, lr)` (1-based step, the loss a 0-dim tensor on the device: TensorBoard's scalars). Every --ckpt-interval
    steps, `save(step, step_in_epoch, progress)` (all ranks). `bar_desc` shows a progress bar on stderr. It stops at
    a step boundary on Ctrl-C, at --max-steps, or before applying a step whose loss is not finite. Frozen modules
    stay in eval mode (a frozen backbone's BatchNorm keeps its statistics)."""
    config, pos, loader = state.config, state.pos, state.loaders["train"]
    device, steps = loader.device, len(loader)
    tally = _Tally(pos.progress, device)
    step, step_in_epoch = pos.step, pos.step_in_epoch
    bar = _Bar(bar_desc, steps, step_in_epoch, tally)
    stopped, bad_loss, lr = None, None, state.schedule(step)
    model, optimizer, scaler = state.train_model, state.optimizer, state.scaler
    model.train()
    for module in state.frozen:
        module.eval()
    loader.set_epoch(pos.epoch)
    t0 = time.perf_counter()
    for x, y in loader.iter_from(step_in_epoch):
        lr = state.schedule(step)
        set_lr(optimizer, lr)
        with autocast(device, state.run.amp_dtype):
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
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
        if state.ema is not None:
            state.ema.update(step)
        if on_step is not None:
            on_step(step, loss.detach(), lr)

        tally.add(loss, logits, y)
        bar.update(t0)

        if stop_now:
            stopped = "interrupt"
            break
        if config.max_steps is not None and step >= config.max_steps:
            stopped = "max_steps"
            break
        if save is not None and config.ckpt_interval and step % config.ckpt_interval == 0 and step_in_epoch < steps:
            save(step, step_in_epoch, tally.sums(time.perf_counter() - t0))

    bar.close()
    seconds = time.perf_counter() - t0
    return EpochResult(
        progress=tally.sums(seconds),
        step=step,
        step_in_epoch=step_in_epoch,
        stopped=stopped,
        images=tally.seen - tally.before.seen,
        seconds=seconds,
        lr=lr,
        bad_loss=bad_loss,
    )


class _Tally:
    """The epoch's running sums, kept on the device (no host sync per step), on top of those it resumed with."""

    def __init__(self, before: EpochProgress, device: torch.device):
        self.before, self.world = before, D.world_size()
        self.loss_sum = torch.tensor(before.loss_sum, device=device, dtype=torch.float32)
        self.correct = torch.tensor(int(before.correct), device=device)
        self.seen = before.seen  # images, summed over ranks

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss_sum += loss.detach().float() * len(y)
        self.correct += (logits.detach().argmax(1) == y).sum()
        self.seen += len(y) * self.world

    def mine(self) -> float:
        """Images this rank has seen in the epoch (the resumed-from part counts as rank 0's)."""
        return (self.seen - self.before.seen) / self.world + self.before.seen

    def sums(self, elapsed: float) -> EpochProgress:
        """The running sums over all ranks, `elapsed` seconds of training after those resumed from (a checkpoint
        stores these; on resume rank 0 restarts from them)."""
        t = D.all_reduce_sum(torch.stack([self.loss_sum.double(), self.correct.double()]))
        loss_total, correct_total = t.tolist()
        train_time = self.before.train_time + elapsed
        return EpochProgress(loss_sum=loss_total, correct=correct_total, seen=self.seen, train_time=train_time)


class _Bar:
    """A tqdm bar on stderr (none when `desc` is None) whose postfix shows this rank's running loss and accuracy."""

    def __init__(self, desc: str | None, steps: int, initial: int, tally: _Tally):
        self.bar = tqdm(
            total=steps,
            initial=initial,
            desc=desc,
            leave=False,
            dynamic_ncols=True,
            file=sys.stderr,
            disable=desc is None,
        )
        self.tally = tally
        self.shown = time.perf_counter()

    def update(self, t0: float) -> None:
        if self.bar.disable:
            return
        now, t = time.perf_counter(), self.tally
        if now - self.shown > 0.5:  # reading the running sums waits for the device: twice a second is enough
            self.shown, mine = now, t.mine()
            self.bar.set_postfix_str(
                f"loss {t.loss_sum.item() / mine:.4f}, acc {t.correct.item() / mine:.3f}, "
                f"{t.seen / (t.before.train_time + now - t0):.0f} img/s",
                refresh=False,
            )
        self.bar.update()

    def close(self) -> None:
        self.bar.close()


def _check_step(loss: torch.Tensor, stop: StopRequest | None) -> tuple[bool, bool]:
    """(the loss is not finite on some rank, Ctrl-C was pressed on some rank): one sync, one tiny all-reduce."""
    requested = stop is not None and stop.requested
    if not D.active():
        return not bool(torch.isfinite(loss.detach())), requested
    flags = torch.stack([(~torch.isfinite(loss.detach())).float(), torch.tensor(float(requested), device=loss.device)])
    bad, stop_now = D.all_reduce_sum(flags).tolist()
    return bad > 0, stop_now > 0
