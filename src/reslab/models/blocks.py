"""Residual blocks: the "Dive into Deep Learning" block of the seeds, torchvision's BasicBlock and Bottleneck, their
pre-activation forms, and the parameter-free option-A shortcut.

Shapes in comments are (B, C, H, W). Nothing here knows about training.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from reslab.errors import ReslabError

NormLayer = Callable[[int], nn.Module]
STRIDE_PLACEMENTS = ("v1.5", "v1")
SHORTCUT_A_PADS = ("end", "both")


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (the BN that follows has one)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class Residual(nn.Module):
    """The residual block of "Dive into Deep Learning" (section 7.6), exactly as in the seeds.

    3x3 conv (with bias) -> BN -> ReLU -> 3x3 conv (with bias) -> BN, plus the input, then ReLU. When the shape
    changes, `use_1x1conv=True` adds a 1x1 convolution (with bias) on the shortcut. Attribute names and their order
    (conv1, conv2, conv3, bn1, bn2) are the seeds', so the seeds' state dicts load unchanged.
    """

    def __init__(self, in_channels: int, out_channels: int, use_1x1conv: bool = False, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride) if use_1x1conv else None
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = F.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.conv3 is not None:
            identity = self.conv3(x)
        out = out + identity  # as the seeds: under autocast a bf16 branch plus an fp32 input is fp32, not bf16
        out = F.relu(out)
        return out


class ShortcutA(nn.Module):
    """Option A of He et al. (2015): a parameter-free shortcut for a block that changes shape.

    Subsamples by `stride` (every other pixel, as a 1x1 convolution of stride 2 would) and adds zero channels up to
    `out_planes`: after the input's channels (pad="end", as fb.resnet.torch does), or half before and half after
    (pad="both", as akamaster/pytorch_resnet_cifar10 does: `F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4,
    planes // 4))`). The two hold the same parameters under the same names but put the identity in different
    channels, so weights trained with one give wrong outputs with the other. A module rather than a lambda, so that
    models pickle and deep-copy.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int = 1, *, pad: str = "end") -> None:
        super().__init__()
        if out_planes < in_planes:
            raise ReslabError(
                f"shortcut 'A' can only add channels, but this block goes from {in_planes} to {out_planes}; "
                "use shortcut='B' or 'C' (a 1x1 projection)"
            )
        if pad not in SHORTCUT_A_PADS:
            raise ReslabError(
                f"shortcut_a_pad: expected 'end' (zero channels after the input's) or 'both' (half before, half "
                f"after), got {pad!r}"
            )
        if pad == "both" and (out_planes - in_planes) % 2:
            raise ReslabError(
                f"shortcut_a_pad='both' needs an even number of new channels, but this block goes from "
                f"{in_planes} to {out_planes}"
            )
        self.in_planes, self.out_planes, self.stride, self.pad = in_planes, out_planes, stride, pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            # x[:, :, ::stride, ::stride] as a 1x1 average pool (the same numbers): the slice's backward hands back an
            # NCHW gradient even to a channels_last network, and the mixed-layout adds and ReLU backward that follow
            # cost ResNet-8 a fifth of its bf16 training speed (docs/benchmarks.md, "Memory layout")
            x = F.avg_pool2d(x, 1, self.stride)
        extra = self.out_planes - self.in_planes
        if extra:
            before = extra // 2 if self.pad == "both" else 0
            x = F.pad(x, (0, 0, 0, 0, before, extra - before))  # (B, in, H, W) -> (B, out, H, W)
        return x

    def extra_repr(self) -> str:
        pad = "" if self.pad == "end" else f", pad={self.pad!r}"
        return f"{self.in_planes}, {self.out_planes}, stride={self.stride}{pad}"


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34, and the CIFAR ResNets), as torchvision builds it.

    `downsample` maps the input to the output's shape (None: identity). `residual=False` drops the shortcut
    altogether: the block of a "plain" network, with exactly the same layers.
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        *,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        stride_placement: str = "v1.5",
        residual: bool = True,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ReslabError(
                f"BasicBlock supports only groups=1 and width_per_group=64, got groups={groups}, "
                f"width_per_group={base_width}; use a Bottleneck model (resnext50_32x4d, wide_resnet50_2) "
                "or widths=... for wider basic blocks"
            )
        # the first conv is already a 3x3, so both stride placements are the same block here
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride
        self.residual = residual

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.residual:  # a plain network's block (residual=False) has no shortcut to add
            if self.downsample is not None:
                identity = self.downsample(x)
            out += identity
        out = self.relu(out)
        return out


