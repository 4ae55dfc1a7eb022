"""Fashion-MNIST (Xiao et al. 2017): the four IDX files, found, verified exactly, downloaded if need be.

The machinery is the MNIST family's (reslab.data.idx_datasets); this module holds Fashion-MNIST's facts. Search
order: a folder the user names (`--data-dir`, else $RESLAB_DATA; lacking the files there is an error), else the user
cache (~/.cache/reslab/fashion-mnist), then Debian's `dataset-fashion-mnist` package (/usr/share/datasets/
fashion-mnist); where none has all four files they are downloaded into the cache. Every file is checked before use:
magic number, shape, exact length, label range, and the SHA-256 of its *decompressed* content, so a re-compressed
copy (Debian's) passes and a damaged one does not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from reslab.data import idx_datasets as idx
from reslab.data.dataset import Dataset
from reslab.data.download import ENV_VAR, cache_root
from reslab.data.idx_datasets import IdxFile, IdxSpec
from reslab.data.transforms import MEAN, STD

__all__ = ["CLASSES", "ENV_VAR", "FILES", "IdxFile", "download", "find_data_dir", "load_fashion_mnist", "spec"]

CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian/Ubuntu package `dataset-fashion-mnist`
# The official location (github.com/zalandoresearch/fashion-mnist, README "Get the Data"); the repository itself
# holds the same files. Each download is verified by hash, so a mirror cannot slip in different data.
MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)

FILES = {
    "train_images": IdxFile(
        "train-images-idx3-ubyte", (60000, 28, 28), "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
    ),
    "train_labels": IdxFile(
        "train-labels-idx1-ubyte", (60000,), "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
    ),
    "test_images": IdxFile(
        "t10k-images-idx3-ubyte", (10000, 28, 28), "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
    ),
    "test_labels": IdxFile(
        "t10k-labels-idx1-ubyte", (10000,), "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
    ),
}


def cache_dir() -> Path:
    return cache_root() / "fashion-mnist"


@idx.register
def spec() -> IdxSpec:
    """Fashion-MNIST's spec, from this module's names when called (so that tests can swap FILES, MIRRORS, ...)."""
    return IdxSpec(
        name="fashion-mnist",
        title="Fashion-MNIST",
        files=FILES,
        classes=CLASSES,
        mirrors=MIRRORS,
        mean=(MEAN,),
        std=(STD,),
        torchvision_name="FashionMNIST",
        debian_dir=DEBIAN_DIR,
        debian_package="dataset-fashion-mnist",
        cache=cache_dir(),
        download_command="reslab data",
    )


def find_data_dir(data_dir: str | Path | None = None) -> Path | None:
    """The folder that holds all four IDX files (.gz or not), in search order; None if none does.

    A folder the user named (`data_dir`, else $RESLAB_DATA) that lacks them is a DataError naming it and what is
    missing. Only presence is checked here; `load_fashion_mnist` verifies the content.
    """
    return idx.find_folder(spec(), data_dir)


def verify_file(path: str | Path, f: IdxFile) -> np.ndarray:
    """Read and verify one IDX file (gzip or not); DataError names the file, what is wrong, and what to do."""
    return idx.verify_file(path, f, spec())[0]


def download(folder: str | Path | None = None, *, mirrors: tuple[str, ...] | None = None) -> Path:
    """Download whichever of the four files `folder` (default: the cache) lacks, verifying each; returns the folder.

    Safe to run from several processes at once (each writes its own temporary file and renames it into place).
    """
    return idx.download(spec(), folder, mirrors=mirrors)


def load_fashion_mnist(data_dir: str | Path | None = None, *, download: bool = True) -> Dataset:
    """Fashion-MNIST as uint8 tensors (N, 28, 28), verified against the official files.

    Looks where the module docstring says; downloads into the cache where no folder has the files (unless
    `download=False`). Raises DataError, naming the folder or file and what is wrong, for anything missing,
    truncated or corrupt.
    """
    return idx.load_idx_dataset(spec(), data_dir, download=download)


def fashion_mnist_preprocess(in_chans: int = 1) -> dict[str, Any]:
    """Fashion-MNIST's default preprocessing, written out in full: what reslab.predict does to an image for a
    checkpoint without a "preprocess" entry, and what an exported file of such a checkpoint records."""
    return {
        "mean": [MEAN] * in_chans,
        "std": [STD] * in_chans,
        "value_scale": 1.0,
        "channel_order": "gray" if in_chans == 1 else "rgb",
        "resize": None,
        "crop": None,
        "interpolation": "bilinear",
        "style": "fashion-mnist",
    }
