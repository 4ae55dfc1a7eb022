"""Pretrained weights from torchvision, timm, akamaster's CIFAR models and Kaiming He's Caffe models, loaded
exactly into reslab's models.

    import reslab
    model = reslab.build_model("resnet50", weights="resnet50.tv2_in1k")            # a table name, URL or file
    model = reslab.build_model("resnet26d", weights="hf-hub:timm/resnet26d.bt_in1k")  # the Hugging Face Hub
    pre = reslab.weights.load_pretrained("resnet20-12fca82f.th", "resnet20", num_classes=100)
    reslab.weights.convert("ResNet-50-model.caffemodel", "resnet50-caffe.pt")       # = `reslab convert`

`reslab weights` lists the table and timm's Hub weights (reslab.weights.hub, docs/hub.md); `reslab convert` writes
a weights-only reslab checkpoint that eval, predict, `train --pretrained` and export read.
"""

from reslab.weights.adapt import adapt_input_conv, fit_state_dict
from reslab.weights.download import fetch_weights, hash_prefix, hub_checkpoints, verify_file, weights_cache
from reslab.weights.imagenet_classes import IMAGENET_CLASSES
from reslab.weights.load import (
    Pretrained,
    WeightsFile,
    build_model,
    convert,
    load_pretrained,
    locate,
    read_weights,
    timm_architecture,
)
from reslab.weights.table import SOURCE_FORMATS, WEIGHTS, WeightsEntry, describe_preprocess, list_weights

__all__ = [
    "IMAGENET_CLASSES",
    "SOURCE_FORMATS",
    "WEIGHTS",
    "Pretrained",
    "WeightsEntry",
    "WeightsFile",
    "adapt_input_conv",
    "build_model",
    "convert",
    "describe_preprocess",
    "fetch_weights",
    "fit_state_dict",
    "hash_prefix",
    "hub_checkpoints",
    "list_weights",
    "load_pretrained",
    "locate",
    "read_weights",
    "timm_architecture",
    "verify_file",
    "weights_cache",
]
