"""Accuracy, per-class accuracy and the confusion matrix of a model on a split; `reslab eval CHECKPOINT`.

Test-time augmentation (`tta`, airbench's two levels): "flip" averages the logits of each image and its mirror
image; "flip-shift" averages that (weight 1/2) with the same average for the image shifted by one pixel down-right
and up-left (reflect padding; 1/4 each): 2 and 6 forward passes per image.

Under torchrun each process evaluates its own contiguous shard (no padding, no repeats) and the confusion matrix is
summed over processes, so the accuracy is exactly that of a single-process evaluation of the same weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reslab import distributed as D
from reslab.backends import OnnxModel, Runner, load_model
from reslab.checkpoint import TrainedModel, describe_os_error, ensure_folder
from reslab.config import TTA_MODES, TrainConfig, make_config
from reslab.data import BatchLoader, Dataset, LoaderSpec, folder_options, input_pipeline, load_dataset, make_splits
from reslab.data.splits import Split, Splits
from reslab.device import autocast, resolve_amp
from reslab.errors import ReslabError
from reslab.plots import plot_confusion_matrix


@dataclass(frozen=True)
class EvalResult:
    confusion: torch.Tensor  # (K, K) int64 on the CPU, rows = true class, columns = predicted

    @property
    def correct(self) -> int:
        return int(self.confusion.trace())

    @property
    def total(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.total, 1)


def tta_logits(model: nn.Module | Runner, x: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """The model's logits for a batch (B, C, H, W), averaged over the views of `tta` (none | flip | flip-shift)."""
    if tta == "none":
        return model(x)

    def mirrored(v: torch.Tensor) -> torch.Tensor:
        return 0.5 * (model(v).float() + model(v.flip(-1)).float())

    logits = mirrored(x)
    if tta == "flip":
        return logits
    if tta != "flip-shift":
        raise ValueError(f"unknown tta {tta!r}")
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[..., :h, :w], padded[..., 2 : h + 2, 2 : w + 2]]  # one pixel down-right, one up-left
    return 0.5 * logits + 0.25 * (mirrored(shifted[0]) + mirrored(shifted[1]))


@torch.inference_mode()
def _confusion(
    model: nn.Module | Runner, loader, *, num_classes: int, amp_dtype: torch.dtype | None, tta: str = "none"
) -> torch.Tensor:
    device = next(model.parameters()).device if isinstance(model, nn.Module) else model.device
    counts = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    for x, y in loader:
        with autocast(device, amp_dtype):
            pred = tta_logits(model, x, tta).argmax(1).to(device)
        counts += torch.bincount(y.to(device) * num_classes + pred, minlength=num_classes * num_classes)
    return counts.view(num_classes, num_classes)


def evaluate(
    model: nn.Module | Runner,
    loader,
    *,
    num_classes: int,
    amp_dtype: torch.dtype | None = None,
    tta: str = "none",
) -> EvalResult:
    """The confusion matrix of `model` (or a runner: reslab.backends) on `loader`'s images, with test-time
    augmentation `tta`, summed over processes under torchrun. A model is put back in its previous mode."""
    if not isinstance(model, nn.Module):
        counts = _confusion(model, loader, num_classes=num_classes, amp_dtype=None, tta=tta).clone()
        D.all_reduce_sum(counts)
        return EvalResult(confusion=counts.cpu())
    was_training = model.training
    model.eval()
    try:
        counts = _confusion(model, loader, num_classes=num_classes, amp_dtype=amp_dtype, tta=tta).clone()
    finally:
        model.train(was_training)
    D.all_reduce_sum(counts)
    return EvalResult(confusion=counts.cpu())


def per_class_table(confusion: torch.Tensor, classes: tuple[str, ...] | list[str]) -> str:
    """A text table: each class's correct / total and accuracy (recall), then the overall line."""
    width = max(8, *(len(c) for c in classes))
    lines = [f"{'class':<{width}}  {'correct':>7}  {'total':>7}  {'accuracy':>8}"]
    for i, name in enumerate(classes):
        right, total = int(confusion[i, i]), int(confusion[i].sum())
        acc = f"{100 * right / total:7.2f}%" if total else "       -"
        lines.append(f"{name:<{width}}  {right:>7,}  {total:>7,}  {acc}")
    right, total = int(confusion.trace()), int(confusion.sum())
    lines.append(f"{'all':<{width}}  {right:>7,}  {total:>7,}  {100 * right / max(total, 1):7.2f}%")
    return "\n".join(lines)


