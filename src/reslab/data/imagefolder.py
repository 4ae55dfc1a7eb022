"""Your own images: a folder with one sub-folder per class, as torchvision's and timm's ImageFolder read it.

    photos/                      photos/train/cat/...   (or, split by the data:
      cat/001.jpg                photos/val/cat/...      DIR/train, DIR/val and optionally DIR/test)
      cat/more/002.PNG           photos/test/cat/...
      dog/003.jpeg

- The classes are the sorted names of train's sub-folders; label i is classes[i]. Images are found recursively
  inside a class folder, by extension, case-insensitive (.png .jpg .jpeg .bmp .gif .webp .tif .tiff); other files and
  hidden files and folders (".name") are ignored. An empty class folder is an error, as is a val/ or test/ class that
  train/ lacks (train/ may have classes that val/ lacks).
- Without DIR/train the whole folder is the training set, and without DIR/val or DIR/test the Dataset has no such
  split (None): the split logic holds validation (and test) images out of the training set, seeded.
- Every image is decoded once, as torchvision's `Resize(S)` + `CenterCrop(S)` on a PIL image would: the shorter
  side resized to S (bilinear, antialiased by Pillow), the centre S x S kept, as grayscale (in_chans=1, stored
  (N, S, S)) or RGB (in_chans=3, (N, 3, S, S)); a JPEG much larger than S is decoded at reduced scale first (Pillow's
  `draft`), which changes pixels slightly and saves most of the decoding time. S is `image_size`: the model's input
  size or a little more (32 for the CIFAR ResNets; 256 for ImageNet models, which train on random crops of 224 and
  evaluate on the centre 224, as torchvision's references do).
- An image that cannot be decoded is a DataError naming the file; with skip_bad_images it is left out and counted
  (Dataset.skipped and its `source`).
- Decoded images fit in memory up to `max_memory_bytes` (N * C * S * S bytes, all splits): then they are decoded
  once, by worker processes, into uint8 tensors, and training batches come from memory. A larger folder is streamed:
  the Dataset holds `ImageFiles` (paths, decoded batch by batch by the loader's worker processes); every file is
  opened and checked up front, so a broken one is found before training (a file that opens but fails to decode
  later stops training with a DataError naming it).
"""

from __future__ import annotations

import io
import os
import sys
import warnings
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from reslab.atomic import write_bytes
from reslab.data.dataset import SPLITS, Dataset
from reslab.data.decode import decode_natural
from reslab.data.transforms import channel_stats
from reslab.errors import DataError, ReslabError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MAX_MEMORY_BYTES = 4 * 2**30  # decoded size above which a folder is streamed from disk
STATS_SAMPLE = 1000  # images a streamed folder's mean/std are measured on
_DECODE_BATCH = 64


# ----------------------------------------------------------------------------------------------------------------------
# one image


def read_image(path: str | Path, *, image_size: int, in_chans: int = 3) -> torch.Tensor:
    """One image file -> uint8 (image_size, image_size) for in_chans=1, (3, image_size, image_size) for 3.

    As torchvision's `Resize(image_size)` then `CenterCrop(image_size)` on `Image.open(path).convert(mode)`: the
    shorter side becomes image_size (the longer int(image_size * long / short)), bilinear; the centre is kept. Decoded
    by reslab.data.decode, as `reslab predict` decodes (EXIF orientation, 16-bit scaled, a JPEG drafted).
    Raises DataError naming the file when it cannot be decoded.
    """
    mode = {1: "L", 3: "RGB"}.get(in_chans)
    if mode is None:
        raise ReslabError(f"--in-chans: expected 1 (grayscale) or 3 (RGB), found {in_chans}")
    try:
        t = decode_natural(path, mode, resize=image_size, crop=image_size)
    except Exception as e:  # Pillow's format plugins raise many kinds of error on bad data
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        raise DataError(
            f"{path}: cannot decode the image ({reason}); fix or remove it, or skip such files (--skip-bad-images)"
        ) from None
    return t[0] if in_chans == 1 else t


