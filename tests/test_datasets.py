"""Datasets beyond Fashion-MNIST: MNIST and KMNIST (IDX), CIFAR-10/100 (pickles), image folders, colour batches.

Everything is made here, small: IDX files whose checksums the tests patch in, CIFAR archives written in the official
Python 2 pickle format, folders of tiny images of mixed sizes and modes. HOME, $RESLAB_DATA, the Debian folder and
every download URL are redirected, so no real data or network is reached.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import reslab.data.cifar as cifar
import reslab.data.fashion_mnist as fm
import reslab.data.mnist as mnist
from reslab.data import (
    DATASETS,
    BatchLoader,
    Dataset,
    ImageFiles,
    export_png_folder,
    load_dataset,
    load_imagefolder,
    read_image,
    split_train_val,
    synthetic_dataset,
    write_idx,
)
from reslab.data.idx import idx_bytes
from reslab.data.transforms import (
    center_crop,
    channel_stats,
    crop_flip,
    normalize,
    resized_crop,
    resized_crop_params,
)
from reslab.errors import DataError, ReslabError

ROOT = Path(__file__).resolve().parents[1]
IDX_KEYS = ("train_images", "train_labels", "test_images", "test_labels")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch, unused_port):
    """No real data, cache or network: an empty HOME, no $RESLAB_DATA, no Debian folder, dead download URLs."""
    dead = f"http://127.0.0.1:{unused_port}/"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RESLAB_DATA", raising=False)
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "debian")
    monkeypatch.setattr(fm, "MIRRORS", (dead,))
    monkeypatch.setattr(fm, "FILES", _small_files(fm.FILES, FASHION, "sha256"))
    for name in ("MNIST", "KMNIST"):
        spec = getattr(mnist, name)
        monkeypatch.setattr(mnist, name, dataclasses.replace(spec, mirrors=(dead,), files=_small_files(spec.files)))
    for name in ("CIFAR10", "CIFAR100"):
        monkeypatch.setattr(cifar, name, dataclasses.replace(getattr(cifar, name), url=dead + "c.tar.gz"))
    return dead


# ----------------------------------------------------------------------------------------------------------------------
# small IDX files (12 training and 6 test images) with known content


def _arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, 12, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, 6, dtype=np.uint8),
    }


DIGITS, FASHION, KANA = _arrays(1), _arrays(2), _arrays(3)


def _gz(array: np.ndarray) -> bytes:
    return gzip.compress(idx_bytes(array), mtime=0)  # fixed bytes: the "official .gz" whose MD5 the spec holds


def _small_files(files: dict, arrays: dict = DIGITS, check: str = "gz_md5") -> dict:
    """The spec's files resized to the small arrays, with their checksums (sha256 of the content, or gz MD5)."""
    out = {}
    for key, f in files.items():
        a = arrays[key]
        if check == "sha256":
            out[key] = dataclasses.replace(f, shape=a.shape, sha256=hashlib.sha256(idx_bytes(a)).hexdigest())
        else:
            out[key] = dataclasses.replace(f, shape=a.shape, gz_md5=hashlib.md5(_gz(a)).hexdigest())
    return out


def write_mnist(folder: Path, arrays: dict = DIGITS, *, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for key, f in mnist.MNIST.files.items():
        if gz:
            (folder / (f.name + ".gz")).write_bytes(_gz(arrays[key]))
        else:
            write_idx(folder / f.name, arrays[key])
    return folder


# ----------------------------------------------------------------------------------------------------------------------
# MNIST and KMNIST


def test_mnist_loads_verified_with_its_own_classes(tmp_path):
    folder = write_mnist(tmp_path / "m")
    ds = load_dataset("mnist", folder)
    assert ds.classes == tuple("0123456789") and ds.source == str(folder)  # no "not checked" note: verified
    assert ds.train_images.shape == (12, 28, 28) and ds.in_chans == 1 and ds.mean == (0.1307,)
    np.testing.assert_array_equal(ds.test_images.numpy(), DIGITS["test_images"])
    # a .gz with other content (re-compressed or damaged alike) is not the official file
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(255 - DIGITS["test_images"])))
    with pytest.raises(DataError, match="expected MD5") as e:
        load_dataset("mnist", folder)
    assert str(folder / "t10k-images-idx3-ubyte.gz") in str(e.value)


