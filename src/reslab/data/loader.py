"""Batches from a uint8 dataset (in memory, or streamed from image files): seeded shuffling, sharding across
processes, batched augmentation.

Nothing here keeps hidden state between batches: the order of an epoch is a function of (seed, epoch) and the
augmentation of a batch a function of (seed, epoch, step, rank). A run resumed at step k of an epoch therefore sees
exactly the batches an uninterrupted run would have, without saving any loader state in the checkpoint.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from reslab.data.imagefolder import ImageFiles, decode_batches
from reslab.data.transforms import (
    MEAN,
    STD,
    alternating_flips,
    crop_flip,
    crop_flip_params,
    erase,
    erase_params,
    prepare_batch,
    resize,
    resized_crop,
    resized_crop_params,
    standardize,
)
from reslab.errors import ReslabError


def _seed(*words: int | str) -> int:
    """A 64-bit seed that depends on every word (and their order): seeds of nearby (epoch, step) are unrelated."""
    digest = hashlib.sha256(":".join(map(str, words)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # torch seeds are < 2**63 for every generator kind


def split_train_val(
    images: torch.Tensor, labels: torch.Tensor, val_size: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hold `val_size` random items out of a training set: (train_x, train_y, val_x, val_y), fixed by `seed`.

    The validation set is for choosing hyperparameters; the test set only reports. Both parts keep the original order.
    """
    n = len(images)
    if not 0 <= val_size < n:
        raise ReslabError(
            f"--val-size: expected 0 to {n - 1:,} images (the training set has {n:,}), found {val_size:,}"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_seed("val-split", seed)))
    val_idx, train_idx = perm[:val_size].sort().values, perm[val_size:].sort().values
    return images[train_idx], labels[train_idx], images[val_idx], labels[val_idx]


@dataclass(frozen=True)
class LoaderSpec:
    """What batches a BatchLoader makes: their size, order and augmentation (training), and the preprocessing of
    every image; see BatchLoader. Where they come from (rank, world size, device) is the loader's own."""

    batch_size: int
    train: bool
    seed: int = 0
    crop_padding: int = 0
    hflip: bool = False
    hflip_mode: str = "random"
    random_erasing: float = 0.0
    resize: int | None = None
    progressive_resize: int | None = None  # training: the size of the first `progressive_epochs` epochs
    progressive_epochs: int = 0
    random_resized_crop: bool = False
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    crop_size: int | None = None
    mean: Sequence[float] = (MEAN,)
    std: Sequence[float] = (STD,)
    channels_last: bool = False
    num_workers: int | None = None  # for streamed images: None, the ImageFiles' own

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.crop_padding < 0:
            raise ValueError(f"bad loader arguments: batch_size={self.batch_size}, crop_padding={self.crop_padding}")
        if self.hflip_mode not in ("random", "alternate") or not 0 <= self.random_erasing <= 1:
            raise ValueError(
                f"bad loader arguments: hflip_mode={self.hflip_mode!r}, random_erasing={self.random_erasing}"
            )
        if self.random_resized_crop and self.crop_padding:
            raise ValueError("random_resized_crop and crop_padding are two different crops: choose one")
        if len(self.std) != len(self.mean):
            raise ValueError(f"mean and std need one value per channel each, got {len(self.mean)} and {len(self.std)}")


