"""fit(config): train a ResNet, with mixed precision, a per-step schedule, checkpoints, exact resume and DDP.

    from reslab.config import make_config
    from reslab.train import fit
    result = fit(make_config(epochs=2))       # result.test_acc, result.run_dir, result.model

Top to bottom: devices and process group -> run folder (new, or the one being resumed) -> data -> model -> optimizer
and schedule -> epochs of `train_one_epoch` + `evaluate` -> metrics, plots, checkpoints.

Resume is exact: the loader's order and augmentation are pure functions of (seed, epoch, step, rank) and the
learning rate a pure function of the step, so a checkpoint only needs the model, optimizer, scaler, RNG and step
counters; on the CPU a run stopped at any step and resumed ends with the same bits as the run left alone.

Under `torchrun` each process trains on its own shard of every epoch, `--batch-size` is per process and the learning
rate is multiplied by the number of processes (linear scaling, Goyal et al. 2017); rank 0 alone writes and prints.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reslab import distributed as D
from reslab.checkpoint import EpochProgress, TrainState, model_from_checkpoint
from reslab.config import TrainConfig
from reslab.data import Dataset, folder_options, input_pipeline, load_dataset, make_loaders, make_splits
from reslab.device import amp_name, amp_warning, configure_device, resolve_amp
from reslab.ema import EMA
from reslab.errors import NonFiniteLossError, ReslabError
from reslab.evaluate import evaluate, run_warnings
from reslab.finetune import freeze_backbone, pretrained_model, weights_preprocess
from reslab.loop import EpochResult, StopRequest, train_one_epoch
from reslab.models import build_model
from reslab.optim import Schedule, build_optimizer
from reslab.precise_bn import check_batch_statistics, module_names, precise_bn_for_run
from reslab.rundir import (
    RunCheckpoints,
    RunPosition,
    decide_run,
    nothing_to_do,
    restore,
    write_config,
    write_metrics,
    write_plots,
)


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


def fit(config: TrainConfig, *, data: Dataset | None = None, explicit: Collection[str] | None = None) -> FitResult:
    """Train as `config` says; returns a FitResult. `data` (a reslab.data.Dataset) replaces config.dataset.

    With config.resume, the run continues from the checkpoint. `explicit` (what the CLI passes: the flags given on
    the command line) makes a resumed run keep the checkpoint's config except for those fields; without it,
    `config` is used as is.

    Raises NonFiniteLossError (a ReslabError) if training diverges, and KeyboardInterrupt after saving a resumable
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


