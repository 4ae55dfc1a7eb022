"""Run folders and the resume policy: which folder a run writes to, which checkpoint it continues from, and the
files it keeps there: last.pt and best.pt, config.json, metrics.csv, curves.png, confusion_matrix.png.

Decided once, on rank 0, and shared with every rank, so no shared filesystem is needed and a user error stops every
rank with the same message.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reslab import distributed as D
from reslab.atomic import FolderClaim, FolderInUse, claim_folder, write_text
from reslab.checkpoint import (
    EpochProgress,
    TrainState,
    describe_os_error,
    ensure_folder,
    non_finite_tensors,
    read_checkpoint,
    recover_checkpoint_set,
    save_checkpoint,
)
from reslab.config import TrainConfig, flag_name
from reslab.errors import NonFiniteLossError, ReslabError
from reslab.plots import plot_confusion_matrix, plot_curves
from reslab.precise_bn import running_stats
from reslab.runstate import RunState


@dataclass(frozen=True)
class RunPlan:
    config: TrainConfig  # the one to train with: a resumed run's own, with the flags given now on top
    run_dir: Path
    checkpoint: dict[str, Any] | None  # read_checkpoint()'s dict to resume from, or None for a new run


def save_last(state: RunState, *, step: int, step_in_epoch: int, progress: EpochProgress, best: bool = False) -> None:
    """Write the run's last.pt for global step `step` from rank 0 (with `best`, best.pt first, the same bytes; every
    rank calls it, so that all know which step is on disk); NonFiniteLossError (and nothing written) if the weights
    are not finite, ReslabError (every rank) if the file cannot be written."""
    check_finite(state, step)
    served = state.served(step)  # on every rank: precise statistics are all-reduced
    run, pos = state.run, state.pos
    error = None
    if run.is_main:
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        saved = TrainState(
            config=run.config.to_dict(),
            **run.meta,
            model=served.state_dict(),
            optimizer=state.optimizer.state_dict(),
            scaler=state.scaler.state_dict() if state.scaler is not None else None,
            epoch=pos.epoch,
            step=step,
            step_in_epoch=step_in_epoch,
            steps_per_epoch=state.steps_per_epoch,
            world_size=run.world_size,
            rng={"torch": torch.get_rng_state(), "cuda": cuda_rng},
            history=pos.history,
            best_val_acc=pos.best_val_acc,
            epoch_progress=progress,
            threads=torch.get_num_threads(),
            live_model=state.model.state_dict() if state.ema is not None else None,
            # --precise-bn: "model" holds the precise statistics; a resumed run continues from the accumulated ones
            running_stats=running_stats(state.delivered) if state.precise is not None else None,
        )
        try:
            save_checkpoint(saved, run.run_dir / "last.pt", best=run.run_dir / "best.pt" if best else None)
        except ReslabError as e:
            error = str(e)
    error = D.broadcast_object(error)  # a full disk on rank 0 stops every rank, with rank 0's message
    if error is not None:
        raise ReslabError(error)
    pos.saved_step = step


def check_finite(state: RunState, step: int) -> None:
    """NonFiniteLossError on every rank if any rank's parameters or buffers hold a NaN or an infinity: a run whose
    loss stays finite can still diverge (BatchNorm statistics overflow first)."""
    bad = non_finite_tensors(state.model.state_dict())
    count = D.all_reduce_sum(torch.tensor([len(bad)], device=next(state.model.parameters()).device)).item()
    if count:
        raise _diverged(state, step, "the model holds NaN or infinite values", bad, "the loss was finite")
    if state.precise is not None:  # the same on every rank (all-reduced)
        bad = non_finite_tensors(state.served(step).state_dict())
        if bad:
            what = (
                f"the BatchNorm statistics of the weights, recomputed from {state.precise.num_images:,} training "
                "images (--precise-bn), are NaN or infinite"
            )
            raise _diverged(state, step, what, bad, "the loss and the weights are finite")


def _diverged(state: RunState, step: int, what: str, bad: list[str], although: str) -> NonFiniteLossError:
    names = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
    return NonFiniteLossError(
        f"training diverged: after step {step} (epoch {state.pos.epoch + 1}) {what}{f' ({names})' if names else ''} "
        f"although {although}; training stopped, {on_disk(state)}. Try a lower --lr, a longer --warmup-epochs, or "
        "--amp off"
    )


def on_disk(state: RunState) -> str:
    """What the run's last.pt holds, for a message about a stopped run (it is only ever written finite)."""
    if state.pos.saved_step is None:
        return "no checkpoint had been written yet"
    return f"{state.run.run_dir / 'last.pt'} holds step {state.pos.saved_step}, with finite weights (untouched)"


