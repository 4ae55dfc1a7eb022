"""The dataset every loader and trainer works from: uint8 images and int64 labels, as torch tensors, per split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from reslab.data.transforms import MEAN, STD

SPLITS = ("train", "val", "test")
STYLES = ("fashion-mnist", "natural")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A whole image-classification dataset, held in memory (or, for a folder too large for it, streamed).

    Images stay uint8 — grayscale (N, H, W), 47 MB for Fashion-MNIST's 60k training images, or colour
    (N, C, H, W), 154 MB for CIFAR-10's 50k — and are converted to float one batch at a time by `BatchLoader`.
    A folder dataset too large for memory holds `reslab.data.imagefolder.ImageFiles` instead of tensors: the same
    shape, dtype and indexing, decoded from disk batch by batch.

    Splits: "train" always. "test" and "val" where the data defines them; `test_images is None` (an image folder
    without DIR/test) means the data has no test split, `val_images is None` that it has no separate validation
    split: both are then for the split logic to hold out of "train", seeded.
    `classes` are the dataset's own names (label i is classes[i]); `mean`/`std` the per-channel normalisation of
    pixels in [0, 1]; `style` how one new image is brought to the stored form (reslab's "preprocess" dict);
    `source` says where the data came from (a folder, or "synthetic(...)"); `skipped` the unreadable files left out.
    """

    train_images: torch.Tensor  # (N, H, W) or (N, C, H, W) uint8
    train_labels: torch.Tensor  # (N,) int64
    test_images: torch.Tensor | None  # (M, ...) uint8, or None: no test split in the data
    test_labels: torch.Tensor | None  # (M,) int64
    classes: tuple[str, ...]
    source: str
    mean: tuple[float, ...] = (MEAN,)
    std: tuple[float, ...] = (STD,)
    val_images: torch.Tensor | None = None  # a validation split the data itself defines (an image folder's DIR/val)
    val_labels: torch.Tensor | None = None
    style: str = "fashion-mnist"  # "fashion-mnist": light object on black, 28x28; "natural": resize + centre crop
    skipped: tuple[str, ...] = ()  # paths of unreadable images left out (an image folder with skip_bad_images)

    def __post_init__(self):
        item_shape = tuple(self.train_images.shape[1:])
        for split in SPLITS:
            images, labels = self.split(split)
            if images is None:
                if split == "train":
                    raise ValueError("train_images is required")
                continue
            if images.dtype != torch.uint8 or images.dim() not in (3, 4):
                raise ValueError(
                    f"{split}_images must be uint8 (N, H, W) or (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
                )
            if tuple(images.shape[1:]) != item_shape:
                raise ValueError(f"{split}_images are {tuple(images.shape[1:])}, train_images {item_shape}")
            if labels.dtype != torch.int64 or labels.shape != (len(images),):
                raise ValueError(
                    f"{split}_labels must be int64 ({len(images)},), got {labels.dtype} {tuple(labels.shape)}"
                )
            if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(self.classes)):
                raise ValueError(f"{split}_labels must be in [0, {len(self.classes)}), the range of `classes`")
        if (self.val_images is None) != (self.val_labels is None) or (self.test_images is None) != (
            self.test_labels is None
        ):
            raise ValueError("images and labels of a split are given together or not at all")
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans or min(self.std) <= 0:
            raise ValueError(f"mean and std need {self.in_chans} values, std > 0; got {self.mean}, {self.std}")
        if self.style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {self.style!r}")

    def split(self, name: str) -> tuple[Any, Any]:
        """(images, labels) of "train", "val" or "test"; (None, None) where the data has no such split."""
        return getattr(self, f"{name}_images"), getattr(self, f"{name}_labels")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        """1 for grayscale (N, H, W) images, C for (N, C, H, W)."""
        return 1 if self.train_images.dim() == 3 else int(self.train_images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.train_images.shape[-2:])

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(C, H, W) of one stored image: what a model sees before any crop or resize."""
        return (self.in_chans, *self.image_size)

    @property
    def streamed(self) -> bool:
        """True when the images stay on disk and are decoded batch by batch (a folder too large for memory)."""
        return not isinstance(self.train_images, torch.Tensor)

    def preprocess(self) -> dict[str, Any]:
        """How one new image becomes what this dataset stores: reslab's checkpoint "preprocess" dict."""
        natural = self.style == "natural"
        h, _ = self.image_size
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "value_scale": 1.0,
            "channel_order": "gray" if self.in_chans == 1 else "rgb",
            "resize": h if natural else None,  # shorter side, then a centre crop of the stored size
            "crop": h if natural else None,
            "interpolation": "bilinear",
            "style": self.style,
        }

    def __repr__(self) -> str:
        c, h, w = self.input_size
        counts = " + ".join(f"{len(self.split(s)[1]):,} {s}" for s in SPLITS if self.split(s)[1] is not None)
        return f"Dataset({counts} images of {c}x{h}x{w}, {self.num_classes} classes, source={self.source!r})"
