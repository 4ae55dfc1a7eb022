"""Batched image transforms on tensors: no per-sample Python on the hot path.

Images are stored uint8, grayscale (B, H, W) or colour (B, C, H, W). Two training augmentations:
- the padded random crop and horizontal flip (`crop_flip`, CIFAR's 4-pixel crop of He et al. 2016): one gather for
  the whole uint8 batch, padding black (0) as torchvision's `RandomCrop(padding=p)` on a PIL image, before any resize
  (as the pipeline `RandomCrop(28, padding) -> Resize(96)`);
- the random resized crop and flip of ImageNet training (`resized_crop`, torchvision's `RandomResizedCrop`): the
  boxes are drawn as torchvision draws them, then one `grid_sample` cuts and resizes every box of the batch at once.
Then the batch becomes float, normalised per channel with the dataset's mean and std, and resized as a whole; random
erasing (`erase`, torchvision's `RandomErasing` after `Normalize`) then blanks one box of some images of the batch.
Every random draw comes from a CPU generator the caller seeds, so the same seed gives the same batch on any device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

# Fashion-MNIST training set (60,000 images), pixels scaled to [0, 1]: mean 0.28604, std 0.35302 (measured)
MEAN = 0.2860
STD = 0.3530


def _as_4d(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W) -> (B, 1, H, W) (a view); (B, C, H, W) as it is."""
    return images.unsqueeze(1) if images.dim() == 3 else images


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
    """Crop each image of (B, H, W) or (B, C, H, W) at (top, left) of its zero-padded copy and mirror it where
    `flip`; same shape. Every channel of an image gets the same crop.

    Two gathers for the whole batch: the H rows of each image, then its W columns (reversed where flipped).
    `top == left == padding` and no flip is the identity.
    """
    x = _as_4d(images)
    b, c, h, w = x.shape
    device = x.device
    padded = F.pad(x, (padding, padding, padding, padding)) if padding else x  # (B, C, H+2p, W+2p)
    top, left, flip = top.to(device), left.to(device), flip.to(device)
    rows = top[:, None] + torch.arange(h, device=device)  # (B, H)
    x = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * padding))  # (B, C, H, W+2p)
    cols = torch.arange(w, device=device).expand(b, w)
    cols = left[:, None] + torch.where(flip[:, None], w - 1 - cols, cols)  # (B, W)
    x = x.gather(3, cols[:, None, None, :].expand(b, c, h, w))
    return x[:, 0] if images.dim() == 3 else x


