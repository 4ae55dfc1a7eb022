"""Classify image files with a trained checkpoint: `reslab predict CHECKPOINT IMAGE...`.

An image of any size and mode becomes what the model saw in training: a light object on a black background, 28x28
grayscale uint8 like Fashion-MNIST, then the same resize and normalisation as the evaluation loader.

    from reslab.predict import predict
    predict("runs/resnet20/best.pt", ["shoe.jpg"], topk=3)   # [[("Sneaker", 0.91), ("Sandal", 0.06), ...]]

The checkpoint may also be a TrainedModel from reslab.load_checkpoint, or an ONNX file written by `reslab export`
(run by ONNX Runtime on the CPU). `reslab predict ... --cam DIR` also writes, per image, a Grad-CAM heat map
(Selvaraju et al. 2017) of where the predicted class (or --cam-class) comes from, over the image the model saw
(reslab.understand.cam; the model is left exactly as it was).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from reslab.backends import OnnxModel, Runner, TorchRunner, load_model
from reslab.checkpoint import TrainedModel, ensure_folder
from reslab.data.decode import decode_natural, open_image, to_8bit, upright
from reslab.data.transforms import MEAN, STD, prepare_batch
from reslab.device import amp_name, amp_warning, resolve_amp
from reslab.errors import ReslabError
from reslab.models import fuse_batchnorm
from reslab.understand import grad_cam, save_cam_overlay

# Fashion-MNIST's own size: images are brought to it first, then resized like the training images were (--resize),
# so a model trained at 96x96 sees an upsampled 28x28 image, as in training, not a sharper one.
NATIVE_SIZE = 28
# an image whose pixels all lie within this many grey levels of each other has nothing in it to classify
EMPTY_RANGE = 4

_REDUCIBLE = ("L", "LA", "RGB", "RGBA", "I", "F")


# ----------------------------------------------------------------------------------------------------------------------
# reading images


def load_image(source: str | Path | Any, *, size: int = NATIVE_SIZE, invert: bool = False) -> torch.Tensor:
    """One image file (or PIL image) -> a (size, size) uint8 tensor: grayscale, light object on black, aspect kept.

    - Transparent pixels become background: composited on black, or on white when `invert` (so they end up black).
    - `invert` turns a dark object on a light background (a photo, a drawing) into Fashion-MNIST's light-on-black.
    - Then as Fashion-MNIST's own images were made from product photos: the background is trimmed, the longest edge
      resized to `size` and the shorter one padded; so a small object in a large photo fills the frame as in
      training, and nothing is stretched.
    - A very large file is decoded at reduced scale where the format allows (JPEG DCT scaling) and shrunk by an
      integer factor first, so a 10000x10000 image takes about a second; beyond Pillow's pixel limit (179M pixels)
      it is refused as a possible decompression bomb.

    Raises ReslabError naming the file on anything unreadable.
    """
    return _like_fashion_mnist(_read_gray(source, size=size, invert=invert), size)


def _reading(source: str | Path | Any, decode):
    """decode(), with whatever goes wrong reading `source` as a ReslabError naming the file."""
    name = "<image>" if isinstance(source, Image.Image) else str(source)
    try:
        return decode()
    except FileNotFoundError:
        raise ReslabError(f"cannot read {name!r}: no such file") from None
    except IsADirectoryError:
        raise ReslabError(f"cannot read {name!r}: it is a folder, not an image") from None
    except PermissionError:
        raise ReslabError(f"cannot read {name!r}: permission denied") from None
    except UnidentifiedImageError:
        raise ReslabError(f"cannot read {name!r}: not an image Pillow can read (expected PNG or JPEG)") from None
    except Image.DecompressionBombError as e:
        raise ReslabError(
            f"cannot read {name!r}: too many pixels to decode safely ({e}); shrink it first, e.g. to 1000x1000"
        ) from None
    except (OSError, ValueError, SyntaxError) as e:  # truncated or corrupt data: Pillow raises any of these
        raise ReslabError(f"cannot read {name!r}: damaged image data ({e})") from None


def _read_gray(source: str | Path | Any, *, size: int, invert: bool) -> np.ndarray:
    """The image as (H, W) uint8 grayscale, alpha composited, inverted if asked, upright, at most ~8x `size`."""
    # at least 8x the target size; turned upright last, once the image is small
    im, orientation = _reading(source, lambda: open_image(source, draft=(None, 8 * size)))
    if im.mode == "1":
        im = im.convert("L")
    elif im.mode in ("P", "PA"):  # box-reducing palette indices would mean nothing; the palette may be transparent
        im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
    factor = max(im.size) // (8 * size)
    if factor > 1 and im.mode in _REDUCIBLE:
        # an integer box-filter shrink before anything else (converting a 10000x10000 RGBA image first costs
        # seconds), keeping 8x the target size for trimming to the object
        im = im.reduce(factor)
    im = _to_gray(im, background=255 if invert else 0)
    if invert:
        im = ImageOps.invert(im)
    return np.asarray(upright(im, orientation), dtype=np.uint8)


def _like_fashion_mnist(a: np.ndarray, size: int) -> torch.Tensor:
    """A light-on-dark grayscale (H, W) uint8 image -> (size, size) the way Fashion-MNIST's images were made
    (Xiao et al. 2017): background trimmed away, longest edge resized to `size`, centred on black.

    A grey background (a photo) is first mapped to black by stretching the levels, so that it is trimmed and the
    padding matches it. A light background (a dark object without --invert) is left alone: it is kept as the padding.
    An image already `size` x `size` is taken as it is: it is in the dataset's format (re-trimming an exported test
    image would shift or rescale it, and costs accuracy).
    """
    if a.shape == (size, size):
        return torch.from_numpy(a.copy())
    bg = _background_level(a)
    if 0 < bg < 128:
        a = np.clip((a.astype(np.float32) - bg) * (255.0 / (255 - bg)), 0, 255).round().astype(np.uint8)
        bg = 0
    # trim rows and columns within 5% of the background level, as Fashion-MNIST's conversion did
    rows, cols = np.nonzero(np.abs(a.astype(np.int16) - bg) > 0.05 * 255)
    if len(rows):
        a = a[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    h, w = a.shape
    scale = size / max(h, w)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    a = np.asarray(Image.fromarray(a).resize(new, Image.Resampling.LANCZOS, reducing_gap=3.0), dtype=np.uint8)
    canvas = np.full((size, size), bg, dtype=np.uint8)
    top, left = (size - a.shape[0]) // 2, (size - a.shape[1]) // 2
    canvas[top : top + a.shape[0], left : left + a.shape[1]] = a
    return torch.from_numpy(canvas)


def _to_gray(im, *, background: int):
    """Any Pillow mode -> "L"; alpha composited on a flat `background` level (0 black, 255 white)."""
    if im.mode.startswith("I") or im.mode == "F":
        return to_8bit(im)  # 16-bit PNGs scaled as training decodes them (Pillow's own conversion clips at 255)
    if im.mode in ("RGBA", "LA", "La", "RGBa"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (background, background, background, 255))
        im = Image.alpha_composite(bg, im)
    return im.convert("L")


def _background_level(a: np.ndarray) -> int:
    """The median of the image's border pixels: 0 for a Fashion-MNIST image (a black surround)."""
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return int(np.median(border))