def test_uncompressed_mnist_is_checked_for_structure_and_says_it_is_not_checksummed(tmp_path):
    folder = write_mnist(tmp_path / "raw", gz=False)
    ds = load_dataset("mnist", folder)
    assert "not checked against a published checksum" in ds.source and ds.source.startswith(str(folder))
    path = folder / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match="truncated") as e:
        load_dataset("mnist", folder)
    assert str(path) in str(e.value)


def test_kmnist_has_hiragana_classes_and_measured_normalisation(tmp_path, monkeypatch):
    monkeypatch.setattr(
        mnist, "KMNIST", dataclasses.replace(mnist.KMNIST, files=_small_files(mnist.KMNIST.files, KANA))
    )
    folder = write_mnist(tmp_path / "k", KANA)
    ds = load_dataset("kmnist", folder)
    assert ds.classes == ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo") and ds.source == str(folder)
    pixels = KANA["train_images"] / 255
    assert ds.mean == (round(float(pixels.mean()), 4),) and abs(ds.std[0] - pixels.std()) < 1e-4
    with pytest.raises(DataError, match="this is MNIST's train-images-idx3-ubyte, not Kuzushiji-MNIST's"):
        load_dataset("kmnist", write_mnist(tmp_path / "digits"))


def test_torchvision_layout_and_dataset_subfolder_are_found(tmp_path):
    root = tmp_path / "data"
    raw = write_mnist(root / "MNIST" / "raw")
    write_mnist(raw, gz=False)  # torchvision keeps both; the .gz is the one that can be verified
    assert load_dataset("mnist", root).source == str(raw)
    sub = write_mnist(tmp_path / "d2" / "mnist")
    assert load_dataset("mnist", tmp_path / "d2").source == str(sub)


def test_another_datasets_files_are_named_as_such(tmp_path):
    folder = tmp_path / "fashion"
    folder.mkdir()
    for key, f in fm.FILES.items():  # Fashion-MNIST's files, uncompressed, where MNIST is asked for
        write_idx(folder / f.name, FASHION[key])
    with pytest.raises(DataError, match="this is Fashion-MNIST's train-images-idx3-ubyte, not MNIST's"):
        load_dataset("mnist", folder)


def test_mnist_downloads_into_its_cache_and_says_how_to_get_it_offline(tmp_path, monkeypatch, server):
    with pytest.raises(DataError) as e:
        load_dataset("mnist")
    msg = str(e.value)
    assert "MNIST not found" in msg and "--data-dir" in msg and "RESLAB_DATA" in msg and "\n" not in msg
    assert "apt-get" not in msg and str(Path.home() / ".cache" / "reslab" / "mnist") in msg
    write_mnist(server.root / "data")
    monkeypatch.setattr(mnist, "MNIST", dataclasses.replace(mnist.MNIST, mirrors=(server.url,)))
    ds = load_dataset("mnist")
    assert ds.source == str(Path.home() / ".cache" / "reslab" / "mnist")
    np.testing.assert_array_equal(ds.train_images.numpy(), DIGITS["train_images"])


# ----------------------------------------------------------------------------------------------------------------------
# a folder the user names is used or is an error (issue 11)


