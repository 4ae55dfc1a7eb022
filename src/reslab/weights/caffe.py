"""Kaiming He's Caffe ResNets (.caffemodel) read without Caffe: the protobuf wire format of the few fields needed.

A .caffemodel is a serialised `NetParameter` (caffe/src/caffe/proto/caffe.proto). Only these fields are read:

    NetParameter      name = 1 (string); layer = 100 (LayerParameter); layers = 2 (V1LayerParameter, the old format)
    LayerParameter    name = 1; type = 2 (string); blobs = 7 (BlobProto)
    V1LayerParameter  name = 4; type = 5 (enum); blobs = 6
    BlobProto         shape = 7 (BlobShape: dim = 1, packed int64); data = 5 (packed float); double_data = 8;
                      num, channels, height, width = 1..4 (the legacy 4-D shape)

and every other field is skipped by its wire type. Protobuf's wire format: each field is a varint key
(field_number << 3 | wire_type) followed by a varint (type 0), 8 bytes (1), a varint length and that many bytes (2),
or 4 bytes (5); a packed repeated field is one type-2 field holding the values back to back.

The network (ResNet-50/101/152-deploy.prototxt) maps onto reslab's ResNet with stride_placement="v1" and
stem_pool="ceil":

    conv1, bn_conv1, scale_conv1             -> conv1, bn1          (ResNet-50's conv1 also has a bias)
    res{s}{b}_branch1, bn.., scale..         -> layer{s-1}.{i}.downsample.0, .1
    res{s}{b}_branch2a/2b/2c, bn.., scale..  -> layer{s-1}.{i}.conv1/bn1, conv2/bn2, conv3/bn3
    fc1000                                   -> fc

with stages s = 2..5 and blocks b = a, b, c, ... (ResNet-50) or a, b1, b2, ... (ResNet-101/152). Caffe splits a
batch norm in two layers: BatchNorm holds (mean * f, variance * f, f), f the moving-average normaliser, so the
statistics are blob / f (Caffe's own batch_norm_layer.cpp: scale = f == 0 ? 0 : 1 / f), and Scale holds gamma and
beta. Its eps is BatchNormParameter's default 1e-5 (the prototxts set none), as PyTorch's. A convolution bias
followed by a batch norm is folded into the norm's running mean (BN(Wx + c) = BN'(Wx) with mean' = mean - c), so
reslab's bias-free convolutions hold the same function exactly.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from reslab.errors import ReslabError
from reslab.models.blocks import Bottleneck
from reslab.weights.adapt import summarise

# field numbers (caffe.proto)
NET_NAME, NET_LAYER, NET_LAYERS_V1 = 1, 100, 2
LAYER_NAME, LAYER_TYPE, LAYER_BLOBS = 1, 2, 7
V1_NAME, V1_TYPE, V1_BLOBS = 4, 5, 6
BLOB_SHAPE, BLOB_DATA, BLOB_DOUBLE_DATA, BLOB_LEGACY_DIMS = 7, 5, 8, (1, 2, 3, 4)
SHAPE_DIM = 1
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


class WireError(ReslabError):
    pass


# ----------------------------------------------------------------------------------------------------------------------
# the protobuf wire format


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise WireError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint longer than 10 bytes")


def fields(buf: memoryview, start: int = 0, end: int | None = None):
    """(field number, wire type, value) for each field of one message: an int for varints, a memoryview otherwise."""
    pos, end = start, len(buf) if end is None else end
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            value, pos = _varint(buf, pos, end)
        elif wire == LENGTH:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise WireError(f"field {number} runs past the end of its message ({n} bytes)")
            value, pos = buf[pos : pos + n], pos + n
        elif wire in (FIXED64, FIXED32):
            n = 8 if wire == FIXED64 else 4
            if pos + n > end:
                raise WireError(f"field {number} is truncated")
            value, pos = buf[pos : pos + n], pos + n
        else:  # 3 and 4 are the long-deprecated groups: not in any caffe.proto message
            raise WireError(f"field {number} has wire type {wire}, which Caffe's messages do not use")
        yield number, wire, value


def _packed_varints(wire: int, value) -> list[int]:
    if wire == VARINT:
        return [value]
    out, pos = [], 0
    while pos < len(value):
        v, pos = _varint(value, pos, len(value))
        out.append(v)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# NetParameter -> {layer name: [blobs]}


@dataclass
class CaffeLayer:
    name: str
    type: str
    blobs: list[np.ndarray]  # float32, each in its own shape


def _blob(buf: memoryview) -> np.ndarray:
    shape: list[int] | None = None
    legacy = {}
    chunks: list[np.ndarray] = []
    for number, wire, value in fields(buf):
        if number == BLOB_SHAPE and wire == LENGTH:
            shape = [d for n, w, v in fields(value) if n == SHAPE_DIM for d in _packed_varints(w, v)]
        elif number == BLOB_DATA:
            chunks.append(np.frombuffer(value, dtype="<f4"))  # packed (type 2) or one value (type 5)
        elif number == BLOB_DOUBLE_DATA:
            chunks.append(np.frombuffer(value, dtype="<f8").astype(np.float32))
        elif number in BLOB_LEGACY_DIMS and wire == VARINT:
            legacy[number] = value
    data = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if shape is None:
        shape = [legacy.get(i, 0) for i in BLOB_LEGACY_DIMS] if legacy else [data.size]
        while len(shape) > 1 and shape[0] == 1:  # (1, 1, 1000, 2048) -> (1000, 2048)
            shape = shape[1:]
    if int(np.prod(shape)) != data.size:
        raise WireError(f"a blob of shape {tuple(shape)} holds {data.size} values")
    return data.astype(np.float32).reshape(shape)


def _layer(buf: memoryview, v1: bool) -> CaffeLayer:
    name_f, type_f, blobs_f = (V1_NAME, V1_TYPE, V1_BLOBS) if v1 else (LAYER_NAME, LAYER_TYPE, LAYER_BLOBS)
    name, kind, blobs = "", "", []
    for number, wire, value in fields(buf):
        if number == name_f and wire == LENGTH:
            name = bytes(value).decode("utf-8", "replace")
        elif number == type_f:
            kind = f"V1 type {value}" if wire == VARINT else bytes(value).decode("utf-8", "replace")
        elif number == blobs_f and wire == LENGTH:
            blobs.append(_blob(value))
    return CaffeLayer(name, kind, blobs)


def read_caffemodel(path: str | Path) -> tuple[str, dict[str, CaffeLayer]]:
    """(network name, {layer name: CaffeLayer}) of the layers that hold blobs; ReslabError naming the file if the
    bytes are not a Caffe NetParameter."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ReslabError(f"{path}: cannot read the file ({e.strerror or e})") from None
    buf = memoryview(data)
    name, layers = "", {}
    try:
        for number, wire, value in fields(buf):
            if number == NET_NAME and wire == LENGTH:
                name = bytes(value).decode("utf-8", "replace")
            elif number in (NET_LAYER, NET_LAYERS_V1) and wire == LENGTH:
                layer = _layer(value, v1=number == NET_LAYERS_V1)
                if layer.blobs:
                    layers[layer.name] = layer
    except WireError as e:
        raise ReslabError(f"{path}: not a Caffe .caffemodel (protobuf NetParameter): {e}") from None
    if not layers:
        raise ReslabError(f"{path}: no layer with weights in it: not a trained .caffemodel (a prototxt or solver?)")
    return name, layers