class Bottleneck(nn.Module):
    """1x1 (reduce) -> 3x3 -> 1x1 (expand by 4), as torchvision builds it (ResNet-50/101/152, ResNeXt, wide).

    stride_placement: "v1.5" puts the stride on the 3x3 conv (torchvision; about 0.5% better top-1 on ImageNet),
    "v1" on the first 1x1 conv (the original Caffe models, Keras). The 3x3 conv has `groups` groups and is
    int(planes * base_width / 64) * groups wide: groups=32, base_width=4 is ResNeXt-50 32x4d; base_width=128 is
    wide ResNet-50-2.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        *,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        stride_placement: str = "v1.5",
        residual: bool = True,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        stride_1x1, stride_3x3 = _split_stride(stride, stride_placement)
        self.conv1 = conv1x1(inplanes, width, stride_1x1)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride_3x3, groups)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self.residual = residual

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu(out)
        out = self.conv3(out)
        out = self.bn3(out)
        if self.residual:  # a plain network's block (residual=False) has no shortcut to add
            if self.downsample is not None:
                identity = self.downsample(x)
            out += identity
        out = self.relu(out)
        return out


class PreActBasicBlock(nn.Module):
    """BasicBlock with pre-activation (He et al. 2016, "Identity Mappings in Deep Residual Networks").

    BN -> ReLU -> 3x3 conv -> BN -> ReLU -> 3x3 conv, plus the shortcut, and nothing after the addition. A projection
    or option-A shortcut takes the pre-activated input, an identity shortcut the raw one (fb.resnet.torch's
    preresnet). `preact=False` skips the first BN-ReLU: the network's first block, which follows the stem's BN-ReLU.
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        *,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        stride_placement: str = "v1.5",
        residual: bool = True,
        preact: bool = True,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ReslabError(
                f"PreActBasicBlock supports only groups=1 and width_per_group=64, got groups={groups}, "
                f"width_per_group={base_width}; use widths=... for wider basic blocks"
            )
        self.bn1 = norm_layer(inplanes) if preact else None
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn2 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes)
        self.downsample = downsample
        self.stride = stride
        self.residual = residual

    def zero_init_last(self) -> None:
        # relu(bn2(.)) is then 0, so conv2 (no bias) outputs 0 and the block starts as the identity
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = x
        if self.bn1 is not None:  # None in the network's first block, which follows the stem's BN-ReLU
            out = self.bn1(out)
            out = self.relu(out)  # in place on bn1's output; the raw x is kept for an identity shortcut
        if self.downsample is not None:
            identity = self.downsample(out)  # a projection or option A takes the pre-activated input
        out = self.conv1(out)
        out = self.bn2(out)
        out = self.relu(out)
        out = self.conv2(out)
        if self.residual:  # nothing after the addition: the sum is the next block's raw input
            out = out + identity  # not in place: under autocast a bf16 branch plus an fp32 input is fp32
        return out


class PreActBottleneck(nn.Module):
    """Bottleneck with pre-activation (He et al. 2016): (BN -> ReLU -> conv) x3 (1x1, 3x3, 1x1 x4), plus shortcut.

    Shortcut and `preact` as in PreActBasicBlock; `stride_placement`, `groups`, `base_width` as in Bottleneck.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        *,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        stride_placement: str = "v1.5",
        residual: bool = True,
        preact: bool = True,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        stride_1x1, stride_3x3 = _split_stride(stride, stride_placement)
        self.bn1 = norm_layer(inplanes) if preact else None
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv1x1(inplanes, width, stride_1x1)
        self.bn2 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride_3x3, groups)
        self.bn3 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.downsample = downsample
        self.stride = stride
        self.residual = residual

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = x
        if self.bn1 is not None:  # None in the network's first block, which follows the stem's BN-ReLU
            out = self.bn1(out)
            out = self.relu(out)  # in place on bn1's output; the raw x is kept for an identity shortcut
        if self.downsample is not None:
            identity = self.downsample(out)  # a projection or option A takes the pre-activated input
        out = self.conv1(out)
        out = self.bn2(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn3(out)
        out = self.relu(out)
        out = self.conv3(out)
        if self.residual:  # nothing after the addition: the sum is the next block's raw input
            out = out + identity  # not in place: under autocast a bf16 branch plus an fp32 input is fp32
        return out


def _split_stride(stride: int, stride_placement: str) -> tuple[int, int]:
    """(stride of the first 1x1 conv, stride of the 3x3 conv) of a bottleneck."""
    if stride_placement not in STRIDE_PLACEMENTS:
        raise ReslabError(
            f"stride_placement: expected 'v1.5' (stride on the 3x3 conv) or 'v1' (on the first 1x1), "
            f"got {stride_placement!r}"
        )
    return (stride, 1) if stride_placement == "v1" else (1, stride)


PREACT_BLOCKS = (PreActBasicBlock, PreActBottleneck)