@dataclass(frozen=True)
class CheckpointEval:
    result: EvalResult
    split: str
    classes: tuple[str, ...]
    image: Path  # the confusion matrix written

    @property
    def accuracy(self) -> float:
        return self.result.accuracy


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    split: str | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    batch_size: int = 512,
    device: str = "auto",
    output: str | Path | None = None,
    data: Dataset | None = None,
    quiet: bool = False,
    tta: str | None = None,
) -> CheckpointEval:
    """Evaluate a checkpoint (file or run folder) on the "val" or "test" split (default: test, or val where the data
    has no test split) of the data it was trained on, with
    the normalisation and crop it was trained with; a weights-only checkpoint (`reslab convert`) on `dataset`
    (with `data_dir`): its test split, or every image of a folder without one. `tta`: test-time augmentation (none,
    flip, flip-shift; None: the run's own --tta).

    Prints the accuracy and a per-class table, writes the confusion matrix image (confusion_matrix.png for the test
    split, confusion_matrix_val.png for val) into `output` or the checkpoint's folder. `data` replaces loading one.
    """
    if split not in (None, "val", "test"):
        raise ReslabError(f"--split: expected val or test, got {split!r}")
    if batch_size < 1:
        raise ReslabError(f"--batch-size: expected a positive batch size, got {batch_size}")
    if tta is not None and tta not in TTA_MODES:
        raise ReslabError(f"--tta: expected one of {', '.join(TTA_MODES)}, got {tta!r}")
    m = load_model(checkpoint, device)
    # before the work: an unusable --output is a mistake to report now, not after the evaluation
    folder = ensure_folder(Path(output) if output is not None else Path(m.path).parent, flag="--output")
    config = _data_config(m, dataset, data_dir, data_given=data is not None)
    if data is None:
        options = folder_options(config, m.preprocess)
        if options and not config.skip_bad_images and len((m.preprocess or {}).get("mean", ())) == options["in_chans"]:
            # an image folder normalised as the checkpoint records: decode only the split(s) to evaluate (with
            # --skip-bad-images every training file is checked: which are left out decides the held-out split)
            options["only"] = (split,) if split is not None else ("val", "test")
        data = load_dataset(config.dataset, data_dir if data_dir is not None else config.data_dir, **options)
    if len(data.classes) != len(m.classes):
        raise ReslabError(
            f"--dataset {config.dataset}: {data.source} has {len(data.classes)} classes, the model {len(m.classes)}"
        )
    split, chosen = _choose_split(make_splits(data, config), split, m)
    model, amp_dtype = _runnable(m)
    mean, std, crop = input_pipeline(config, data, m.preprocess)
    loader = BatchLoader(
        *chosen,
        LoaderSpec(
            batch_size=batch_size,
            train=False,
            resize=config.resize,
            crop_size=crop,
            mean=mean,
            std=std,
            channels_last=config.channels_last and isinstance(model, nn.Module),
        ),
        device=_device_of(model),
    )
    if tta is None:
        tta = m.config.tta if m.config is not None else "none"
    result = evaluate(model, loader, num_classes=len(m.classes), amp_dtype=amp_dtype, tta=tta)
    image = _report(m, result, split, tta, folder, quiet=quiet)
    return CheckpointEval(result=result, split=split, classes=m.classes, image=image)


def _runnable(m: TrainedModel | OnnxModel) -> tuple[nn.Module | Runner, torch.dtype | None]:
    """(what computes the logits, its autocast dtype): ONNX Runtime for an ONNX file; else the checkpoint's model in
    the memory format and mixed precision it was trained with (fp32 for a weights-only checkpoint)."""
    if isinstance(m, OnnxModel):
        return m.runner, None
    if m.config is None:
        return m.model.to(memory_format=torch.contiguous_format), None
    device = _device_of(m.model)
    channels_last = torch.channels_last if m.config.channels_last else torch.contiguous_format
    return m.model.to(memory_format=channels_last), resolve_amp(m.config.amp, device)


def _device_of(model: nn.Module | Runner) -> torch.device:
    return next(model.parameters()).device if isinstance(model, nn.Module) else model.device


def _data_config(
    m: TrainedModel | OnnxModel, dataset: str | None, data_dir: str | None, *, data_given: bool
) -> TrainConfig:
    """The config that says which data, split and preprocessing to evaluate on: the run's own, or for weights only
    (`reslab convert`'s), `dataset` (an image folder when the data is given) with the model's input size."""
    config = m.config
    if config is None:  # weights only: the data is the user's to name
        if dataset is None and not data_given:
            raise ReslabError(
                f"checkpoint {m.path!r}: holds weights only, with no record of the data it was trained on: give "
                "--dataset (and --data-dir) to evaluate it on"
            )
        config = make_config(dataset=dataset or "imagefolder", data_dir=data_dir, val_size=0, channels_last=False)
        if (m.preprocess or {}).get("style", "fashion-mnist") == "fashion-mnist":
            # the model's own input size (the seeds' 96, the default recipe's 24), not the default recipe's
            config = dataclasses.replace(config, resize=m.input_size[1] if m.input_size[1] != 28 else None)
    elif dataset is not None and dataset != config.dataset:
        raise ReslabError(f"--dataset {dataset}: the run in {m.path} was trained on {config.dataset}; leave it out")
    return config