def _fit(config: TrainConfig, data: Dataset | None, explicit, dist_info: D.DistInfo, t_start: float) -> FitResult:
    device, is_main, world = dist_info.device, dist_info.is_main, dist_info.world_size
    plan = decide_run(config, explicit, dist_info)
    config, run_dir = plan.config, plan.run_dir
    say = print if (is_main and config.progress) else (lambda *a, **k: None)
    if plan.checkpoint is not None and (done := nothing_to_do(plan.checkpoint, config)):
        say(done)
        return _result_of(plan.checkpoint, config, run_dir)

    if config.threads:
        torch.set_num_threads(config.threads)
    configure_device(device)
    if (warning := amp_warning(config.amp, device)) is not None:
        say(f"warning: {warning}")
    torch.manual_seed(config.seed)

    # what the model expects of an image: the checkpoint's record when resuming, else the pretrained weights'
    resuming = plan.checkpoint is not None
    preprocess = plan.checkpoint.get("preprocess") if resuming else weights_preprocess(config)
    if data is None:
        data = _load_data(config, dist_info, folder_options(config, preprocess))
    splits = make_splits(data, config)
    mean, std, crop = input_pipeline(config, data, preprocess)
    loaders = make_loaders(
        splits, config, mean=mean, std=std, crop_size=crop, device=device, rank=dist_info.rank, world_size=world
    )
    steps = len(loaders["train"])
    model, train_model, model_kwargs, frozen = _make_model(config, data, dist_info, say, pretrained=not resuming)
    amp_dtype = resolve_amp(config.amp, device)
    schedule = Schedule.for_run(config, steps_per_epoch=steps, world_size=world)
    optimizer = build_optimizer(model, config, lr=schedule.peak_lr)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    _, h, w = loaders["train"].input_size
    meta = {
        "model_name": config.model,
        "model_kwargs": model_kwargs,
        "input_size": list(loaders["train"].input_size),
        "classes": list(data.classes),
        "preprocess": {**data.preprocess(), "mean": list(mean), "std": list(std), "crop": crop or h},
    }
    ema = EMA(model, config.ema) if config.ema else None
    frozen_names = module_names(model, frozen)
    train_batch = loaders["train"].batch_size  # fewer than --batch-size when the training split is smaller
    check_batch_statistics(
        model, loaders["train"].input_size, train_batch, requested=config.batch_size, skip=frozen_names
    )
    served = ema.module if ema else model
    precise = precise_bn_for_run(config.precise_bn, served, loaders["train"], amp_dtype, frozen_names)
    ckpt = RunCheckpoints(run_dir, is_main, config, meta, model, optimizer, scaler, steps, world, ema, precise)

    pos, start_step, progress = RunPosition(), 0, EpochProgress()
    if plan.checkpoint is not None:
        saved = TrainState.from_dict(plan.checkpoint)
        pos, start_step, progress = restore(saved, model, optimizer, scaler, device, steps, world, is_main)
        if ema is not None:  # the saved average, or (--ema given only now) one that starts from these weights
            ema.load_state_dict(saved.trained_model_state() if saved.live_model is not None else model.state_dict())
        other = "" if saved.world_size == world else f"; saved by {saved.world_size} processes, now {world}"
        where = f"epoch {pos.epoch + 1}, step {pos.step} (step {start_step} of the epoch{other})"
        say(f"resuming from {plan.checkpoint['path']} at {where}")
        if device.type == "cpu" and saved.threads not in (None, torch.get_num_threads()):
            say(
                f"note: the run was trained with {saved.threads} CPU threads and continues with "
                f"{torch.get_num_threads()}: the result can differ in the last bits from a run left alone "
                f"(pass --threads {saved.threads} for a bitwise exact continuation)"
            )
    plan = saved = None  # the checkpoint's optimizer state can be large

    if is_main:
        write_config(run_dir, config)
    n_params = sum(p.numel() for p in model.parameters())
    threads = f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else ""
    say(f"run folder: {run_dir}")
    say(f"data: {splits.sizes()} images at {h}x{w} ({data.source})")
    say(
        f"model: {config.model}, {n_params / 1e6:.2f}M parameters; {device}{threads}, {amp_name(amp_dtype)}"
        f"{', channels_last' if config.channels_last else ''}{f', DDP over {world} processes' if world > 1 else ''}"
    )
    scaled = f" (= {config.lr:g} x {world} processes)" if world > 1 else ""
    say(
        f"optimiser: {config.opt} lr {schedule.peak_lr:g}{scaled}, {config.sched} schedule, batch "
        f"{config.batch_size}{f' x {world}' if world > 1 else ''}, {steps} steps per epoch, {config.epochs} epochs"
    )
    if precise is not None:
        say(f"BatchNorm statistics: precise, from {precise.num_images:,} training images before each evaluation")

    confusion, images, seconds = None, 0, 0.0
    show_bar = config.progress and is_main and sys.stderr.isatty()
    try:
        with StopRequest(announce=is_main) as stop:
            while pos.epoch < config.epochs and (config.max_steps is None or pos.step < config.max_steps):
                result = train_one_epoch(
                    train_model,
                    loaders["train"],
                    optimizer,
                    schedule=schedule,
                    step=pos.step,
                    epoch=pos.epoch,
                    start_step=start_step,
                    progress=progress,
                    amp_dtype=amp_dtype,
                    scaler=scaler,
                    label_smoothing=config.label_smoothing,
                    ema=ema,
                    stop=stop,
                    max_steps=config.max_steps,
                    ckpt_interval=config.ckpt_interval,
                    save=lambda step, in_epoch, sums: ckpt.save_last(
                        pos, step=step, step_in_epoch=in_epoch, progress=sums
                    ),
                    bar_desc=f"epoch {pos.epoch + 1}/{config.epochs}" if show_bar else None,
                    frozen=frozen,
                )
                start_step, progress = 0, EpochProgress()
                images, seconds = images + result.images, seconds + result.seconds
                if result.stopped == "non_finite":
                    raise _diverged(result, pos, ckpt)
                pos.step = result.step
                if result.step_in_epoch == steps:
                    tested = _end_epoch(result, pos, ckpt, loaders, amp_dtype, schedule(pos.step), t_start, say)
                    confusion = tested if tested is not None else confusion
                else:  # stopped mid-epoch: save exactly where it is
                    ckpt.save_last(pos, step=pos.step, step_in_epoch=result.step_in_epoch, progress=result.progress)
                    sums = result.progress
                    seen, secs = max(1, sums.seen), max(sums.train_time, 1e-9)
                    why = "interrupted" if result.stopped == "interrupt" else "stopped at --max-steps"
                    say(
                        f"{why} in epoch {pos.epoch + 1} (step {result.step_in_epoch} of {steps}): "
                        f"loss {sums.loss_sum / seen:.4f}, train acc {sums.correct / seen:.3f}, {seen / secs:.0f} img/s"
                    )
                if result.stopped == "interrupt" and pos.epoch >= config.epochs:
                    break  # Ctrl-C during the very last step: the run is complete, and saved as such
                if result.stopped is not None:
                    say(f"saved {run_dir / 'last.pt'} at step {pos.step}; continue with --resume {run_dir}")
                    if result.stopped == "interrupt":
                        raise KeyboardInterrupt
                    break
    finally:
        if is_main:
            write_metrics(run_dir, pos.history)
            write_plots(run_dir, pos.history, confusion, data.classes)

    if D.active():
        same = D.ranks_agree(D.state_fingerprint(model))
        say(f"DDP check: parameters and buffers are {'identical' if same else 'DIFFERENT'} on all {world} ranks")
        if not same:
            raise RuntimeError("DDP ranks ended with different weights; please report this as a reslab bug")
    model.eval()
    if ema is not None:
        model = ema.module  # what the run delivers: the averaged weights (also what its checkpoints serve)
    if precise is not None and pos.history:
        model = ckpt.served(pos.step)  # ... with the BatchNorm statistics its checkpoints hold
        say(f"precise BatchNorm statistics: {precise.seconds:.1f} s for {precise.computed} computations")
    shown = "test" if splits.test is not None else "val"  # the split `confusion` is of
    for line in run_warnings(pos.history, confusion, data.classes, split=shown, precise_bn=config.precise_bn):
        say(f"warning: {line}")
    return FitResult(
        completed=pos.epoch >= config.epochs,
        run_dir=run_dir,
        history=pos.history,
        best_val_acc=pos.best_val_acc,
        test_acc=pos.history[-1]["test_acc"] if pos.history else None,
        model=model,
        step=pos.step,
        images_per_s=images / seconds if seconds else None,
        confusion=confusion,
    )