def _fashion(folder: Path, keys=IDX_KEYS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for key in keys:
        write_idx(folder / (fm.FILES[key].name + ".gz"), FASHION[key])
    return folder


@pytest.mark.parametrize(
    "case,words",
    [
        ("missing", ["no such folder"]),
        ("a file", ["is a file, not a folder"]),
        ("empty", ["holds none of the four Fashion-MNIST files", "train-images-idx3-ubyte"]),
        ("3 of 4", ["has 3 of the four", "missing t10k-labels-idx1-ubyte"]),
    ],
)
@pytest.mark.parametrize("how", ["--data-dir", "$RESLAB_DATA"])
def test_named_folder_without_the_data_is_an_error_even_when_another_copy_exists(
    tmp_path, monkeypatch, case, words, how
):
    _fashion(fm.cache_dir())  # a good copy elsewhere must not be used instead
    named = tmp_path / "named"
    if case == "a file":
        named.write_text("not a folder")
    elif case == "empty":
        named.mkdir()
    elif case == "3 of 4":
        _fashion(named, IDX_KEYS[:3])
    if how == "$RESLAB_DATA":
        monkeypatch.setenv("RESLAB_DATA", str(named))
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", None if how == "$RESLAB_DATA" else named)
    msg = str(e.value)
    assert msg.startswith(f"{how} {named}") and "\n" not in msg
    for word in words:
        assert word in msg, msg


def test_named_folder_with_the_data_is_used(tmp_path):
    _fashion(fm.cache_dir())
    named = _fashion(tmp_path / "named")
    assert load_dataset("fashion-mnist", named).source == str(named)


# ----------------------------------------------------------------------------------------------------------------------
# CIFAR, in the official format: Python 2 pickles (protocol 2, byte strings) in a tar.gz


def _py2(value) -> bytes:
    """One value as Python 2's cPickle writes it (str as byte strings), numpy arrays as numpy 1.x reduced them."""
    if isinstance(value, str | bytes):
        b = value.encode("latin1") if isinstance(value, str) else value
        return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<I", len(b)) + b)
    if isinstance(value, int):
        return b"K" + bytes([value]) if 0 <= value < 256 else b"J" + struct.pack("<i", value)
    if isinstance(value, list):
        return b"](" + b"".join(_py2(v) for v in value) + b"e"
    assert isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 2
    dtype = b"cnumpy\ndtype\n" + _py2("u1") + _py2(0) + _py2(1) + b"\x87R(" + _py2(3) + _py2("|") + b"NNN"
    dtype += _py2(-1) + _py2(-1) + _py2(0) + b"tb"
    shape = _py2(value.shape[0]) + _py2(value.shape[1]) + b"\x86"
    return (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2(0) + b"\x85" + _py2("b") + b"\x87R"
        b"(" + _py2(1) + shape + dtype + b"\x89" + _py2(value.tobytes()) + b"tb"
    )


def py2_pickle(d: dict) -> bytes:
    return b"\x80\x02}(" + b"".join(_py2(k) + _py2(v) for k, v in d.items()) + b"u."


def _cifar_files(spec, n_per_batch: int = 4, seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    k = spec.num_classes
    files = {}
    for f, _ in (*spec.train, *spec.test):
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, k, n_per_batch)]
        batch = {"batch_label": f, spec.label_key: labels, "data": data, "filenames": [f"{i}.png" for i in labels]}
        if spec.name == "cifar100":
            batch["coarse_labels"] = [v // 5 for v in labels]
        files[f] = py2_pickle(batch)
    files[spec.meta[0]] = py2_pickle({spec.names_key: [f"name{i}" for i in range(k)], "num_cases_per_batch": 4})
    return files


def _tar(spec, files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{spec.folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def cifar10(monkeypatch):
    """(spec with the MD5s of small synthetic files, those files, their archive)."""
    files = _cifar_files(cifar.CIFAR10)
    archive = _tar(cifar.CIFAR10, files)
    spec = dataclasses.replace(
        cifar.CIFAR10,
        archive_md5=_md5(archive),
        train=tuple((f, _md5(files[f])) for f, _ in cifar.CIFAR10.train),
        test=tuple((f, _md5(files[f])) for f, _ in cifar.CIFAR10.test),
        meta=(cifar.CIFAR10.meta[0], _md5(files[cifar.CIFAR10.meta[0]])),
    )
    monkeypatch.setattr(cifar, "CIFAR10", spec)
    return spec, files, archive


def _rows(files: dict[str, bytes], names) -> np.ndarray:
    return np.concatenate([pickle.loads(files[f], encoding="latin1")["data"] for f in names])


def test_cifar10_from_the_archive(tmp_path, cifar10):
    spec, files, archive = cifar10
    (tmp_path / spec.archive).write_bytes(archive)
    ds = load_dataset("cifar10", tmp_path)
    assert ds.train_images.shape == (20, 3, 32, 32) and ds.test_images.shape == (4, 3, 32, 32)
    assert ds.classes == tuple(f"name{i}" for i in range(10)) and ds.in_chans == 3 and ds.style == "natural"
    assert ds.mean == (0.4914, 0.4822, 0.4465)
    rows = _rows(files, [f for f, _ in spec.train])
    # each row is 1024 red, 1024 green, 1024 blue values of a 32x32 image, row-major
    assert torch.equal(ds.train_images[3, 1], torch.from_numpy(rows[3, 1024:2048].reshape(32, 32)))
    labels = sum((pickle.loads(files[f], encoding="latin1")["labels"] for f, _ in spec.train), [])
    assert ds.train_labels.tolist() == labels


def test_cifar10_extracted_folder_gives_the_same_tensors(tmp_path, cifar10):
    spec, files, archive = cifar10
    (tmp_path / "a" / "cifar10").mkdir(parents=True)
    (tmp_path / "a" / "cifar10" / spec.archive).write_bytes(archive)
    extracted = tmp_path / "b" / spec.folder
    extracted.mkdir(parents=True)
    for name, data in files.items():
        (extracted / name).write_bytes(data)
    a, b = load_dataset("cifar10", tmp_path / "a"), load_dataset("cifar10", tmp_path / "b")
    assert a.source == str(tmp_path / "a" / "cifar10" / spec.archive) and b.source == str(extracted)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_labels, b.test_labels)


def test_cifar_files_that_are_not_the_official_ones_are_refused(tmp_path, cifar10):
    spec, files, archive = cifar10
    (tmp_path / spec.archive).write_bytes(archive[:-10] + b"0123456789")
    with pytest.raises(DataError, match=f"expected MD5 {spec.archive_md5}") as e:
        load_dataset("cifar10", tmp_path)
    assert str(tmp_path / spec.archive) in str(e.value)
    extracted = tmp_path / "x" / spec.folder
    extracted.mkdir(parents=True)
    for name, data in files.items():
        (extracted / name).write_bytes(data)
    (extracted / "data_batch_3").write_bytes(files["data_batch_4"])
    with pytest.raises(DataError, match="data_batch_3: differs from the official file"):
        load_dataset("cifar10", tmp_path / "x")
    (extracted / "data_batch_3").unlink()
    with pytest.raises(DataError, match="has 6 of the 7 CIFAR-10 files; missing data_batch_3"):
        load_dataset("cifar10", tmp_path / "x")


class _Payload:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


@pytest.mark.parametrize("payload", ["os.system", "builtins.exec"])
def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path, monkeypatch, cifar10, payload):
    spec, files, _ = cifar10
    marker = tmp_path / "pwned"
    if payload == "os.system":
        evil = _Payload(os.system, f"touch {marker}")
    else:
        evil = _Payload(exec, f"open({str(marker)!r}, 'w').close()")
    data = pickle.dumps({"data": evil, "labels": [0]}, protocol=2)
    # the payload is real: the standard unpickler runs it (here on a copy aimed at another file)
    pickle.loads(data.replace(str(marker).encode(), str(tmp_path / "proof").encode()))
    assert (tmp_path / "proof").exists()
    extracted = tmp_path / spec.folder
    extracted.mkdir()
    for name, d in files.items():
        (extracted / name).write_bytes(data if name == "data_batch_2" else d)
    # the MD5 says "official", so it is the unpickler that must stop it
    train = (spec.train[0], ("data_batch_2", _md5(data)), *spec.train[2:])
    monkeypatch.setattr(cifar, "CIFAR10", dataclasses.replace(spec, train=train))
    with pytest.raises(DataError, match="refused to unpickle") as e:
        load_dataset("cifar10", tmp_path)
    assert str(extracted / "data_batch_2") in str(e.value)
    assert not marker.exists()


def test_cifar100_downloads_into_the_cache(tmp_path, monkeypatch, server):
    files = _cifar_files(cifar.CIFAR100, n_per_batch=6)
    archive = _tar(cifar.CIFAR100, files)
    (server.root / "data").mkdir(parents=True)
    (server.root / "data" / "c100.tar.gz").write_bytes(archive)
    spec = dataclasses.replace(
        cifar.CIFAR100,
        url=server.url + "c100.tar.gz",
        archive_md5=_md5(archive),
        train=(("train", _md5(files["train"])),),
        test=(("test", _md5(files["test"])),),
        meta=("meta", _md5(files["meta"])),
    )
    with pytest.raises(DataError) as e:  # offline: how to get it
        load_dataset("cifar100")
    assert "CIFAR-100 not found" in str(e.value) and "cifar-100-python.tar.gz" in str(e.value)
    monkeypatch.setattr(cifar, "CIFAR100", spec)
    ds = load_dataset("cifar100")
    cached = Path.home() / ".cache" / "reslab" / "cifar100" / spec.archive
    assert ds.source == str(cached) and cached.is_file()
    assert ds.num_classes == 100 and ds.train_images.shape == (6, 3, 32, 32)
    assert ds.train_labels.tolist() == pickle.loads(files["train"], encoding="latin1")["fine_labels"]


# ----------------------------------------------------------------------------------------------------------------------
# image folders


def _save(path: Path, size: tuple[int, int], mode: str = "RGB", fmt: str | None = None, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    im = Image.fromarray(a).convert(mode)
    im.save(path, format=fmt)
    return path


@pytest.fixture
def photos(tmp_path) -> Path:
    """Two classes: mixed sizes, modes and formats, nested folders, upper-case extensions, files to ignore."""
    root = tmp_path / "photos"
    _save(root / "dog" / "a.PNG", (20, 12), "RGB", "PNG")
    _save(root / "dog" / "more" / "deeper" / "b.jpeg", (9, 30), "L", "JPEG", seed=1)
    _save(root / "dog" / "c.GIF", (16, 16), "P", "GIF", seed=2)
    _save(root / "cat" / "d.webp", (40, 25), "RGB", "WEBP", seed=3)
    _save(root / "cat" / "e.Tiff", (8, 8), "RGBA", "TIFF", seed=4)
    _save(root / "cat" / "f.bmp", (13, 7), "RGB", "BMP", seed=5)
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "README.md").write_text("top-level files are not classes")
    _save(root / ".thumbnails" / "x.png", (4, 4))  # hidden: not a class
    _save(root / "cat" / ".hidden.png", (4, 4))
    return root


def test_imagefolder_finds_classes_and_images_and_ignores_the_rest(photos):
    ds = load_imagefolder(photos, image_size=8, in_chans=3, progress=False)
    assert ds.classes == ("cat", "dog")
    assert ds.train_images.shape == (6, 3, 8, 8) and ds.train_labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.test_images is None and ds.val_images is None and ds.skipped == () and ds.source == str(photos)
    assert ds.style == "natural" and len(ds.mean) == 3 and ds.preprocess()["resize"] == 8
    assert ds.mean == channel_stats(ds.train_images)[0]
    gray = load_imagefolder(photos, image_size=6, in_chans=1, progress=False)
    assert gray.train_images.shape == (6, 6, 6) and gray.in_chans == 1 and gray.preprocess()["channel_order"] == "gray"


def test_read_image_is_resize_shorter_side_then_centre_crop(tmp_path):
    # a 24x8 image whose columns say where they are: the shorter side is already 8, so the crop keeps columns 8..15
    a = np.tile((np.arange(24, dtype=np.uint8) * 10)[None, :], (8, 1))
    Image.fromarray(a).save(tmp_path / "wide.png")
    t = read_image(tmp_path / "wide.png", image_size=8, in_chans=1)
    assert t.shape == (8, 8) and t[0].tolist() == [10 * c for c in range(8, 16)]
    # a 16x32 image: resized to 8x16 by Pillow's bilinear, as torchvision's Resize(8), then the middle 8 rows
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 16, 3), dtype=np.uint8))
    im.save(tmp_path / "tall.png")
    expected = np.asarray(im.resize((8, 16), Image.Resampling.BILINEAR))[4:12]
    t = read_image(tmp_path / "tall.png", image_size=8, in_chans=3)
    assert t.shape == (3, 8, 8) and torch.equal(t, torch.from_numpy(expected.copy()).permute(2, 0, 1))


