"""One generic ResNet (torchvision's layout and names) and the seeds' d2l network.

ResNet(block, layers, ...) builds every ImageNet and CIFAR network of He et al. (2015) and its documented
variants; D2LResNet is the "Dive into Deep Learning" network of the seeds, built from `Residual`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from reslab.errors import ReslabError
from reslab.models.blocks import (
    PREACT_BLOCKS,
    SHORTCUT_A_PADS,
    BasicBlock,
    Bottleneck,
    NormLayer,
    PreActBasicBlock,
    PreActBottleneck,
    Residual,
    ShortcutA,
    conv1x1,
    conv3x3,
)

STEMS = ("imagenet", "cifar", "deep", "deep_tiered")
STEM_POOLS = ("padded", "ceil")
SHORTCUTS = ("A", "B", "C", "none")
Block = type[BasicBlock] | type[Bottleneck] | type[PreActBasicBlock] | type[PreActBottleneck]


class ResNet(nn.Module):
    """A residual network: a stem, len(layers) stages of blocks, global average pooling and a linear classifier.

    Attribute and state_dict names are torchvision's (conv1, bn1, relu, maxpool, layer1.., avgpool, fc; blocks
    `layerN.i.conv1`, shortcuts `layerN.0.downsample.0`), so torchvision checkpoints load with strict=True.

    Variants, each one keyword:
      block             BasicBlock, Bottleneck, or their pre-activation forms PreActBasicBlock, PreActBottleneck
                        (He et al. 2016: BN-ReLU-conv, a final BN-ReLU (`bn_final`) before pooling)
      layers            blocks per stage, e.g. [2, 2, 2, 2] (ResNet-18) or [3, 3, 3] (CIFAR ResNet-20)
      widths            `planes` per stage: (64, 128, 256, 512) for ImageNet, (16, 32, 64) for CIFAR
      stem_chans        channels out of the stem; default widths[0] (wide ResNets: 16)
      stem              "imagenet": 7x7/2 conv + 3x3/2 max-pool; "cifar": 3x3/1 conv, no pool;
                        "deep": three 3x3 convs (the first /2) of widths stem_chans/2, stem_chans/2, stem_chans,
                        + max-pool (ResNet-C, Bag of Tricks 2019; timm's stem_type="deep", stem_width=stem_chans/2);
                        "deep_tiered": the same with widths 3*(stem_chans/8), stem_chans/2, stem_chans (timm's
                        "deep_tiered", its "t" models: 24, 32, 64)
      stem_pool         the stem's 3x3/2 max-pool: "padded" (padding 1, torchvision) or "ceil" (no padding, output
                        size rounded up: Caffe's, so Kaiming He's original ResNet-50/101/152 models)
      shortcut          where the shape changes: "A" zero-padded identity (parameter-free), "B" 1x1 projection
                        (default), "C" projection on every block; "none" drops every shortcut (a plain network)
      shortcut_a_pad    where option A puts its zero channels: "end" (fb.resnet.torch) or "both" (half before,
                        half after: akamaster/pytorch_resnet_cifar10's CIFAR models)
      avg_down          ResNet-D shortcut: 2x2 average pool, then a 1x1 conv of stride 1 (needs B or C)
      stride_placement  "v1.5": a bottleneck's stride on its 3x3 conv (torchvision), "v1": on its first 1x1
      groups, width_per_group  ResNeXt (32, 4) and wide ResNets (1, 128)
      zero_init_residual  zero the last BN of every block, so that each starts as the identity (Goyal et al. 2017)
    """

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        *,
        in_chans: int = 3,
        num_classes: int = 1000,
        widths: Sequence[int] = (64, 128, 256, 512),
        stem: str = "imagenet",
        stem_chans: int | None = None,
        stem_pool: str = "padded",
        shortcut: str = "B",
        shortcut_a_pad: str = "end",
        avg_down: bool = False,
        stride_placement: str = "v1.5",
        groups: int = 1,
        width_per_group: int = 64,
        zero_init_residual: bool = False,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        _check_options(layers, widths, in_chans, num_classes, stem, shortcut, avg_down, zero_init_residual)
        _check_stem_and_padding(stem, stem_pool, shortcut_a_pad)
        minimum = {"deep": 2, "deep_tiered": 8}.get(stem, 1)  # the deep stems' first convs are 1/2 and 3/8 as wide
        if (stem_chans or widths[0]) < minimum:
            raise ReslabError(f"stem={stem!r}: stem_chans must be at least {minimum}, got {stem_chans or widths[0]}")
        self.preact = issubclass(block, PREACT_BLOCKS)
        self.shortcut = shortcut
        self.shortcut_a_pad = shortcut_a_pad
        self.avg_down = avg_down
        self.groups = groups
        self.base_width = width_per_group
        self.stride_placement = stride_placement
        self._norm_layer = norm_layer
        self.inplanes = stem_chans or widths[0]

        # stem: (B, in_chans, H, W) -> (B, inplanes, H/4, W/4) ("imagenet", "deep") or (B, inplanes, H, W) ("cifar")
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        elif stem == "cifar":
            self.conv1 = conv3x3(in_chans, self.inplanes)
        else:  # "deep", "deep_tiered": timm's layout, so its names (conv1.0, conv1.1, conv1.3, ...) carry over
            # timm: inplanes = stem_width * 2; the tiered stem's first conv is 3 * (stem_width // 4) wide
            stem_width = self.inplanes // 2
            first_width = 3 * (stem_width // 4) if stem == "deep_tiered" else stem_width
            self.conv1 = nn.Sequential(
                conv3x3(in_chans, first_width, stride=2),
                norm_layer(first_width),
                nn.ReLU(inplace=True),
                conv3x3(first_width, stem_width),
                norm_layer(stem_width),
                nn.ReLU(inplace=True),
                conv3x3(stem_width, self.inplanes),
            )
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        if stem == "cifar":
            self.maxpool = nn.Identity()
        elif stem_pool == "ceil":
            # Caffe's pooling: no padding, ceil((H - 3) / 2) + 1 outputs; the same size as the padded pool's at even
            # sizes (112 -> 56) but windows shifted by one pixel, so Caffe-trained weights need it to be exact
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
        else:
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        for i, (planes, blocks) in enumerate(zip(widths, layers, strict=True)):
            stage = self._make_layer(block, planes, blocks, stride=1 if i == 0 else 2, first_stage=i == 0)
            self.add_module(f"layer{i + 1}", stage)
        self.num_stages = len(layers)
        self.num_features = self.inplanes
        if self.preact:
            self.bn_final = norm_layer(self.inplanes)  # the final BN-ReLU that pre-activation nets need
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.num_features, num_classes)

        if self.fc.weight.is_meta:
            return  # built on the meta device to be measured (reslab summary): no values to initialise
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # each residual branch starts at zero, so each block starts as the identity (Goyal et al. 2017)
            for m in self.modules():
                if hasattr(m, "zero_init_last"):
                    m.zero_init_last()

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int = 1, *, first_stage: bool = False):
        layers = []
        for i in range(blocks):
            s = stride if i == 0 else 1
            out_planes = planes * block.expansion
            kwargs = {}
            if self.preact:
                # the network's first block follows the stem's BN-ReLU: no second one (He et al. 2016, appendix)
                kwargs["preact"] = not (first_stage and i == 0)
            layers.append(
                block(
                    self.inplanes,
                    planes,
                    s,
                    downsample=self._make_shortcut(self.inplanes, out_planes, s),
                    groups=self.groups,
                    base_width=self.base_width,
                    stride_placement=self.stride_placement,
                    residual=self.shortcut != "none",
                    norm_layer=self._norm_layer,
                    **kwargs,
                )
            )
            self.inplanes = out_planes
        return nn.Sequential(*layers)

    def _make_shortcut(self, inplanes: int, out_planes: int, stride: int) -> nn.Module | None:
        """The module that maps a block's input to its output shape; None is the identity."""
        changes_shape = stride != 1 or inplanes != out_planes
        if self.shortcut == "none" or (self.shortcut in ("A", "B") and not changes_shape):
            return None
        if self.shortcut == "A":
            return ShortcutA(inplanes, out_planes, stride, pad=self.shortcut_a_pad)
        # pre-activation blocks add un-normalised sums, so their projection is a bare conv (fb.resnet.torch)
        norm = [] if self.preact else [self._norm_layer(out_planes)]
        if self.avg_down:  # ResNet-D: average 2x2 windows instead of dropping 3 pixels in 4
            pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
            return nn.Sequential(pool, conv1x1(inplanes, out_planes), *norm)
        return nn.Sequential(conv1x1(inplanes, out_planes, stride), *norm)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, num_features, H/32, W/32) for ImageNet stems (H/4 for CIFAR's 3 stages)."""
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        if self.preact:
            x = self.bn_final(x)
            x = self.relu(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, num_features, h, w) -> (B, num_classes) logits, or the pooled (B, num_features) if pre_logits."""
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            # the same average as AdaptiveAvgPool2d's (to rounding), but its backward stays channels_last: the mean's
            # hands the last ReLU an NCHW gradient, and a ReLU backward over mixed layouts is 10-20x slower on a CPU
            x = F.avg_pool2d(x, x.shape[-2:])
        else:
            x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _check_options(layers, widths, in_chans, num_classes, stem, shortcut, avg_down, zero_init_residual) -> None:
    if stem not in STEMS:
        raise ReslabError(f"stem: expected one of {', '.join(map(repr, STEMS))}, got {stem!r}")
    if shortcut not in SHORTCUTS:
        raise ReslabError(
            f"shortcut: expected 'A' (zero-padded identity), 'B' (projection where the shape changes), "
            f"'C' (projection everywhere) or 'none' (plain network), got {shortcut!r}"
        )
    if avg_down and shortcut not in ("B", "C"):
        raise ReslabError(f"avg_down=True needs a projection shortcut ('B' or 'C'), got shortcut={shortcut!r}")
    if zero_init_residual and shortcut == "none":
        raise ReslabError(
            "zero_init_residual=True would zero every block of a plain network (it has no shortcut to carry "
            "the signal); leave it off for plain models"
        )
    if len(layers) != len(widths) or not layers or min(layers) < 1:
        raise ReslabError(
            f"layers and widths: expected one positive block count per stage width, got layers={list(layers)}, "
            f"widths={list(widths)}"
        )
    if in_chans < 1 or num_classes < 1:
        raise ReslabError(f"in_chans and num_classes must be positive, got {in_chans} and {num_classes}")


def _check_stem_and_padding(stem: str, stem_pool: str, shortcut_a_pad: str) -> None:
    if stem_pool not in STEM_POOLS:
        raise ReslabError(
            f"stem_pool: expected 'padded' (torchvision's 3x3/2 max-pool, padding 1) or 'ceil' (Caffe's: no "
            f"padding, ceil mode), got {stem_pool!r}"
        )
    if stem_pool != "padded" and stem == "cifar":
        raise ReslabError("stem_pool: the 'cifar' stem has no max-pool; leave stem_pool at 'padded'")
    if shortcut_a_pad not in SHORTCUT_A_PADS:
        raise ReslabError(
            f"shortcut_a_pad: expected 'end' (zero channels after the input's) or 'both' (half before, half after), "
            f"got {shortcut_a_pad!r}"
        )


class D2LResNet(nn.Sequential):
    """The ResNet-18 of "Dive into Deep Learning" (section 7.6), exactly as the seeds build it.

    nn.Sequential(b1, b2, b3, b4, b5, AdaptiveAvgPool2d, Flatten, Linear), so its state_dict keys are the seeds'
    ("0.0.weight", "1.0.conv1.weight", ...). b1 is a 7x7/2 conv (with bias), BN, ReLU and a 3x3/2 max-pool; b2..b5
    are two `Residual` blocks each (64, 128, 256, 512 channels, b3..b5 halving the size with a 1x1-conv shortcut).
    At 1x224x224: 64x56x56 after b1, then 64x56x56, 128x28x28, 256x14x14, 512x7x7, 512x1x1, 512, num_classes.
    Weights keep PyTorch's default initialisation, as in the seeds; `zero_init_residual` zeroes each block's bn2.
    """

    def __init__(self, *, in_chans: int = 1, num_classes: int = 10, zero_init_residual: bool = False) -> None:
        if in_chans < 1 or num_classes < 1:
            raise ReslabError(f"in_chans and num_classes must be positive, got {in_chans} and {num_classes}")
        b1 = nn.Sequential(
            nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        b2 = nn.Sequential(*_d2l_resnet_block(64, 64, 2, first_block=True))
        b3 = nn.Sequential(*_d2l_resnet_block(64, 128, 2))
        b4 = nn.Sequential(*_d2l_resnet_block(128, 256, 2))
        b5 = nn.Sequential(*_d2l_resnet_block(256, 512, 2))
        super().__init__(b1, b2, b3, b4, b5, nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(512, num_classes))
        self.num_features = 512
        if zero_init_residual and not self[-1].weight.is_meta:
            for m in self.modules():
                if isinstance(m, Residual):
                    m.zero_init_last()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, 512, H/32, W/32)."""
        for stage in list(self)[:5]:
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self[5](x)  # AdaptiveAvgPool2d: (B, 512, h, w) -> (B, 512, 1, 1)
        x = self[6](x)  # Flatten: -> (B, 512)
        return x if pre_logits else self[7](x)


def _d2l_resnet_block(in_channels: int, out_channels: int, num_residuals: int, first_block: bool = False):
    return [
        Residual(in_channels, out_channels, use_1x1conv=True, stride=2)
        if i == 0 and not first_block
        else Residual(out_channels, out_channels)
        for i in range(num_residuals)
    ]
