"""Named models: `list_models()`, `build_model(name, **overrides)` and `model_entry(name)`.

Each entry is a builder with fixed keyword arguments; `build_model` lets any of them be overridden, e.g.
build_model("resnet20", shortcut="B", in_chans=1) or build_model("resnet50", stride_placement="v1").
"""

from __future__ import annotations

import difflib
import functools
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from reslab.errors import ReslabError
from reslab.models.blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck
from reslab.models.resnet import D2LResNet, ResNet
from reslab.models.timm_family import BASIC_DEPTHS, describe, timm_resnets
from reslab.models.timm_family import IMAGENET_LAYERS as TIMM_LAYERS

IMAGENET_INPUT = (3, 224, 224)
CIFAR_INPUT = (3, 32, 32)
CIFAR_WIDTHS = (16, 32, 64)


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: how to build it, what it is, and the input it was designed for."""

    name: str
    builder: Callable[..., nn.Module]
    description: str
    default_input_size: tuple[int, int, int]  # (C, H, W)
    default_num_classes: int
    family: str  # "imagenet" | "cifar" | "d2l"
    kwargs: dict[str, Any] = field(default_factory=dict)  # fixed builder arguments, each overridable

    @property
    def default_in_chans(self) -> int:
        return self.default_input_size[0]

    def accepted_kwargs(self) -> list[str]:
        params = inspect.signature(self.builder).parameters.values()
        return [p.name for p in params if p.kind == inspect.Parameter.KEYWORD_ONLY]

    def build(self, **overrides: Any) -> nn.Module:
        unknown = sorted(set(overrides) - set(self.accepted_kwargs()))
        if unknown:
            raise ReslabError(
                f"{self.name} does not take {', '.join(map(repr, unknown))}; it takes "
                f"{', '.join(self.accepted_kwargs())}"
            )
        kwargs = {"in_chans": self.default_in_chans, "num_classes": self.default_num_classes, **self.kwargs}
        return self.builder(**{**kwargs, **overrides})


_REGISTRY: dict[str, ModelEntry] = {}


def _register(name: str, builder: Callable[..., nn.Module], description: str, family: str, **kwargs: Any) -> None:
    input_size, num_classes = {
        "imagenet": (IMAGENET_INPUT, 1000),
        "cifar": (CIFAR_INPUT, 10),
        "d2l": ((1, 96, 96), 10),  # the seeds train on Fashion-MNIST resized to 96x96
    }[family]
    _REGISTRY[name] = ModelEntry(name, builder, description, input_size, num_classes, family, kwargs)


def _resnet(block, layers) -> Callable[..., nn.Module]:
    # a partial of a class (not a lambda or closure), so entries stay picklable and their signature inspectable
    return functools.partial(ResNet, block, layers)


# ----------------------------------------------------------------------------------------------------------------------
# ImageNet networks (He et al. 2015, table 1), torchvision's v1.5 layout; 3x224x224 inputs, 1000 classes

_IMAGENET_LAYERS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}
for _depth, _layers in _IMAGENET_LAYERS.items():
    _block = BasicBlock if _depth < 50 else Bottleneck
    _register(
        f"resnet{_depth}",
        _resnet(_block, _layers),
        f"ResNet-{_depth} (He et al. 2015): {_block.__name__} x {_layers}",
        "imagenet",
    )
for _name, _layers, _groups, _width, _what in [
    ("resnext50_32x4d", [3, 4, 6, 3], 32, 4, "ResNeXt-50 32x4d (Xie et al. 2017): 32 groups of 4 channels"),
    ("resnext101_32x8d", [3, 4, 23, 3], 32, 8, "ResNeXt-101 32x8d (Xie et al. 2017): 32 groups of 8 channels"),
    ("resnext101_64x4d", [3, 4, 23, 3], 64, 4, "ResNeXt-101 64x4d (Xie et al. 2017): 64 groups of 4 channels"),
    ("wide_resnet50_2", [3, 4, 6, 3], 1, 128, "Wide ResNet-50-2 (Zagoruyko & Komodakis 2016): 2x wider 3x3 convs"),
    ("wide_resnet101_2", [3, 4, 23, 3], 1, 128, "Wide ResNet-101-2 (Zagoruyko & Komodakis 2016): 2x wider 3x3 convs"),
]:
    _register(_name, _resnet(Bottleneck, _layers), _what, "imagenet", groups=_groups, width_per_group=_width)
_register(
    "resnet50d",
    _resnet(Bottleneck, _IMAGENET_LAYERS[50]),
    "ResNet-50-D (He et al. 2019, Bag of Tricks): deep stem, average-pool shortcuts",
    "imagenet",
    stem="deep",
    avg_down=True,
)
# the rest of timm's ResNets, ResNeXts and wide ResNets made of these blocks, under timm's names (see timm_family)
for _name, (_depth, _kwargs, _what) in timm_resnets().items():
    if _name not in _REGISTRY:
        _block = BasicBlock if _depth in BASIC_DEPTHS else Bottleneck
        _register(
            _name,
            _resnet(_block, list(TIMM_LAYERS[_depth])),
            describe(_name, _depth, _kwargs, _what),
            "imagenet",
            **_kwargs,
        )
for _depth in (18, 34):
    _register(
        f"plain{_depth}",
        _resnet(BasicBlock, _IMAGENET_LAYERS[_depth]),
        f"plain-{_depth} (He et al. 2015, fig. 3): resnet{_depth} without shortcuts",
        "imagenet",
        shortcut="none",
    )
for _depth, _layers in _IMAGENET_LAYERS.items():
    _block = PreActBasicBlock if _depth < 50 else PreActBottleneck
    _register(
        f"preact_resnet{_depth}",
        _resnet(_block, _layers),
        f"pre-activation ResNet-{_depth} (He et al. 2016): BN-ReLU-conv blocks",
        "imagenet",
    )

# ----------------------------------------------------------------------------------------------------------------------
# CIFAR networks (He et al. 2015, section 4.2): 3x3 stem, 3 stages of 2n 3x3 convs at 16/32/64 channels and
# 32/16/8 pixels (28/14/7 on Fashion-MNIST), 6n+2 layers; option A shortcuts, so as many parameters as plain nets


def _register_cifar(name: str, block: type[nn.Module], n: int, description: str, **kwargs: Any) -> None:
    """A CIFAR network: 3 stages of `n` blocks behind the 3x3 stem, at 16/32/64 channels unless `widths` says."""
    kwargs = {"widths": CIFAR_WIDTHS, "stem": "cifar", **kwargs}
    _register(name, _resnet(block, [n] * 3), description, "cifar", **kwargs)


# 8 and 14 (n = 1, 2) are not in the paper's table; they are the cheaper members of the same family
for _depth in (8, 14, 20, 32, 44, 56, 110, 1202):
    _n = (_depth - 2) // 6
    _register_cifar(
        f"resnet{_depth}",
        BasicBlock,
        _n,
        f"CIFAR ResNet-{_depth} (He et al. 2015, sec. 4.2): 3 stages x {_n} basic block{'s' * (_n > 1)}, option A",
        shortcut="A",
    )
for _depth in (20, 32, 44, 56, 110):
    _register_cifar(
        f"plain{_depth}",
        BasicBlock,
        (_depth - 2) // 6,
        f"CIFAR plain-{_depth} (He et al. 2015, fig. 6): resnet{_depth} without shortcuts",
        shortcut="none",
    )
for _depth in (20, 56, 110):
    _n = (_depth - 2) // 6
    _register_cifar(
        f"preact_resnet{_depth}",
        PreActBasicBlock,
        _n,
        f"CIFAR pre-activation ResNet-{_depth} (He et al. 2016): 3 stages x {_n} basic blocks",
    )
for _depth in (164, 1001):
    _n = (_depth - 2) // 9
    _register_cifar(
        f"preact_resnet{_depth}",
        PreActBottleneck,
        _n,
        f"CIFAR pre-activation ResNet-{_depth} (He et al. 2016): 3 stages x {_n} bottlenecks",
    )
for _depth, _k in [(16, 8), (28, 10)]:
    _register_cifar(
        f"wrn{_depth}_{_k}",
        PreActBasicBlock,
        (_depth - 4) // 6,
        f"CIFAR Wide ResNet-{_depth}-{_k} (Zagoruyko & Komodakis 2016): {16 * _k}/{32 * _k}/{64 * _k} wide, no dropout",
        widths=(16 * _k, 32 * _k, 64 * _k),
        stem_chans=16,
    )

# ----------------------------------------------------------------------------------------------------------------------
# the seeds' network

_register(
    "d2l_resnet18",
    D2LResNet,
    "the seeds' ResNet-18 (Dive into Deep Learning 7.6) for Fashion-MNIST: Residual blocks",
    "d2l",
)


# ----------------------------------------------------------------------------------------------------------------------
# lookups


def list_models(filter: str = "") -> list[str]:
    """Registered model names, in registry order (ImageNet, CIFAR, d2l); only those containing `filter` if given."""
    return [name for name in _REGISTRY if filter.lower() in name.lower()]


def model_entry(name: str) -> ModelEntry:
    """The registry record of `name`; a ReslabError naming the nearest valid names if there is none."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ReslabError(f"unknown model {name!r}; {_did_you_mean(name)}")
    return entry