def test_an_unreadable_image_is_named_or_skipped_and_counted(photos):
    bad = photos / "dog" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is no jpeg")
    with pytest.raises(DataError) as e:
        load_imagefolder(photos, image_size=8, progress=False)
    assert str(bad) in str(e.value) and "--skip-bad-images" in str(e.value) and "\n" not in str(e.value)
    ds = load_imagefolder(photos, image_size=8, skip_bad_images=True, progress=False)
    assert ds.skipped == (str(bad),) and "1 unreadable image skipped" in ds.source
    assert len(ds.train_images) == 6 and ds.train_labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_an_empty_class_folder_is_an_error(photos):
    (photos / "bird" / "sub").mkdir(parents=True)
    (photos / "bird" / "sub" / "list.csv").write_text("a,b")
    with pytest.raises(DataError, match="empty class folder") as e:
        load_imagefolder(photos, progress=False)
    assert str(photos / "bird") in str(e.value) and "1 other file ignored" in str(e.value)


def test_train_val_test_folders(tmp_path):
    root = tmp_path / "split"
    for split, n in (("train", 3), ("val", 2), ("test", 1)):
        for c in ("b", "a"):
            for i in range(n):
                _save(root / split / c / f"{i}.png", (10, 10), seed=i)
    ds = load_imagefolder(root, image_size=4, progress=False)
    assert ds.classes == ("a", "b") and len(ds.train_labels) == 6 and len(ds.val_labels) == 4
    assert ds.test_labels.tolist() == [0, 1]
    _save(root / "val" / "zebra" / "0.png", (10, 10))
    with pytest.raises(DataError, match="class 'zebra' is not among the training classes"):
        load_imagefolder(root, image_size=4, progress=False)
    (root / "val" / "zebra" / "0.png").unlink()
    (root / "val" / "zebra").rmdir()
    (root / "extra").mkdir()
    with pytest.raises(DataError, match="has train/, so expected only train/, val/ and test/"):
        load_imagefolder(root, image_size=4, progress=False)


