"""Batched image transforms on tensors: no per-sample Python on the hot path.

Random crop and horizontal flip act on the stored uint8 images (B, H, W) with one gather, so padding is black (0),
as torchvision's `RandomCrop(padding=p)` on a PIL image. They happen before any resize, as in the pipeline
`RandomCrop(28, padding) -> Resize(96)`. Then the batch becomes float, normalised, and resized as a whole.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Fashion-MNIST training set (60,000 images), pixels scaled to [0, 1]: mean 0.28604, std 0.35302 (measured)
MEAN = 0.2860
STD = 0.3530


def crop_flip_params(
    batch_size: int, *, padding: int, hflip: bool, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random (top, left, flip) for a batch: offsets in [0, 2*padding] into the padded image, flip with p=0.5.

    Drawn on the CPU from `generator`, so the same generator state gives the same augmentation on any device.
    """
    top = torch.randint(0, 2 * padding + 1, (batch_size,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (batch_size,), generator=generator)
    flip = torch.rand(batch_size, generator=generator) < 0.5 if hflip else torch.zeros(batch_size, dtype=torch.bool)
    return top, left, flip


def crop_flip(
    images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor, *, padding: int
) -> torch.Tensor:
    """Crop each image of (B, H, W) at (top, left) of its zero-padded copy and mirror it where `flip`; same shape.

    Two gathers for the whole batch: the H rows of each image, then its W columns (reversed where flipped).
    `top == left == padding` and no flip is the identity.
    """
    b, h, w = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images  # (B, H+2p, W+2p)
    top, left, flip = top.to(device), left.to(device), flip.to(device)
    rows = top[:, None] + torch.arange(h, device=device)  # (B, H)
    x = padded.gather(1, rows[:, :, None].expand(b, h, w + 2 * padding))  # (B, H, W+2p)
    cols = torch.arange(w, device=device).expand(b, w)
    cols = left[:, None] + torch.where(flip[:, None], w - 1 - cols, cols)  # (B, W)
    return x.gather(2, cols[:, None, :].expand(b, h, w))


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W) or (B, C, H, W) -> float32 (B, C, H, W), scaled to [0, 1] then standardised with MEAN/STD."""
    x = images.unsqueeze(1) if images.dim() == 3 else images
    return (x.float() * (1 / (255 * STD))).sub_(MEAN / STD)


def resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Bilinear resize of a float (B, C, H, W) batch to (size, size); `None` or the same size leaves it alone."""
    if size is None or tuple(x.shape[-2:]) == (size, size):
        return x
    # antialias=False: the common case is upsampling (28 -> 96), where antialiasing changes nothing
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)


def prepare_batch(images: torch.Tensor, *, resize_to: int | None = None, channels_last: bool = False) -> torch.Tensor:
    """uint8 images (B, H, W) -> the model's input: float32 (B, 1, H', W'), normalised, resized, in the asked layout.

    What evaluation and prediction use; `BatchLoader` adds the random crop and flip before this for training.
    """
    x = resize(normalize(images), resize_to)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
