"""Data: dataset files -> verified uint8 tensors in memory; batched augmentation; sharded loaders.

ds = load_dataset("fashion-mnist", data_dir=None)   # or mnist, kmnist, cifar10, cifar100, imagefolder, synthetic
train_x, train_y, val_x, val_y = split_train_val(ds.train_images, ds.train_labels, 5000, seed=0)
loader = BatchLoader(train_x, train_y, batch_size=256, train=True, crop_padding=2, hflip=True, resize=96,
                     mean=ds.mean, std=ds.std)
loader.set_epoch(0)
for x, y in loader: ...   # x float32 (256, 1, 96, 96), y int64 (256,)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reslab.config import DATASETS
from reslab.data.cifar import load_cifar10, load_cifar100
from reslab.data.dataset import Dataset
from reslab.data.fashion_mnist import CLASSES, download, find_data_dir, load_fashion_mnist
from reslab.data.idx import read_idx, write_idx
from reslab.data.imagefolder import ImageFiles, export_png_folder, load_imagefolder, read_image
from reslab.data.loader import BatchLoader, LoaderSpec, split_train_val
from reslab.data.mnist import load_kmnist, load_mnist
from reslab.data.splits import Splits, folder_options, input_pipeline, make_loaders, make_splits
from reslab.data.synthetic import synthetic_dataset
from reslab.data.transforms import MEAN, STD, prepare_batch
from reslab.errors import ReslabError

_LOADERS: dict[str, Callable[..., Dataset]] = {
    "fashion-mnist": load_fashion_mnist,
    "mnist": load_mnist,
    "kmnist": load_kmnist,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "imagefolder": load_imagefolder,
    "synthetic": lambda data_dir=None, **options: synthetic_dataset(**options),  # generated: reads no folder
}
# the options each dataset takes (synthetic's are synthetic_dataset's keywords)
_OPTIONS = {
    name: [
        p.name
        for p in inspect.signature(synthetic_dataset if name == "synthetic" else fn).parameters.values()
        if p.kind is p.KEYWORD_ONLY
    ]
    for name, fn in _LOADERS.items()
}


def load_dataset(name: str, data_dir: str | Path | None = None, **options: Any) -> Dataset:
    """The dataset called `name` (one of DATASETS), found and verified, downloaded where it can be.

    `options` are the dataset's own keywords: download (the file datasets); image_size, in_chans, skip_bad_images,
    max_memory_bytes, num_workers, progress (imagefolder); synthetic_dataset's (synthetic). An option given as
    None counts as not given; one the dataset does not take is a ReslabError naming it.
    """
    if name not in _LOADERS:
        raise ReslabError(f"--dataset: expected one of {', '.join(DATASETS)}, found {name!r}")
    options = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(options) - set(_OPTIONS[name]))
    if unknown:
        flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise ReslabError(f"{flags}: not an option of --dataset {name} (its options: {', '.join(_OPTIONS[name])})")
    return _LOADERS[name](data_dir, **options)


__all__ = [
    "CLASSES",
    "DATASETS",
    "MEAN",
    "STD",
    "BatchLoader",
    "LoaderSpec",
    "Dataset",
    "ImageFiles",
    "Splits",
    "download",
    "export_png_folder",
    "find_data_dir",
    "folder_options",
    "input_pipeline",
    "load_dataset",
    "load_fashion_mnist",
    "load_imagefolder",
    "prepare_batch",
    "make_loaders",
    "make_splits",
    "read_idx",
    "read_image",
    "split_train_val",
    "synthetic_dataset",
    "write_idx",
]
