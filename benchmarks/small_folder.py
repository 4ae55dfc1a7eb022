"""The small image folder of issue 22: 900 training and 300 validation PNGs of three Fashion-MNIST classes at 40x40.

    PYTHONPATH=src python benchmarks/small_folder.py DIR [--classes 0,1,2] [--per-class-train 300] [--per-class-val 100]
    reslab train --dataset imagefolder --data-dir DIR --model resnet8

A new user's first folder: few images, the default recipe's 3 epochs of 7 steps at lr 0.4. Without precise
BatchNorm statistics its validation accuracy was 0.337 (every image predicted as one class); see docs/precise-bn.md.
The images are the first ones of each class in Fashion-MNIST's training file (train/) and test file (val/), each
resized from 28x28 to 40x40 by Pillow (bilinear), so the folder is the same on every machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from reslab.data import CLASSES, load_fashion_mnist


def make_folder(folder: Path, *, classes: list[int], per_class_train: int, per_class_val: int, size: int = 40) -> None:
    data = load_fashion_mnist(None)
    for split, images, labels, per_class in (
        ("train", data.train_images, data.train_labels, per_class_train),
        ("val", data.test_images, data.test_labels, per_class_val),
    ):
        for c in classes:
            out = folder / split / CLASSES[c].replace("/", "_")
            out.mkdir(parents=True, exist_ok=True)
            idx = (labels == c).nonzero()[:per_class, 0]
            for i in idx.tolist():
                a = np.ascontiguousarray(images[i].numpy())
                Image.fromarray(a).resize((size, size), Image.Resampling.BILINEAR).save(out / f"{i:05d}.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--classes", default="0,1,2", help="Fashion-MNIST class indices (default: 0,1,2)")
    p.add_argument("--per-class-train", type=int, default=300)
    p.add_argument("--per-class-val", type=int, default=100)
    a = p.parse_args()
    classes = [int(c) for c in a.classes.split(",")]
    make_folder(a.folder, classes=classes, per_class_train=a.per_class_train, per_class_val=a.per_class_val)
    n_train, n_val = len(classes) * a.per_class_train, len(classes) * a.per_class_val
    print(f"{a.folder}: {n_train} training and {n_val} validation PNGs")


if __name__ == "__main__":
    main()
