"""Data: Fashion-MNIST files -> verified uint8 tensors in memory; batched augmentation; sharded loaders.

ds = load_dataset("fashion-mnist", data_dir=None)   # or "synthetic"
train_x, train_y, val_x, val_y = split_train_val(ds.train_images, ds.train_labels, 5000, seed=0)
loader = BatchLoader(train_x, train_y, batch_size=256, train=True, crop_padding=2, hflip=True, resize=96)
loader.set_epoch(0)
for x, y in loader: ...   # x float32 (256, 1, 96, 96), y int64 (256,)
"""

from __future__ import annotations

from pathlib import Path

from reslab.config import DATASETS
from reslab.data.dataset import Dataset
from reslab.data.fashion_mnist import CLASSES, download, find_data_dir, load_fashion_mnist
from reslab.data.idx import read_idx, write_idx
from reslab.data.loader import BatchLoader, split_train_val
from reslab.data.splits import Splits, make_loaders, make_splits
from reslab.data.synthetic import synthetic_dataset
from reslab.data.transforms import MEAN, STD, prepare_batch
from reslab.errors import ReslabError


def load_dataset(name: str, data_dir: str | Path | None = None) -> Dataset:
    """The dataset called `name`: "fashion-mnist" (found, verified, downloaded if need be) or "synthetic"."""
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir)
    if name == "synthetic":
        return synthetic_dataset()
    raise ReslabError(f"--dataset: expected one of {', '.join(DATASETS)}, found {name!r}")


__all__ = [
    "CLASSES",
    "DATASETS",
    "MEAN",
    "STD",
    "BatchLoader",
    "Dataset",
    "Splits",
    "download",
    "find_data_dir",
    "load_dataset",
    "load_fashion_mnist",
    "prepare_batch",
    "make_loaders",
    "make_splits",
    "read_idx",
    "split_train_val",
    "synthetic_dataset",
    "write_idx",
]
