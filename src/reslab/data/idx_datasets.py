"""The MNIST family (MNIST, Fashion-MNIST, Kuzushiji-MNIST): four IDX files each, found, verified, downloaded.

One spec per dataset (`IdxSpec`: file names, shapes, checksums, mirrors, class names) drives the same code.

Where the files are looked for. A folder the user names (`--data-dir`, else $RESLAB_DATA) is the only place looked
at, and lacking the files there is an error that names the folder and what is missing; within it the files may lie
in FOLDER/<name> (e.g. ~/data/mnist), in FOLDER/<TorchvisionName>/raw (where torchvision keeps them) or in FOLDER
itself. Otherwise the user cache (~/.cache/reslab/<name>), then a Debian package's folder where there is one; where
neither has all four files they are downloaded into the cache.

What is verified. Every file: magic number, shape, exact length, label range. Then its content:
- where the decompressed content's SHA-256 is known (Fashion-MNIST), that, so a re-compressed copy (Debian's) passes;
- where only the MD5 of the official .gz is published (MNIST and KMNIST: torchvision's `resources`), a .gz must be
  that file exactly; an uncompressed file cannot be checked against a published checksum, so it is checked for
  structure only and the Dataset's `source` says so. A .gz is preferred to its uncompressed twin for that reason.
A file that is another known dataset's (Fashion-MNIST files given for MNIST) is named as such.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reslab.data.dataset import Dataset
from reslab.data.download import (
    ENV_VAR,
    DownloadFailed,
    cache_root,
    explicit_folder,
    fetch_first,
    folder_problem,
    make_folder,
)
from reslab.data.idx import decompress, parse_idx
from reslab.data.transforms import channel_stats
from reslab.errors import DataError

_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class IdxFile:
    name: str  # file name without .gz; either form is accepted
    shape: tuple[int, ...]
    sha256: str | None = None  # of the decompressed content
    gz_md5: str | None = None  # of the official .gz file, where only that is published


@dataclass(frozen=True)
class IdxSpec:
    """One dataset of four IDX files: what they are called, hold and hash to, and where to get them."""

    name: str  # the --dataset name and the cache folder's: "mnist"
    title: str  # for messages: "MNIST"
    files: dict[str, IdxFile]  # train_images, train_labels, test_images, test_labels
    classes: tuple[str, ...]
    mirrors: tuple[str, ...]
    # per-channel normalisation of pixels in [0, 1]; None: measured on the training images when loaded
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    torchvision_name: str | None = None  # torchvision keeps the files in ROOT/<this>/raw
    debian_dir: Path | None = None
    debian_package: str | None = None
    cache: Path | None = None  # None: ~/.cache/reslab/<name>
    download_command: str | None = None  # a command that downloads the files into the cache, for messages

    @property
    def cache_dir(self) -> Path:
        return self.cache if self.cache is not None else cache_root() / self.name


# every IDX dataset reslab knows, as functions returning its spec (read when asked, so a test may patch a module's)
_KNOWN: list[Callable[[], IdxSpec]] = []


def register(spec: Callable[[], IdxSpec]) -> Callable[[], IdxSpec]:
    """Make a dataset's files recognisable in another's messages ("this is Fashion-MNIST's ..., not MNIST's")."""
    _KNOWN.append(spec)
    return spec


# ----------------------------------------------------------------------------------------------------------------------
# finding the folder


def file_in(folder: Path, f: IdxFile) -> Path | None:
    """The file for `f` in `folder`, .gz or not: the one that can be verified first, else the faster to load."""
    names = (f.name, f.name + ".gz") if f.sha256 else (f.name + ".gz", f.name)
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def _layouts(spec: IdxSpec, folder: Path) -> list[Path]:
    """Where, inside a folder the user named, the files may lie: FOLDER/<name>, FOLDER/<Torchvision>/raw, FOLDER."""
    inner = [folder / spec.name]
    if spec.torchvision_name:
        inner.append(folder / spec.torchvision_name / "raw")
    return [*inner, folder]


def _complete(spec: IdxSpec, folder: Path) -> bool:
    return all(file_in(folder, f) for f in spec.files.values())


def _explicit_folder_error(spec: IdxSpec, how: str, folder: Path) -> DataError:
    """What is missing from a folder the user named: no folder, a file, nothing, or some of the four files."""
    names = [f.name for f in spec.files.values()]
    problem = folder_problem(how, folder, f"the four {spec.title} files")
    if problem:
        return DataError(problem)
    looked = _layouts(spec, folder)
    # report the place that holds the most of the files (FOLDER itself when none holds any)
    best = max(looked[::-1], key=lambda d: sum(file_in(d, f) is not None for f in spec.files.values()))
    found = [f.name for f in spec.files.values() if file_in(best, f)]
    where = ", ".join(str(d) for d in looked)
    if not found:
        return DataError(
            f"{how} {folder}: holds none of the four {spec.title} files (looked in {where}): expected "
            f"{', '.join(n + '[.gz]' for n in names)}"
        )
    missing = [n + "[.gz]" for n in names if n not in found]
    return DataError(
        f"{how} {folder}: {best} has {len(found)} of the four {spec.title} files; missing {', '.join(missing)}"
    )


def find_folder(spec: IdxSpec, data_dir: str | Path | None = None) -> Path | None:
    """The folder that holds all four files (.gz or not), by the search order above; None if none does.

    A folder the user named (`data_dir`, else $RESLAB_DATA) that lacks them is a DataError naming the folder and
    the files missing. Only presence is checked here; `load_idx_dataset` verifies the content.
    """
    named = explicit_folder(data_dir)
    if named is not None:
        how, folder = named
        for place in _layouts(spec, folder):
            if _complete(spec, place):
                return place
        raise _explicit_folder_error(spec, how, folder)
    for place in _default_places(spec):
        if _complete(spec, place):
            return place
    return None


def _default_places(spec: IdxSpec) -> list[Path]:
    return [spec.cache_dir] + ([spec.debian_dir] if spec.debian_dir else [])


def how_to_get_it(spec: IdxSpec, reason: str) -> str:
    """One paragraph: where we looked, why it failed, and every way to get the files."""
    looked = ", ".join(str(p) for p in _default_places(spec))
    names = ", ".join(f.name + ".gz" for f in spec.files.values())
    ways = []
    if spec.debian_package:
        ways.append(f"`sudo apt-get install {spec.debian_package}` (Debian/Ubuntu)")
    ways.append(
        f"download {names} from {spec.mirrors[0]} into a folder and pass --data-dir FOLDER or set {ENV_VAR}=FOLDER"
    )
    cache = spec.cache_dir
    if spec.download_command:
        ways.append(f"run `{spec.download_command}` once with network access and it downloads them into {cache}")
    else:
        ways.append(f"run the same command again with network access and they are downloaded into {cache}")
    counted = ["one", "two", "three"][len(ways) - 1]
    listed = "; ".join(f"({i}) {w}" for i, w in enumerate(ways, 1))
    return f"{spec.title} not found (looked in {looked}) {reason}. Get it one of {counted} ways: {listed}."


# ----------------------------------------------------------------------------------------------------------------------
# verifying


def _whose(spec: IdxSpec, digest: str) -> str | None:
    """'Fashion-MNIST's train-images-idx3-ubyte' when `digest` is one of another known dataset's files."""
    for known in _KNOWN:
        other = known()
        if other.name == spec.name:
            continue
        for f in other.files.values():
            if digest in (f.sha256, f.gz_md5):
                return f"{other.title}'s {f.name}"
    return None


def verify_bytes(raw: bytes, f: IdxFile, spec: IdxSpec, name: str | Path) -> tuple[np.ndarray, bool]:
    """(the array in `raw` (gzip or not), whether its content was checked against a published checksum).

    DataError names `name` and what is wrong: structure, label range, or content that is not the official file's.
    """
    is_gz = raw.startswith(_GZIP_MAGIC)
    data = decompress(raw, name) if is_gz else raw
    array = parse_idx(data, name=name, ndim=len(f.shape))
    if array.shape != f.shape:
        expected, found = ("x".join(f"{s:,}" for s in shape) for shape in (f.shape, array.shape))
        if array.shape[1:] != f.shape[1:]:
            raise DataError(f"{name}: wrong item size: expected {expected}, found {found}")
        raise DataError(f"{name}: wrong number of items: expected {expected}, found {found}")
    k = len(spec.classes)
    if array.ndim == 1 and len(array) and array.max() >= k:
        bad = int(np.argmax(array >= k))
        raise DataError(f"{name}: label out of range: expected 0-{k - 1}, found {array[bad]} at item {bad}")
    sha256 = hashlib.sha256(data).hexdigest()
    if f.sha256:
        if sha256 != f.sha256:
            whose = _whose(spec, sha256)
            raise DataError(
                f"{name}: content differs from the official file: expected SHA-256 {f.sha256} of the decompressed "
                f"data, found {sha256}" + (f" ({whose}, not {spec.title}'s)" if whose else "")
            )
        return array, True
    md5 = hashlib.md5(raw).hexdigest() if is_gz else None
    if f.gz_md5 and md5 == f.gz_md5:
        return array, True
    whose = _whose(spec, sha256) or (md5 and _whose(spec, md5))
    if whose:
        raise DataError(f"{name}: this is {whose}, not {spec.title}'s")
    if f.gz_md5 and is_gz:
        raise DataError(
            f"{name}: differs from the official {f.name}.gz: expected MD5 {f.gz_md5}, found {md5} (only the "
            f"official .gz has a published checksum: a re-compressed copy cannot be told from a damaged one)"
        )
    return array, False


def _replace_hint(spec: IdxSpec, path: Path) -> str:
    if path.parent == spec.cache_dir:
        how = f"run `{spec.download_command}`" if spec.download_command else "run again with network access"
        return f"delete {path} and {how} to download it again"
    if spec.debian_dir and path.parent == spec.debian_dir:
        return f"reinstall it: `sudo apt-get install --reinstall {spec.debian_package}`"
    return f"replace it with the official file from {spec.mirrors[0]}"


def verify_file(path: str | Path, f: IdxFile, spec: IdxSpec) -> tuple[np.ndarray, bool]:
    """Read and verify one IDX file (gzip or not): (array, checksum-verified); DataError says what to do."""
    path = Path(path)
    try:
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
        return verify_bytes(raw, f, spec, path)
    except DataError as e:
        raise DataError(f"{e}; {_replace_hint(spec, path)}") from None


# ----------------------------------------------------------------------------------------------------------------------
# downloading and loading


def download_into(spec: IdxSpec, folder: Path, mirrors: tuple[str, ...] | None = None) -> Path:
    """Download whichever of the four .gz files `folder` lacks, verifying each; returns the folder.

    Raises DownloadFailed (every mirror's reason) when a file cannot be had.
    """
    make_folder(folder)
    for f in spec.files.values():
        if file_in(folder, f):
            continue
        urls = [base.rstrip("/") + "/" + f.name + ".gz" for base in (mirrors or spec.mirrors)]
        fetch_first(urls, folder / (f.name + ".gz"), lambda tmp, url, f=f: verify_bytes(tmp.read_bytes(), f, spec, url))
    return folder


def download(spec: IdxSpec, folder: str | Path | None = None, *, mirrors: tuple[str, ...] | None = None) -> Path:
    """Download into `folder` (default: the cache) the files it lacks; DataError with every way to get them."""
    try:
        return download_into(spec, spec.cache_dir if folder is None else Path(folder), mirrors)
    except DownloadFailed as e:
        raise DataError(how_to_get_it(spec, f"and downloading failed ({e})")) from None


def load_idx_dataset(spec: IdxSpec, data_dir: str | Path | None = None, *, download: bool = True) -> Dataset:
    """The dataset of `spec` as uint8 tensors (N, 28, 28), verified as the module docstring says.

    Downloads into the cache where no folder has the files (unless `download=False`, or a folder was named).
    Raises DataError, naming the folder or file and what is wrong, for anything missing, truncated or corrupt.
    """
    folder = find_folder(spec, data_dir)
    if folder is None:
        if not download:
            raise DataError(how_to_get_it(spec, "and downloading was not asked for"))
        try:
            folder = download_into(spec, spec.cache_dir)
        except DownloadFailed as e:
            raise DataError(how_to_get_it(spec, f"and downloading failed ({e})")) from None
    arrays, unverified = {}, []
    for key, f in spec.files.items():
        path = file_in(folder, f)
        arrays[key], verified = verify_file(path, f, spec)
        if not verified:
            unverified.append(path.name)
    # one copy each: the arrays view read-only bytes, and torch wants memory it may write
    tensors = {key: torch.from_numpy(a.copy()) for key, a in arrays.items()}
    mean, std = spec.mean, spec.std
    if mean is None or std is None:
        mean, std = channel_stats(tensors["train_images"])
    source = str(folder)
    if unverified:
        source += (
            f" (structure checked; {', '.join(unverified)} not checked against a published checksum: only the "
            f"official .gz files have one)"
        )
    return Dataset(
        train_images=tensors["train_images"],
        train_labels=tensors["train_labels"].long(),
        test_images=tensors["test_images"],
        test_labels=tensors["test_labels"].long(),
        classes=spec.classes,
        source=source,
        mean=tuple(mean),
        std=tuple(std),
    )