def resized_crop_params(
    batch_size: int,
    height: int,
    width: int,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = False,
    generator: torch.Generator,
    attempts: int = 10,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random boxes (top, left, h, w) and flips for a batch, drawn as torchvision's `RandomResizedCrop.get_params`.

    For each image: up to `attempts` tries of an area fraction in `scale` and a log-uniform aspect ratio in `ratio`,
    the first box that fits taken at a uniform position; when none fits, the centre crop of the whole image with its
    aspect ratio clamped to `ratio`. All tries of the batch are drawn at once (a fixed number of draws), so the boxes
    are a function of the generator's state alone.
    """
    g = generator
    area = height * width
    u_area, u_ratio = torch.rand(2, batch_size, attempts, generator=g, dtype=torch.float64)
    target = area * (scale[0] + (scale[1] - scale[0]) * u_area)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u_ratio)
    w = torch.sqrt(target * aspect).round().long()
    h = torch.sqrt(target / aspect).round().long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.long().argmax(1)  # the first try that fits (0 where none does: replaced below)
    pick = first[:, None]
    h, w = h.gather(1, pick)[:, 0], w.gather(1, pick)[:, 0]
    # a uniform position for the box: torch.randint(0, H - h + 1) as torchvision, from one uniform draw each
    u_top, u_left = torch.rand(2, batch_size, generator=g, dtype=torch.float64)
    top = (u_top * (height - h + 1)).floor().long()
    left = (u_left * (width - w + 1)).floor().long()
    # fallback: the whole image, its aspect ratio clamped into `ratio`, centred
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    none = ~fits.any(1)
    h, w = torch.where(none, fh, h), torch.where(none, fw, w)
    top, left = torch.where(none, (height - fh) // 2, top), torch.where(none, (width - fw) // 2, left)
    flip = torch.rand(batch_size, generator=g) < 0.5 if hflip else torch.zeros(batch_size, dtype=torch.bool)
    return top, left, h, w, flip


def resized_crop(
    images: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    h: torch.Tensor,
    w: torch.Tensor,
    flip: torch.Tensor,
    *,
    size: int,
) -> torch.Tensor:
    """Cut box (top, left, h, w) of each uint8 image, mirror it where `flip`, and resize it to (size, size):
    float32 (B, C, size, size) in [0, 255].

    One `grid_sample` for the batch: bilinear, align_corners=False, the sampling grid clamped to the box, which is
    `F.interpolate` of each cut box (bilinear, no antialiasing). torchvision resizes with antialiasing; the two
    differ only when a box is shrunk by more than about 2x (a large box of a large stored image), which a stored
    size near the model's input avoids.
    """
    x = _as_4d(images)
    b, c, height, width = x.shape
    device = x.device
    top, left, h, w, flip = (t.to(device, torch.float32) for t in (top, left, h, w, flip))
    # output coordinates u in [-1, 1] map to the box: x_in = (w / W) * u + (2 * left + w) / W - 1 (normalised)
    theta = torch.zeros(b, 2, 3, device=device)
    theta[:, 0, 0] = (w / width) * (1 - 2 * flip)  # a negative x scale mirrors the box
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [b, c, size, size], align_corners=False)  # (B, size, size, 2): x, y in [-1, 1]
    # sample no pixel outside the box: at its edges, clamp to the first and last pixel centres (as resizing the cut
    # box does) rather than blending in the neighbours beyond it
    for axis, start, length, full in ((0, left, w, width), (1, top, h, height)):
        lo = ((2 * start + 1) / full - 1)[:, None, None]
        hi = ((2 * (start + length) - 1) / full - 1)[:, None, None]
        grid[..., axis] = torch.minimum(torch.maximum(grid[..., axis], lo), hi)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def alternating_flips(base: torch.Tensor, epoch: int) -> torch.Tensor:
    """airbench's alternating flip (Jordan 2024, sec. 3.6): `base` is each image's random flip in epoch 0; every odd
    epoch flips exactly the images that the even epochs leave alone, so any two consecutive epochs show both sides of
    every image, where independent random flips show only one side to a quarter of them."""
    return base ^ bool(epoch % 2)


def erase_params(
    batch_size: int,
    height: int,
    width: int,
    *,
    p: float,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
    generator: torch.Generator,
    attempts: int = 10,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random boxes (top, left, h, w) to erase, drawn as torchvision's `RandomErasing.get_params` (its defaults:
    area fraction in `scale`, log-uniform aspect ratio in `ratio`, up to `attempts` tries for a box that fits), for
    a fraction `p` of the batch; h = w = 0 (nothing erased) for the others and where no try fits.

    All draws of the batch at once (a fixed number), so the boxes are a function of the generator's state alone.
    """
    g = generator
    erase = torch.rand(batch_size, generator=g) < p
    u_area, u_ratio = torch.rand(2, batch_size, attempts, generator=g, dtype=torch.float64)
    target = height * width * (scale[0] + (scale[1] - scale[0]) * u_area)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u_ratio)
    h = torch.sqrt(target * aspect).round().long()
    w = torch.sqrt(target / aspect).round().long()
    fits = (h < height) & (w < width)  # torchvision's condition: strictly smaller than the image
    pick = fits.long().argmax(1)[:, None]  # the first try that fits
    h, w = h.gather(1, pick)[:, 0], w.gather(1, pick)[:, 0]
    keep = erase & fits.any(1)
    h, w = torch.where(keep, h, 0), torch.where(keep, w, 0)
    u_top, u_left = torch.rand(2, batch_size, generator=g, dtype=torch.float64)
    top = (u_top * (height - h + 1)).floor().long()
    left = (u_left * (width - w + 1)).floor().long()
    return top, left, h, w