def nothing_to_do(ckpt: dict[str, Any], config: TrainConfig) -> str | None:
    """Why resuming `ckpt` with `config` would train nothing (then nothing is written), or None."""
    where = f"{ckpt['path']} is at epoch {ckpt['epoch']}, step {ckpt['step']}"
    if ckpt["epoch"] >= config.epochs:
        more = f"--epochs N (N > {ckpt['epoch']})"
        return f"the run is complete: {where} of {config.epochs} epochs; to train on, resume with {more}"
    if config.max_steps is not None and ckpt["step"] >= config.max_steps:
        return f"nothing to do: {where}, already at --max-steps {config.max_steps}; resume with a larger --max-steps"
    return None


def default_name(config: TrainConfig) -> str:
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
        if p.parent.is_dir():
            claim_run_folder(p.parent, flag="--resume")  # before reading it: no other run writes there meanwhile
        if not p.is_file():
            raise ReslabError(f"--resume: no checkpoint at {str(p)!r} (expected a last.pt or a run folder)")
        return p.parent, p
    if restarted is None:
        restarted = D.restart_count() > 0
    auto = config.resume == "auto" or restarted
    if config.resume == "auto" and config.name is None and not D.under_torchrun():
        raise ReslabError("--resume auto: needs --name, the run folder under --output to continue")
    run_dir = claim_named_run_folder(config)  # before looking in it: two runs started together never share it
    last = run_dir / "last.pt"
    if last.is_file():
        if auto:
            return run_dir, last
        raise ReslabError(
            f"--name: {str(run_dir)!r} already holds a run (last.pt); pass --resume auto to continue it, "
            f"or choose another --name"
        )
    return run_dir, None


# what a checkpoint means: a resumed run cannot change these (the model and data it was trained on, the split, the
# optimiser whose state it holds); everything else (epochs, lr, schedule, augmentation, speed, ...) may change
FIXED_ON_RESUME = (
    "model",
    "model_kwargs",
    "zero_init_residual",
    "whiten_stem",  # a frozen weight has no optimiser state
    "pretrained",
    "freeze",
    "dataset",
    "in_chans",
    "image_size",
    "crop_size",
    "skip_bad_images",
    "resize",
    "val_size",
    "train_subset",
    "seed",
    "opt",
    "bn_bias_lr",  # a group of its own in the optimizer's state
)
# (progress and log say how the run is watched, not what it computes: they may change too, and go unlisted)
MAY_CHANGE_ON_RESUME = tuple(
    f for f in TrainConfig.__dataclass_fields__ if f not in (*FIXED_ON_RESUME, "resume", "progress")
)


def plan_run(config: TrainConfig, explicit: Collection[str] | None, *, restarted: bool) -> RunPlan:
    """On rank 0: the config to use, the run folder and the checkpoint to resume (or None).

    `explicit` (the flags given on the command line) makes a resumed run keep its checkpoint's config except for
    those fields; without it, `config` is used as is. Refused: changing what the checkpoint means
    (FIXED_ON_RESUME), and continuing from an older checkpoint over a newer last.pt (give --name for a new folder).
    """
    run_dir, path = find_resume_checkpoint(config, restarted=restarted)
    if path is None:
        ensure_folder(run_dir, flag="--output")
        return RunPlan(config, run_dir, None)
    ckpt = read_checkpoint(path)
    if "config" not in ckpt:
        raise ReslabError(f"--resume: {path} holds weights only, no training state to continue")
    saved = TrainConfig.from_dict(ckpt["config"])
    if explicit is not None:
        # a resumed run keeps its own settings; only the flags given now override them
        config = TrainConfig.from_dict(
            {**saved.to_dict(), **{k: getattr(config, k) for k in explicit}, "resume": config.resume}
        )
    if ckpt["model_name"] != config.model:
        raise ReslabError(f"--resume: {path} holds a {ckpt['model_name']} but --model is {config.model}")
    changed = [k for k in FIXED_ON_RESUME if getattr(config, k) != getattr(saved, k)]
    if changed:
        was = ", ".join(f"{flag_name(k)} {getattr(saved, k)!r}" for k in changed)
        now = ", ".join(f"{flag_name(k)} {getattr(config, k)!r}" for k in changed)
        raise ReslabError(
            f"--resume: {path} was trained with {was}; {now} would change what its checkpoint means. Start a new "
            f"run for that (another --name), or resume without those flags; these may change on resume: "
            f"{', '.join(map(flag_name, MAY_CHANGE_ON_RESUME))}"
        )
    if explicit is not None and "name" in explicit and Path(config.output) / config.name != run_dir:
        run_dir = Path(config.output) / config.name  # continue in a new folder: the old one is left as it is
        claim_run_folder(run_dir, flag="--name")
        if (run_dir / "last.pt").exists():
            raise ReslabError(f"--name: {str(run_dir)!r} already holds a run (last.pt); choose another --name")
    else:
        _refuse_to_overwrite_newer(path, run_dir, ckpt["step"])
    ensure_folder(run_dir, flag="--output")
    return RunPlan(config, run_dir, ckpt)