def test_imagefolder_data_dir_errors(tmp_path):
    with pytest.raises(ReslabError, match="--data-dir"):
        load_dataset("imagefolder", None)
    with pytest.raises(DataError, match="no such folder"):
        load_dataset("imagefolder", tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    _save(tmp_path / "flat" / "x.png", (4, 4))
    with pytest.raises(DataError, match="no class folders"):
        load_dataset("imagefolder", tmp_path / "flat")


def test_a_folder_too_large_for_memory_streams_the_same_batches(photos):
    bad = photos / "cat" / "zz.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    in_memory = load_imagefolder(photos, image_size=8, skip_bad_images=True, progress=False)
    streamed = load_imagefolder(
        photos, image_size=8, skip_bad_images=True, max_memory_bytes=0, num_workers=2, progress=False
    )
    assert isinstance(streamed.train_images, ImageFiles) and streamed.streamed and not in_memory.streamed
    assert streamed.skipped == in_memory.skipped == (str(bad),)
    assert streamed.train_images.shape == in_memory.train_images.shape and streamed.mean == in_memory.mean
    # the split logic indexes a streamed set as it does a tensor
    tx, ty, vx, vy = split_train_val(streamed.train_images, streamed.train_labels, 2, seed=0)
    mx, my, _, _ = split_train_val(in_memory.train_images, in_memory.train_labels, 2, seed=0)
    kw = dict(
        batch_size=2, train=True, seed=3, random_resized_crop=True, hflip=True, mean=in_memory.mean, std=in_memory.std
    )
    a, b = BatchLoader(tx, ty, **kw), BatchLoader(mx, my, **kw)
    for loader in (a, b):
        loader.set_epoch(1)
    assert _same(list(a), list(b))
    assert _same(list(a.iter_from(1)), list(b)[1:])  # resume mid-epoch from disk: the same tensors


# ----------------------------------------------------------------------------------------------------------------------
# writing a folder: the Fashion-MNIST stand-in of the README and the benchmark


def test_export_png_folder_round_trips_by_class_name(tmp_path):
    ds = dataclasses.replace(
        synthetic_dataset(num_train=10, num_test=12, num_classes=3, seed=4), classes=("T-shirt/top", "Bag", "Coat")
    )
    folder = export_png_folder(ds, tmp_path / "png")
    assert sorted(p.name for p in folder.iterdir()) == ["Bag", "Coat", "T-shirt_top"]
    back = load_imagefolder(folder, image_size=28, in_chans=1, progress=False)
    assert back.classes == ("Bag", "Coat", "T-shirt_top")
    by_name = {c: i for i, c in enumerate(back.classes)}
    order = sorted(range(12), key=lambda i: (by_name[ds.classes[int(ds.test_labels[i])].replace("/", "_")], i))
    assert torch.equal(back.train_images, ds.test_images[order])  # PNG is lossless; 28 -> 28 changes nothing
    colour = synthetic_dataset(num_train=4, num_test=3, num_classes=2, image_size=8, in_chans=3)
    back = load_imagefolder(export_png_folder(colour, tmp_path / "rgb"), image_size=8, progress=False)
    assert back.train_images.shape == (3, 3, 8, 8)


# ----------------------------------------------------------------------------------------------------------------------
# colour batches and the random resized crop


def _same(a, b):
    return len(a) == len(b) and all(
        torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b, strict=True)
    )