def erase(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Set box (top, left, h, w) of each image of a normalised float batch (B, C, H, W) to 0 (the dataset's mean,
    as torchvision's RandomErasing(value=0) after Normalize); every channel alike. Keeps the memory format."""
    b, _, height, width = x.shape
    device = x.device
    top, left, h, w = (t.to(device)[:, None] for t in (top, left, h, w))  # (B, 1)
    rows = torch.arange(height, device=device)[None]  # (1, H)
    cols = torch.arange(width, device=device)[None]
    in_rows = (rows >= top) & (rows < top + h)  # (B, H)
    in_cols = (cols >= left) & (cols < left + w)  # (B, W)
    mask = in_rows[:, None, :, None] & in_cols[:, None, None, :]  # (B, 1, H, W)
    return x.masked_fill(mask, 0.0)


def center_crop(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """The central (size, size) of each image of (B, [C,] H, W), placed as torchvision's `CenterCrop`; None or the
    full size is the identity."""
    h, w = images.shape[-2:]
    if size is None or (h, w) == (size, size):
        return images
    if size > min(h, w):
        raise ValueError(f"center_crop: {size}x{size} does not fit in images of {h}x{w}")
    top, left = int(round((h - size) / 2)), int(round((w - size) / 2))
    return images[..., top : top + size, left : left + size]


def standardize(x: torch.Tensor, mean: Sequence[float] = (MEAN,), std: Sequence[float] = (STD,)) -> torch.Tensor:
    """float (B, C, H, W) of pixels in [0, 255] -> (x / 255 - mean) / std per channel, in place where it can."""
    if len(mean) == 1 and len(std) == 1:
        # one channel: Python floats, the exact arithmetic (and bits) the grayscale pipeline has always had
        return (x * (1 / (255 * std[0]))).sub_(mean[0] / std[0])
    c = x.shape[1]
    if len(mean) != c or len(std) != c:
        raise ValueError(f"mean and std need {c} values (one per channel), got {len(mean)} and {len(std)}")
    scale = torch.tensor([1 / (255 * s) for s in std], dtype=x.dtype, device=x.device).view(1, c, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(mean, std, strict=True)], dtype=x.dtype, device=x.device)
    return (x * scale).sub_(shift.view(1, c, 1, 1))


def normalize(images: torch.Tensor, mean: Sequence[float] = (MEAN,), std: Sequence[float] = (STD,)) -> torch.Tensor:
    """uint8 (B, H, W) or (B, C, H, W) -> float32 (B, C, H, W), scaled to [0, 1] then standardised per channel
    (default: Fashion-MNIST's MEAN/STD)."""
    return standardize(_as_4d(images).float(), mean, std)


def resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Bilinear resize of a float (B, C, H, W) batch to (size, size); `None` or the same size leaves it alone."""
    if size is None or tuple(x.shape[-2:]) == (size, size):
        return x
    # antialias=False: the common case is upsampling (28 -> 96), where antialiasing changes nothing
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)


def prepare_batch(
    images: torch.Tensor,
    *,
    resize_to: int | None = None,
    channels_last: bool = False,
    mean: Sequence[float] = (MEAN,),
    std: Sequence[float] = (STD,),
    crop: int | None = None,
) -> torch.Tensor:
    """uint8 images (B, [C,] H, W) -> the model's input: float32 (B, C, H', W'), centre-cropped to `crop`,
    normalised with `mean`/`std`, resized, in the asked layout.

    What evaluation and prediction use; `BatchLoader` adds the random crop and flip before this for training.
    """
    x = resize(normalize(center_crop(images, crop), mean, std), resize_to)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images (N, [C,] H, W) as pixels in [0, 1], rounded to 4 decimals.

    Summed in float64 over chunks, so 50,000 colour images need no float copy of the set. A channel that never
    varies gets std 1/255 rather than 0, which would divide by zero.
    """
    x = _as_4d(images)
    c = x.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    for i in range(0, len(x), chunk):
        part = x[i : i + chunk].to(torch.float64)
        total += part.sum((0, 2, 3))
        squares += part.square().sum((0, 2, 3))
    n = max(1, len(x) * x.shape[2] * x.shape[3])
    mean = total / n / 255
    std = (squares / n / 255**2 - mean.square()).clamp_min(0).sqrt().clamp_min(1 / 255)
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())