def _refuse_to_overwrite_newer(path: Path, run_dir: Path, step: int) -> None:
    """Continuing from `path` (at `step`) writes run_dir/last.pt: refuse when that file holds later progress."""
    last = run_dir / "last.pt"
    if path.resolve() == last.resolve() or not last.exists():
        return
    try:
        newer = read_checkpoint(last)["step"]
    except ReslabError as e:
        raise ReslabError(
            f"--resume: continuing from {path} would overwrite {last}, which cannot be read ({e})"
        ) from None
    if newer > step:
        raise ReslabError(
            f"--resume: {path} is at step {step} but {last} holds later progress (step {newer}), which continuing "
            f"here would overwrite; to continue from {path.name} anyway, give a new --name (the run continues in "
            f"that folder and {run_dir} is left as it is), or resume {run_dir} to continue from step {newer}"
        )


def decide_run(config: TrainConfig, explicit: Collection[str] | None, dist_info: D.DistInfo) -> RunPlan:
    """plan_run on rank 0, its answer (or its error) on every rank."""
    # torchrun counts restarts per node: a healthy node's workers, restarted for another node's failure, see 0
    restarted = D.all_reduce_sum(torch.tensor([D.restart_count()], device=dist_info.device)).item() > 0
    decision = None
    if dist_info.is_main:
        try:
            decision = ("ok", plan_run(config, explicit, restarted=restarted))
        except ReslabError as e:
            decision = ("error", str(e))
    decision = D.broadcast_object(decision)
    if decision[0] == "error":
        raise ReslabError(decision[1])
    return decision[1]


_CLAIMS: list[FolderClaim] = []  # the run folders this process holds (rank 0), released when fit() returns


def claim_run_folder(run_dir: Path, *, flag: str) -> None:
    """Claim `run_dir` for this run (another live run there: a ReslabError naming `flag`), then finish what a kill
    left of its checkpoint set (reslab.checkpoint.recover_checkpoint_set), saying what it did."""
    if not any(c.folder == run_dir for c in _CLAIMS):
        _CLAIMS.append(claim_folder(run_dir, flag="--output", in_use_flag=flag))
    for line in recover_checkpoint_set(run_dir):
        print(f"{run_dir}: {line}", flush=True)


def claim_named_run_folder(config: TrainConfig) -> Path:
    """Claim --output/--name (claim_run_folder); without --name, the first default name no other run holds (two runs
    started in the same second get two folders)."""
    run_dir = Path(config.output) / (config.name or default_name(config))
    for _ in range(100):
        try:
            claim_run_folder(run_dir, flag="--name")
            return run_dir
        except FolderInUse:
            if config.name is not None or D.under_torchrun():
                raise
            run_dir = Path(config.output) / default_name(config)  # the other run's folder exists now: the next name
    raise ReslabError(f"--output: no free run folder name under {config.output!r}; give --name")


def release_run_folders() -> None:
    """Let go of the run folders this process claimed; one that its run created and left empty is removed."""
    while _CLAIMS:
        _CLAIMS.pop().release()


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """An OSError while writing `path` (a full disk, say) becomes a ReslabError naming it."""
    try:
        yield
    except OSError as e:
        raise ReslabError(f"cannot write {str(path)!r}: {describe_os_error(e)}") from None


def write_config(run_dir: Path, config: TrainConfig) -> None:
    write_text(run_dir / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")


def write_metrics(run_dir: Path, history: Sequence[dict[str, Any]]) -> None:
    """metrics.csv: one row per finished epoch."""
    if not history:
        return
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=list(history[0]))
    w.writeheader()
    w.writerows(history)
    write_text(run_dir / "metrics.csv", text.getvalue())


def write_plots(
    run_dir: Path, history: Sequence[dict[str, Any]], confusion: torch.Tensor | None, classes: Sequence[str]
) -> None:
    """curves.png (loss and accuracy per epoch) and confusion_matrix.png (the test split, last epoch)."""
    if history:
        with _writing(run_dir / "curves.png"):
            plot_curves(history, run_dir / "curves.png", title=run_dir.name)
    if confusion is not None:
        with _writing(run_dir / "confusion_matrix.png"):
            plot_confusion_matrix(confusion, classes, run_dir / "confusion_matrix.png")
