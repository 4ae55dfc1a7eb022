"""Starting from pretrained weights: what the weights expect of an image (normalisation, size, crop), the model
fitted to the dataset's classes, and a frozen backbone for a linear probe.

    weights = read_pretrained(config)                # read and verified once; None without --pretrained
    data = load_dataset(config.dataset, config.data_dir, **folder_options(config, weights and weights.preprocess))
    model, kwargs, report = pretrained_model(config, weights, in_chans=3, num_classes=10)
    frozen = freeze_backbone(model)                  # --freeze backbone: only the classifier trains
"""

from __future__ import annotations

from typing import Any

from torch import nn

from reslab.config import TrainConfig
from reslab.errors import ReslabError
from reslab.weights import WeightsFile, load_pretrained, read_weights
from reslab.weights.adapt import classifier


def read_pretrained(config: TrainConfig) -> WeightsFile | None:
    """config.pretrained's weights, found, verified and parsed (None without --pretrained): the file is read here
    once; its preprocessing decides how the data is decoded, its tensors then go into the model."""
    if config.pretrained is None:
        return None
    return read_weights(config.pretrained)


def pretrained_model(
    config: TrainConfig, weights: WeightsFile, *, in_chans: int, num_classes: int
) -> tuple[nn.Module, dict[str, Any], list[str]]:
    """(config.model with the `weights` read_pretrained read, its build_model kwargs, the report): the first convolution
    fitted to `in_chans`, the classifier to `num_classes` (re-initialised when the count differs); the kwargs
    include what the weights need (akamaster's option-A padding, Caffe's stem pool and stride placement)."""
    pre = load_pretrained(
        weights,
        config.model,
        in_chans=in_chans,
        num_classes=num_classes,
        model_kwargs=config.model_kwargs,
    )
    return pre.model, dict(pre.model_kwargs), pre.report


def freeze_backbone(model: nn.Module) -> list[nn.Module]:
    """Stop the gradient everywhere but the classifier; returns the modules to keep in eval mode while training,
    so that their BatchNorm layers keep the pretrained running statistics: a frozen backbone stays bit for bit
    what it was (a linear probe, as in the ResNet papers' transfer experiments)."""
    head = classifier(model)
    frozen = []
    for name, module in model.named_children():
        if name == head:
            continue
        for p in module.parameters():
            p.requires_grad_(False)
        frozen.append(module)
    if not any(p.requires_grad for p in model.parameters()):
        raise ReslabError(f"--freeze backbone: {type(model).__name__} has no classifier left to train")
    return frozen