def build_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model; keyword overrides (in_chans, num_classes, shortcut, stem, ...) replace defaults."""
    return model_entry(name).build(**overrides)


def _did_you_mean(name: str, n: int = 3) -> str:
    close = nearest_names(name, list(_REGISTRY), n=n)
    if close:
        return f"did you mean {', '.join(close)}?"
    return "see `reslab models` for the list"


def nearest_names(name: str, names: list[str], n: int = 3) -> list[str]:
    """Up to n names most like `name`: by string similarity, then by how near their depth is (resnet51 -> resnet50)."""
    query = name.lower().replace("-", "").replace("_", "")

    def depth(s: str) -> int | None:
        m = re.search(r"(\d+)\D*$", s)
        return int(m.group(1)) if m else None

    def key(i_candidate: tuple[int, str]) -> tuple:
        i, candidate = i_candidate
        ratio = difflib.SequenceMatcher(None, query, candidate.lower().replace("_", "")).ratio()
        dq, dc = depth(query), depth(candidate)
        gap = abs(dq - dc) if dq is not None and dc is not None else 0
        return (-round(ratio, 6), gap, i)

    ranked = sorted(enumerate(names), key=key)
    cutoff = [c for i, c in ranked if difflib.SequenceMatcher(None, query, c.lower().replace("_", "")).ratio() >= 0.6]
    return cutoff[:n]