# ----------------------------------------------------------------------------------------------------------------------
# natural images (ImageNet, CIFAR, image folders, pretrained weights)

_MODE = {"rgb": "RGB", "bgr": "RGB", "gray": "L"}


def is_natural(preprocess: dict[str, Any] | None) -> bool:
    return bool(preprocess) and preprocess.get("style") == "natural"


def load_natural_image(source: str | Path | Any, preprocess: dict[str, Any]) -> torch.Tensor:
    """One image file (or PIL image) -> (C, crop, crop) uint8 in the model's channel order, upright.

    As torchvision's ImageClassification on a PIL image: the shorter side resized to preprocess["resize"] (the longer
    to int(resize * long / short)) with its interpolation, then the centre crop["crop"] x crop, the offsets
    int(round((size - crop) / 2)) (zero padding where the image is smaller); `normalize_natural` does the rest.
    Decoded by reslab.data.decode, exactly as an image folder is decoded for training.
    """
    mode = _MODE.get(preprocess.get("channel_order"))
    if mode is None:
        raise ReslabError(f"checkpoint preprocess: unknown channel_order {preprocess.get('channel_order')!r}")
    resize, crop = preprocess.get("resize"), preprocess.get("crop")
    interpolation = preprocess.get("interpolation") or "bilinear"
    t = _reading(source, lambda: decode_natural(source, mode, resize=resize, crop=crop, interpolation=interpolation))
    if preprocess.get("channel_order") == "bgr":
        t = t.flip(0)
    return t