def _result_of(ckpt: dict[str, Any], config: TrainConfig, run_dir: Path) -> FitResult:
    """The FitResult of a run that is already where `config` asks it to be."""
    history = list(ckpt["history"])
    return FitResult(
        completed=ckpt["epoch"] >= config.epochs,
        run_dir=run_dir,
        history=history,
        best_val_acc=ckpt["best_val_acc"],
        test_acc=history[-1]["test_acc"] if history else None,
        model=model_from_checkpoint(ckpt),
        step=ckpt["step"],
    )


def _load_data(config: TrainConfig, dist_info: D.DistInfo, options: dict[str, Any]) -> Dataset:
    if not D.active():
        return load_dataset(config.dataset, config.data_dir, **options)
    # local rank 0 first, so that a download happens once per machine; the others then find the files
    data, error = None, None
    if dist_info.local_rank == 0:
        try:
            data = load_dataset(config.dataset, config.data_dir, **options)
        except ReslabError as e:
            error = e
    torch.distributed.barrier()
    if error is not None:
        raise error
    return data if data is not None else load_dataset(config.dataset, config.data_dir, **options)


def _make_model(
    config: TrainConfig, data: Dataset, dist_info: D.DistInfo, say, *, pretrained: bool
) -> tuple[nn.Module, nn.Module, dict[str, Any], list[nn.Module]]:
    """(model, the module to train: DDP-wrapped under torchrun, build_model's kwargs, the frozen modules)."""
    device = dist_info.device
    model_kwargs = {**config.model_kwargs, "in_chans": data.in_chans, "num_classes": len(data.classes)}
    if config.zero_init_residual:
        model_kwargs["zero_init_residual"] = True
    if config.pretrained is not None and pretrained:
        model, model_kwargs, report = pretrained_model(config, in_chans=data.in_chans, num_classes=len(data.classes))
        for line in report:
            say(f"pretrained: {line}")
    else:
        model = build_model(config.model, **model_kwargs)
    frozen = freeze_backbone(model) if config.freeze == "backbone" else []
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
    return model, train_model, model_kwargs, frozen


