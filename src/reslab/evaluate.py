"""Accuracy, per-class accuracy and the confusion matrix of a model on a split; `reslab eval CHECKPOINT`.

Under torchrun each process evaluates its own contiguous shard (no padding, no repeats) and the confusion matrix is
summed over processes, so the accuracy is exactly that of a single-process evaluation of the same weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from reslab import distributed as D


@torch.inference_mode()
def _confusion(model: nn.Module, loader, *, num_classes: int, amp_dtype: torch.dtype | None) -> torch.Tensor:
    device = next(model.parameters()).device
    counts = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    for x, y in loader:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            pred = model(x).argmax(1)
        counts += torch.bincount(y * num_classes + pred, minlength=num_classes * num_classes)
    return counts.view(num_classes, num_classes)


def evaluate(model: nn.Module, loader, *, num_classes: int, amp_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """{"correct", "total", "accuracy", "confusion" ((K, K) int64 on the CPU, rows = true class)} of `model` on
    `loader`'s images, summed over processes under torchrun. The model is put back in its previous mode."""
    was_training = model.training
    model.eval()
    try:
        counts = _confusion(model, loader, num_classes=num_classes, amp_dtype=amp_dtype).clone()
    finally:
        model.train(was_training)
    D.all_reduce_sum(counts)
    counts = counts.cpu()
    correct, total = int(counts.trace()), int(counts.sum())
    return {"correct": correct, "total": total, "accuracy": correct / max(total, 1), "confusion": counts}


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


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    split: str = "test",
    data_dir: str | None = None,
    batch_size: int = 512,
    device: str = "auto",
    output: str | Path | None = None,
    data=None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Evaluate a checkpoint (file or run folder) on the "val" or "test" split of the data it was trained on.

    Prints the accuracy and a per-class table, writes the confusion matrix image (confusion_matrix.png for the test
    split, confusion_matrix_val.png for val) into `output` or the checkpoint's folder, and returns evaluate()'s dict
    plus "split", "classes" and "image" (the path written). `data` (a reslab.data.Dataset) replaces loading one.
    """
    from reslab.checkpoint import model_from_checkpoint, read_checkpoint
    from reslab.data import BatchLoader, load_dataset
    from reslab.distributed import pick_device
    from reslab.errors import ReslabError
    from reslab.plots import plot_confusion_matrix
    from reslab.train import make_splits, resolve_amp

    if split not in ("val", "test"):
        raise ReslabError(f"--split: expected val or test, got {split!r}")
    if batch_size < 1:
        raise ReslabError(f"--batch-size: expected a positive batch size, got {batch_size}")
    ckpt = read_checkpoint(checkpoint)
    dev = pick_device(device)
    model = model_from_checkpoint(ckpt)
    config = model.reslab_config
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(dev, memory_format=memory_format)
    if data is None:
        data = load_dataset(config.dataset, data_dir if data_dir is not None else config.data_dir)
    splits = make_splits(data, config)
    if split not in splits:
        raise ReslabError(f"--split val: the run in {ckpt['path']} was trained with --val-size 0, so has no val split")
    loader = BatchLoader(
        *splits[split],
        batch_size=batch_size,
        train=False,
        resize=config.resize,
        device=dev,
        channels_last=config.channels_last,
    )
    classes = tuple(ckpt["classes"])
    result = evaluate(model, loader, num_classes=len(classes), amp_dtype=resolve_amp(config.amp, dev))
    folder = Path(output) if output is not None else Path(ckpt["path"]).parent
    image = folder / ("confusion_matrix.png" if split == "test" else f"confusion_matrix_{split}.png")
    plot_confusion_matrix(
        result["confusion"],
        classes,
        image,
        title=f"{Path(ckpt['path']).name} on {split}: {100 * result['accuracy']:.2f}%",
    )
    if not quiet:
        print(
            f"{ckpt['path']} ({ckpt['model_name']}, epoch {ckpt['epoch']}) on the {split} split: "
            f"accuracy {100 * result['accuracy']:.2f}% ({result['correct']:,} of {result['total']:,})"
        )
        print(per_class_table(result["confusion"], classes))
        print(f"confusion matrix: {image}")
    return {**result, "split": split, "classes": classes, "image": image}