def normalize_natural(batch: torch.Tensor, preprocess: dict[str, Any]) -> torch.Tensor:
    """(N, C, H, W) uint8 -> float: pixels scaled to [0, value_scale], minus the mean, divided by the std."""
    x = batch.float() * (float(preprocess.get("value_scale", 1.0)) / 255.0)
    mean = torch.tensor(preprocess["mean"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(preprocess["std"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def _check_natural(trained: TrainedModel) -> dict[str, Any]:
    p = trained.preprocess
    channels = {"gray": 1, "rgb": 3, "bgr": 3}.get(p.get("channel_order"))
    if channels != trained.input_size[0] or len(p["mean"]) != channels:
        raise ReslabError(
            f"checkpoint {trained.path or ''}: its preprocessing ({p.get('channel_order')}, {len(p['mean'])} means) "
            f"does not describe the model's {trained.input_size[0]} input channels"
        )
    if not p.get("crop"):  # images of one size make a batch: the model's own input size
        p = {**p, "crop": trained.input_size[1]}
    return p


# ----------------------------------------------------------------------------------------------------------------------
# the model


def _runner(trained: TrainedModel | OnnxModel, amp: str = "off") -> Runner:
    """What computes the logits: ONNX Runtime for an ONNX file; else eager PyTorch with BatchNorm folded into the convs
    (models.fuse_batchnorm, a copy) in channels_last, under autocast only where `amp` asks for it
    (reslab.device.resolve_amp: 'auto' is bf16 on CPUs with native bf16, fp32 elsewhere).

    Folding and channels_last are the same fp32 arithmetic (within reslab.export's tolerance): together 1.1-1.3x lower
    latency and 1.4-1.7x the throughput of plain eager on the Xeon (docs/export.md). bf16 gives 1.9-4.4x the
    throughput there (at batch 1 only ResNet-50 gains) but its probabilities are approximate (about 0.5% of the
    largest logit), so it is asked for, not taken; torch.compile takes a minute to compile.
    """
    if isinstance(trained, OnnxModel):
        if amp != "off":
            raise ReslabError(f"--amp {amp}: an ONNX file runs as it was exported (fp32); --amp is for checkpoints")
        return trained.runner
    device = next(trained.model.parameters()).device
    if (warning := amp_warning(amp, device)) is not None:
        print(f"reslab predict: warning: {warning}", file=sys.stderr)
    dtype = resolve_amp(amp, device)
    if dtype is not None:
        print(
            f"reslab predict: {amp_name(dtype)}: probabilities are approximate (--amp off: exact fp32)", file=sys.stderr
        )
    return TorchRunner(fuse_batchnorm(trained.model), channels_last=True, amp_dtype=dtype)


def _batch(images: torch.Tensor, trained: TrainedModel | OnnxModel, device: torch.device) -> torch.Tensor:
    """uint8 images -> the model's input. Natural ones (N, C, crop, crop): normalised as the preprocessing says.
    Fashion-MNIST style (N, 28, 28): the same normalisation and resize as evaluation (prepare_batch)."""
    images = images.to(device)
    if is_natural(trained.preprocess):
        return normalize_natural(images, trained.preprocess)
    resize = trained.config.resize if trained.config is not None else None
    p = trained.preprocess or {}
    mean, std = p.get("mean", (MEAN,)), p.get("std", (STD,))  # the dataset's (MNIST's differ from Fashion-MNIST's)
    x = prepare_batch(images, resize_to=resize, mean=mean[:1], std=std[:1])  # (N, 1, H, W)
    in_chans = trained.input_size[0]
    if x.shape[1] == 1 and in_chans > 1:  # a model built for RGB input: the gray image on every channel
        x = x.expand(-1, in_chans, -1, -1)
    return x


def _read(trained: TrainedModel | OnnxModel, source: str | Path | Any, *, invert: bool) -> torch.Tensor:
    """One image as the uint8 tensor `_batch` takes."""
    if is_natural(trained.preprocess):
        return load_natural_image(source, _check_natural(trained))
    return load_image(source, invert=invert)


def image_batch(trained: TrainedModel | OnnxModel, images: Sequence[str | Path | Any], *, invert: bool = False):
    """Image files (or PIL images) -> the float batch (N, C, H, W) on the CPU that `trained` takes, as predicted."""
    return _batch(torch.stack([_read(trained, im, invert=invert) for im in images]), trained, torch.device("cpu"))


@torch.no_grad()
def predict(
    checkpoint: TrainedModel | OnnxModel | str | Path,
    images: Sequence[str | Path | Any],
    *,
    topk: int = 3,
    invert: bool = False,
    device: str = "cpu",
    amp: str = "off",
) -> list[list[tuple[str, float]]]:
    """Top-`topk` (class name, probability) pairs for each image, most likely first.

    `checkpoint` is a checkpoint path (.pt or its run folder, .safetensors, or an exported .onnx) or a TrainedModel
    from `reslab.load_checkpoint`; `images` are file paths or PIL images. `amp`: as `reslab predict --amp` (default
    exact fp32). Raises ReslabError on the first unreadable image (see `predict_files` to go on).
    """
    trained = load_model(checkpoint, device)
    if not images:
        return []
    return _topk(trained, torch.stack([_read(trained, im, invert=invert) for im in images]), topk=topk, amp=amp)


def _topk(
    trained: TrainedModel | OnnxModel, batch: torch.Tensor, *, topk: int, amp: str = "off"
) -> list[list[tuple[str, float]]]:
    """Top-k of uint8 images: (N, 28, 28) Fashion-MNIST style, or (N, C, crop, crop) natural ones."""
    classes = trained.classes
    k = max(1, min(topk, len(classes)))
    run = _runner(trained, amp)
    out = []
    for chunk in batch.split(256):
        probs = run(_batch(chunk, trained, run.device)).float().softmax(dim=1)
        p, i = probs.topk(k, dim=1)  # (B, k) each
        for row_p, row_i in zip(p.tolist(), i.tolist(), strict=True):
            out.append([(classes[c], q) for q, c in zip(row_p, row_i, strict=True)])
    return out


def class_index(classes: Sequence[str], name: str) -> int:
    """The index of the class called `name` (exactly, else the one match ignoring case); ReslabError otherwise."""
    if name in classes:
        return list(classes).index(name)
    folded = [i for i, c in enumerate(classes) if c.lower() == name.lower()]
    if len(folded) == 1:
        return folded[0]
    raise ReslabError(f"--cam-class: expected one of the model's classes ({', '.join(classes)}), got {name!r}")


def _cam_names(paths: Sequence[str], folder: Path) -> list[Path]:
    """One PNG per image, named after it; a second image of the same name gets -2, -3, ..."""
    out, seen = [], {}
    for p in paths:
        stem = Path(p).stem or "image"
        seen[stem] = seen.get(stem, 0) + 1
        out.append(folder / (f"{stem}.png" if seen[stem] == 1 else f"{stem}-{seen[stem]}.png"))
    return out


def save_cams(
    trained: TrainedModel,
    images: torch.Tensor,
    paths: Sequence[Path],
    *,
    target: int | None = None,
    device: torch.device | str | None = None,
) -> list[Path]:
    """Grad-CAM overlays of (N, 28, 28) uint8 images, one PNG per path: the image beside the heat map over it.

    target: a class index for every image, or None for each image's predicted class. The heat map is taken at the
    last stage's rectified output (reslab.understand.grad_cam's default: correct for pre-activation models too),
    in eval mode; the model's parameters, BatchNorm statistics, flags and hooks are left as they were.
    """
    dev = next(trained.model.parameters()).device if device is None else torch.device(device)
    written = []
    for start in range(0, len(images), 64):
        chunk = images[start : start + 64]
        cams = grad_cam(trained.model, _batch(chunk, trained, dev), target)  # (B, H, W) in [0, 1], CPU
        for image, cam, path in zip(chunk, cams, paths[start : start + 64], strict=True):
            written.append(save_cam_overlay(path, image.cpu(), cam))
    return written


def predict_files(
    checkpoint: TrainedModel | OnnxModel | str | Path,
    paths: Sequence[str | Path],
    *,
    topk: int = 3,
    invert: bool = False,
    device: str = "auto",
    cam_dir: str | Path | None = None,
    cam_class: str | None = None,
    amp: str = "off",
) -> list[tuple[str, str]]:
    """Print one line per image with its top-k classes; return the (path, reason) of each image that failed.

    An unreadable file is reported on stderr by name and the others are still predicted; an image with nothing in
    it is said to be so; a bad checkpoint raises ReslabError since nothing can be predicted without it. cam_dir: also
    write a Grad-CAM overlay per image there (`save_cams`), of the predicted class, or of the class named `cam_class`.
    """
    if topk < 1:
        raise ReslabError(f"--topk: expected a positive number of classes, got {topk}")
    if cam_class is not None and cam_dir is None:
        raise ReslabError("--cam-class: chooses the class of the heat maps, so it needs --cam DIR")
    trained = load_model(checkpoint, device)
    if cam_dir is not None and isinstance(trained, OnnxModel):
        raise ReslabError("--cam: Grad-CAM needs the model's gradients: a PyTorch checkpoint (.pt), not an ONNX file")
    target = None if cam_class is None else class_index(trained.classes, cam_class)
    if cam_dir is not None:
        ensure_folder(Path(cam_dir), flag="--cam")  # before any work: a file in the way is one line, not a traceback
    natural = is_natural(trained.preprocess)
    if natural:
        preprocess = _check_natural(trained)
        if invert:
            print(
                "reslab predict: note: --invert is for Fashion-MNIST models; this one takes images as they are",
                file=sys.stderr,
            )
    loaded, empty, failures = [], [], []
    for p in paths:
        try:
            image = load_natural_image(p, preprocess) if natural else _read_gray(p, size=NATIVE_SIZE, invert=invert)
        except ReslabError as e:
            failures.append((str(p), str(e)))
            print(f"reslab predict: {e}", file=sys.stderr)
            continue
        if _is_empty(image):
            empty.append(_empty_line(p, image))
            continue
        if not natural:
            if not invert and _background_level(image) >= 128:
                print(
                    f"reslab predict: note: {str(p)!r} has a light background; for a dark object use --invert",
                    file=sys.stderr,
                )
            image = _like_fashion_mnist(image, NATIVE_SIZE)
        loaded.append((str(p), image))
    _print_results(trained, loaded, empty, topk=topk, amp=amp)
    if cam_dir is not None and loaded:
        folder = Path(cam_dir)
        names = _cam_names([name for name, _ in loaded], folder)
        save_cams(trained, torch.stack([t for _, t in loaded]), names, target=target)
        what = "the predicted class" if cam_class is None else f"class {trained.classes[target]!r}"
        print(f"Grad-CAM heat maps of {what}: {len(names)} overlay{'s' if len(names) > 1 else ''} in {folder}/")
    if failures:
        print(f"reslab predict: {len(failures)} of {len(paths)} images could not be read", file=sys.stderr)
    return failures


def _is_empty(image) -> bool:
    """All pixels within EMPTY_RANGE grey levels of each other: nothing in the image to classify."""
    return int(image.max()) - int(image.min()) <= EMPTY_RANGE


def _empty_line(path, image) -> str:
    # a blank image still gets a confident answer from a classifier; that answer means nothing
    return f"{str(path)}  nothing in it: a uniform image (pixel values {int(image.min())}..{int(image.max())})"


def _print_results(
    trained: TrainedModel | OnnxModel,
    loaded: list[tuple[str, torch.Tensor]],
    empty: list[str],
    *,
    topk: int,
    amp: str = "off",
) -> None:
    """One line per image: its name and top-k classes with their probabilities; then the empty images."""
    if loaded:
        results = _topk(trained, torch.stack([t for _, t in loaded]), topk=topk, amp=amp)
        width = max(len(name) for name, _ in loaded)
        for (name, _), pairs in zip(loaded, results, strict=True):
            print(f"{name:<{width}}  " + "  ".join(f"{c} {100 * q:.1f}%" for c, q in pairs))
    for line in empty:
        print(line)
