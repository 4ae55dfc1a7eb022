"""Weights from elsewhere into a reslab model: find the file, read it safely, name its tensors as reslab does,
fit them to the model asked for, and say what was done.

    pre = load_pretrained("resnet50.tv2_in1k", "resnet50", num_classes=10)   # a Pretrained
    pre.model, pre.report, pre.preprocess, pre.checkpoint()                    # the model, what was done, ...

SRC is a name from the table (`reslab weights`), a Hugging Face Hub name (hf-hub:timm/resnet50.a1_in1k[@REVISION],
see reslab.weights.hub), a URL, a file (.pth .pt .th .bin .safetensors .caffemodel) or a folder holding a timm
checkpoint and its config.json. Where the source format is not given it is taken from the
table entry, then the file's extension, then its contents:

    reslab       a reslab checkpoint (its architecture, classes and preprocessing come with it), or a plain
                 state_dict with reslab's (= torchvision's) names
    torchvision  a state_dict with torchvision's names (ResNet, ResNeXt, wide ResNet)
    timm         a state_dict (.safetensors or .pth) with timm's names, which are torchvision's for the plain
                 networks and reslab's deep-stem/avg-down layout for the "d" variants (conv1.0/1/3/4/6,
                 layerN.0.downsample.1/2 behind an AvgPool at .0); config.json beside it gives the architecture,
                 classes and preprocessing (input_size, crop_pct, interpolation, mean, std)
    akamaster    akamaster/pytorch_resnet_cifar10's .th: {"state_dict": {"module.conv1.weight", ...,
                 "module.linear.weight"}, "best_prec1"}, saved in torch's legacy format; needs shortcut_a_pad="both"
    caffe        Kaiming He's .caffemodel (see reslab.weights.caffe); needs stride_placement="v1", stem_pool="ceil"

Every torch file is read with torch.load(weights_only=True): a file that needs more (pickled classes, code) is
refused, never unpickled in full. "module." (DataParallel/DDP) and "_orig_mod." (torch.compile) prefixes are
dropped.
"""

from __future__ import annotations

import json
import math
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reslab import __version__
from reslab.checkpoint import FORMAT_VERSION, check_integrity, non_finite_tensors, save_checkpoint
from reslab.errors import ReslabError
from reslab.models import build_model as build_architecture
from reslab.models import model_entry
from reslab.models.probe import first_conv
from reslab.models.registry import nearest_names
from reslab.models.timm_family import not_covered, timm_resnets
from reslab.optional import interrupted
from reslab.weights.adapt import classifier, fit_state_dict
from reslab.weights.caffe import caffe_state_dict, read_caffemodel
from reslab.weights.download import (
    fetch_weights,
    find_cached,
    hash_prefix,
    hub_checkpoints,
    verify_file,
    weights_cache,
)
from reslab.weights.hub import HubFiles, hub_download, is_hub_name
from reslab.weights.imagenet_classes import IMAGENET_CLASSES
from reslab.weights.table import (
    AKAMASTER,
    CAFFE,
    CIFAR10_CLASSES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    REQUIRED_KWARGS,
    SOURCE_FORMATS,
    TORCHVISION_V1,
    WEIGHTS,
    WeightsEntry,
    entry_for_file,
    natural_preprocess,
)
from reslab.weights.timm_hub import TIMM_HUB_WEIGHTS, timm_hub_entry

PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile
WEIGHT_SUFFIXES = (".pth", ".pt", ".th", ".bin", ".tar", ".ckpt", ".safetensors", ".caffemodel")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")  # in a timm folder
CLASS_LISTS = {"imagenet": IMAGENET_CLASSES, "cifar10": CIFAR10_CLASSES}


# ----------------------------------------------------------------------------------------------------------------------
# finding the file


@dataclass(frozen=True)
class Located:
    path: Path  # the weights file
    entry: WeightsEntry | None  # its table entry, if it is a published file
    url: str | None
    sha256: str | None  # checked against the name's prefix on this load; None where the name carries none
    hub: HubFiles | None = None  # where a Hub name resolved to: repository, revision, commit