def check_image(path: str | Path) -> None:
    """Open the file and check its structure without decoding all of it (Pillow's verify); DataError if bad."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                im.verify()
    except Exception as e:
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        raise DataError(
            f"{path}: not a readable image ({reason}); fix or remove it, or skip such files (--skip-bad-images)"
        ) from None


# ----------------------------------------------------------------------------------------------------------------------
# images left on disk


@dataclass(frozen=True, eq=False)
class ImageFiles:
    """Image files that stand in for a uint8 tensor (N, S, S) (in_chans=1) or (N, 3, S, S), decoded when asked.

    `shape`, `dtype`, `dim()`, `len()` as a tensor's; indexing with a slice, a list or a LongTensor gives the subset
    (still on disk), with an int the decoded image. `BatchLoader` decodes each batch in `num_workers` processes.
    """

    paths: tuple[str, ...]
    image_size: int
    in_chans: int
    num_workers: int = 0

    dtype = torch.uint8

    @property
    def shape(self) -> torch.Size:
        s = self.image_size
        return torch.Size((len(self.paths), s, s) if self.in_chans == 1 else (len(self.paths), self.in_chans, s, s))

    def dim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int | slice | Sequence[int] | torch.Tensor) -> torch.Tensor | ImageFiles:
        if isinstance(index, int | np.integer):
            return self.decode(int(index))
        if isinstance(index, slice):
            paths = self.paths[index]
        else:
            if isinstance(index, torch.Tensor) and index.dtype == torch.bool:
                index = torch.nonzero(index)[:, 0]  # a mask, as a tensor takes it
            idx = index.tolist() if isinstance(index, torch.Tensor | np.ndarray) else list(index)
            paths = tuple(self.paths[i] for i in idx)
        return ImageFiles(paths, self.image_size, self.in_chans, self.num_workers)

    def decode(self, i: int) -> torch.Tensor:
        return read_image(self.paths[i], image_size=self.image_size, in_chans=self.in_chans)

    def __repr__(self) -> str:
        return f"ImageFiles({len(self)} files as {'x'.join(map(str, self.shape[1:]))} uint8)"


class _Decoder(torch.utils.data.Dataset):
    """What a worker process does for one index: (the decoded image, None) or (None, the error's message)."""

    def __init__(self, files: ImageFiles, check_only: bool = False):
        self.files, self.check_only = files, check_only

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, str | None]:
        try:
            if self.check_only:
                check_image(self.files.paths[i])
                return None, None
            return self.files.decode(i), None
        except DataError as e:
            return None, str(e)


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)  # decoding is Pillow's work; torch threads in every worker would only contend


def _stack(items: list[tuple[torch.Tensor | None, str | None]]) -> tuple[torch.Tensor | None, list[str | None]]:
    """A batch as one tensor (zeros where a file failed) and the errors, stacked in the worker: one tensor crosses
    to the main process per batch, not one per image (each costs a shared-memory segment)."""
    errors = [error for _, error in items]
    good = [img for img, _ in items if img is not None]
    if not good:
        return None, errors
    return torch.stack([img if img is not None else torch.zeros_like(good[0]) for img, _ in items]), errors


def decoded(
    files: ImageFiles, batches: Iterable[Sequence[int]], *, num_workers: int, check_only: bool = False
) -> Iterator[tuple[torch.Tensor | None, list[str | None]]]:
    """For each batch of indices, in order: (the images stacked, None when none decoded or `check_only`; each
    file's error or None), decoded by `num_workers` processes (0: in this one) a few batches ahead."""
    loader = DataLoader(
        _Decoder(files, check_only),
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=_stack,
        worker_init_fn=_one_thread if num_workers else None,
    )
    yield from loader


def decode_batches(files: ImageFiles, batches: Iterable[Sequence[int]], *, num_workers: int) -> Iterator[torch.Tensor]:
    """uint8 image batches for the index batches, decoded in worker processes; DataError on a file that fails."""
    for images, errors in decoded(files, batches, num_workers=num_workers):
        for error in errors:
            if error is not None:
                raise DataError(error)
        yield images


