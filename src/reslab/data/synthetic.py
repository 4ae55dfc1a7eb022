"""A tiny learnable stand-in for Fashion-MNIST: same types and shapes, made in milliseconds, no files.

Each class is a fixed random pattern (smooth blobs, left-right symmetric so a horizontal flip keeps the class, like
clothes); every image is its class pattern at a random brightness plus pixel noise. A small ResNet gets well above
chance within a few dozen steps, which is what tests and smoke runs need.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reslab.data.dataset import Dataset


def _class_patterns(num_classes: int, image_size: int, generator: torch.Generator) -> torch.Tensor:
    coarse = max(2, image_size // 4)
    half = torch.rand(num_classes, 1, coarse, (coarse + 1) // 2, generator=generator)
    patterns = torch.cat([half, half.flip(-1)[..., coarse % 2 :]], dim=-1)  # mirror: (K, 1, coarse, coarse)
    patterns = F.interpolate(patterns, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return patterns[:, 0] * 255  # (K, H, W) in [0, 255]


def _images(patterns: torch.Tensor, n: int, noise: float, generator: torch.Generator):
    labels = torch.randint(len(patterns), (n,), generator=generator)
    brightness = 0.6 + 0.4 * torch.rand(n, 1, 1, generator=generator)
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
) -> Dataset:
    """A `Dataset` of `num_classes` random patterns with noise; the same `seed` gives the same tensors."""
    g = torch.Generator().manual_seed(seed)
    patterns = _class_patterns(num_classes, image_size, g)
    train_images, train_labels = _images(patterns, num_train, noise, g)
    test_images, test_labels = _images(patterns, num_test, noise, g)
    return Dataset(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        classes=tuple(f"class{i}" for i in range(num_classes)),
        source=f"synthetic(seed={seed})",
    )