# ----------------------------------------------------------------------------------------------------------------------
# Caffe layer names -> reslab's state_dict


def _block_names(layers: dict[str, CaffeLayer], stage: int, count: int) -> list[str]:
    """Caffe's names of the blocks of stage `stage` (2..5): 2a 2b 2c (ResNet-50) or 4a 4b1 4b2 ... (101, 152)."""
    names = []
    for i in range(count):
        letter = f"{stage}{string.ascii_lowercase[i]}" if i < 26 else None
        numbered = f"{stage}b{i}"
        if i == 0 or (letter and f"res{letter}_branch2a" in layers):
            names.append(f"{stage}a" if i == 0 else letter)
        else:
            names.append(numbered)
    return names


class _Taking:
    """The Caffe layers as they are taken into reslab's state_dict `sd`: which were used, which the model needs that
    the file lacks, which convolutions had a bias folded into their batch norm."""

    def __init__(self, layers: dict[str, CaffeLayer]):
        self.layers = layers
        self.sd: dict[str, torch.Tensor] = {}
        self.used: set[str] = set()
        self.missing: list[str] = []
        self.folded: list[str] = []

    def take(self, name: str, nblobs: tuple[int, ...]) -> list[np.ndarray] | None:
        layer = self.layers.get(name)
        if layer is None:
            self.missing.append(name)
            return None
        self.used.add(name)
        if len(layer.blobs) not in nblobs:
            raise ReslabError(
                f"Caffe layer {name!r} ({layer.type}) holds {len(layer.blobs)} blobs, expected "
                f"{' or '.join(map(str, nblobs))}"
            )
        return layer.blobs

    def conv_bn(self, caffe: str, bn: str, scale: str, conv_key: str, bn_key: str) -> None:
        conv, stats, affine = self.take(caffe, (1, 2)), self.take(bn, (3,)), self.take(scale, (2,))
        if conv is None or stats is None or affine is None:
            return
        factor = float(stats[2].reshape(-1)[0])
        inv = 0.0 if factor == 0 else 1.0 / factor  # as Caffe's batch_norm_layer.cpp
        mean = stats[0].reshape(-1) * inv
        if len(conv) == 2:  # BN(Wx + c) == BN(Wx) with the running mean moved by c
            mean = mean - conv[1].reshape(-1)
            self.folded.append(caffe)
        sd = self.sd
        sd[f"{conv_key}.weight"] = torch.from_numpy(conv[0].copy())
        sd[f"{bn_key}.weight"] = torch.from_numpy(affine[0].reshape(-1).copy())
        sd[f"{bn_key}.bias"] = torch.from_numpy(affine[1].reshape(-1).copy())
        sd[f"{bn_key}.running_mean"] = torch.from_numpy(mean.astype(np.float32))
        sd[f"{bn_key}.running_var"] = torch.from_numpy((stats[1].reshape(-1) * inv).astype(np.float32))

    def check_all_matched(self) -> None:
        unexpected = sorted(set(self.layers) - self.used)
        if self.missing or unexpected:
            parts = []
            if self.missing:
                parts.append(f"the model needs {summarise(self.missing)}, which the file lacks")
            if unexpected:
                parts.append(f"the file has {summarise(unexpected)}, which the model has no place for")
            raise ReslabError(
                "the Caffe layers do not match the model: " + "; ".join(parts) + " (Kaiming He's models are "
                "resnet50, resnet101 and resnet152; widths and depths must be the file's)"
            )