class BatchLoader:
    """Batches of (x float32 (B, C, H, W) normalised, on `device`; y int64 (B,)) from uint8 images (N, H, W)
    (grayscale, C = 1) or (N, C, H, W), as a LoaderSpec says (its fields below).

    train=True: each epoch shuffles with (seed, epoch); rank r of `world_size` takes the r-th of `world_size` equal
    shares of the shuffled set (the remainder, < world_size items, is dropped) and the last partial batch is dropped,
    so every rank runs the same number of full steps. A share smaller than one batch becomes a single batch.
    Augmentation, on the stored uint8 images, one of:
    - random crop with `crop_padding` zero padding and random horizontal flips (`hflip`), before `resize`: the
      Fashion-MNIST recipe and CIFAR's 4-pixel crop (He et al. 2016, section 4.2);
    - `random_resized_crop`: torchvision's RandomResizedCrop (`rrc_scale`, `rrc_ratio`) to `crop_size` (default:
      the stored size), with `hflip`: ImageNet training.
    Otherwise (the padded crop, no augmentation, and always with train=False) `crop_size` takes the centre crop:
    Resize(256) + CenterCrop(224) for images stored at 256. Then normalisation with the dataset's per-channel `mean`
    and `std` (default Fashion-MNIST's), then `resize` (training: `progressive_resize` in the first
    `progressive_epochs` epochs), then (training) `random_erasing`: the probability that an image gets one random box
    set to the mean (torchvision's RandomErasing). `hflip_mode="alternate"` flips each image at random (fixed by
    `seed`) in epoch 0 and then in every other epoch (airbench); "random": p=0.5 each time.

    train=False: no shuffle, no augmentation, nothing dropped: rank r gets the r-th contiguous shard, and the shards
    partition the set exactly, so correct/total summed over ranks equals a single-process evaluation. Ranks may
    then run different numbers of steps (by at most one).

    `images` may be `ImageFiles` (a folder too large for memory): the same batches, decoded from disk by
    `num_workers` processes (default: the ImageFiles' own) a few batches ahead; order and augmentation are the
    same functions of (seed, epoch, step, rank), so resume is as exact.
    """

    def __init__(
        self,
        images: torch.Tensor | ImageFiles,
        labels: torch.Tensor,
        spec: LoaderSpec | None = None,
        *,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        **options,
    ):
        """`spec` says what batches to make; its fields may instead be given as keywords (`options`)."""
        if spec is None:
            spec = LoaderSpec(**options)
        elif options:
            raise TypeError(f"BatchLoader: give a LoaderSpec or its fields, not both ({', '.join(options)})")
        if images.dtype != torch.uint8 or images.dim() not in (3, 4):
            shape = tuple(images.shape)
            raise ValueError(f"images must be uint8 (N, H, W) or (N, C, H, W), got {images.dtype} {shape}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
        if not 0 <= rank < world_size:
            raise ValueError(f"bad loader arguments: {rank=}, {world_size=}")
        h, w = images.shape[-2:]
        if spec.crop_size is not None and not 0 < spec.crop_size <= min(h, w):
            raise ValueError(f"crop_size must be in [1, {min(h, w)}] for images of {h}x{w}, got {spec.crop_size}")
        c = 1 if images.dim() == 3 else images.shape[1]
        if len(spec.mean) not in (1, c):
            raise ValueError(
                f"mean and std need {c} values (one per channel), got {len(spec.mean)} and {len(spec.std)}"
            )
        self.spec = spec
        self.device = torch.device(device)
        self.streamed = isinstance(images, ImageFiles)
        # an in-memory set lives on the device once (47 MB for Fashion-MNIST); batches are gathered there
        self.images = images if self.streamed else images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self.num_workers = 0
        if self.streamed:
            self.num_workers = images.num_workers if spec.num_workers is None else spec.num_workers
        self.train, self.seed, self.rank, self.world_size = spec.train, spec.seed, rank, world_size
        self.crop_padding, self.hflip, self.resize = spec.crop_padding, spec.hflip, spec.resize
        self.progressive_resize = spec.progressive_resize if spec.train and spec.progressive_epochs else None
        self.progressive_epochs = spec.progressive_epochs
        self.channels_last, self.crop_size, self.random_erasing = (
            spec.channels_last,
            spec.crop_size,
            spec.random_erasing,
        )
        self.random_resized_crop, self.rrc_scale, self.rrc_ratio = (
            spec.random_resized_crop,
            spec.rrc_scale,
            spec.rrc_ratio,
        )
        self.mean, self.std = tuple(spec.mean), tuple(spec.std)
        self.epoch = 0
        n = len(images)
        self._base_flips = None  # each image's flip in epoch 0 (alternating flips): a function of the seed alone
        if spec.train and spec.hflip and spec.hflip_mode == "alternate":
            g = torch.Generator().manual_seed(_seed("flip", spec.seed))
            self._base_flips = (torch.rand(n, generator=g) < 0.5).to(self.device)
        if spec.train:
            self.num_samples = n // world_size
            self.batch_size = min(spec.batch_size, self.num_samples) or spec.batch_size
            self._steps = self.num_samples // self.batch_size
            self._start = rank * self.num_samples
        else:
            self._start, end = rank * n // world_size, (rank + 1) * n // world_size
            self.num_samples = end - self._start
            self.batch_size = spec.batch_size
            self._steps = -(-self.num_samples // spec.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order and augmentation the next iteration follows (training only matters)."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Steps per epoch for this rank."""
        return self._steps

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(C, H, W) of the batches this loader yields (a training loader: after its progressive epochs)."""
        return self.input_size_at(self.progressive_epochs)  # without progressive epochs: every epoch's

    def input_size_at(self, epoch: int) -> tuple[int, int, int]:
        """(C, H, W) of the batches of epoch `epoch`."""
        shape = self.images.shape
        c = 1 if len(shape) == 3 else shape[1]
        h, w = shape[-2:]
        if self.crop_size is not None:
            h = w = self.crop_size
        size = self._resize_at(epoch)
        return (c, h, w) if size is None else (c, size, size)

    @property
    def input_sizes(self) -> tuple[tuple[int, int, int], ...]:
        """Every (C, H, W) this loader yields: with `progressive_resize`, its first epochs' and then the rest's."""
        return tuple(dict.fromkeys([self.input_size_at(0), self.input_size]))

    def _resize_at(self, epoch: int) -> int | None:
        return self.progressive_resize if self.progressive_resize and epoch < self.progressive_epochs else self.resize

    def at_full_size(self) -> BatchLoader:
        """A shallow copy (its own epoch) whose every epoch is at `resize`: the images of training at the size
        evaluation uses (precise BatchNorm statistics, a whitened stem)."""
        full = copy.copy(self)
        full.progressive_resize = None
        return full

    def _indices(self) -> torch.Tensor:
        """This rank's items for the current epoch, in order, on the device."""
        n = len(self.images)
        if not self.train:
            return torch.arange(self._start, self._start + self.num_samples, device=self.device)
        g = torch.Generator().manual_seed(_seed("order", self.seed, self.epoch))
        perm = torch.randperm(n, generator=g)
        return perm[self._start : self._start + self.num_samples].to(self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def _uint8_batches(
        self, indices: torch.Tensor, step: int
    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(step, item indices, uint8 images, labels) of each batch from `step` on: gathered in memory or decoded
        from disk."""
        steps = range(step, len(self))
        chunks = [indices[s * self.batch_size : (s + 1) * self.batch_size] for s in steps]
        if not self.streamed:
            for s, idx in zip(steps, chunks, strict=True):
                yield s, idx, self.images[idx], self.labels[idx]
            return
        batches = [idx.tolist() for idx in chunks]
        decoded = decode_batches(self.images, batches, num_workers=self.num_workers)
        for s, idx, x in zip(steps, chunks, decoded, strict=True):
            yield s, idx, x.to(self.device, non_blocking=True), self.labels[idx]

    def _erase(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """Random erasing of a finished training batch, from its own generator: the crops and flips stay the draws
        they are without it."""
        if not (self.train and self.random_erasing > 0):
            return x
        g = torch.Generator().manual_seed(_seed("erase", self.seed, self.epoch, step, self.rank))
        return erase(x, *erase_params(len(x), *x.shape[-2:], p=self.random_erasing, generator=g))

    def iter_from(self, step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The current epoch's batches from `step` on: the same tensors as the tail of a full iteration."""
        if not 0 <= step <= len(self):
            raise ValueError(f"step must be in [0, {len(self)}], got {step}")
        indices = self._indices()
        rrc = self.train and self.random_resized_crop
        augment = self.train and (self.crop_padding > 0 or self.hflip)
        random_flips = self.hflip and self._base_flips is None
        size = self._resize_at(self.epoch)
        for s, idx, x, y in self._uint8_batches(indices, step):  # x: (B, [C,] H, W) uint8
            if rrc:
                g = torch.Generator().manual_seed(_seed("augment", self.seed, self.epoch, s, self.rank))
                h, w = x.shape[-2:]
                *box, flip = resized_crop_params(
                    len(x), h, w, scale=self.rrc_scale, ratio=self.rrc_ratio, hflip=random_flips, generator=g
                )
                if self._base_flips is not None:
                    flip = alternating_flips(self._base_flips[idx], self.epoch)
                x = resized_crop(x, *box, flip, size=self.crop_size or h)  # float (B, C, S, S) in [0, 255]
                x = resize(standardize(x, self.mean, self.std), size)
                x = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
                yield self._erase(x, s), y
                continue
            if augment:
                g = torch.Generator().manual_seed(_seed("augment", self.seed, self.epoch, s, self.rank))
                top, left, flip = crop_flip_params(len(x), padding=self.crop_padding, hflip=random_flips, generator=g)
                if self._base_flips is not None:
                    flip = alternating_flips(self._base_flips[idx], self.epoch)
                x = crop_flip(x, top, left, flip, padding=self.crop_padding)
            x = prepare_batch(
                x,
                resize_to=size,
                channels_last=self.channels_last,
                mean=self.mean,
                std=self.std,
                crop=self.crop_size,
            )
            yield self._erase(x, s), y
