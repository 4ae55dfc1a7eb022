"""A whitened, frozen stem: the network's first convolution set from the training images' patch statistics.

    patches = whiten_stem(model, batches)      # batches: preprocessed training images, as the network sees them

airbench (Jordan 2024, after Coates and Ng 2011) starts its CIFAR-10 network with a convolution whose filters are the
eigenvectors of the covariance of the training images' patches, each scaled by 1/sqrt(eigenvalue + eps) and paired
with its negative (so that a ReLU after it keeps both signs of each component), and never trains them. The network's
first layer then decorrelates its input from the first step on: a head start that counts most in a short run. Here the
eigenvectors of the largest out_channels/2 eigenvalues fill the first convolution of any network in the family (the
CIFAR networks' 3x3 one: 8 of the 9 components of a grey 3x3 patch); the architecture and its state_dict names stay
as they are, only the stem's initial weights change and its weight stops training.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from reslab.errors import ReslabError
from reslab.models.probe import first_conv

EPS = 5e-4  # airbench's, for images normalised to about unit variance per channel
MAX_IMAGES = 5000  # airbench's: the first 5,000 training images
MAX_PATCHES = 2_500_000  # about 5,000 images at 24x24 (3x3 patches); large images use fewer images


@torch.no_grad()
def whiten_stem(model: nn.Module, batches: Iterable[torch.Tensor], *, eps: float = EPS) -> int:
    """Set `model`'s first convolution to whiten its input patches and freeze its weight (a bias, if any, starts at
    zero and trains). `batches`: (B, C, H, W) float images, preprocessed as training feeds them; patches are taken
    from the first of them (up to MAX_IMAGES images or MAX_PATCHES patches). Returns the number of patches used."""
    name = first_conv(model)
    if name is None:
        raise ReslabError("--whiten-stem: the network has no convolution")
    conv = model.get_submodule(name)
    c, kh, kw = conv.weight.shape[1:]
    dims, k = c * kh * kw, conv.out_channels // 2
    if conv.groups != 1 or conv.out_channels % 2 or k > dims:
        raise ReslabError(
            f"--whiten-stem: the first convolution needs an even number of filters, at most twice its {dims} "
            f"patch values and no groups; this network's has {conv.out_channels} filters in {conv.groups} group(s)"
        )
    cov, n, images = torch.zeros(dims, dims, dtype=torch.float64), 0, 0
    for x in batches:
        # (B, C, H', W', kh, kw) -> one row per patch, in the weight's (C, kh, kw) order
        patches = x.float().unfold(2, kh, conv.stride[0]).unfold(3, kw, conv.stride[1])
        take = min(len(x), MAX_IMAGES - images, max(1, (MAX_PATCHES - n) // (patches.shape[2] * patches.shape[3])))
        # summed in float64 on the CPU: millions of rows, and MPS has no float64
        rows = patches[:take].permute(0, 2, 3, 1, 4, 5).reshape(-1, dims).cpu().double()
        cov += rows.T @ rows
        n, images = n + len(rows), images + take
        if images >= MAX_IMAGES or n >= MAX_PATCHES:
            break
    if n == 0:
        raise ReslabError("--whiten-stem: no training images to take patches from")
    eigenvalues, eigenvectors = torch.linalg.eigh(cov / n)  # ascending
    top = eigenvectors[:, -k:].flip(1).T / torch.sqrt(eigenvalues[-k:].flip(0).clamp(min=0) + eps)[:, None]
    filters = top.reshape(k, c, kh, kw).to(conv.weight.dtype)
    conv.weight.copy_(torch.cat([filters, -filters]))
    conv.weight.requires_grad_(False)
    if conv.bias is not None:
        conv.bias.zero_()
    return n
