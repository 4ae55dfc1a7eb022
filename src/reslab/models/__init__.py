"""The ResNet family: blocks, the generic ResNet, the seeds' d2l network, and the registry of named models."""

from reslab.models.blocks import (
    BasicBlock,
    Bottleneck,
    PreActBasicBlock,
    PreActBottleneck,
    Residual,
    ShortcutA,
    conv1x1,
    conv3x3,
)
from reslab.models.fuse import fuse_batchnorm
from reslab.models.registry import ModelEntry, build_model, list_models, model_entry
from reslab.models.resnet import D2LResNet, ResNet

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "D2LResNet",
    "ModelEntry",
    "PreActBasicBlock",
    "PreActBottleneck",
    "ResNet",
    "Residual",
    "ShortcutA",
    "build_model",
    "conv1x1",
    "conv3x3",
    "fuse_batchnorm",
    "list_models",
    "model_entry",
]
