"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009): the official "python version" archives, MD5-verified, read safely.

The archives (https://www.cs.toronto.edu/~kriz/cifar.html) hold Python 2 pickles: a dict per batch with the images
under "data" as a numpy uint8 array (10000, 3072), each row 1024 red, then green, then blue values of a 32x32
image in row-major order, which is (N, 3, 32, 32) as it stands; labels under "labels" (CIFAR-10) or "fine_labels"
(CIFAR-100); the class names in batches.meta / meta.

A pickle can run any code while it loads. These are read with an unpickler that resolves only the three globals an
array in them needs (numpy's array reconstructor, numpy.ndarray, numpy.dtype) and refuses every other, so a file
that asks for anything else (os.system, builtins.eval, ...) is an error before anything of it runs. And before
that, every file is checked against torchvision's published MD5s (torchvision/datasets/cifar.py): the archive's, or
each batch file's in an extracted cifar-10-batches-py/ folder.

Where: a folder the user names (`--data-dir`, else $RESLAB_DATA; lacking the data there is an error), holding the
archive or the extracted folder, in FOLDER/<name> (e.g. ~/data/cifar10) or FOLDER itself; else the user cache
(~/.cache/reslab/<name>), where it is downloaded (read from the archive directly, never extracted).
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
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
from reslab.errors import DataError


@dataclass(frozen=True)
class CifarSpec:
    name: str  # the --dataset name and the cache folder's
    title: str
    url: str
    archive: str  # the archive's file name
    archive_md5: str
    folder: str  # the folder inside the archive
    train: tuple[tuple[str, str], ...]  # (file, MD5) of each training batch
    test: tuple[tuple[str, str], ...]
    meta: tuple[str, str]
    label_key: str  # the labels' key in a batch
    names_key: str  # the class names' key in the meta file
    num_classes: int
    mean: tuple[float, float, float]  # of the training images, per channel, pixels in [0, 1]
    std: tuple[float, float, float]
    size_mb: int  # of the archive, for messages

    @property
    def cache_dir(self) -> Path:
        return cache_root() / self.name

    @property
    def files(self) -> tuple[tuple[str, str], ...]:
        return (*self.train, *self.test, self.meta)


CIFAR10 = CifarSpec(
    name="cifar10",
    title="CIFAR-10",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    archive="cifar-10-python.tar.gz",
    archive_md5="c58f30108f718f92721af3b95e74349a",
    folder="cifar-10-batches-py",
    train=(
        ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
        ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
        ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
        ("data_batch_4", "634d18415352ddfa80567beed471001a"),
        ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
    ),
    test=(("test_batch", "40351d587109b95175f43aff81a1287e"),),
    meta=("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
    label_key="labels",
    names_key="label_names",
    num_classes=10,
    # measured over the 50,000 training images (the std of all pixels of a channel, not the mean of per-image stds)
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    size_mb=163,
)

CIFAR100 = CifarSpec(
    name="cifar100",
    title="CIFAR-100",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    archive="cifar-100-python.tar.gz",
    archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
    folder="cifar-100-python",
    train=(("train", "16019d7e3df5f24257cddd939b257f8d"),),
    test=(("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),),
    meta=("meta", "7973b15100ade9c7d40fb424638fde48"),
    label_key="fine_labels",  # the 100 classes; "coarse_labels" are the 20 superclasses
    names_key="fine_label_names",
    num_classes=100,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    size_mb=161,
)

SPECS = {"cifar10": lambda: CIFAR10, "cifar100": lambda: CIFAR100}  # read when called: tests swap them

# ----------------------------------------------------------------------------------------------------------------------
# the restricted unpickler

# numpy's array reconstructor as numpy itself names it in a pickle: numpy.core.multiarray._reconstruct in the
# official (Python 2, numpy 1.x) files, numpy._core.multiarray._reconstruct from numpy 2
_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(0))[0]
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RefusedGlobal(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals of `_ALLOWED`; dicts, lists, strings and numbers need none."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"{module}.{name}") from None


def safe_unpickle(data: bytes, name: str | Path = "<bytes>") -> object:
    """The object in pickle `data`, refusing every global but numpy's array reconstruction; DataError names `name`.

    Python 2 strings are read as latin-1, as the official files need (their image bytes are such strings).
    """
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except RefusedGlobal as e:
        raise DataError(
            f"{name}: refused to unpickle: it asks for {e}, which a CIFAR file never needs (a pickle can run code; "
            f"only numpy arrays are allowed)"
        ) from None
    except Exception as e:  # a damaged pickle raises nearly anything (EOFError, ValueError, TypeError, ...)
        raise DataError(f"{name}: not a readable pickle ({type(e).__name__}: {e})") from None


def _text(value: object) -> object:
    return value.decode("latin1") if isinstance(value, bytes) else value


def _as_dict(obj: object, name: str | Path) -> dict:
    if not isinstance(obj, dict):
        raise DataError(f"{name}: expected a pickled dict, found {type(obj).__name__}")
    return {_text(k): v for k, v in obj.items()}


def read_batch(data: bytes, spec: CifarSpec, name: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file's (images uint8 (n, 3, 32, 32), labels int64 (n,)), checked; DataError names `name`."""
    batch = _as_dict(safe_unpickle(data, name), name)
    images, labels = batch.get("data"), batch.get(spec.label_key)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3072:
        found = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise DataError(f"{name}: 'data' must be a uint8 array of n x 3072 (32x32 RGB), found {found}")
    if not isinstance(labels, list | np.ndarray) or not all(isinstance(v, int | np.integer) for v in labels):
        raise DataError(f"{name}: {spec.label_key!r} must be a list of integers")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(images),):
        raise DataError(f"{name}: {len(images):,} images but {len(labels):,} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
        bad = int(np.argmax((labels < 0) | (labels >= spec.num_classes)))
        raise DataError(
            f"{name}: label out of range: expected 0-{spec.num_classes - 1}, found {labels[bad]} at item {bad}"
        )
    return images.reshape(-1, 3, 32, 32), labels


def read_meta(data: bytes, spec: CifarSpec, name: str | Path) -> tuple[str, ...]:
    """The class names in the meta file, checked to be `num_classes` strings."""
    meta = _as_dict(safe_unpickle(data, name), name)
    names = meta.get(spec.names_key)
    names = [_text(n) for n in names] if isinstance(names, list) else names
    if not isinstance(names, list) or len(names) != spec.num_classes or not all(isinstance(n, str) for n in names):
        raise DataError(f"{name}: {spec.names_key!r} must be a list of {spec.num_classes} class names")
    return tuple(names)


# ----------------------------------------------------------------------------------------------------------------------
# finding, verifying, downloading


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _check_md5(data: bytes, expected: str, name: str | Path, hint: str) -> None:
    found = _md5(data)
    if found != expected:
        raise DataError(f"{name}: differs from the official file: expected MD5 {expected}, found {found}; {hint}")


def _extracted_in(spec: CifarSpec, base: Path) -> Path | None:
    """base/<folder>, or base itself, when it holds every batch file and the meta file."""
    for folder in (base / spec.folder, base):
        if all((folder / f).is_file() for f, _ in spec.files):
            return folder
    return None


def _found_in(spec: CifarSpec, base: Path) -> Path | None:
    """The extracted folder (faster: no decompression) or else the archive, in `base`."""
    extracted = _extracted_in(spec, base)
    if extracted is not None:
        return extracted
    return base / spec.archive if (base / spec.archive).is_file() else None


def _explicit_error(spec: CifarSpec, how: str, folder: Path) -> DataError:
    problem = folder_problem(how, folder, f"{spec.archive} or {spec.folder}/")
    if problem:
        return DataError(problem)
    looked = [folder / spec.name, folder]
    for base in looked:
        for extracted in (base / spec.folder, base):
            have = [f for f, _ in spec.files if (extracted / f).is_file()]
            if have:
                missing = [f for f, _ in spec.files if f not in have]
                return DataError(
                    f"{how} {folder}: {extracted} has {len(have)} of the {len(spec.files)} {spec.title} files; "
                    f"missing {', '.join(missing)} (or put {spec.archive} there)"
                )
    return DataError(
        f"{how} {folder}: holds neither {spec.archive} nor {spec.folder}/ (looked in "
        f"{', '.join(str(p) for p in looked)}); download {spec.url} ({spec.size_mb} MB) into it"
    )


def find_cifar(spec: CifarSpec, data_dir: str | Path | None = None) -> Path | None:
    """The extracted folder or the archive to read, by the search order above; None if none is found.

    A folder the user named that lacks both is a DataError naming it and what is missing.
    """
    named = explicit_folder(data_dir)
    if named is not None:
        how, folder = named
        for base in (folder / spec.name, folder):
            found = _found_in(spec, base)
            if found is not None:
                return found
        raise _explicit_error(spec, how, folder)
    return _found_in(spec, spec.cache_dir)


def how_to_get_it(spec: CifarSpec, reason: str) -> str:
    return (
        f"{spec.title} not found (looked in {spec.cache_dir}) {reason}. Get it one of two ways: (1) download "
        f"{spec.archive} ({spec.size_mb} MB, {spec.url}) into a folder and pass --data-dir FOLDER or set "
        f"{ENV_VAR}=FOLDER; (2) run "
        f"the same command again with network access and it is downloaded into {spec.cache_dir}."
    )


def _replace_hint(spec: CifarSpec, path: Path) -> str:
    if spec.cache_dir in path.parents:
        return f"delete {path} and run again with network access to download it again"
    return f"replace it with the official file from {spec.url}"


def download_cifar(spec: CifarSpec, folder: str | Path | None = None) -> Path:
    """Download the archive into `folder` (default: the cache), MD5-verified; returns the archive's path."""
    folder = make_folder(spec.cache_dir if folder is None else Path(folder))
    dest = folder / spec.archive
    if not dest.is_file():

        def verify(tmp: Path, url: str) -> None:
            _check_md5(tmp.read_bytes(), spec.archive_md5, url, "the download is not the official archive")

        try:
            fetch_first([spec.url], dest, verify)
        except DownloadFailed as e:
            raise DataError(how_to_get_it(spec, f"and downloading failed ({e})")) from None
    return dest


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None


def _files_of(spec: CifarSpec, found: Path) -> dict[str, tuple[bytes, str]]:
    """file name -> (its bytes, the name to report), from the extracted folder or the archive, MD5-verified."""
    if found.is_dir():
        out = {}
        for f, md5 in spec.files:
            data = _read(found / f)
            _check_md5(data, md5, found / f, _replace_hint(spec, found / f))
            out[f] = (data, str(found / f))
        return out
    raw = _read(found)
    _check_md5(raw, spec.archive_md5, found, _replace_hint(spec, found))
    out = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            for f, _ in spec.files:
                member = f"{spec.folder}/{f}"
                try:
                    info = tar.getmember(member)
                except KeyError:
                    raise DataError(f"{found}: the archive has no {member}") from None
                handle = tar.extractfile(info) if info.isfile() else None
                if handle is None:
                    raise DataError(f"{found}: {member} in the archive is not a file")
                out[f] = (handle.read(), f"{found}:{member}")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{found}: not a readable tar.gz archive ({e})") from None
    return out


def load_cifar(spec: CifarSpec, data_dir: str | Path | None = None, *, download: bool = True) -> Dataset:
    """CIFAR-10 or CIFAR-100 as uint8 tensors (N, 3, 32, 32) with the class names of its meta file.

    Downloads the archive into the cache where none is found (unless `download=False` or a folder was named).
    Raises DataError naming the file for anything missing, damaged, not the official file, or a refused pickle.
    """
    found = find_cifar(spec, data_dir)
    if found is None:
        if not download:
            raise DataError(how_to_get_it(spec, "and downloading was not asked for"))
        found = download_cifar(spec)
    files = _files_of(spec, found)
    meta, meta_name = files[spec.meta[0]]
    classes = read_meta(meta, spec, meta_name)
    splits = {}
    for split, batches in (("train", spec.train), ("test", spec.test)):
        parts = [read_batch(files[f][0], spec, files[f][1]) for f, _ in batches]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        splits[split] = (torch.from_numpy(images), torch.from_numpy(labels))
    return Dataset(
        train_images=splits["train"][0],
        train_labels=splits["train"][1],
        test_images=splits["test"][0],
        test_labels=splits["test"][1],
        classes=classes,
        source=str(found),
        mean=spec.mean,
        std=spec.std,
        style="natural",
    )


def load_cifar10(data_dir: str | Path | None = None, *, download: bool = True) -> Dataset:
    return load_cifar(CIFAR10, data_dir, download=download)


def load_cifar100(data_dir: str | Path | None = None, *, download: bool = True) -> Dataset:
    return load_cifar(CIFAR100, data_dir, download=download)
