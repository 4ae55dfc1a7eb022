"""Accuracy, per-class accuracy and the confusion matrix of a model on a split; `reslab eval CHECKPOINT`.

Under torchrun each process evaluates its own contiguous shard (no padding, no repeats) and the confusion matrix is
summed over processes, so the accuracy is exactly that of a single-process evaluation of the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from reslab import distributed as D
from reslab.checkpoint import read_checkpoint, trained_model
from reslab.data import BatchLoader, Dataset, load_dataset, make_splits
from reslab.errors import ReslabError
from reslab.plots import plot_confusion_matrix
from reslab.runners import Runner, is_onnx, load_onnx
from reslab.runtime import autocast, pick_device, resolve_amp


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


@torch.inference_mode()
def _confusion(model: nn.Module | Runner, loader, *, num_classes: int, amp_dtype: torch.dtype | None) -> torch.Tensor:
    device = next(model.parameters()).device if isinstance(model, nn.Module) else model.device
    counts = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    for x, y in loader:
        with autocast(device, amp_dtype):
            pred = model(x).argmax(1).to(device)
        counts += torch.bincount(y.to(device) * num_classes + pred, minlength=num_classes * num_classes)
    return counts.view(num_classes, num_classes)


def evaluate(
    model: nn.Module | Runner, loader, *, num_classes: int, amp_dtype: torch.dtype | None = None
) -> EvalResult:
    """The confusion matrix of `model` (or a runner: reslab.runners) on `loader`'s images, summed over processes under
    torchrun. A model is put back in its previous mode."""
    if not isinstance(model, nn.Module):
        counts = _confusion(model, loader, num_classes=num_classes, amp_dtype=None).clone()
        D.all_reduce_sum(counts)
        return EvalResult(confusion=counts.cpu())
    was_training = model.training
    model.eval()
    try:
        counts = _confusion(model, loader, num_classes=num_classes, amp_dtype=amp_dtype).clone()
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


def _load_for_eval(checkpoint: str | Path, device: str):
    """(what names it: path, model_name, epoch; its TrainConfig; classes; the model or runner; device; amp dtype)
    for a checkpoint trained by reslab, or an ONNX file exported from one (ONNX Runtime on the CPU)."""
    if is_onnx(checkpoint):  # the run's config is in the file's metadata
        if str(device) not in ("auto", "cpu"):
            raise ReslabError(f"--device {device}: an ONNX file runs on the CPU (ONNX Runtime's CPU build); use cpu")
        exported = load_onnx(checkpoint)
        if exported.config is None:
            raise ReslabError(
                f"{exported.path!r}: exported from weights only, with no record of the data it was trained on"
            )
        names = {"path": exported.path, "model_name": exported.model_name, "epoch": exported.epoch}
        return names, exported.config, exported.classes, exported.runner, exported.runner.device, None
    ckpt = read_checkpoint(checkpoint)
    if "config" not in ckpt:
        raise ReslabError(
            f"checkpoint {ckpt['path']!r}: holds weights only, with no record of the data it was trained on"
        )
    dev = pick_device(device)
    trained = trained_model(ckpt)
    config = trained.config
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = trained.model.to(dev, memory_format=memory_format)
    return ckpt, config, trained.classes, model, dev, resolve_amp(config.amp, dev)


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
    split: str = "test",
    data_dir: str | None = None,
    batch_size: int = 512,
    device: str = "auto",
    output: str | Path | None = None,
    data: Dataset | None = None,
    quiet: bool = False,
) -> CheckpointEval:
    """Evaluate a checkpoint (file or run folder) on the "val" or "test" split of the data it was trained on.

    Prints the accuracy and a per-class table, writes the confusion matrix image (confusion_matrix.png for the test
    split, confusion_matrix_val.png for val) into `output` or the checkpoint's folder. `data` replaces loading one.
    """
    if split not in ("val", "test"):
        raise ReslabError(f"--split: expected val or test, got {split!r}")
    if batch_size < 1:
        raise ReslabError(f"--batch-size: expected a positive batch size, got {batch_size}")
    ckpt, config, classes, model, dev, amp_dtype = _load_for_eval(checkpoint, device)
    if data is None:
        data = load_dataset(config.dataset, data_dir if data_dir is not None else config.data_dir)
    chosen = make_splits(data, config).get(split)
    if chosen is None:
        raise ReslabError(f"--split val: the run in {ckpt['path']} was trained with --val-size 0, so has no val split")
    loader = BatchLoader(
        *chosen,
        batch_size=batch_size,
        train=False,
        resize=config.resize,
        device=dev,
        channels_last=config.channels_last and isinstance(model, nn.Module),
    )
    result = evaluate(model, loader, num_classes=len(classes), amp_dtype=amp_dtype)
    folder = Path(output) if output is not None else Path(ckpt["path"]).parent
    image = folder / ("confusion_matrix.png" if split == "test" else f"confusion_matrix_{split}.png")
    plot_confusion_matrix(
        result.confusion,
        classes,
        image,
        title=f"{Path(ckpt['path']).name} on {split}: {100 * result.accuracy:.2f}%",
    )
    if not quiet:
        print(
            f"{ckpt['path']} ({ckpt['model_name']}, epoch {ckpt['epoch']}) on the {split} split: "
            f"accuracy {100 * result.accuracy:.2f}% ({result.correct:,} of {result.total:,})"
        )
        print(per_class_table(result.confusion, classes))
        print(f"confusion matrix: {image}")
    return CheckpointEval(result=result, split=split, classes=classes, image=image)