def _diverged(result: EpochResult, pos: RunPosition, ckpt: RunCheckpoints) -> NonFiniteLossError:
    return NonFiniteLossError(
        f"the loss became {result.bad_loss} at epoch {pos.epoch + 1}, step {result.step + 1} "
        f"(step {result.step_in_epoch + 1} of the epoch), lr {result.lr:.4g}; training stopped, {ckpt.on_disk(pos)}. "
        f"Try a lower --lr, a longer --warmup-epochs, or --amp off"
    )


def _end_epoch(
    result: EpochResult,
    pos: RunPosition,
    ckpt: RunCheckpoints,
    loaders: dict[str, Any],
    amp_dtype: torch.dtype | None,
    next_lr: float,
    t_start: float,
    say,
) -> torch.Tensor | None:
    """Evaluate (the splits due after this epoch), record, print and checkpoint a finished epoch; returns the test
    confusion matrix, or None if the test split was not evaluated."""
    t0 = time.perf_counter()
    D.broadcast_buffers(ckpt.model)  # one copy of the BatchNorm statistics for evaluation and the checkpoint
    ckpt.check_finite(pos, pos.step)  # before evaluating: inf BatchNorm statistics would give a meaningless score
    net = ckpt.model
    if ckpt.ema is not None:
        net = ckpt.ema.module  # evaluation and best.pt judge the averaged weights, which are what eval/predict use
        D.broadcast_buffers(net)
    net = ckpt.served(pos.step)  # with --precise-bn: a copy with the BatchNorm statistics of these weights
    num_classes = len(ckpt.meta["classes"])
    config, epoch = ckpt.config, pos.epoch + 1
    every = {"val": config.val_every, "test": config.test_every}
    evals = {
        split: evaluate(net, loaders[split], num_classes=num_classes, amp_dtype=amp_dtype, tta=config.tta)
        for split in ("val", "test")
        if split in loaders and _due(every[split], epoch, config.epochs)
    }
    pos.epoch += 1
    sums = result.progress
    images = max(1, sums.seen)  # over all ranks
    row = {
        "epoch": pos.epoch,
        "train_loss": sums.loss_sum / images,
        "train_acc": sums.correct / images,
        "val_acc": evals["val"].accuracy if "val" in evals else None,
        "test_acc": evals["test"].accuracy if "test" in evals else None,
        "lr": next_lr,  # the schedule where the run stands: the next step's
        "time_s": sums.train_time + time.perf_counter() - t0,
        "images_per_s": sums.seen / max(sums.train_time, 1e-9),
        "elapsed_s": pos.elapsed_before + time.perf_counter() - t_start,
        "step": pos.step,
    }
    pos.history.append(row)
    improved = row["val_acc"] is not None and (pos.best_val_acc is None or row["val_acc"] > pos.best_val_acc)
    if improved:
        pos.best_val_acc = row["val_acc"]
    accs = "".join(f", {s} acc {row[f'{s}_acc']:.3f}" for s in ("val", "test") if row[f"{s}_acc"] is not None)
    say(
        f"epoch {pos.epoch}, loss {row['train_loss']:.4f}, train acc {row['train_acc']:.3f}{accs}, "
        f"time {row['time_s']:.1f} sec, {row['images_per_s']:.0f} img/s",
        flush=True,
    )
    ckpt.save_last(pos, step=pos.step, step_in_epoch=0, progress=EpochProgress())
    if ckpt.is_main:
        write_metrics(ckpt.run_dir, pos.history)
    if improved or "val" not in loaders:
        # without a validation split there is nothing to choose by: best.pt is the latest epoch
        ckpt.copy_to_best()
    shown = "test" if "test" in loaders else "val"  # the data may have no test split
    return evals[shown].confusion if shown in evals else None


def _due(every: int, epoch: int, epochs: int) -> bool:
    """Whether a split is evaluated after `epoch` (1-based): every `every` epochs and after the last (0: last only)."""
    return epoch >= epochs or (every > 0 and epoch % every == 0)
