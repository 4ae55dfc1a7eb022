"""A tiny learnable stand-in for Fashion-MNIST (or, in colour, for CIFAR): same types and shapes, made in
milliseconds, no files.

Each class is a fixed random pattern (smooth blobs, left-right symmetric so a horizontal flip keeps the class, like
clothes); every image is its class pattern at a random brightness plus pixel noise. A small ResNet gets well above
chance within a few dozen steps, which is what tests and smoke runs need.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reslab.data.dataset import Dataset
from reslab.data.transforms import MEAN, STD


def _class_patterns(num_classes: int, image_size: int, in_chans: int, generator: torch.Generator) -> torch.Tensor:
    coarse = max(2, image_size // 4)
    half = torch.rand(num_classes, in_chans, coarse, (coarse + 1) // 2, generator=generator)
    patterns = torch.cat([half, half.flip(-1)[..., coarse % 2 :]], dim=-1)  # mirror: (K, C, coarse, coarse)
    patterns = F.interpolate(patterns, size=(image_size, image_size), mode="bilinear", align_corners=False)
    # (K, H, W) for grayscale, as Fashion-MNIST is stored; (K, C, H, W) in colour; values in [0, 255]
    return (patterns[:, 0] if in_chans == 1 else patterns) * 255


def _images(patterns: torch.Tensor, n: int, noise: float, generator: torch.Generator):
    labels = torch.randint(len(patterns), (n,), generator=generator)
    brightness = 0.6 + 0.4 * torch.rand(n, *[1] * (patterns.dim() - 1), generator=generator)
    x = patterns[labels] * brightness + noise * 255 * torch.randn(n, *patterns.shape[1:], generator=generator)
    return x.round_().clamp_(0, 255).to(torch.uint8), labels


def synthetic_dataset(
    *,
    num_train: int = 2000,
    num_test: int = 500,
    num_classes: int = 10,
    image_size: int = 28,
    noise: float = 0.2,
    seed: int = 0,
    in_chans: int = 1,
) -> Dataset:
    """A `Dataset` of `num_classes` random patterns with noise; the same `seed` gives the same tensors.

    in_chans=1: grayscale (N, H, W) like Fashion-MNIST; in_chans=3: colour (N, 3, H, W), each class a pattern of
    its own in every channel (so colour matters), normalised like Fashion-MNIST on each channel.
    """
    g = torch.Generator().manual_seed(seed)
    patterns = _class_patterns(num_classes, image_size, in_chans, g)
    train_images, train_labels = _images(patterns, num_train, noise, g)
    test_images, test_labels = _images(patterns, num_test, noise, g)
    return Dataset(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        classes=tuple(f"class{i}" for i in range(num_classes)),
        source=f"synthetic(seed={seed})" if in_chans == 1 else f"synthetic(seed={seed}, in_chans={in_chans})",
        mean=(MEAN,) * in_chans,
        std=(STD,) * in_chans,
    )