def default_workers(n: int) -> int:
    """Worker processes for decoding n images: none for a few (starting them costs more), else up to 8 cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if n < 4 * _DECODE_BATCH or cores < 2 else min(8, cores)


def _chunks(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def _read_all(
    files: ImageFiles, *, check_only: bool, skip_bad: bool, num_workers: int, progress: bool, desc: str
) -> tuple[torch.Tensor | None, torch.Tensor, list[str]]:
    """Every file decoded (or, `check_only`, opened and checked) once, with a progress bar: (the images of the
    readable files, or None when only checked; a mask of which files those are; the unreadable files' paths).
    An unreadable file is a DataError unless `skip_bad`."""
    out = None if check_only else torch.empty(files.shape, dtype=torch.uint8)
    ok = torch.ones(len(files), dtype=torch.bool)
    bad = []
    i = 0
    with tqdm(total=len(files), unit="img", desc=desc, file=sys.stderr, disable=not progress) as bar:
        for images, errors in decoded(
            files, _chunks(len(files), _DECODE_BATCH), num_workers=num_workers, check_only=check_only
        ):
            for k, error in enumerate(errors):
                if error is not None:
                    if not skip_bad:
                        raise DataError(error)
                    ok[i + k] = False
                    bad.append(files.paths[i + k])
            if out is not None and images is not None:
                out[i : i + len(errors)] = images
            i += len(errors)
            bar.update(len(errors))
    if out is not None and bad:
        out = out[ok]
    return out, ok, bad


# ----------------------------------------------------------------------------------------------------------------------
# the folder


def _subfolders(folder: Path) -> list[Path]:
    return sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)


def _images_under(folder: Path) -> tuple[list[str], int]:
    """(image files under `folder`, recursively, sorted; the number of other files ignored). Follows links to
    folders, each real folder once."""
    images, others, seen = [], 0, set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if name.startswith("."):
                continue
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                images.append(os.path.join(root, name))
            else:
                others += 1
    return sorted(images), others


def scan_imagefolder(folder: str | Path) -> tuple[tuple[str, ...], dict[str, tuple[list[str], list[int]]]]:
    """(classes, {split: (image paths, labels)}) of an image folder, as the module docstring says; DataError names
    the folder for a layout that is not one."""
    folder = Path(folder)
    split_dirs = {s: folder / s for s in SPLITS if (folder / s).is_dir()}
    if "train" in split_dirs:
        extra = [d.name for d in _subfolders(folder) if d.name not in SPLITS]
        if extra:
            raise DataError(
                f"{folder}: has train/, so expected only train/, val/ and test/ in it, found also "
                f"{', '.join(e + '/' for e in extra)} (move class folders into train/)"
            )
    elif split_dirs:
        raise DataError(
            f"{folder}: has {', '.join(s + '/' for s in split_dirs)} but no train/ (expected train/ beside it, or "
            f"class folders only)"
        )
    else:
        split_dirs = {"train": folder}
    classes = tuple(d.name for d in _subfolders(split_dirs["train"]))
    if not classes:
        raise DataError(
            f"{split_dirs['train']}: no class folders: expected one sub-folder of images per class "
            f"(e.g. {split_dirs['train'] / 'cat' / '001.jpg'})"
        )
    index = {c: k for k, c in enumerate(classes)}
    splits = {}
    for split, root in split_dirs.items():
        paths, labels = [], []
        for d in _subfolders(root):
            if d.name not in index:
                raise DataError(
                    f"{d}: class {d.name!r} is not among the training classes ({split_dirs['train']}: "
                    f"{', '.join(classes)})"
                )
            images, others = _images_under(d)
            if not images:
                also = f" ({others} other file{'s' * (others != 1)} ignored)" if others else ""
                raise DataError(
                    f"{d}: empty class folder: expected images ({' '.join(IMAGE_EXTENSIONS)}, any case) in it or its "
                    f"sub-folders, found none{also}; remove the folder or add images"
                )
            paths += images
            labels += [index[d.name]] * len(images)
        splits[split] = (paths, labels)
    return classes, splits


def _train_stats(train: Any, *, streamed: bool, workers: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The training images' per-channel mean and std; of an evenly spaced sample when they are streamed from disk."""
    if not streamed:
        return channel_stats(train)
    n = min(len(train), STATS_SAMPLE)
    sample = torch.linspace(0, len(train) - 1, n).round().long().unique()  # evenly spaced: no seed to choose
    return channel_stats(torch.cat(list(decode_batches(train, _chunks_of(sample), num_workers=workers))))


def load_imagefolder(
    data_dir: str | Path | None,
    *,
    image_size: int = 32,
    in_chans: int = 3,
    skip_bad_images: bool = False,
    max_memory_bytes: int = MAX_MEMORY_BYTES,
    num_workers: int | None = None,
    progress: bool = True,
    only: Collection[str] | None = None,
) -> Dataset:
    """An image folder as a Dataset of uint8 images (N, S, S) or (N, 3, S, S), S = image_size (the module docstring
    has the layout, decoding, bad files, streaming). `num_workers`: decoding processes (None: by the number of images
    and cores); mean/std are measured on the training images (a sample of 1,000 when streamed).

    `only` (evaluation): decode only these splits; the others stay files on disk (ImageFiles), neither decoded nor
    checked, so a bad training image does not stop the evaluation of a good validation folder (an evaluated subset
    of them, the validation images held out of train, is decoded by the loader). mean/std are then not measured
    (the dataset's are 0.5): the caller normalises as its checkpoint records.
    """
    if data_dir is None:
        raise ReslabError("--data-dir: --dataset imagefolder needs the folder of images (one sub-folder per class)")
    if in_chans not in (1, 3):
        raise ReslabError(f"--in-chans: expected 1 (grayscale) or 3 (RGB), found {in_chans}")
    if image_size < 1:
        raise ReslabError(f"image size: expected a positive number of pixels, found {image_size}")
    folder = Path(data_dir).expanduser()
    if not folder.exists():
        raise DataError(f"--data-dir {folder}: no such folder (expected a folder with one sub-folder per class)")
    if not folder.is_dir():
        raise DataError(f"--data-dir {folder}: is a file, not a folder (expected one sub-folder per class)")
    classes, found = scan_imagefolder(folder)
    total = sum(len(paths) for paths, _ in found.values())
    workers = default_workers(total) if num_workers is None else num_workers
    streamed = total * in_chans * image_size**2 > max_memory_bytes

    splits, skipped = {}, []
    for split, (paths, labels) in found.items():
        files = ImageFiles(tuple(paths), image_size, in_chans, workers)
        labels = torch.tensor(labels, dtype=torch.int64)
        if only is not None and split not in only:
            splits[split] = (files, labels)
            continue
        desc = f"{'checking' if streamed else 'decoding'} {split}"
        images, ok, bad = _read_all(
            files, check_only=streamed, skip_bad=skip_bad_images, num_workers=workers, progress=progress, desc=desc
        )
        if streamed:
            images = files[ok] if bad else files
        if bad and len(bad) == len(files):
            raise DataError(f"{folder}: every image of the {split} split is unreadable ({len(bad)}), e.g. {bad[0]}")
        splits[split] = (images, labels[ok] if bad else labels)
        skipped += bad

    if only is not None and "train" not in only:
        mean, std = (0.5,) * in_chans, (0.5,) * in_chans  # not measured: see the docstring
    else:
        mean, std = _train_stats(splits["train"][0], streamed=streamed, workers=workers)
    source = str(folder)
    if skipped:
        source += f" ({len(skipped)} unreadable image{'s' * (len(skipped) != 1)} skipped)"
    none = (None, None)
    return Dataset(
        train_images=splits["train"][0],
        train_labels=splits["train"][1],
        test_images=splits.get("test", none)[0],
        test_labels=splits.get("test", none)[1],
        val_images=splits.get("val", none)[0],
        val_labels=splits.get("val", none)[1],
        classes=classes,
        source=source,
        mean=mean,
        std=std,
        style="natural",
        skipped=tuple(skipped),
    )


def _chunks_of(indices: torch.Tensor) -> list[list[int]]:
    ids = indices.tolist()
    return [ids[i : i + _DECODE_BATCH] for i in range(0, len(ids), _DECODE_BATCH)]


# ----------------------------------------------------------------------------------------------------------------------
# writing a folder


def _folder_name(name: str) -> str:
    """A class name as a folder name: path separators become "_" ("T-shirt/top" -> "T-shirt_top"), never hidden."""
    safe = name.replace("/", "_").replace("\\", "_").replace(os.sep, "_").strip()
    return ("_" + safe[1:] if safe.startswith(".") else safe) or "_"


def export_png_folder(dataset: Dataset, folder: str | Path, *, split: str = "test", limit: int | None = None) -> Path:
    """Write a split's images as PNG files in an image folder: folder/<class>/<index>.png; returns `folder`.

    The class folders are the class names made safe for a file system ("T-shirt/top" -> "T-shirt_top"), so the
    folder's sorted classes may be in another order than the dataset's; `load_imagefolder` maps them by name.
    """
    images, labels = dataset.split(split)
    if images is None:
        raise ReslabError(f"--split: the dataset has no {split} split")
    folder = Path(folder)
    names = [_folder_name(c) for c in dataset.classes]
    if len(set(names)) != len(names):
        raise ReslabError(f"class names {dataset.classes} collide as folder names {names}")
    for name in names:
        (folder / name).mkdir(parents=True, exist_ok=True)
    n = len(images) if limit is None else min(limit, len(images))
    for i in range(n):
        img = images[i]
        a = img.numpy() if img.dim() == 2 else img.permute(1, 2, 0).numpy()  # (H, W) or (H, W, C)
        png = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(a)).save(png, format="PNG")
        # atomic (never a truncated PNG), without an fsync per file: 4x faster, and the folder can be written again
        write_bytes(folder / names[int(labels[i])] / f"{i:05d}.png", png.getbuffer(), sync=False)
    return folder