def test_resized_crop_boxes_follow_torchvision_and_are_reproducible():
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    top, left, h, w, flip = resized_crop_params(2000, 40, 30, hflip=True, generator=g())
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 40).all() and (left + w <= 30).all()
    area = (h * w).double() / (40 * 30)
    assert area.min() >= 0.06 and area.max() <= 1.0 and 0.3 < area.mean() < 0.7  # U(0.08, 1), less the misses
    assert 0.4 < flip.float().mean() < 0.6
    again = resized_crop_params(2000, 40, 30, hflip=True, generator=g())
    assert all(torch.equal(u, v) for u, v in zip((top, left, h, w, flip), again, strict=True))
    # no box can have area 2x the image: every image falls back to the centred crop, aspect clamped to 4/3
    top, left, h, w, _ = resized_crop_params(5, 40, 10, scale=(2.0, 3.0), generator=g())
    assert w.tolist() == [10] * 5 and h.tolist() == [13] * 5 and top.tolist() == [13] * 5 and left.tolist() == [0] * 5


def test_resized_crop_cuts_resizes_and_flips_each_box():
    x = torch.randint(0, 256, (3, 3, 12, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    top, left, h, w = (
        torch.tensor([0, 2, 5]),
        torch.tensor([0, 3, 1]),
        torch.tensor([12, 6, 4]),
        torch.tensor([16, 9, 8]),
    )
    flip = torch.tensor([False, True, False])
    out = resized_crop(x, top, left, h, w, flip, size=8)
    assert out.shape == (3, 3, 8, 8) and out.dtype == torch.float32
    for i in range(3):
        box = x[i : i + 1, :, top[i] : top[i] + h[i], left[i] : left[i] + w[i]].float()
        ref = F.interpolate(box, size=(8, 8), mode="bilinear", align_corners=False)
        ref = ref.flip(-1) if flip[i] else ref
        torch.testing.assert_close(out[i : i + 1], ref, atol=1e-3, rtol=0)
    # the whole image at its own size is the image (up to float rounding of the sampling grid)
    square = x[..., :12]
    full, no = torch.full((3,), 12), torch.zeros(3, dtype=torch.bool)
    same = resized_crop(square, torch.zeros(3), torch.zeros(3), full, full, no, size=12)
    torch.testing.assert_close(same, square.float(), atol=1e-3, rtol=0)


def _colour_loader(**kw):
    ds = synthetic_dataset(num_train=48, num_test=8, image_size=12, in_chans=3, seed=2)
    args = dict(
        batch_size=8,
        train=True,
        seed=5,
        random_resized_crop=True,
        hflip=True,
        crop_size=10,
        mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.25, 0.3),
    )
    return BatchLoader(ds.train_images, ds.train_labels, **{**args, **kw})


def _epoch(loader, epoch=0):
    loader.set_epoch(epoch)
    return list(loader)


def test_colour_augmentation_is_a_function_of_seed_epoch_step_rank():
    full = _epoch(_colour_loader(), 3)
    assert full[0][0].shape == (8, 3, 10, 10) and _colour_loader().input_size == (3, 10, 10)
    resumed = _colour_loader()
    resumed.set_epoch(3)
    assert _same(list(resumed.iter_from(2)), full[2:])
    assert not _same(_epoch(_colour_loader(), 2), full)
    assert not _same(_epoch(_colour_loader(seed=6), 3), full)
    r0 = _colour_loader(world_size=2, rank=0)
    r1 = _colour_loader(world_size=2, rank=1)
    for loader in (r0, r1):
        loader.images = loader.images[:1].expand(48, 3, 12, 12)  # every item the same image
    assert not torch.equal(_epoch(r0)[0][0], _epoch(r1)[0][0])
    # the padded crop on colour images: every channel of an image gets the same crop and flip
    padded = _epoch(_colour_loader(random_resized_crop=False, crop_padding=2, crop_size=None))
    assert padded[0][0].shape == (8, 3, 12, 12)


def _crop_flip_by_hand(image, top, left, flip, padding):
    """One (C, H, W) image: pasted into a zero canvas `padding` pixels larger on every side, the (H, W) window at
    (top, left) cut out of it, its columns reversed where `flip`: the padded random crop, written out."""
    c, h, w = image.shape
    canvas = torch.zeros(c, h + 2 * padding, w + 2 * padding, dtype=image.dtype)
    canvas[:, padding : padding + h, padding : padding + w] = image
    window = canvas[:, top : top + h, left : left + w]
    return window[:, :, list(range(w - 1, -1, -1))] if flip else window


def test_crop_flip_moves_all_channels_together():
    x = torch.randint(1, 256, (4, 3, 6, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    top, left = torch.tensor([0, 1, 2, 3]), torch.tensor([3, 0, 2, 1])
    flip = torch.tensor([True, False, True, False])
    out = crop_flip(x, top, left, flip, padding=2)
    for i in range(len(x)):
        expected = _crop_flip_by_hand(x[i], int(top[i]), int(left[i]), bool(flip[i]), 2)
        assert torch.equal(out[i], expected), i
        # every channel of an image got the same crop: its zero border is in the same place in each
        assert ((out[i] == 0) == (out[i, :1] == 0)).all()


def test_per_channel_normalisation_and_centre_crop():
    x = torch.zeros(2, 3, 6, 6, dtype=torch.uint8)
    x[:, 1] = 255
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 1.0)
    out = normalize(x, mean, std)
    assert out[:, 0].unique().tolist() == [-1.0] and out[:, 1].unique().tolist() == [3.0] and out[:, 2].abs().max() == 0
    loader = BatchLoader(
        x, torch.zeros(2, dtype=torch.long), batch_size=2, train=False, crop_size=4, mean=mean, std=std
    )
    ((batch, _),) = list(loader)
    assert batch.shape == (2, 3, 4, 4) and loader.input_size == (3, 4, 4)
    wide = torch.arange(24, dtype=torch.uint8).view(1, 1, 24).expand(1, 8, 24)
    assert center_crop(wide, 8)[0, 0].tolist() == list(range(8, 16))


# ----------------------------------------------------------------------------------------------------------------------
# load_dataset, Dataset


def test_load_dataset_knows_every_dataset_and_refuses_unknown_options(tmp_path):
    assert DATASETS == ("fashion-mnist", "mnist", "kmnist", "cifar10", "cifar100", "imagefolder", "synthetic")
    ds = load_dataset("synthetic", in_chans=3, image_size=8, num_train=10, num_test=4)
    assert ds.train_images.shape == (10, 3, 8, 8) and len(ds.mean) == 3
    with pytest.raises(ReslabError, match="--image-size: not an option of --dataset fashion-mnist"):
        load_dataset("fashion-mnist", None, image_size=32)
    assert load_dataset("synthetic", in_chans=None).in_chans == 1  # None counts as not given


def test_dataset_checks_its_splits():
    x, y = torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 0, 1])
    ds = Dataset(
        x,
        y,
        None,
        None,
        classes=("a", "b"),
        source="t",
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        val_images=x[:2],
        val_labels=y[:2],
    )
    assert ds.input_size == (3, 8, 8) and ds.split("test") == (None, None) and "2 val" in repr(ds)
    with pytest.raises(ValueError, match="mean and std"):
        Dataset(x, y, x, y, classes=("a", "b"), source="t")  # Fashion-MNIST's single-channel default
    with pytest.raises(ValueError, match="val_images"):
        Dataset(x, y, None, None, ("a", "b"), "t", (0.5,) * 3, (0.5,) * 3, val_images=x[:, :, :4], val_labels=y)
    with pytest.raises(ValueError, match="range of `classes`"):
        Dataset(x, y + 1, None, None, ("a", "b"), "t", (0.5,) * 3, (0.5,) * 3)


# ----------------------------------------------------------------------------------------------------------------------
# the benchmark runs (tiny) and names the machine


def test_data_pipeline_benchmark_reports_ratios(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "benchmarks/data_pipeline.py",
            "--limit",
            "64",
            "--workers",
            "0",
            "--folder",
            str(tmp_path / "png"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("machine: ")
    assert next(line for line in lines if line.startswith("in-memory")).split()[-1] == "1.00"
    assert any(line.startswith("folder, streamed") for line in lines)


# ----------------------------------------------------------------------------------------------------------------------
# a static file server on 127.0.0.1


@pytest.fixture
def server(tmp_path, serve):
    return serve(tmp_path / "www", "data/")
