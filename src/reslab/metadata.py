"""How reslab describes a model inside files meant for other tools: safetensors, ONNX and torch.export (.pt2).

Every exported file carries the same description as a reslab checkpoint (reslab.checkpoint), less the training
state: "format_version", "reslab_version", "model_name", "model_kwargs" (build_model's), "input_size" [C, H, W],
"classes", "preprocess" (what a new image goes through before the model, see below) and, where known, "source" (where
the weights came from), "config" (what it was trained with) and "epoch". ONNX's metadata_props and safetensors'
`__metadata__` are maps of strings to strings, so there each entry is stored as its own JSON text under its own key:
a tool that knows nothing of reslab still reads `model_name` or `classes` with one json.loads.

The "preprocess" of a model trained before checkpoints recorded it (None) is Fashion-MNIST's, written out in full, so
that an exported file says its normalisation to whoever reads it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from reslab import __version__
from reslab.data.fashion_mnist import fashion_mnist_preprocess
from reslab.errors import ReslabError

# the version of the checkpoint format, which every description follows (reslab.checkpoint reads up to it)
FORMAT_VERSION = 2
REQUIRED = ("model_name", "model_kwargs", "input_size", "classes")
OPTIONAL = ("preprocess", "source", "config", "epoch")
KNOWN = ("format_version", "reslab_version", *REQUIRED, *OPTIONAL)


def describe(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able description of the model in a checkpoint dict (read_checkpoint's): no tensors, no training
    state except the config it was trained with."""
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise ReslabError(f"checkpoint {ckpt.get('path', '?')!r}: does not describe its model (missing {missing})")
    desc = {
        "format_version": FORMAT_VERSION,
        "reslab_version": __version__,
        "model_name": ckpt["model_name"],
        "model_kwargs": dict(ckpt["model_kwargs"]),
        "input_size": [int(v) for v in ckpt["input_size"]],
        "classes": [str(c) for c in ckpt["classes"]],
        "preprocess": ckpt.get("preprocess") or fashion_mnist_preprocess(int(ckpt["input_size"][0])),
    }
    for key in ("source", "config", "epoch"):
        if ckpt.get(key) is not None:
            desc[key] = ckpt[key]
    try:
        json.dumps(desc)
    except (TypeError, ValueError) as e:
        raise ReslabError(f"checkpoint {ckpt.get('path', '?')!r}: its description is not JSON ({e})") from None
    return desc


def to_strings(desc: dict[str, Any]) -> dict[str, str]:
    """The description as a map of strings (ONNX metadata_props, safetensors __metadata__): one JSON text a key."""
    return {key: json.dumps(value) for key, value in desc.items()}


def from_strings(strings: dict[str, str], path: str | Path) -> dict[str, Any]:
    """The description back from `to_strings`' map; ReslabError naming `path` if it is not reslab's."""
    missing = [k for k in REQUIRED if k not in strings]
    if missing:
        raise ReslabError(
            f"{str(path)!r}: has no reslab description (missing {', '.join(missing)} in its metadata); "
            "export it with `reslab export`"
        )
    try:
        desc = {k: json.loads(strings[k]) for k in KNOWN if k in strings}
    except json.JSONDecodeError as e:
        raise ReslabError(f"{str(path)!r}: its reslab metadata is not valid JSON ({e})") from None
    desc.setdefault("format_version", FORMAT_VERSION)
    check_description(desc, path)
    return desc


def check_description(desc: dict[str, Any], path: str | Path) -> None:
    """ReslabError naming `path` and the entry if a description read from a file has values no model can have."""

    def bad(key: str, expected: str) -> ReslabError:
        return ReslabError(f"{str(path)!r}: its description's {key!r}: expected {expected}, found {desc[key]!r:.80}")

    def positive_ints(v: Any, n: int) -> bool:
        return isinstance(v, list | tuple) and len(v) == n and all(isinstance(d, int) and d > 0 for d in v)

    if not positive_ints(desc["input_size"], 3):
        raise bad("input_size", "[channels, height, width] (positive integers)")
    classes = desc["classes"]
    if not isinstance(classes, list | tuple) or not classes or not all(isinstance(c, str) for c in classes):
        raise bad("classes", "a non-empty list of class names")
    if not isinstance(desc["model_kwargs"], dict) or not isinstance(desc["model_name"], str):
        raise bad("model_kwargs", "a model name and a dict of its arguments")
    pre = desc.get("preprocess")
    if pre is None:
        return
    if not isinstance(pre, dict):
        raise bad("preprocess", "a dict")
    channels = desc["input_size"][0]
    for key, positive in (("mean", False), ("std", True)):
        v = pre.get(key)
        if v is None:  # not recorded: the dataset's own is used
            continue
        ok = (
            isinstance(v, list | tuple)
            and len(v) in (1, channels)
            and all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in v)
            and (not positive or all(x > 0 for x in v))
        )
        if not ok:
            what = f"1 or {channels} finite numbers" + (" above 0 (an image is divided by them)" if positive else "")
            raise ReslabError(f"{str(path)!r}: its description's preprocess {key!r}: expected {what}, found {v!r:.80}")


# ----------------------------------------------------------------------------------------------------------------------
# safetensors