def locate(src: str | Path, *, allow_pickle: bool = False) -> Located:
    """The weights file SRC names, downloaded or found in a cache if need be, its SHA-256 checked. `allow_pickle`
    lets a Hub repository without model.safetensors give its pytorch_model.bin."""
    s = str(src)
    if is_hub_name(s):
        files = hub_download(s, allow_pickle=allow_pickle)
        return Located(files.weights, None, None, files.sha256, hub=files)
    entry, url = WEIGHTS.get(s), None
    if entry is not None:
        url = entry.url
        if url:
            path = fetch_weights(url, entry.filename)
        else:
            path = find_cached(entry.filename)
            if path is None:
                raise ReslabError(
                    f"{entry.id}: {entry.filename} is in neither {weights_cache()} nor torch's cache "
                    f"{hub_checkpoints()}; {entry.how_to_get}"
                )
    elif s.startswith(("http://", "https://")):
        url = s
        path = fetch_weights(url)
        entry = entry_for_file(path.name)
    else:
        path = Path(s).expanduser()
        if not path.exists():
            raise ReslabError(_not_found(s))
        if path.is_dir():
            path = _weights_in_folder(path)
        entry = entry_for_file(path.name)
    # published names carry the start of their SHA-256: checked on every load, not only after a download
    prefix = hash_prefix(path.name) if (entry or url or path.suffix in (".pth", ".th")) else None
    sha = verify_file(path, prefix, url=url) if prefix else None
    return Located(path, entry, url, sha)


def _not_found(s: str) -> str:
    if s in TIMM_HUB_WEIGHTS:
        return f"{s!r}: no such file; timm's weights of that name are on the Hugging Face Hub: hf-hub:timm/{s}"
    if "/" not in s and Path(s).suffix not in WEIGHT_SUFFIXES:  # meant as a name from the table
        close = nearest_names(s, list(WEIGHTS))
        hint = f"did you mean {', '.join(close)}? " if close else ""
        return f"{s!r}: no such file, and no weights of that name in the table; {hint}`reslab weights` lists them"
    return f"{s}: no such file or folder (expected a weights file, a URL or a name from `reslab weights`)"


