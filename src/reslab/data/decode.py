"""One decoder for an image file, used by training (image folders) and by `reslab predict` alike, so that the model
sees in prediction exactly the tensor it was trained and evaluated on.

    im = open_upright("photo.jpg", draft=("RGB", 256))   # decoded, upright (EXIF orientation applied)
    t = natural_tensor(im, "RGB", resize=256, crop=224)    # uint8 (3, 224, 224)

- EXIF orientation (phone photos store their rotation there) is applied, as PIL.ImageOps.exif_transpose does.
- 16-bit and 32-bit grayscale ("I;16", "I", "F") are scaled to 8 bits, not clipped (Pillow's own conversion to "L"
  clips every value above 255 to white).
- Palette images are expanded through their palette; alpha is dropped (the colour under a transparent pixel is
  kept), as torchvision's loader (`Image.convert("RGB")`) does, which the pretrained weights were trained with.
- A JPEG much larger than the target is decoded at 1/2, 1/4 or 1/8 scale (Pillow's `draft`), never below the target
  on either side: most of the decoding time saved, the pixels slightly different from a full decode, and the same
  in training and prediction because both come through here.
- Resize of the shorter side, then the centre crop: torchvision's `Resize(resize)` + `CenterCrop(crop)` on a PIL
  image (the longer side int(resize * long / short); zero padding where the image is smaller than the crop).

Pillow's errors pass through: each caller words them for its user (a dataset file, an image to predict).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that undoes it (as PIL.ImageOps.exif_transpose)
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


def open_image(source: str | Path | Any, *, draft: tuple[str | None, int] | None = None) -> tuple[Image.Image, int]:
    """(the image file, or PIL image, decoded; its EXIF orientation, 1 = upright). `draft` (mode or None for the
    file's own, size): a JPEG may be decoded at reduced scale while staying at least `size` pixels on each side."""
    with warnings.catch_warnings():
        # Pillow's notes on palettes and EXIF are not the user's concern; between its decompression-bomb warning and
        # error limits (89M..179M pixels) callers shrink early, so that warning is noise too
        warnings.simplefilter("ignore")
        im = source if isinstance(source, Image.Image) else Image.open(source)
        orientation = im.getexif().get(EXIF_ORIENTATION) or 1
        if draft is not None:
            mode, size = draft
            im.draft(mode or im.mode, (size, size))
        im.load()
    return im, orientation


def upright(im: Image.Image, orientation: int) -> Image.Image:
    """The image as it is meant to be seen: its EXIF `orientation` undone (phone photos store their rotation)."""
    return im.transpose(TRANSPOSE[orientation]) if orientation in TRANSPOSE else im


def open_upright(source: str | Path | Any, *, draft: tuple[str | None, int] | None = None) -> Image.Image:
    """open_image, turned upright."""
    return upright(*open_image(source, draft=draft))


def to_8bit(im: Image.Image) -> Image.Image:
    """16/32-bit integer and float grayscale scaled to "L" (not clipped); a 1-bit image as "L"; others unchanged."""
    if im.mode == "1":
        return im.convert("L")
    if not (im.mode.startswith("I") or im.mode == "F"):
        return im
    a = np.asarray(im, dtype=np.float64)
    if im.mode.startswith("I;16"):
        top = 65535.0
    elif im.mode == "F" and a.size and a.max() <= 1:
        top = 1.0  # float images in [0, 1]
    else:
        top = 65535.0 if a.size and a.max() > 255 else 255.0  # "I": 16-bit data widened, or 8-bit values
    return Image.fromarray(np.clip(a * (255.0 / top), 0, 255).round().astype(np.uint8), mode="L")


def natural_tensor(
    im: Image.Image, mode: str, *, resize: int | None, crop: int | None, interpolation: str = "bilinear"
) -> torch.Tensor:
    """An upright PIL image -> uint8 (C, crop, crop) in `mode` ("L": C = 1, or "RGB"): the shorter side resized to
    `resize` (None: kept), then the centre `crop` (None: all of it), as torchvision's Resize + CenterCrop."""
    im = to_8bit(im).convert(mode)  # alpha and palette transparency dropped, as torchvision's loader does
    if resize:
        w, h = im.size
        new = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
        if new != (w, h):
            im = im.resize(new, RESAMPLE.get(interpolation, Image.Resampling.BILINEAR))
    a = np.asarray(im, dtype=np.uint8)
    t = torch.from_numpy(a.copy()).unsqueeze(0) if a.ndim == 2 else torch.from_numpy(a.copy()).permute(2, 0, 1)
    if crop:
        _, h, w = t.shape
        if h < crop or w < crop:  # as torchvision's center_crop: pad with zeros first
            ph, pw = max(crop - h, 0), max(crop - w, 0)
            t = torch.nn.functional.pad(t, (pw // 2, (pw + 1) // 2, ph // 2, (ph + 1) // 2))
            _, h, w = t.shape
        top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
        t = t[:, top : top + crop, left : left + crop]
    return t.contiguous()


def decode_natural(
    source: str | Path | Any, mode: str, *, resize: int | None, crop: int | None, interpolation: str = "bilinear"
) -> torch.Tensor:
    """open_upright + natural_tensor: the one path from an image file to the uint8 (C, crop, crop) a natural-image
    model takes, for training and prediction alike (a JPEG drafted at the resize, or the crop without one)."""
    size = resize or crop
    im = open_upright(source, draft=(mode, size) if size else None)
    return natural_tensor(im, mode, resize=resize, crop=crop, interpolation=interpolation)
