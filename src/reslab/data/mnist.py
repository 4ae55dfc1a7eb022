"""MNIST (LeCun et al. 1998) and Kuzushiji-MNIST (Clanuwat et al. 2018): the same IDX path as Fashion-MNIST.

File names, mirrors, class names and checksums are torchvision's (torchvision/datasets/mnist.py, `MNIST` and
`KMNIST`): it publishes the MD5 of each official .gz file, not of the decompressed content, so a .gz is verified
exactly and an uncompressed copy for structure only (reslab.data.idx_datasets says what that means).
"""

from __future__ import annotations

from pathlib import Path

from reslab.data import idx_datasets as idx
from reslab.data.dataset import Dataset
from reslab.data.idx_datasets import IdxFile, IdxSpec


def _files(md5s: tuple[str, str, str, str]) -> dict[str, IdxFile]:
    """The four MNIST-layout files (60,000 training and 10,000 test images of 28x28) with the MD5s of their .gz."""
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    shapes = ((60000, 28, 28), (60000,), (10000, 28, 28), (10000,))
    keys = ("train_images", "train_labels", "test_images", "test_labels")
    return {
        key: IdxFile(name, shape, gz_md5=md5) for key, name, shape, md5 in zip(keys, names, shapes, md5s, strict=True)
    }


MNIST = IdxSpec(
    name="mnist",
    title="MNIST",
    files=_files(
        (
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "d53e105ee54ea40749a09fcbcd1e9432",
            "9fb629c4189551a2d022fa330f9573f3",
            "ec29112dd5afa0611ce80d1b7f02629c",
        )
    ),
    classes=tuple("0123456789"),
    # the original site (yann.lecun.com) has refused downloads at times, so PyTorch's copy of the same files comes
    # first. Each file is verified by MD5, so a mirror cannot slip in other data.
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    mean=(0.1307,),  # the training set's, as in pytorch/examples mnist/main.py: Normalize((0.1307,), (0.3081,))
    std=(0.3081,),
    torchvision_name="MNIST",
)

KMNIST = IdxSpec(
    name="kmnist",
    title="Kuzushiji-MNIST",
    files=_files(
        (
            "bdb82020997e1d708af4cf47b453dcf7",
            "e144d726b3acfaa3e44228e80efcd344",
            "5c965bf0a639b31b8f53240b1b52f4d7",
            "7320c461ea6c1c855c0b718fb2a4b134",
        )
    ),
    # one hiragana character for each of the 10 rows of the syllabary, romanised as torchvision lists them
    classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    mirrors=("http://codh.rois.ac.jp/kmnist/dataset/kmnist/", "https://codh.rois.ac.jp/kmnist/dataset/kmnist/"),
    mean=None,  # no figure published with the data: measured on the training images at load
    std=None,
    torchvision_name="KMNIST",
)

SPECS = {"mnist": lambda: MNIST, "kmnist": lambda: KMNIST}  # read when called: tests swap MNIST and KMNIST
for _spec in SPECS.values():
    idx.register(_spec)


def load_mnist(data_dir: str | Path | None = None, *, download: bool = True) -> Dataset:
    """MNIST as uint8 tensors (N, 28, 28) with classes "0".."9"; where and how it is found: reslab.data.idx_datasets."""
    return idx.load_idx_dataset(MNIST, data_dir, download=download)


def load_kmnist(data_dir: str | Path | None = None, *, download: bool = True) -> Dataset:
    """Kuzushiji-MNIST as uint8 tensors (N, 28, 28), classes "o", "ki", ... "wo"; found as MNIST is."""
    return idx.load_idx_dataset(KMNIST, data_dir, download=download)
