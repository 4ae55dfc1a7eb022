"""fit(config): train a ResNet, with mixed precision, a per-step schedule, checkpoints, exact resume and DDP.

    from reslab.config import make_config
    from reslab.train import fit
    result = fit(make_config(epochs=2))       # result.test_acc, result.run_dir, result.model

Top to bottom: devices and process group -> run folder (new, or the one being resumed) -> `setup_run` (data, model,
optimizer, schedule: a reslab.runstate.RunState) -> `resume` from a checkpoint -> epochs of `train_one_epoch` +
`evaluate` -> metrics, plots, checkpoints.

Resume is exact: the loader's order and augmentation are pure functions of (seed, epoch, step, rank) and the
learning rate a pure function of the step, so a checkpoint only needs the model, optimizer, scaler, RNG and step
counters; on the CPU a run stopped at any step and resumed ends with the same bits as the run left alone.

Under `torchrun` each process trains on its own shard of every epoch, `--batch-size` is per process and the learning
rate is multiplied by the number of processes (linear scaling, Goyal et al. 2017); rank 0 alone writes and prints.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reslab import distributed as D
from reslab.checkpoint import EpochProgress, TrainState, model_from_checkpoint
from reslab.config import TrainConfig
from reslab.data import (
    BatchLoader,
    Dataset,
    folder_options,
    input_pipeline,
    load_dataset,
    make_loaders,
    make_splits,
)
from reslab.device import amp_name, amp_warning, compiled, configure_device, resolve_amp, usable_threads
from reslab.ema import EMA
from reslab.errors import NonFiniteLossError, ReslabError
from reslab.evaluate import evaluate, run_warnings
from reslab.finetune import freeze_backbone, pretrained_model, read_pretrained
from reslab.loop import EpochResult, StopRequest, train_one_epoch
from reslab.memory import check_training_memory
from reslab.models import build_model
from reslab.models.probe import cpu_bf16_hazard, first_conv
from reslab.models.whiten import whiten_stem
from reslab.optim import Schedule, build_optimizer
from reslab.precise_bn import check_batch_statistics, module_names, precise_bn_for_run
from reslab.report import RunWatch
from reslab.rundir import (
    RunPlan,
    check_finite,
    decide_run,
    nothing_to_do,
    on_disk,
    release_run_folders,
    save_last,
    write_config,
    write_metrics,
    write_plots,
)
from reslab.runstate import RunInfo, RunPosition, RunState
from reslab.weights import WeightsFile


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
        plan = decide_run(config, explicit, dist_info)
        if plan.checkpoint is not None and (done := nothing_to_do(plan.checkpoint, plan.config)):
            _sayer(plan.config, dist_info)(done)
            return _result(
                plan.config, plan.run_dir, _position_of(plan.checkpoint), model_from_checkpoint(plan.checkpoint)
            )
        state = setup_run(plan, dist_info, data=data, t_start=t_start)
        if plan.checkpoint is not None:
            resume(state, plan.checkpoint)
        plan = None  # the checkpoint's optimizer state can be large
        if state.run.is_main:
            write_config(state.run.run_dir, state.config)
        _announce(state)
        watch = _watch(state)
        try:
            _train_epochs(state, watch)
        finally:
            if state.run.is_main:
                write_metrics(state.run.run_dir, state.pos.history)
                write_plots(state.run.run_dir, state.pos.history, state.confusion, state.run.classes)
            watch.close(state.pos.history, state.pos.best_val_acc)
        _check_ranks_agree(state)
        state.model.eval()
        delivered = _delivered(state)
        _finish_report(state, watch, delivered)
        return _result(state.config, state.run.run_dir, state.pos, delivered, state)
    finally:
        release_run_folders()  # the claim on the run folder (an empty one this run created is removed)
        D.cleanup(dist_info)
        torch.set_num_threads(threads)  # --threads is for this run, not for the rest of the caller's process


def _training_amp(
    config: TrainConfig, device: torch.device, model: nn.Module, input_sizes: Sequence[tuple[int, int, int]], say
) -> torch.dtype | None:
    """The autocast dtype of training: resolve_amp's, but fp32 where bf16 would train this model wrongly on this CPU
    at one of `input_sizes` (`--amp auto`, with a note) or a ReslabError (an explicit `--amp bf16`)."""
    amp_dtype = resolve_amp(config.amp, device)
    if amp_dtype != torch.bfloat16 or device.type != "cpu":
        return amp_dtype
    hazard = next((h for size in input_sizes if (h := cpu_bf16_hazard(model, size)) is not None), None)
    if hazard is None:
        return amp_dtype
    if config.amp != "auto":
        raise ReslabError(
            f"--amp {config.amp}: {hazard}; use --amp off, or a larger --resize, --progressive-resize or --image-size"
        )
    say(f"note: training in fp32, not bf16: {hazard}")
    return None


def _sayer(config: TrainConfig, dist_info: D.DistInfo):
    return print if (dist_info.is_main and config.progress) else (lambda *a, **k: None)


def _result(
    config: TrainConfig, run_dir: Path, pos: RunPosition, model: nn.Module, state: RunState | None = None
) -> FitResult:
    """The FitResult of a run at `pos`; `state` (None when there was nothing to train) gives this call's
    throughput and the test confusion matrix."""
    seconds = state.seconds_trained if state is not None else 0.0
    return FitResult(
        completed=pos.epoch >= config.epochs,
        run_dir=run_dir,
        history=pos.history,
        best_val_acc=pos.best_val_acc,
        test_acc=pos.history[-1]["test_acc"] if pos.history else None,
        model=model,
        step=pos.step,
        images_per_s=state.images_trained / seconds if seconds else None,
        confusion=state.confusion if state is not None else None,
    )


def _position_of(ckpt: dict[str, Any]) -> RunPosition:
    """Where the run in checkpoint dict `ckpt` stands."""
    return RunPosition(
        epoch=ckpt["epoch"], step=ckpt["step"], history=list(ckpt["history"]), best_val_acc=ckpt["best_val_acc"]
    )


def setup_run(plan: RunPlan, dist_info: D.DistInfo, *, data: Dataset | None, t_start: float) -> RunState:
    """Everything a run trains with, from its plan: threads and device, data and loaders, the model (with
    --pretrained's weights, read once), optimizer, scaler, schedule and EMA. A resumed run is built as a new one
    and then `resume`d: the same seed draws the same initial weights, which the checkpoint then replaces."""
    config, device, world = plan.config, dist_info.device, dist_info.world_size
    say = _sayer(config, dist_info)
    if config.threads:
        threads, note = usable_threads(config.threads)
        if note is not None:
            say(f"note: {note}")
        torch.set_num_threads(threads)
    check_training_memory(config, device)
    configure_device(device)
    if (warning := amp_warning(config.amp, device)) is not None:
        say(f"warning: {warning}")
    torch.manual_seed(config.seed)

    # what the model expects of an image: the checkpoint's record when resuming, else the pretrained weights'
    resuming = plan.checkpoint is not None
    weights = None if resuming else read_pretrained(config)
    preprocess = plan.checkpoint.get("preprocess") if resuming else (weights and weights.preprocess)
    if data is None:
        data = _load_data(config, dist_info, folder_options(config, preprocess))
    splits = make_splits(data, config)
    mean, std, crop = input_pipeline(config, data, preprocess)
    loaders = make_loaders(
        splits, config, mean=mean, std=std, crop_size=crop, device=device, rank=dist_info.rank, world_size=world
    )
    model, train_model, model_kwargs, frozen = _make_model(config, data, dist_info, say, weights, loaders["train"])
    amp_dtype = _training_amp(config, device, model, loaders["train"].input_sizes, say)
    schedule = Schedule.for_run(config, steps_per_epoch=len(loaders["train"]), world_size=world)
    optimizer = build_optimizer(model, config, lr=schedule.peak_lr)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    input_size = loaders["train"].input_size
    meta = {
        "model_name": config.model,
        "model_kwargs": model_kwargs,
        "input_size": list(input_size),
        "classes": list(data.classes),
        "preprocess": {**data.preprocess(), "mean": list(mean), "std": list(std), "crop": crop or min(data.image_size)},
    }
    frozen_names = module_names(model, frozen)
    train = loaders["train"]  # its batch is smaller than --batch-size when the training split is
    for size in train.input_sizes:
        check_batch_statistics(model, size, train.batch_size, requested=config.batch_size, skip=frozen_names)
    ema = EMA(model, config.ema) if config.ema else None
    precise = precise_bn_for_run(config.precise_bn, ema.module if ema else model, train, amp_dtype, frozen_names)
    data_line = f"{splits.sizes()} images at {input_size[1]}x{input_size[2]}{_progressive_text(train)} ({data.source})"
    run = RunInfo(config, plan.run_dir, dist_info, meta, amp_dtype, say, t_start, data_line)
    return RunState(
        run, model, train_model, optimizer, scaler, schedule, ema, loaders, frozen, precise=precise, splits=splits
    )


def resume(state: RunState, ckpt: dict[str, Any]) -> None:
    """Continue from checkpoint dict `ckpt` (read_checkpoint's): the weights, optimizer, scaler, RNG and position.
    A run saved by another number of processes (or with another batch size) continues at the same fraction of the
    epoch; the running sums still count the images already seen."""
    saved, run, pos = TrainState.from_dict(ckpt), state.run, state.pos
    # "model" may hold precise BatchNorm statistics: training continues from the accumulated ones
    state.model.load_state_dict(saved.live_model if saved.live_model is not None else saved.trained_model_state())
    if state.ema is not None:  # the saved average, or (--ema given only now) one that starts from these weights
        average = saved.trained_model_state() if saved.live_model is not None else state.model.state_dict()
        state.ema.load_state_dict(average)
    state.optimizer.load_state_dict(saved.optimizer)
    if state.scaler is not None and saved.scaler is not None:
        state.scaler.load_state_dict(saved.scaler)
    torch.set_rng_state(saved.rng["torch"])
    cuda_states = saved.rng.get("cuda")
    if run.device.type == "cuda" and cuda_states is not None and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    pos.epoch, pos.history, pos.best_val_acc, pos.saved_step = (
        saved.epoch,
        list(saved.history),
        saved.best_val_acc,
        saved.step,
    )
    # time between the stop and the resume is not counted; the stopped epoch's training time is
    pos.elapsed_before = (saved.history[-1]["elapsed_s"] if saved.history else 0.0) + saved.epoch_progress.train_time
    steps, pos.step_in_epoch = state.steps_per_epoch, saved.step_in_epoch
    if saved.world_size == run.world_size and saved.steps_per_epoch == steps:
        pos.step = saved.step
    else:
        pos.step_in_epoch = min(steps, round(saved.step_in_epoch * steps / saved.steps_per_epoch))
        pos.step = pos.epoch * steps + pos.step_in_epoch
    pos.progress = saved.epoch_progress if run.is_main else EpochProgress()  # rank 0 carries the sums of all ranks
    other = (
        "" if saved.world_size == run.world_size else f"; saved by {saved.world_size} processes, now {run.world_size}"
    )
    where = f"epoch {pos.epoch + 1}, step {pos.step} (step {pos.step_in_epoch} of the epoch{other})"
    run.say(f"resuming from {ckpt['path']} at {where}")
    if run.device.type == "cpu" and saved.threads not in (None, torch.get_num_threads()):
        run.say(
            f"note: the run was trained with {saved.threads} CPU threads and continues with "
            f"{torch.get_num_threads()}: the result can differ in the last bits from a run left alone "
            f"(pass --threads {saved.threads} for a bitwise exact continuation)"
        )


def _announce(state: RunState) -> None:
    """The run's folder, data, model and optimiser, in four lines (and compiling, the stem and the BatchNorm
    statistics where they are not the usual ones)."""
    run, config, world = state.run, state.config, state.run.world_size
    n_params = sum(p.numel() for p in state.model.parameters())
    n = torch.get_num_threads()
    threads = f" ({n} thread{'s' * (n != 1)})" if run.device.type == "cpu" else ""
    run.say(f"run folder: {run.run_dir}")
    run.say(f"data: {run.data_line}")
    run.say(
        f"model: {config.model}, {n_params / 1e6:.2f}M parameters; {run.device}{threads}, {amp_name(run.amp_dtype)}"
        f"{', channels_last' if config.channels_last else ''}{f', DDP over {world} processes' if world > 1 else ''}"
    )
    scaled = f" (= {config.lr:g} x {world} processes)" if world > 1 else ""
    run.say(
        f"optimiser: {config.opt} lr {state.schedule.peak_lr:g}{scaled}, {config.sched} schedule, batch "
        f"{config.batch_size}{f' x {world}' if world > 1 else ''}, {state.steps_per_epoch} steps per epoch, "
        f"{config.epochs} epochs"
    )
    if config.compile:
        run.say("torch.compile: the training step, compiled on its first step at each image size")
    if config.whiten_stem:
        stem = first_conv(state.model)
        run.say(f"stem: {stem} whitens the training images' patches (airbench's first layer), frozen")
    if state.precise is not None:
        run.say(
            f"BatchNorm statistics: precise, from {state.precise.num_images:,} training images before each evaluation"
        )


def _watch(state: RunState) -> RunWatch:
    """report.html as epochs finish, and TensorBoard events with --log tensorboard (rank 0 writes)."""
    run, pos = state.run, state.pos
    watch = RunWatch(
        state.config,
        run.run_dir,
        is_main=run.is_main,
        step=pos.step,
        steps_per_epoch=state.steps_per_epoch,
        world_size=run.world_size,
        say=run.say,
    )
    if pos.step == 0:
        pre = run.meta["preprocess"]
        watch.first_batch(state.loaders["train"], pos.epoch, pre["mean"], pre["std"])
    return watch


def _delivered(state: RunState) -> nn.Module:
    """What the run delivers (FitResult.model, the report's analysis) as its checkpoints hold it, after the
    end-of-run warnings: the model or its EMA, with --precise-bn its precise BatchNorm statistics."""
    run, pos = state.run, state.pos
    model = state.delivered
    if state.precise is not None and pos.history:
        model = state.served(pos.step)
        run.say(
            f"precise BatchNorm statistics: {state.precise.seconds:.1f} s for {state.precise.computed} computations"
        )
    split = "test" if "test" in state.loaders else "val"  # the split state.confusion is of
    for line in run_warnings(
        pos.history, state.confusion, run.classes, split=split, precise_bn=state.config.precise_bn
    ):
        run.say(f"warning: {line}")
    return model


def _finish_report(state: RunState, watch: RunWatch, model: nn.Module) -> None:
    """The full report at the end of fit(): a finished run's mistakes and Grad-CAMs on the test (or val) split."""
    pre = state.run.meta["preprocess"]
    watch.finish(
        state.pos.history,
        completed=state.pos.epoch >= state.config.epochs,
        model=model,
        classes=state.run.classes,
        splits=state.splits,
        mean=pre["mean"],
        std=pre["std"],
        crop=pre["crop"],
        amp_dtype=state.run.amp_dtype,
    )


def _train_epochs(state: RunState, watch: RunWatch) -> None:
    """Epochs of train_one_epoch and _end_epoch until the run is done, stopped (--max-steps) or interrupted."""
    config, pos, run = state.config, state.pos, state.run
    show_bar = config.progress and run.is_main and sys.stderr.isatty()
    with StopRequest(announce=run.is_main) as stop:
        while pos.epoch < config.epochs and (config.max_steps is None or pos.step < config.max_steps):
            result = train_one_epoch(
                state,
                stop=stop,
                save=lambda step, in_epoch, sums: save_last(state, step=step, step_in_epoch=in_epoch, progress=sums),
                bar_desc=f"epoch {pos.epoch + 1}/{config.epochs}" if show_bar else None,
                on_step=watch.on_step,
            )
            pos.next_epoch()
            state.images_trained += result.images
            state.seconds_trained += result.seconds
            go_on = _settle(state, result)
            if result.step_in_epoch == state.steps_per_epoch:
                watch.epoch_end(pos.history)
            if not go_on:
                break


def _settle(state: RunState, result: EpochResult) -> bool:
    """Take a call of train_one_epoch into the run: an epoch finished is evaluated and saved, a stop saved where it
    is; False when the run stops here. The one place that reads `result.stopped`."""
    pos, run, steps = state.pos, state.run, state.steps_per_epoch
    if result.stopped == "non_finite":
        raise NonFiniteLossError(
            f"the loss became {result.bad_loss} at epoch {pos.epoch + 1}, step {result.step + 1} "
            f"(step {result.step_in_epoch + 1} of the epoch), lr {result.lr:.4g}; training stopped, "
            f"{on_disk(state)}. Try a lower --lr, a longer --warmup-epochs, or --amp off"
        )
    pos.step = result.step
    if result.step_in_epoch == steps:
        _end_epoch(state, result)
    else:  # stopped mid-epoch: save exactly where it is
        _one_copy_of_statistics(state)
        save_last(state, step=pos.step, step_in_epoch=result.step_in_epoch, progress=result.progress)
        sums = result.progress
        seen, secs = max(1, sums.seen), max(sums.train_time, 1e-9)
        why = "interrupted" if result.stopped == "interrupt" else "stopped at --max-steps"
        run.say(
            f"{why} in epoch {pos.epoch + 1} (step {result.step_in_epoch} of {steps}): "
            f"loss {sums.loss_sum / seen:.4f}, train acc {sums.correct / seen:.3f}, {seen / secs:.0f} img/s"
        )
    if result.stopped is None:
        return True
    if result.stopped == "interrupt" and pos.epoch >= state.config.epochs:
        return False  # Ctrl-C during the very last step: the run is complete, and saved as such
    run.say(f"saved {run.run_dir / 'last.pt'} at step {pos.step}; continue with --resume {run.run_dir}")
    if result.stopped == "interrupt":
        raise KeyboardInterrupt
    return False


def _check_ranks_agree(state: RunState) -> None:
    if not D.active():
        return
    same = D.ranks_agree(D.state_fingerprint(state.model))
    state.run.say(
        f"DDP check: parameters and buffers are {'identical' if same else 'DIFFERENT'} on all "
        f"{state.run.world_size} ranks"
    )
    if not same:
        raise RuntimeError("DDP ranks ended with different weights; please report this as a reslab bug")


def _progressive_text(train: BatchLoader) -> str:
    """The data line's note of --progressive-resize (", epochs 1-2 trained at 16x16"), or "" without it."""
    if len(train.input_sizes) == 1:
        return ""
    n, (_, h, w) = train.progressive_epochs, train.input_size_at(0)
    return f", epoch{f's 1-{n}' if n > 1 else ' 1'} trained at {h}x{w}"


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
    config: TrainConfig, data: Dataset, dist_info: D.DistInfo, say, weights: WeightsFile | None, train: BatchLoader
) -> tuple[nn.Module, nn.Module, dict[str, Any], list[nn.Module]]:
    """(model, the module to train: DDP-wrapped under torchrun, build_model's kwargs, the frozen modules); `train`'s
    images set a whitened stem."""
    device = dist_info.device
    model_kwargs = {**config.model_kwargs, "in_chans": data.in_chans, "num_classes": len(data.classes)}
    if config.zero_init_residual:
        model_kwargs["zero_init_residual"] = True
    if weights is not None:
        model, model_kwargs, report = pretrained_model(
            config, weights, in_chans=data.in_chans, num_classes=len(data.classes)
        )
        for line in report:
            say(f"pretrained: {line}")
    else:
        model = build_model(config.model, **model_kwargs)
    frozen = freeze_backbone(model) if config.freeze == "backbone" else []
    model.to(device, memory_format=torch.channels_last if config.channels_last else torch.preserve_format)
    if config.whiten_stem:  # before DDP, which starts every rank from rank 0's weights
        whiten_stem(model, (x for x, _ in train.at_full_size()))
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
    if config.compile:  # the loop's module only: evaluation, precise BatchNorm and the EMA use `model`, eagerly
        train_model = compiled(train_model, device)
    return model, train_model, model_kwargs, frozen


def _one_copy_of_statistics(state: RunState) -> None:
    """Rank 0's BatchNorm statistics (and those of the weights' average) on every rank, for evaluation, the
    checkpoint and the end-of-run check: without SyncBN each rank's own batches moved its copy since DDP last
    broadcast them, at the step's forward."""
    D.broadcast_buffers(state.model)
    if state.ema is not None:
        D.broadcast_buffers(state.ema.module)


def _end_epoch(state: RunState, result: EpochResult) -> None:
    """Evaluate (the splits due after this epoch), record, print and checkpoint a finished epoch."""
    t0 = time.perf_counter()
    run, pos, config, loaders = state.run, state.pos, state.config, state.loaders
    _one_copy_of_statistics(state)
    check_finite(state, pos.step)  # before evaluating: inf BatchNorm statistics would give a meaningless score
    # evaluation and best.pt judge the averaged weights, which are what eval/predict use; with --precise-bn a copy
    # with the BatchNorm statistics of these weights
    net = state.served(pos.step)
    epoch = pos.epoch + 1
    every = {"val": config.val_every, "test": config.test_every}
    evals = {
        split: evaluate(net, loaders[split], num_classes=len(run.classes), amp_dtype=run.amp_dtype, tta=config.tta)
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
        "lr": state.schedule(pos.step),  # the schedule where the run stands: the next step's
        "time_s": sums.train_time + time.perf_counter() - t0,
        "images_per_s": sums.seen / max(sums.train_time, 1e-9),
        "elapsed_s": pos.elapsed_before + time.perf_counter() - run.t_start,
        "step": pos.step,
    }
    pos.history.append(row)
    improved = row["val_acc"] is not None and (pos.best_val_acc is None or row["val_acc"] > pos.best_val_acc)
    if improved:
        pos.best_val_acc = row["val_acc"]
    accs = "".join(f", {s} acc {row[f'{s}_acc']:.3f}" for s in ("val", "test") if row[f"{s}_acc"] is not None)
    run.say(
        f"epoch {pos.epoch}, loss {row['train_loss']:.4f}, train acc {row['train_acc']:.3f}{accs}, "
        f"time {row['time_s']:.1f} sec, {row['images_per_s']:.0f} img/s",
        flush=True,
    )
    # without a validation split there is nothing to choose by: best.pt is the latest epoch
    best = improved or "val" not in loaders
    save_last(state, step=pos.step, step_in_epoch=0, progress=EpochProgress(), best=best)
    if run.is_main:
        write_metrics(run.run_dir, pos.history)
    shown = "test" if "test" in loaders else "val"  # the data may have no test split
    if shown in evals:
        state.confusion = evals[shown].confusion


def _due(every: int, epoch: int, epochs: int) -> bool:
    """Whether a split is evaluated after `epoch` (1-based): every `every` epochs and after the last (0: last only)."""
    return epoch >= epochs or (every > 0 and epoch % every == 0)
