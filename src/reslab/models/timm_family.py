"""timm's ResNet family as reslab builds it: the architectures, and the ones reslab does not build yet.

Facts from huggingface/pytorch-image-models, timm/models/resnet.py (the @register_model functions: block, layers,
stem_type, stem_width, avg_down, cardinality, base_width); timm's code is not used. What the letters mean there:

    (none)  7x7 stem, 1x1/2 projection shortcuts (= torchvision)
    c       deep stem, stem_width 32: three 3x3 convs, 32-32-64
    d       deep stem (32) and avg_down: the shortcut averages 2x2 windows, then a 1x1/1 conv (Bag of Tricks, ResNet-D)
    s       deep stem, stem_width 64: 64-64-128, so layer1 starts from 128 channels
    t       deep_tiered stem (32): 24-32-64, and avg_down

timm's stem out is stem_width * 2 channels: reslab's stem_chans. timm's state_dict names are reslab's
(conv1.0/.1/.3/.4/.6 for a deep stem, layerN.0.downsample.0/.1 or, with avg_down, .1/.2 behind the pool at .0),
so timm's checkpoints load with strict=True. Parameter counts: tests/test_models.py computes each from timm's
definition and checks it against timm's published results/results-imagenet.csv.
"""

from __future__ import annotations

import re
from typing import Any

IMAGENET_LAYERS = {
    10: (1, 1, 1, 1),
    14: (1, 1, 1, 1),
    18: (2, 2, 2, 2),
    26: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}
BASIC_DEPTHS = (10, 18, 34)  # BasicBlock; the others are bottlenecks (timm's resnet14t and resnet26 are)

# letter -> (what it means, ResNet kwargs)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "": ("", {}),
    "c": ("deep stem (32-32-64)", {"stem": "deep"}),
    "d": ("deep stem (32-32-64), average-pool shortcuts", {"stem": "deep", "avg_down": True}),
    "s": ("deep stem (64-64-128)", {"stem": "deep", "stem_chans": 128}),
    "t": ("tiered deep stem (24-32-64), average-pool shortcuts", {"stem": "deep_tiered", "avg_down": True}),
}

# (depth, variant letters) of timm's ResNets made of BasicBlock/Bottleneck with BatchNorm and no attention
RESNETS = [
    (10, "t"),
    (14, "t"),
    (18, "d"),
    (26, "dt"),
    (34, "d"),
    (50, "cdst"),
    (101, "cds"),
    (152, "cds"),
    (200, "d"),
]
PLAIN_DEPTHS = (18, 26, 34, 50, 101, 152, 200)  # timm registers the letterless resnetN for these (10, 14: "t" only)

# name -> (depth, groups, width_per_group, variant): ResNeXt (Xie et al. 2017) and wide ResNets
GROUPED = {
    "resnext50_32x4d": (50, 32, 4, ""),
    "resnext50d_32x4d": (50, 32, 4, "d"),
    "resnext101_32x4d": (101, 32, 4, ""),
    "resnext101_32x8d": (101, 32, 8, ""),
    "resnext101_32x16d": (101, 32, 16, ""),
    "resnext101_32x32d": (101, 32, 32, ""),
    "resnext101_64x4d": (101, 64, 4, ""),
    "wide_resnet50_2": (50, 1, 128, ""),
    "wide_resnet101_2": (101, 1, 128, ""),
}


def timm_resnets() -> dict[str, tuple[int, dict[str, Any], str]]:
    """timm name -> (depth, ResNet kwargs, what it is), for every timm ResNet that reslab builds."""
    out: dict[str, tuple[int, dict[str, Any], str]] = {}
    for depth, letters in RESNETS:
        for letter in ([""] if depth in PLAIN_DEPTHS else []) + list(letters):
            what, kwargs = VARIANTS[letter]
            out[f"resnet{depth}{letter}"] = (depth, dict(kwargs), what)
    for name, (depth, groups, width, letter) in GROUPED.items():
        what, kwargs = VARIANTS[letter]
        out[name] = (depth, {"groups": groups, "width_per_group": width, **kwargs}, what)
    return out


# What reslab lacks for timm's other ResNets, most specific pattern first (timm/models/resnet.py, resnetv2.py,
# byobnet.py, ...). Each is one line of the error that names it.
NOT_COVERED = [
    (r"resnetrs\d+", "ResNet-RS: squeeze-and-excitation blocks and a conv stem pool"),
    (r"se\w*aa\w*", "squeeze-and-excitation attention and anti-aliased downsampling"),
    (r"resnetaa\w*", "anti-aliased downsampling (an average pool in each strided block)"),
    (r"resnetblur\w*", "blur-pool anti-aliasing (BlurPool2d in each strided block)"),
    (r"legacy_\w*|senet154", "the SENet layout of Cadene's pretrainedmodels (other names, squeeze-and-excitation)"),
    (
        r"(lambda_|halo|bot|sehalo|lamhalo|eca_halo|eca_bot)\w*",
        "self-attention blocks (lambda, halo, bottleneck transformer)",
    ),
    (r"seresne(x)?t\w*|se\w*resne(x)?t\w*", "squeeze-and-excitation attention in each block"),
    (r"eca\w*resne(x)?t\w*", "efficient channel attention (ECA) in each block"),
    (r"gcresne(x)?t\w*", "global-context attention in each block"),
    (r"resnet\d+_gn", "GroupNorm in place of BatchNorm"),
    (r"resnetv2\w*", "timm's pre-activation ResNetV2 (resnetv2.py: other names; BiT's GroupNorm, standardised convs)"),
    (r"skresne(x)?t\w*", "selective-kernel convolutions"),
    (r"resnest\w*", "split-attention blocks (ResNeSt)"),
    (r"res2ne(x)?t\w*", "Res2Net's multi-scale blocks"),
    (r"tresnet\w*", "TResNet's space-to-depth stem and blocks"),
    (r"cs\w*resne(x)?t\w*", "cross-stage-partial stages (CSPNet)"),
    (r"nf_resne(x)?t\w*", "normalizer-free blocks (no BatchNorm, scaled weight standardisation)"),
    (r"resne(x)?t\d+ts|resnet\d+q", "timm's byobnet layouts (other names, SiLU, quad-layer stems)"),
    (r"resne(x)?t\w*|wide_resnet\w*", "a depth, stem or width that timm/models/resnet.py does not define either"),
]


def not_covered(name: str) -> str | None:
    """What reslab lacks to build timm's `name` (a tag like ".a1_in1k" ignored), or None if nothing says."""
    base = name.split(".")[0]
    for pattern, what in NOT_COVERED:
        if re.fullmatch(pattern, base):
            return what
    return None


def describe(name: str, depth: int, kwargs: dict[str, Any], what: str) -> str:
    """One line for `reslab models`."""
    label = {"resnext": "ResNeXt", "wide_resnet": "Wide ResNet"}
    kind = next((v for k, v in label.items() if name.startswith(k)), "ResNet")
    if kwargs.get("groups", 1) > 1:
        kind += f"-{depth} {kwargs['groups']}x{kwargs['width_per_group']}d"
    elif kwargs.get("width_per_group", 64) != 64:
        kind += f"-{depth}-{kwargs['width_per_group'] // 64}"
    else:
        kind += f"-{depth}"
        m = re.fullmatch(r"resnet\d+([a-z])", name)
        if m:
            kind += f"-{m.group(1).upper()}"
    return f"{kind} (timm): {what}" if what else f"{kind} (timm)"
