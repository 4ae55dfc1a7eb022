"""The table of published weights that `reslab convert ID` and `reslab.build_model(name, weights=ID)` know by name.

Each entry says where the file is, what the publisher measured (ImageNet-1k or CIFAR-10 top-1 on their own
evaluation), and how an image must be prepared for the model (reslab's "preprocess" dict). Sources:

- torchvision (BSD-3-Clause): torchvision/models/resnet.py, the `*_Weights` enums: every ResNet, ResNeXt and wide
  ResNet file, IMAGENET1K_V1 (the original recipe: resize 256) and IMAGENET1K_V2 (the 2021 recipe: resize 232),
  all centre-cropped to 224, bilinear, ImageNet mean/std on RGB in [0, 1]. Their file names end in the first 8 hex
  digits of the file's SHA-256, checked on every load. `_file_size` is torchvision's, in MB of 2**20 bytes. The V1
  wide ResNets are stored in float16 (half the size of V2): they load into float32 models.
- akamaster/pytorch_resnet_cifar10 (BSD-2-Clause, Yerlan Idelbayev): CIFAR-10 ResNet-20..1202 with option-A
  shortcuts padded on both sides; its trainer.py normalises with ImageNet's mean/std, no resize. Top-1 from its
  README (100 - test error; ResNet-1202 has no number there).
- Kaiming He's Caffe models (KaimingHe/deep-residual-networks, MIT): ResNet-50/101/152 as used in the paper; stride
  on the first 1x1 of a bottleneck, Caffe's unpadded ceil-mode stem pool, BGR input in 0..255 minus a mean. The
  mean used here is the per-channel mean of the published ResNet_mean.binaryproto (a 224x224 mean image), BGR
  (103.062623801, 115.902882574, 123.151630838), as ry/tensorflow-resnet's converter uses; subtracting the mean
  image instead changes a pixel by at most a few levels. Top-1 is the README's 1-crop error (shorter side 256,
  centre 224). The files are not hosted where a download can reach them: `models.zip` from the README's links
  holds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reslab.weights.download import hash_prefix

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.062623801, 115.902882574, 123.151630838)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def natural_preprocess(
    *,
    resize: int | None,
    crop: int | None,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    interpolation: str = "bilinear",
    channel_order: str = "rgb",
    value_scale: float = 1.0,
) -> dict[str, Any]:
    """reslab's "preprocess" dict for a model of natural images: resize the shorter side, centre-crop, normalise."""
    return {
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "value_scale": float(value_scale),
        "channel_order": channel_order,
        "resize": resize,
        "crop": crop,
        "interpolation": interpolation,
        "style": "natural",
    }


TORCHVISION_V1 = natural_preprocess(resize=256, crop=224)  # torchvision's ImageClassification(crop_size=224)
TORCHVISION_V2 = natural_preprocess(resize=232, crop=224)  # ImageClassification(crop_size=224, resize_size=232)
AKAMASTER = natural_preprocess(resize=32, crop=32)  # CIFAR-10's own 32x32 images: a photo is brought to 32x32
CAFFE = natural_preprocess(
    resize=256, crop=224, mean=CAFFE_MEAN_BGR, std=(1.0, 1.0, 1.0), channel_order="bgr", value_scale=255.0
)

SOURCE_FORMATS = ("torchvision", "timm", "akamaster", "caffe", "reslab")
# what a source's weights need of the architecture, whatever the user asks for
REQUIRED_KWARGS: dict[str, dict[str, Any]] = {
    "akamaster": {"shortcut_a_pad": "both"},
    "caffe": {"stride_placement": "v1", "stem_pool": "ceil"},
}


@dataclass(frozen=True)
class WeightsEntry:
    id: str  # what the user types: reslab convert resnet50.tv2_in1k
    model: str  # the reslab architecture
    source: str  # one of SOURCE_FORMATS
    filename: str
    url: str | None  # None: not downloadable (how_to_get says how to obtain it)
    top1: float | None  # published top-1 accuracy, %
    dataset: str  # what top1 is measured on
    preprocess: dict[str, Any]
    classes: str  # "imagenet" | "cifar10"
    num_params: int
    size_mb: float | None = None  # the file's size in MB (2**20 bytes) where published or measured
    note: str = ""
    how_to_get: str = ""
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def hash_prefix(self) -> str | None:
        return hash_prefix(self.filename)


def _torchvision() -> list[WeightsEntry]:
    # (architecture, enum member, file hash, acc@1, _file_size MB, num_params), from torchvision's *_Weights enums
    rows = [
        ("resnet18", "V1", "f37072fd", 69.758, 44.661, 11689512),
        ("resnet34", "V1", "b627a593", 73.314, 83.275, 21797672),
        ("resnet50", "V1", "0676ba61", 76.130, 97.781, 25557032),
        ("resnet50", "V2", "11ad3fa6", 80.858, 97.79, 25557032),
        ("resnet101", "V1", "63fe2227", 77.374, 170.511, 44549160),
        ("resnet101", "V2", "cd907fc2", 81.886, 170.53, 44549160),
        ("resnet152", "V1", "394f9c45", 78.312, 230.434, 60192808),
        ("resnet152", "V2", "f82ba261", 82.284, 230.474, 60192808),
        ("resnext50_32x4d", "V1", "7cdf4587", 77.618, 95.789, 25028904),
        ("resnext50_32x4d", "V2", "1a0047aa", 81.198, 95.833, 25028904),
        ("resnext101_32x8d", "V1", "8ba56ff5", 79.312, 339.586, 88791336),
        ("resnext101_32x8d", "V2", "110c445d", 82.834, 339.673, 88791336),
        ("resnext101_64x4d", "V1", "173b62eb", 83.246, 319.318, 83455272),
        ("wide_resnet50_2", "V1", "95faca4d", 78.468, 131.82, 68883240),
        ("wide_resnet50_2", "V2", "9ba9bcbe", 81.602, 263.124, 68883240),
        ("wide_resnet101_2", "V1", "32ee1156", 78.848, 242.896, 126886696),
        ("wide_resnet101_2", "V2", "d733dc28", 82.510, 484.747, 126886696),
    ]
    entries = []
    for arch, version, digest, top1, size, n in rows:
        filename = f"{arch}-{digest}.pth"
        # resnext101_64x4d has only IMAGENET1K_V1, trained with the new recipe and evaluated at resize 232
        new_recipe = version == "V2" or arch == "resnext101_64x4d"
        entries.append(
            WeightsEntry(
                id=f"{arch}.tv{'2' if version == 'V2' else ''}_in1k",
                model=arch,
                source="torchvision",
                filename=filename,
                url=f"https://download.pytorch.org/models/{filename}",
                top1=top1,
                dataset="ImageNet-1k",
                preprocess=TORCHVISION_V2 if new_recipe else TORCHVISION_V1,
                classes="imagenet",
                num_params=n,
                size_mb=size,
                note=f"torchvision IMAGENET1K_{version}" + (" (float16 file)" if size * 2**20 < 3 * n else ""),
            )
        )
    return entries


