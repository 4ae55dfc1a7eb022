"""The three splits a run works with: training, validation (held out of the training set) and test."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from reslab.config import TrainConfig
from reslab.data.dataset import Dataset
from reslab.data.loader import BatchLoader, LoaderSpec, split_train_val
from reslab.errors import ReslabError

Split = tuple[torch.Tensor, torch.Tensor]  # (uint8 images, int64 labels)

# the file datasets hold out 5,000 training images (Fashion-MNIST, MNIST, KMNIST: of 60,000; CIFAR: of 50,000, the
# 45k/5k split of He et al. 2016); others a tenth of theirs
FIXED_VAL_SIZE = {"fashion-mnist": 5000, "mnist": 5000, "kmnist": 5000, "cifar10": 5000, "cifar100": 5000}


# an image folder without pretrained weights is stored at the CIFAR networks' size
DEFAULT_IMAGE_SIZE = 32


@dataclass(frozen=True)
class Splits:
    train: Split
    val: Split | None  # None with --val-size 0
    test: Split | None  # None when the data has no test split (an image folder without DIR/test)

    def get(self, name: str) -> Split | None:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def sizes(self) -> str:
        """'55,000 train, 5,000 val, 10,000 test'."""
        parts = [(n, s) for n, s in (("train", self.train), ("val", self.val), ("test", self.test)) if s is not None]
        return ", ".join(f"{len(s[0]):,} {n}" for n, s in parts)


def default_val_size(config: TrainConfig, num_train: int) -> int:
    if config.val_size is not None:
        return config.val_size
    return FIXED_VAL_SIZE.get(config.dataset, num_train // 10)


def make_splits(data: Dataset, config: TrainConfig) -> Splits:
    """The validation images are the data's own validation split (an image folder's DIR/val) or are held out of the
    training set, fixed by `config.seed`; `config.train_subset` then keeps the first N of the rest. The test set
    only reports: nothing is chosen on it."""
    train_x, train_y = data.train_images, data.train_labels
    val = None
    if data.val_images is not None:
        if config.val_size:
            raise ReslabError(
                f"--val-size: {data.source} has its own validation split ({len(data.val_labels):,} images); "
                "leave --val-size unset (or 0 to train without one)"
            )
        if config.val_size is None:
            val = (data.val_images, data.val_labels)
    else:
        val_size = default_val_size(config, len(train_x))
        if val_size > 0:
            train_x, train_y, val_x, val_y = split_train_val(train_x, train_y, val_size, seed=config.seed)
            val = (val_x, val_y)
    if config.train_subset is not None:
        train_x, train_y = train_x[: config.train_subset], train_y[: config.train_subset]
    test = (data.test_images, data.test_labels) if data.test_images is not None else None
    return Splits(train=(train_x, train_y), val=val, test=test)


def make_loaders(
    splits: Splits,
    config: TrainConfig,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    crop_size: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    eval_batch_size: int | None = None,
) -> dict[str, BatchLoader]:
    """{"train", "val" and "test" where they exist} -> BatchLoader as `config` says: augmentation only on "train",
    the same normalisation (`mean`, `std`: per channel, of pixels in [0, 1]) and crop size (a random crop in
    training, the centre one in evaluation) everywhere."""
    if len(splits.train[0]) < world_size:
        raise ReslabError(
            f"--train-subset: {len(splits.train[0])} training images cannot be shared by {world_size} processes"
        )
    common = dict(resize=config.resize, crop_size=crop_size, mean=mean, std=std, channels_last=config.channels_last)
    where = dict(rank=rank, world_size=world_size, device=device)
    train = LoaderSpec(
        batch_size=config.batch_size,
        train=True,
        seed=config.seed,
        crop_padding=config.crop_padding,
        hflip=config.hflip,
        random_resized_crop=config.random_resized_crop,
        hflip_mode=config.hflip_mode,
        random_erasing=config.random_erasing,
        progressive_resize=config.progressive_resize,
        progressive_epochs=min(config.progressive_epochs, config.epochs - 1),  # the last epoch at the size evaluated
        **common,
    )
    loaders = {"train": BatchLoader(*splits.train, train, **where)}
    eval_batch = eval_batch_size or max(2 * config.batch_size, 256)  # no gradients to keep: twice the batch fits
    for name in ("val", "test"):
        split = splits.get(name)
        if split is not None:
            loaders[name] = BatchLoader(*split, LoaderSpec(batch_size=eval_batch, train=False, **common), **where)
    return loaders


def folder_options(config: TrainConfig, preprocess: dict[str, Any] | None) -> dict[str, Any]:
    """load_dataset's options for config.dataset: an image folder is decoded at the weights' resize (or
    --image-size, or 32), in --in-chans channels (default: the weights', else RGB)."""
    if config.dataset != "imagefolder":
        for flag, value in (("--image-size", config.image_size), ("--skip-bad-images", config.skip_bad_images)):
            if value:
                raise ReslabError(f"{flag}: an option of --dataset imagefolder only, not of {config.dataset}")
        return {}
    size = config.image_size or (preprocess or {}).get("resize") or DEFAULT_IMAGE_SIZE
    in_chans = config.in_chans or (1 if (preprocess or {}).get("channel_order") == "gray" else 3)
    return {"image_size": size, "in_chans": in_chans, "skip_bad_images": config.skip_bad_images or None}


def input_pipeline(
    config: TrainConfig, data: Dataset, preprocess: dict[str, Any] | None
) -> tuple[tuple[float, ...], tuple[float, ...], int | None]:
    """(mean, std, crop size) the loaders use: the weights' normalisation where they record one for these channels
    (else the dataset's), and the weights' crop on an image folder (or --crop-size)."""
    mean, std = data.mean, data.std
    if preprocess is not None and len(preprocess.get("mean", ())) == data.in_chans:
        if preprocess.get("channel_order") == "bgr" or float(preprocess.get("value_scale", 1.0)) != 1.0:
            raise ReslabError(
                "these weights take BGR images in 0-255 (Caffe's); reslab trains and evaluates on RGB images in "
                "[0, 1]: use torchvision's or timm's weights of the same network (`reslab predict` takes Caffe's)"
            )
        mean, std = tuple(preprocess["mean"]), tuple(preprocess["std"])
    crop = config.crop_size
    if crop is None and config.dataset == "imagefolder" and preprocess is not None:
        crop = preprocess.get("crop")
    h, w = data.image_size
    if crop is not None and crop > min(h, w):
        raise ReslabError(f"--crop-size: expected at most the stored image size {min(h, w)}, got {crop}")
    return tuple(mean), tuple(std), crop
