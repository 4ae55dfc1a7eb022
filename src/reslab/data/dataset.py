"""The in-memory dataset every loader and trainer works from: uint8 images and int64 labels, as torch tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class Dataset:
    """A whole image-classification dataset held in memory.

    Images stay uint8 (N, H, W) — 47 MB for Fashion-MNIST's 60k training images — and are converted to float one
    batch at a time by `BatchLoader`. `source` says where the data came from (a folder, or "synthetic(...)").
    """

    train_images: torch.Tensor  # (N, H, W) uint8
    train_labels: torch.Tensor  # (N,) int64
    test_images: torch.Tensor  # (M, H, W) uint8
    test_labels: torch.Tensor  # (M,) int64
    classes: tuple[str, ...]
    source: str

    def __post_init__(self):
        for split in ("train", "test"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if images.dtype != torch.uint8 or images.dim() != 3:
                raise ValueError(f"{split}_images must be uint8 (N, H, W), got {images.dtype} {tuple(images.shape)}")
            if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
                raise ValueError(
                    f"{split}_labels must be int64 ({len(images)},), got {labels.dtype} {tuple(labels.shape)}"
                )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.train_images.shape[1:])

    def __repr__(self) -> str:
        h, w = self.image_size
        return (
            f"Dataset({len(self.train_labels):,} train + {len(self.test_labels):,} test images of {h}x{w}, "
            f"{self.num_classes} classes, source={self.source!r})"
        )
