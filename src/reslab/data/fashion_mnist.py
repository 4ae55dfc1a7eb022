"""Fashion-MNIST (Xiao et al. 2017): find the four IDX files, verify them exactly, download them if need be.

Search order: `--data-dir`, $RESLAB_DATA, the user cache (~/.cache/reslab/fashion-mnist), then Debian's
`dataset-fashion-mnist` package (/usr/share/datasets/fashion-mnist). Where none has all four files they are
downloaded into the cache. Every file is checked before use: magic number, shape, exact length, label range, and
the SHA-256 of its *decompressed* content, so a re-compressed copy (Debian's) passes and a damaged one does not.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reslab.data.dataset import Dataset
from reslab.data.idx import parse_idx, read_bytes
from reslab.errors import DataError

CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

ENV_VAR = "RESLAB_DATA"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian/Ubuntu package `dataset-fashion-mnist`
# The official location (github.com/zalandoresearch/fashion-mnist, README "Get the Data"); the repository itself
# holds the same files. Each download is verified by hash, so a mirror cannot slip in different data.
MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
DOWNLOAD_TIMEOUT_S = 30


@dataclass(frozen=True)
class IdxFile:
    name: str  # file name without .gz; either form is accepted
    shape: tuple[int, ...]
    sha256: str  # of the decompressed content


FILES = {
    "train_images": IdxFile(
        "train-images-idx3-ubyte", (60000, 28, 28), "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
    ),
    "train_labels": IdxFile(
        "train-labels-idx1-ubyte", (60000,), "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
    ),
    "test_images": IdxFile(
        "t10k-images-idx3-ubyte", (10000, 28, 28), "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
    ),
    "test_labels": IdxFile(
        "t10k-labels-idx1-ubyte", (10000,), "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
    ),
}


def cache_dir() -> Path:
    return Path.home() / ".cache" / "reslab" / "fashion-mnist"


def _file_in(folder: Path, spec: IdxFile) -> Path | None:
    """The file for `spec` in `folder`: the uncompressed one if both exist (it loads faster), else the .gz."""
    for name in (spec.name, spec.name + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _candidates(data_dir: str | Path | None) -> list[tuple[str, Path]]:
    places = []
    if data_dir:
        places.append(("--data-dir", Path(data_dir).expanduser()))
    if os.environ.get(ENV_VAR):
        places.append((f"${ENV_VAR}", Path(os.environ[ENV_VAR]).expanduser()))
    places.append(("cache", cache_dir()))
    places.append(("Debian package", DEBIAN_DIR))
    return places


def find_data_dir(data_dir: str | Path | None = None) -> Path | None:
    """The first folder, in search order, that holds all four IDX files (.gz or not); None if none does.

    Only presence is checked here; `load_fashion_mnist` verifies the content.
    """
    for _, folder in _candidates(data_dir):
        if all(_file_in(folder, spec) for spec in FILES.values()):
            return folder
    return None


def _how_to_get_it(data_dir: str | Path | None, reason: str) -> str:
    looked = ", ".join(str(folder) for _, folder in _candidates(data_dir))
    names = ", ".join(spec.name + ".gz" for spec in FILES.values())
    return (
        f"Fashion-MNIST not found (looked in {looked}) {reason}. Get it one of three ways: "
        f"(1) `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu); "
        f"(2) download {names} from {MIRRORS[0]} into a folder and pass --data-dir FOLDER or set {ENV_VAR}=FOLDER; "
        f"(3) run `reslab data` once with network access and it downloads them into {cache_dir()}."
    )


def _verify(data: bytes, spec: IdxFile, name: str | Path) -> np.ndarray:
    """The array in `data` after checking it is exactly the official file; DataError names `name` otherwise."""
    array = parse_idx(data, name=name, ndim=len(spec.shape))
    if array.shape != spec.shape:
        expected, found = ("x".join(f"{s:,}" for s in shape) for shape in (spec.shape, array.shape))
        if array.shape[1:] != spec.shape[1:]:
            raise DataError(f"{name}: wrong item size: expected {expected}, found {found}")
        raise DataError(f"{name}: wrong number of items: expected {expected}, found {found}")
    if array.ndim == 1 and len(array) and array.max() >= len(CLASSES):
        bad = int(np.argmax(array >= len(CLASSES)))
        raise DataError(f"{name}: label out of range: expected 0-{len(CLASSES) - 1}, found {array[bad]} at item {bad}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise DataError(
            f"{name}: content differs from the official file: expected SHA-256 {spec.sha256} of the decompressed "
            f"data, found {digest}"
        )
    return array


def _replace_hint(path: Path) -> str:
    if path.parent == cache_dir():
        return f"delete {path} and run `reslab data` to download it again"
    if path.parent == DEBIAN_DIR:
        return "reinstall it: `sudo apt-get install --reinstall dataset-fashion-mnist`"
    return f"replace it with the official file from {MIRRORS[0]}"


def verify_file(path: str | Path, spec: IdxFile) -> np.ndarray:
    """Read and verify one IDX file (gzip or not); DataError names the file, what is wrong, and what to do."""
    path = Path(path)
    try:
        return _verify(read_bytes(path), spec, path)
    except DataError as e:
        raise DataError(f"{e}; {_replace_hint(path)}") from None


def _fetch(url: str, dest: Path, spec: IdxFile) -> None:
    """Download `url` to `dest` atomically: into a temporary file beside it, verified, then renamed."""
    from tqdm.auto import tqdm

    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name, file=sys.stderr
            ) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
        _verify(read_bytes(tmp), spec, url)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class _DownloadFailed(Exception):
    pass


def _download(folder: Path, mirrors: tuple[str, ...]) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{folder}: cannot create the download folder ({e.strerror or e})") from None
    for spec in FILES.values():
        if _file_in(folder, spec):
            continue
        failures = []
        for base in mirrors:
            url = base.rstrip("/") + "/" + spec.name + ".gz"
            try:
                _fetch(url, folder / (spec.name + ".gz"), spec)
                break
            except (OSError, http.client.HTTPException, DataError) as e:
                # URLError and socket timeouts are OSErrors; a download that fails verification tries the next mirror
                reason = e.reason if isinstance(e, urllib.error.URLError) else e
                failures.append(f"{url}: {reason}")
        else:
            raise _DownloadFailed("; ".join(failures))
    return folder


def download(folder: str | Path | None = None, *, mirrors: tuple[str, ...] | None = None) -> Path:
    """Download whichever of the four files `folder` (default: the cache) lacks, verifying each; returns the folder.

    Safe to run from several processes at once (each writes its own temporary file and renames it into place).
    """
    try:
        return _download(cache_dir() if folder is None else Path(folder), MIRRORS if mirrors is None else mirrors)
    except _DownloadFailed as e:
        raise DataError(_how_to_get_it(None, f"and downloading failed ({e})")) from None


def load_fashion_mnist(data_dir: str | Path | None = None, *, download: bool = True) -> Dataset:
    """Fashion-MNIST as uint8 tensors, verified against the official files.

    Looks in `data_dir`, $RESLAB_DATA, ~/.cache/reslab/fashion-mnist and /usr/share/datasets/fashion-mnist, in that
    order; downloads into the cache where none has the files (unless `download=False`). Raises DataError, naming the
    file and what is wrong, for anything missing, truncated or corrupt.
    """
    folder = find_data_dir(data_dir)
    if folder is None:
        if not download:
            raise DataError(_how_to_get_it(data_dir, "and downloading was not asked for"))
        try:
            folder = _download(cache_dir(), MIRRORS)
        except _DownloadFailed as e:
            raise DataError(_how_to_get_it(data_dir, f"and downloading failed ({e})")) from None
    arrays = {key: verify_file(_file_in(folder, spec), spec) for key, spec in FILES.items()}
    # one copy each: the arrays view read-only bytes, and torch wants memory it may write
    tensors = {key: torch.from_numpy(a.copy()) for key, a in arrays.items()}
    return Dataset(
        train_images=tensors["train_images"],
        train_labels=tensors["train_labels"].long(),
        test_images=tensors["test_images"],
        test_labels=tensors["test_labels"].long(),
        classes=CLASSES,
        source=str(folder),
    )
