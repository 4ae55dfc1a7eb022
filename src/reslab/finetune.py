"""Starting from pretrained weights: what the weights expect of an image (normalisation, size, crop), the model
fitted to the dataset's classes, and a frozen backbone for a linear probe.

    pre = weights_preprocess(config)                 # before the data: an image folder is decoded at its size
    model, report = pretrained_model(config, in_chans=3, num_classes=10)
    frozen = freeze_backbone(model)                  # --freeze backbone: only the classifier trains
"""

from __future__ import annotations

from typing import Any

from torch import nn

from reslab.config import TrainConfig
from reslab.data import Dataset
from reslab.errors import ReslabError
from reslab.weights import load_pretrained, locate
from reslab.weights.adapt import classifier
from reslab.weights.load import read_source

# an image folder without pretrained weights is stored at the CIFAR networks' size
DEFAULT_IMAGE_SIZE = 32


def weights_preprocess(config: TrainConfig) -> dict[str, Any] | None:
    """The "preprocess" dict of config.pretrained's weights (None without weights, or when they record none)."""
    if config.pretrained is None:
        return None
    return read_source(locate(config.pretrained)).preprocess


def folder_options(config: TrainConfig, preprocess: dict[str, Any] | None) -> dict[str, Any]:
    """load_dataset's options for config.dataset: an image folder is decoded at the weights' resize (or
    --image-size, or 32), in --in-chans channels (default: the weights', else RGB)."""
    if config.dataset != "imagefolder":
        for flag, value in (("--image-size", config.image_size), ("--skip-bad-images", config.skip_bad_images)):
            if value:
                raise ReslabError(f"{flag}: an option of --dataset imagefolder only, not of {config.dataset}")
        return {}
    size = config.image_size or (preprocess or {}).get("resize") or DEFAULT_IMAGE_SIZE
    in_chans = config.in_chans or (1 if (preprocess or {}).get("channel_order") == "gray" else 3)
    return {"image_size": size, "in_chans": in_chans, "skip_bad_images": config.skip_bad_images or None}


def input_pipeline(
    config: TrainConfig, data: Dataset, preprocess: dict[str, Any] | None
) -> tuple[tuple[float, ...], tuple[float, ...], int | None]:
    """(mean, std, crop size) the loaders use: the weights' normalisation where they record one for these channels
    (else the dataset's), and the weights' crop on an image folder (or --crop-size)."""
    mean, std = data.mean, data.std
    if preprocess is not None and len(preprocess.get("mean", ())) == data.in_chans:
        if preprocess.get("channel_order") == "bgr" or float(preprocess.get("value_scale", 1.0)) != 1.0:
            raise ReslabError(
                f"--pretrained {config.pretrained}: these weights take BGR images in 0-255 (Caffe's); reslab trains "
                "from RGB images in [0, 1] only: convert torchvision's or timm's weights of the same network instead"
            )
        mean, std = tuple(preprocess["mean"]), tuple(preprocess["std"])
    crop = config.crop_size
    if crop is None and config.dataset == "imagefolder" and preprocess is not None:
        crop = preprocess.get("crop")
    h, w = data.image_size
    if crop is not None and crop > min(h, w):
        raise ReslabError(f"--crop-size: expected at most the stored image size {min(h, w)}, got {crop}")
    return tuple(mean), tuple(std), crop


def pretrained_model(
    config: TrainConfig, *, in_chans: int, num_classes: int
) -> tuple[nn.Module, dict[str, Any], list[str]]:
    """(config.model with config.pretrained's weights, its build_model kwargs, the report): the first convolution
    fitted to `in_chans`, the classifier to `num_classes` (re-initialised when the count differs); the kwargs
    include what the weights need (akamaster's option-A padding, Caffe's stem pool and stride placement)."""
    pre = load_pretrained(
        config.pretrained,
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