def _weights_in_folder(folder: Path) -> Path:
    """The weights file of a checkpoint folder (a timm / Hugging Face snapshot: config.json + model.safetensors)."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    for ext in (".safetensors", ".pth", ".bin", ".pt"):
        found = sorted(folder.glob(f"*{ext}"))
        if found:
            return found[0]
    raise ReslabError(f"{folder}: a folder without a weights file (expected {' or '.join(WEIGHT_FILES[:2])})")


# ----------------------------------------------------------------------------------------------------------------------
# reading it: a Source is what a file holds before it meets a model


@dataclass
class Source:
    format: str
    state_dict: dict[str, torch.Tensor] | None  # reslab's names (None for Caffe until the model's shape is known)
    caffe_layers: dict | None = None
    model_name: str | None = None  # the architecture the source says it is
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    preprocess: dict[str, Any] | None = None
    classes: tuple[str, ...] | None = None  # for the source's own classifier
    notes: list[str] = field(default_factory=list)


def read_source(loc: Located, source_format: str | None = None) -> Source:
    if source_format is not None and source_format not in SOURCE_FORMATS:
        raise ReslabError(f"--from: expected one of {', '.join(SOURCE_FORMATS)}, got {source_format!r}")
    path = loc.path
    fmt = source_format or (loc.entry.source if loc.entry else None) or ("timm" if loc.hub else None)
    if fmt is None and path.suffix == ".caffemodel":
        fmt = "caffe"
    if fmt == "caffe":
        _, layers = read_caffemodel(path)
        return Source(
            "caffe",
            None,
            caffe_layers=layers,
            model_name=loc.entry.model if loc.entry else None,
            preprocess=CAFFE,  # Kaiming He's: BGR 0..255 minus the mean
            classes=IMAGENET_CLASSES,  # Caffe's ImageNet labels are the synsets in WordNet-id order, as torchvision's
        )
    obj = _read_tensors(path)
    if fmt is None:
        fmt = _detect(path, obj)
    if fmt == "reslab" and isinstance(obj, dict) and "format_version" in obj:
        check_integrity(obj, path)  # its checksum, and finite weights
        return _reslab_checkpoint(obj, path)
    sd = _state_dict_of(obj, path)
    if bad := non_finite_tensors(sd):  # weights from elsewhere: a NaN would train or predict as nonsense, silently
        names = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise ReslabError(f"{path}: its weights hold NaN or infinite values ({names}): not usable weights")
    if fmt == "akamaster":
        sd = {("fc." + k[len("linear.") :] if k.startswith("linear.") else k): v for k, v in sd.items()}
    src = Source(fmt, sd)
    if fmt == "timm" and loc.hub is not None and loc.hub.config is None:
        _timm_hub_without_config(loc.hub, src)
    elif fmt == "timm":
        _read_timm_config(path, src)
    elif loc.entry is not None:
        src.model_name = loc.entry.model
        src.preprocess = loc.entry.preprocess
        src.classes = CLASS_LISTS[loc.entry.classes]
    elif fmt == "akamaster":  # all of its models are CIFAR-10's, trained on ImageNet-normalised 32x32 images
        src.preprocess, src.classes = AKAMASTER, CIFAR10_CLASSES
    elif fmt == "torchvision":
        src.notes.append("not a published file reslab knows: torchvision's ImageNet preprocessing assumed")
        src.preprocess, src.classes = TORCHVISION_V1, IMAGENET_CLASSES
    else:
        src.notes.append("a plain state_dict: it records no classes and no preprocessing")
    return src


def _read_tensors(path: Path) -> Any:
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file  # optional: only timm's .safetensors files need it
        except ImportError as e:
            if interrupted(e):
                raise KeyboardInterrupt from None
            raise ReslabError(
                f"{path}: reading .safetensors files needs the 'safetensors' package: pip install safetensors"
            ) from None
        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own SafetensorError on a damaged header
            raise ReslabError(f"{path}: not a readable .safetensors file ({e})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ReslabError(
            f"{path}: not a weights file torch.load reads safely with weights_only=True ({first}); reslab never "
            "unpickles anything more than tensors and plain values"
        ) from None


def _detect(path: Path, obj: Any) -> str:
    if isinstance(obj, dict) and "format_version" in obj and "model" in obj:
        return "reslab"
    sd = _state_dict_of(obj, path)
    if path.suffix == ".th" or "linear.weight" in sd:
        return "akamaster"
    if _timm_config_file(path) is not None or "conv1.0.weight" in sd or path.suffix == ".safetensors":
        return "timm"
    conv, fc = sd.get("conv1.weight"), sd.get("fc.weight")
    if conv is not None and fc is not None and conv.ndim == 4 and conv.shape[1] == 3 and fc.shape[0] == 1000:
        return "torchvision"  # an ImageNet model in torchvision's names
    return "reslab"  # a plain state_dict in reslab's names (which are torchvision's)


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key


def _state_dict_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a state_dict or of a {"state_dict": ...} / {"model": ...} wrapper, prefixes stripped."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict) and obj[key] and all(torch.is_tensor(v) for v in obj[key].values()):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise ReslabError(
            f"{path}: not a state_dict (expected a dict of tensors, or one under 'state_dict' or 'model'); "
            f"found {type(obj).__name__}"
            + (f" with keys {', '.join(map(str, list(obj)[:6]))}" if isinstance(obj, dict) else "")
        )
    return {_strip(k): v for k, v in obj.items()}


def _reslab_checkpoint(ckpt: dict[str, Any], path: Path) -> Source:
    kwargs = dict(ckpt.get("model_kwargs") or {})
    kwargs.pop("in_chans", None)
    kwargs.pop("num_classes", None)
    return Source(
        "reslab",
        {_strip(k): v for k, v in ckpt["model"].items()},
        model_name=ckpt.get("model_name"),
        model_kwargs=kwargs,
        preprocess=ckpt.get("preprocess"),
        classes=tuple(ckpt["classes"]) if ckpt.get("classes") else None,
        notes=[f"a reslab checkpoint of {ckpt.get('model_name')} (format {ckpt.get('format_version')})"],
    )


# ----------------------------------------------------------------------------------------------------------------------
# timm


def _timm_config_file(path: Path) -> Path | None:
    f = path.with_name("config.json")
    return f if f.is_file() else None


def timm_architecture(arch: str) -> tuple[str, dict[str, Any]]:
    """timm's architecture name -> (reslab model, kwargs): reslab registers timm's ResNets under timm's names
    ("resnet101d" -> ("resnet101d", {})). A pretrained tag ("resnet50.a1_in1k") is ignored. The others (SE, ECA,
    anti-aliased, ResNet-RS, ...) are a ReslabError naming what reslab lacks for them."""
    base = arch.split(".")[0]
    if base in timm_resnets():
        return base, {}
    lacks = not_covered(base) or "a layout reslab does not know"
    raise ReslabError(
        f"timm architecture {arch!r}: reslab does not build it yet (it needs {lacks}); reslab builds timm's "
        "ResNets, ResNeXts and wide ResNets made of plain BasicBlock/Bottleneck blocks (resnet10t ... resnet200d, "
        "the c/d/s/t stems; `reslab models` lists them)"
    )


def _timm_hub_without_config(files: HubFiles, src: Source) -> None:
    """A Hub snapshot with no config.json in the cache (timm.create_model(..., pretrained=True) caches only the
    weights): the architecture from the repository's name, the preprocessing from timm's results table."""
    name = files.repo_id.split("/")[1]
    src.model_name, src.model_kwargs = timm_architecture(name)
    entry = timm_hub_entry(files.repo_id)
    if entry is not None:
        src.preprocess = entry.preprocess
        where = f"timm's results table ({entry.img_size}px, crop_pct {entry.crop_pct}, {entry.interpolation})"
    else:
        src.preprocess = TORCHVISION_V1
        where = "torchvision's ImageNet preprocessing assumed"
    src.classes = IMAGENET_CLASSES
    src.notes.append(f"no config.json in the cache: architecture {src.model_name} from the repository's name; {where}")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


# timm config fields reslab reads: (what a valid value is, what the message says was expected)
TIMM_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "architecture": (lambda v: isinstance(v, str), "a model name (a string)"),
    "num_classes": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive integer"),
    "input_size": (
        lambda v: isinstance(v, list | tuple) and len(v) == 3 and all(isinstance(d, int) and d > 0 for d in v),
        "[channels, height, width] (positive integers)",
    ),
    "crop_pct": (lambda v: _is_number(v) and 0 < v <= 2, "a number in (0, 2]"),
    "interpolation": (lambda v: isinstance(v, str), "a string (bilinear, bicubic)"),
    "crop_mode": (lambda v: isinstance(v, str), "a string (center)"),
    "mean": (lambda v: isinstance(v, list | tuple) and len(v) in (1, 3) and all(map(_is_number, v)), "1 or 3 numbers"),
    "std": (
        lambda v: isinstance(v, list | tuple) and len(v) in (1, 3) and all(_is_number(x) and x > 0 for x in v),
        "1 or 3 positive numbers",
    ),
    "label_names": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
}


def _check_timm_types(cfg_file: Path, *configs: dict[str, Any]) -> None:
    """ReslabError naming the file and field if a field reslab reads has the wrong type or value."""
    for cfg in configs:
        for key, (ok, expected) in TIMM_FIELDS.items():
            value = cfg.get(key)
            if value is not None and not ok(value):
                raise ReslabError(f"{cfg_file}: {key!r}: expected {expected}, found {json.dumps(value)[:80]}")


def _read_timm_config(path: Path, src: Source) -> None:
    cfg_file = _timm_config_file(path)
    if cfg_file is None:
        src.notes.append(f"no config.json beside {path.name}: torchvision's ImageNet preprocessing assumed")
        src.preprocess = TORCHVISION_V1
        return
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as e:
        raise ReslabError(f"{cfg_file}: not a readable JSON file ({e})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("pretrained_cfg") or {}, dict):
        raise ReslabError(f"{cfg_file}: expected a timm config (a JSON object, its pretrained_cfg an object)")
    pcfg = dict(cfg.get("pretrained_cfg") or cfg)  # timm's hub format, or the legacy single dict
    _check_timm_types(cfg_file, cfg, pcfg)
    arch = cfg.get("architecture") or pcfg.get("architecture")
    if arch:
        src.model_name, src.model_kwargs = timm_architecture(arch)
    num_classes = cfg.get("num_classes", pcfg.get("num_classes"))
    size = pcfg.get("input_size") or (3, 224, 224)
    crop_pct = pcfg.get("crop_pct") or 0.875
    crop = int(size[-1])
    interpolation = pcfg.get("interpolation") or "bilinear"
    if interpolation not in ("bilinear", "bicubic", "nearest"):
        src.notes.append(f"timm interpolation {interpolation!r} is taken as bilinear")
        interpolation = "bilinear"
    if pcfg.get("crop_mode", "center") != "center":
        src.notes.append(f"timm crop_mode {pcfg['crop_mode']!r}: reslab resizes the shorter side and centre-crops")
    # timm's eval transform: Resize(floor(size / crop_pct)) then CenterCrop(size) (timm/data/transforms_factory.py)
    src.preprocess = natural_preprocess(
        resize=math.floor(crop / crop_pct),
        crop=crop,
        mean=pcfg.get("mean") or IMAGENET_MEAN,
        std=pcfg.get("std") or IMAGENET_STD,
        interpolation=interpolation,
    )
    labels = cfg.get("label_names") or pcfg.get("label_names")
    if labels and (num_classes is None or len(labels) == num_classes):
        src.classes = tuple(str(x) for x in labels)
    elif num_classes == 1000:
        src.classes = IMAGENET_CLASSES
    src.notes.append(f"timm config {cfg_file.name}: {arch or 'no architecture'}, input {crop}, crop_pct {crop_pct}")


# ----------------------------------------------------------------------------------------------------------------------
# fitting it to a model


@dataclass
class Pretrained:
    """A model with weights from elsewhere, and everything a reslab checkpoint of it records."""

    model: nn.Module  # weights loaded (train mode, as built)
    model_name: str
    model_kwargs: dict[str, Any]  # build_model's, in_chans and num_classes included
    input_size: list[int]  # [C, H, W]
    classes: list[str]
    preprocess: dict[str, Any] | None
    source: dict[str, Any]  # where the weights came from, for the checkpoint's "source" entry
    report: list[str]  # what was loaded, adapted, re-initialised: one line each

    @property
    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def checkpoint(self) -> dict[str, Any]:
        """A weights-only reslab checkpoint (format 2): what `reslab convert` writes."""
        return {
            "format_version": FORMAT_VERSION,
            "reslab_version": __version__,
            "model_name": self.model_name,
            "model_kwargs": dict(self.model_kwargs),
            "input_size": list(self.input_size),
            "classes": list(self.classes),
            "model": self.model.state_dict(),
            "preprocess": self.preprocess,
            "source": self.source,
        }


@dataclass(frozen=True)
class WeightsFile:
    """A weights source found, verified and parsed once: `train --pretrained` reads its preprocessing before the
    data and fits its tensors to the model after, without a second read of the file."""

    src: str  # as the user named it
    located: Located
    source: Source

    @property
    def preprocess(self) -> dict[str, Any] | None:
        return self.source.preprocess


def read_weights(src: str | Path, source_format: str | None = None, *, allow_pickle: bool = False) -> WeightsFile:
    """Find SRC (downloading it if need be), check its SHA-256 and parse it: the one read of the file."""
    loc = locate(src, allow_pickle=allow_pickle)
    return WeightsFile(str(src), loc, read_source(loc, source_format))


def load_pretrained(
    src: str | Path | WeightsFile,
    model_name: str | None = None,
    *,
    in_chans: int | None = None,
    num_classes: int | None = None,
    source_format: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    allow_pickle: bool = False,
) -> Pretrained:
    """The model `model_name` (default: the one the source names) with the weights SRC holds, fitted to `in_chans`
    and `num_classes` (default: the weights' own). What `reslab.build_model(name, weights=SRC)`, `reslab convert`
    and `reslab train --pretrained` use. SRC may be read_weights()'s answer (then `source_format` was given there).
    `allow_pickle`: a Hub repository without model.safetensors may give its pickle file (see reslab.weights.hub).
    ReslabError on anything that does not fit; nothing is loaded partly."""
    weights = src if isinstance(src, WeightsFile) else read_weights(src, source_format, allow_pickle=allow_pickle)
    loc, source, src = weights.located, weights.source, weights.src
    name = _model_name(model_name, source, src)
    kwargs = _architecture_kwargs(source, model_kwargs or {}, name)

    with torch.device("meta"):  # the architecture's shape, at no cost: which keys, which blocks
        skeleton = build_architecture(name, **kwargs)
    notes = list(source.notes)
    sd = source.state_dict
    if source.format == "caffe":
        sd, folded = caffe_state_dict(source.caffe_layers, skeleton)
        notes += folded
    conv_w, head_w = f"{first_conv(skeleton)}.weight", f"{classifier(skeleton)}.weight"
    src_in = sd[conv_w].shape[1] if conv_w in sd and sd[conv_w].ndim == 4 else None
    src_classes = sd[head_w].shape[0] if head_w in sd else None
    in_chans = in_chans or src_in or model_entry(name).default_in_chans
    num_classes = num_classes or src_classes or model_entry(name).default_num_classes

    model = build_architecture(name, in_chans=in_chans, num_classes=num_classes, **kwargs)
    report = fit_state_dict(model, sd)

    preprocess = _adapt_preprocess(source.preprocess, src_in, in_chans, notes)
    if num_classes == src_classes and source.classes and len(source.classes) == num_classes:
        classes = list(source.classes)
    else:
        classes = [f"class_{i}" for i in range(num_classes)]
    crop = (preprocess or {}).get("crop")
    input_size = [in_chans, crop, crop] if crop else [in_chans, *model_entry(name).default_input_size[1:]]
    info = {
        "format": source.format,
        "file": loc.path.name,
        "url": loc.url,
        "id": loc.entry.id if loc.entry else None,
        "sha256": loc.sha256,
        "published_top1": loc.entry.top1 if loc.entry else None,
        "dataset": loc.entry.dataset if loc.entry else None,
        "in_chans": src_in,
        "num_classes": src_classes,
    }
    what = loc.entry.id if loc.entry else loc.path.name
    if loc.hub is not None:
        info.update(_hub_provenance(loc.hub))
        what = f"{loc.hub.name} (commit {loc.hub.commit or 'unknown'})"
    checked = ", SHA-256 verified" if loc.sha256 else ""
    lines = [f"{what}: {source.format} weights from {loc.path}{checked}", *notes, *report]
    return Pretrained(
        model=model,
        model_name=name,
        model_kwargs={**kwargs, "in_chans": in_chans, "num_classes": num_classes},
        input_size=input_size,
        classes=classes,
        preprocess=preprocess,
        source=info,
        report=lines,
    )


def _hub_provenance(files: HubFiles) -> dict[str, Any]:
    """The checkpoint's record of a Hub source: the repository, the revision asked for and the commit it was."""
    entry = timm_hub_entry(files.repo_id)
    return {
        "id": files.name,
        "hub": {"repo_id": files.repo_id, "revision": files.revision, "commit": files.commit},
        "revision": files.commit,  # the resolved commit: what `hf-hub:REPO@<it>` gives again, whatever main becomes
        "published_top1": entry.top1 if entry else None,
        "dataset": "ImageNet-1k" if entry else None,
    }


def _model_name(model_name: str | None, source: Source, src) -> str:
    if model_name is None:
        if source.model_name is None:
            raise ReslabError(
                f"{src}: these {source.format} weights do not say which architecture they are for; give the model "
                "(--model NAME; `reslab models` lists them)"
            )
        return source.model_name
    model_entry(model_name)  # an unknown name is an error naming the nearest ones
    if source.model_name is not None and source.model_name != model_name:
        raise ReslabError(
            f"{src}: these weights are for {source.model_name}, not {model_name}; use --model {source.model_name} "
            "(or leave --model out)"
        )
    return model_name


def _architecture_kwargs(source: Source, user: dict[str, Any], name: str) -> dict[str, Any]:
    """The build_model kwargs: what the format needs, what the source says, what the user asked for."""
    user = dict(user)
    for k in ("in_chans", "num_classes"):
        if k in user:
            raise ReslabError(f"{k}: pass it as its own argument (in_chans=..., num_classes=...), not a model option")
    required = REQUIRED_KWARGS.get(source.format, {})
    for k, v in required.items():
        if k in user and user[k] != v:
            raise ReslabError(
                f"{k}={user[k]!r} does not fit {source.format} weights, which need {k}={v!r}: their layers would load "
                "but compute something else"
            )
    kwargs = {**source.model_kwargs, **user, **required}
    fixed = model_entry(name).kwargs
    # what the registry entry already fixes to the same value is left out: the checkpoint records what differs
    return {k: v for k, v in kwargs.items() if not (k in fixed and fixed[k] == v)}


def _adapt_preprocess(p: dict | None, src_in: int | None, in_chans: int, notes: list[str]) -> dict | None:
    if p is None or src_in is None or in_chans == src_in:
        return None if p is None else dict(p)
    if in_chans == 1 and src_in == 3:  # the summed filters see one channel: the channels' mean statistics
        return {**p, "mean": [sum(p["mean"]) / 3], "std": [sum(p["std"]) / 3], "channel_order": "gray"}
    notes.append(f"no preprocessing recorded for {in_chans} input channels (the weights' is for {src_in})")
    return None


# ----------------------------------------------------------------------------------------------------------------------
# the public entry points


def build_model(
    name: str,
    weights: str | Path | None = None,
    *,
    in_chans: int | None = None,
    num_classes: int | None = None,
    source_format: str | None = None,
    verbose: bool = True,
    allow_pickle: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """A registered model, with pretrained weights when `weights` is given (a table name, a Hub name, a URL or a
    file).

        reslab.build_model("resnet50", weights="resnet50.tv2_in1k", num_classes=10)   # fine-tuning start
        reslab.build_model("resnet20", weights="resnet20-12fca82f.th")                 # akamaster's CIFAR model
        reslab.build_model("resnet26d", weights="hf-hub:timm/resnet26d.bt_in1k")      # timm's, via the HF cache

    Without weights this is reslab.models.build_model. With them, in_chans and num_classes default to the weights'
    own; a different in_chans adapts the first convolution, a different num_classes re-initialises the classifier,
    and `verbose` prints what was loaded, adapted and re-initialised. The model's `pretrained_cfg` holds the
    weights' classes, preprocessing and source.
    """
    if weights is None:
        overrides = {k: v for k, v in (("in_chans", in_chans), ("num_classes", num_classes)) if v is not None}
        return build_architecture(name, **overrides, **kwargs)
    pre = load_pretrained(
        weights,
        name,
        in_chans=in_chans,
        num_classes=num_classes,
        source_format=source_format,
        model_kwargs=kwargs,
        allow_pickle=allow_pickle,
    )
    if verbose:
        for line in pre.report:
            print(line)
    pre.model.pretrained_cfg = {
        "classes": pre.classes,
        "preprocess": pre.preprocess,
        "input_size": pre.input_size,
        "source": pre.source,
    }
    return pre.model


def convert(
    src: str | Path,
    output: str | Path,
    model_name: str | None = None,
    *,
    in_chans: int | None = None,
    num_classes: int | None = None,
    source_format: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    allow_pickle: bool = False,
) -> Pretrained:
    """Write SRC's weights as a weights-only reslab checkpoint at `output` (what `reslab convert` does)."""
    out = Path(output)
    if out.is_dir():
        raise ReslabError(f"-o {out}: is a folder; give the checkpoint's file name, e.g. {out / 'model.pt'}")
    pre = load_pretrained(
        src,
        model_name,
        in_chans=in_chans,
        num_classes=num_classes,
        source_format=source_format,
        model_kwargs=model_kwargs,
        allow_pickle=allow_pickle,
    )
    save_checkpoint(pre.checkpoint(), out)
    return pre