def caffe_state_dict(layers: dict[str, CaffeLayer], model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """reslab's state_dict (tensors in the file's shapes) for a bottleneck ResNet shaped like `model`, and notes on
    what was folded. ReslabError listing the layers `model` needs that the file lacks, or has and `model` does not."""
    t = _Taking(layers)
    t.conv_bn("conv1", "bn_conv1", "scale_conv1", "conv1", "bn1")
    stage = 2
    while hasattr(model, f"layer{stage - 1}"):
        blocks = list(getattr(model, f"layer{stage - 1}"))
        if not all(isinstance(b, Bottleneck) for b in blocks):
            raise ReslabError(
                "Kaiming He's Caffe models are bottleneck ResNets (resnet50, resnet101, resnet152); "
                f"{type(model).__name__} here has {type(blocks[0]).__name__} blocks"
            )
        for i, (block, b) in enumerate(zip(blocks, _block_names(layers, stage, len(blocks)), strict=True)):
            prefix = f"layer{stage - 1}.{i}"
            if block.downsample is not None:
                t.conv_bn(
                    f"res{b}_branch1",
                    f"bn{b}_branch1",
                    f"scale{b}_branch1",
                    f"{prefix}.downsample.0",
                    f"{prefix}.downsample.1",
                )
            for k, branch in enumerate(("2a", "2b", "2c"), start=1):
                t.conv_bn(
                    f"res{b}_branch{branch}",
                    f"bn{b}_branch{branch}",
                    f"scale{b}_branch{branch}",
                    f"{prefix}.conv{k}",
                    f"{prefix}.bn{k}",
                )
        stage += 1
    fc_name = "fc1000" if "fc1000" in layers else next((n for n in layers if n.startswith("fc")), "fc1000")
    fc = t.take(fc_name, (1, 2))
    if fc is not None:
        weight = fc[0].reshape(fc[0].shape[-2:]) if fc[0].ndim > 2 else fc[0]
        t.sd["fc.weight"] = torch.from_numpy(weight.copy())
        bias = fc[1].reshape(-1).copy() if len(fc) == 2 else np.zeros(weight.shape[0], "f4")
        t.sd["fc.bias"] = torch.from_numpy(bias)
    t.check_all_matched()
    folded = t.folded
    notes = [f"folded the bias of Caffe's {', '.join(folded)} into the following batch norm's running mean"] * bool(
        folded
    )
    return t.sd, notes