def _choose_split(splits: Splits, split: str | None, m: TrainedModel | OnnxModel) -> tuple[str, Split]:
    """(the split's name, its images and labels): `split`, or by default test, or val for data without a test split;
    all of an image folder without sub-folders for a weights-only checkpoint."""
    if split is None:  # the test split, or the validation split of data without one (an image folder)
        split = "test" if splits.test is not None or splits.val is None else "val"
    chosen = splits.get(split)
    if chosen is None and m.config is None and splits.val is None and splits.test is None:
        split, chosen = "all", splits.train  # a folder of images without train/val/test sub-folders: all of it
    if chosen is None:
        why = "was trained with --val-size 0" if split == "val" else f"has no {split} split"
        raise ReslabError(f"--split {split}: the data of {m.path} {why}")
    return split, chosen


def _report(
    m: TrainedModel | OnnxModel, result: EvalResult, split: str, tta: str, folder: Path, *, quiet: bool
) -> Path:
    """Write the confusion matrix image into `folder` and (unless `quiet`) print the accuracy and per-class table;
    returns the image's path."""
    with_tta = "" if tta == "none" else f" with test-time augmentation {tta}"
    image = folder / ("confusion_matrix.png" if split == "test" else f"confusion_matrix_{split}.png")
    try:
        plot_confusion_matrix(
            result.confusion,
            m.classes,
            image,
            title=f"{Path(m.path).name} on {split}{with_tta}: {100 * result.accuracy:.2f}%",
        )
    except OSError as e:
        raise ReslabError(f"cannot write {str(image)!r}: {describe_os_error(e)}") from None
    if not quiet:
        epoch = f", epoch {m.epoch}" if m.epoch is not None else ""
        print(
            f"{m.path} ({m.model_name}{epoch}) on the {split} split{with_tta}: "
            f"accuracy {100 * result.accuracy:.2f}% ({result.correct:,} of {result.total:,})"
        )
        print(per_class_table(result.confusion, m.classes))
        print(f"confusion matrix: {image}")
    return image


# a prediction this concentrated on one class, in data where that class is far rarer, is a collapse, not a result
ONE_CLASS_SHARE = 0.9
# validation this far (in accuracy) below training is not the usual generalisation gap of a short run
TRAIN_VAL_GAP = 0.2


def run_warnings(
    history: list[dict[str, Any]],
    confusion: torch.Tensor | None,
    classes: tuple[str, ...] | list[str],
    *,
    split: str = "test",
    precise_bn: int = 0,
) -> list[str]:
    """What looks wrong at the end of a run, with its likely causes: one line each, nothing when all is well.

    `history`: metrics.csv's rows (train_acc, val_acc of the last epoch are read); `confusion`: the last evaluation of
    `split` (rows = true class); `precise_bn`: the run's --precise-bn (0: off), which changes the advice.
    """
    bn = (
        "BatchNorm running statistics that lag weights which moved fast (few steps at a high learning rate): "
        "recompute them with --precise-bn 2048 (off in this run) or train more epochs"
        if not precise_bn
        else "a learning rate too high for this data (try a lower --lr or more --warmup-epochs)"
    )
    out = []
    if confusion is not None and len(classes) >= 2 and int(confusion.sum()) > 0:
        total = int(confusion.sum())
        predicted = confusion.sum(0)
        top = int(predicted.argmax())
        share, actual = int(predicted[top]) / total, int(confusion[top].sum()) / total
        if share >= ONE_CLASS_SHARE and share - actual > 0.25:
            out.append(
                f"the {split} split was predicted as {classes[top]!r} for {int(predicted[top]):,} of its {total:,} "
                f"images ({100 * share:.0f}%; {100 * actual:.0f}% of them are): the model has collapsed to one "
                f"class. Likely causes: {bn}; classes the images do not tell apart; or too few epochs to learn them"
            )
    last = history[-1] if history else {}
    train_acc, val_acc = last.get("train_acc"), last.get("val_acc")
    if train_acc is not None and val_acc is not None and train_acc - val_acc >= TRAIN_VAL_GAP:
        out.append(
            f"validation accuracy {val_acc:.3f} is far below training accuracy {train_acc:.3f}. Likely causes: {bn}; "
            f"overfitting a small training set (more images, or augmentation: --crop-padding, --hflip); or "
            f"validation images unlike the training ones (another source, size or colour)"
        )
    return out