def _akamaster() -> list[WeightsEntry]:
    # (depth, file hash, README test error %, parameters as reslab counts them, file size MB)
    rows = [
        (20, "12fca82f", 8.27, 269722, 1099231 / 2**20),  # size measured on the file itself
        (32, "d509ac18", 7.37, 464154, None),
        (44, "014dd654", 6.90, 658586, None),
        (56, "4bfd9763", 6.61, 853018, None),
        (110, "1d1ed7c2", 6.32, 1727962, None),
        (1202, "f3b1deed", None, 19421274, None),
    ]
    base = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models"
    return [
        WeightsEntry(
            id=f"resnet{depth}.akamaster_cifar10",
            model=f"resnet{depth}",
            source="akamaster",
            filename=f"resnet{depth}-{digest}.th",
            url=f"{base}/resnet{depth}-{digest}.th",
            top1=None if err is None else round(100 - err, 2),
            dataset="CIFAR-10",
            preprocess=AKAMASTER,
            classes="cifar10",
            num_params=n,
            size_mb=size,
            note="akamaster/pytorch_resnet_cifar10" + (" (no published error)" if err is None else ""),
            model_kwargs=REQUIRED_KWARGS["akamaster"],
        )
        for depth, digest, err, n, size in rows
    ]


def _caffe() -> list[WeightsEntry]:
    # (depth, README 1-crop top-1 error %, parameters: torchvision's count, + 64 for ResNet-50's conv1 bias)
    rows = [(50, 24.7, 25557032 + 64), (101, 23.6, 44549160), (152, 23.0, 60192808)]
    return [
        WeightsEntry(
            id=f"resnet{depth}.caffe_in1k",
            model=f"resnet{depth}",
            source="caffe",
            filename=f"ResNet-{depth}-model.caffemodel",
            url=None,
            top1=round(100 - err, 1),
            dataset="ImageNet-1k",
            preprocess=CAFFE,
            classes="imagenet",
            num_params=n,
            note="Kaiming He's original Caffe model (1-crop)",
            how_to_get=(
                "download models.zip from the links in https://github.com/KaimingHe/deep-residual-networks (MSR or "
                f"OneDrive) and unzip it; then pass ResNet-{depth}-model.caffemodel's path, or put the file in the "
                "weights cache"
            ),
            model_kwargs=REQUIRED_KWARGS["caffe"],
        )
        for depth, err, n in rows
    ]


WEIGHTS: dict[str, WeightsEntry] = {e.id: e for e in (*_torchvision(), *_akamaster(), *_caffe())}


def list_weights(filter: str = "") -> list[WeightsEntry]:
    """The entries of the table, in order (torchvision, akamaster, Caffe); those containing `filter` if given."""
    f = filter.lower()
    return [e for e in WEIGHTS.values() if f in e.id.lower() or f in e.source]


def entry_for_file(filename: str) -> WeightsEntry | None:
    """The table entry whose published file has this name (a file downloaded by hand keeps its meaning)."""
    return next((e for e in WEIGHTS.values() if e.filename == filename), None)


def describe_preprocess(p: dict[str, Any] | None) -> str:
    """One short line: "RGB, resize 232 bilinear, crop 224, ImageNet mean/std"."""
    if not p:
        return "unknown"
    if p.get("style") != "natural":
        return f"{p.get('style')} (reslab's own)"
    order = {"rgb": "RGB", "bgr": "BGR", "gray": "gray"}.get(p.get("channel_order"), str(p.get("channel_order")))
    if p.get("value_scale", 1.0) != 1.0:
        order += f" 0-{p['value_scale']:g}"
    resize, crop = p.get("resize"), p.get("crop")
    if resize and resize == crop:
        size = f"{crop}x{crop} ({p.get('interpolation')})"
    else:
        size = f"resize {resize} {p.get('interpolation')}, crop {crop}"
    mean = [round(m, 3) for m in p["mean"]]
    if mean == [round(m, 3) for m in IMAGENET_MEAN] and p["std"] == list(IMAGENET_STD):
        norm = "ImageNet mean/std"
    elif all(s == 1.0 for s in p["std"]):
        norm = "minus mean " + "/".join(f"{m:.1f}" for m in p["mean"])
    else:
        norm = "mean " + "/".join(f"{m:.3f}" for m in p["mean"]) + ", std " + "/".join(f"{s:.3f}" for s in p["std"])
    return f"{order}, {size}, {norm}"
