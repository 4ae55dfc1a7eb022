"""Data: IDX files, verification, search order, download, loaders and transforms, on small files the tests write.

The real dataset never leaks in: HOME, $RESLAB_DATA, the Debian folder and the download mirrors are redirected for
every test, and the table of expected files is swapped for a small one (60 + 20 items) whose hashes the tests know.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import reslab.data.fashion_mnist as fm
from reslab.cli import main
from reslab.data import (
    CLASSES,
    MEAN,
    STD,
    BatchLoader,
    find_data_dir,
    load_dataset,
    load_fashion_mnist,
    read_idx,
    split_train_val,
    synthetic_dataset,
    write_idx,
)
from reslab.data.idx import idx_bytes
from reslab.data.transforms import crop_flip, normalize, prepare_batch, resize
from reslab.errors import DataError, ReslabError

REAL_FILES = dict(fm.FILES)
REAL_DEBIAN_DIR = fm.DEBIAN_DIR

# ----------------------------------------------------------------------------------------------------------------------
# small IDX files with known content


def _small_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "train_images": rng.integers(0, 256, (60, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(60) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(20) % 10).astype(np.uint8),
    }


SMALL = _small_arrays()


def write_files(folder: Path, arrays: dict[str, np.ndarray] = SMALL, *, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for key, spec in REAL_FILES.items():
        write_idx(folder / (spec.name + (".gz" if gz else "")), arrays[key])
    return folder


def path_of(folder: Path, key: str, gz: bool = True) -> Path:
    return folder / (REAL_FILES[key].name + (".gz" if gz else ""))


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch, unused_port):
    """No real data, cache or network: an empty HOME, no $RESLAB_DATA, no Debian folder, a dead mirror."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RESLAB_DATA", raising=False)
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "debian")
    monkeypatch.setattr(fm, "MIRRORS", (f"http://127.0.0.1:{unused_port}/",))
    small = {
        key: fm.IdxFile(spec.name, SMALL[key].shape, hashlib.sha256(idx_bytes(SMALL[key])).hexdigest())
        for key, spec in REAL_FILES.items()
    }
    monkeypatch.setattr(fm, "FILES", small)


@pytest.fixture
def good(tmp_path) -> Path:
    return write_files(tmp_path / "good")


# ----------------------------------------------------------------------------------------------------------------------
# IDX format


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_roundtrip(tmp_path, suffix):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / f"x{suffix}", a)
    assert path.read_bytes()[:2] == (b"\x1f\x8b" if suffix else b"\x00\x00")
    np.testing.assert_array_equal(read_idx(path), a)


def test_gzip_is_recognised_by_content_not_name(tmp_path):
    a = np.arange(10, dtype=np.uint8)
    (tmp_path / "labels").write_bytes(gzip.compress(idx_bytes(a)))
    np.testing.assert_array_equal(read_idx(tmp_path / "labels"), a)


# ----------------------------------------------------------------------------------------------------------------------
# verification: every error names the file and what is wrong


def test_good_files_load_as_uint8_tensors(good):
    ds = load_fashion_mnist(good, download=False)
    assert ds.classes == CLASSES and ds.source == str(good)
    assert ds.train_images.dtype == torch.uint8 and ds.train_images.shape == (60, 28, 28)
    assert ds.train_labels.dtype == torch.int64 and ds.test_labels.shape == (20,)
    np.testing.assert_array_equal(ds.train_images.numpy(), SMALL["train_images"])
    np.testing.assert_array_equal(ds.test_labels.numpy(), SMALL["test_labels"])


def test_uncompressed_and_mixed_files_are_accepted(tmp_path):
    folder = write_files(tmp_path / "raw", gz=False)
    write_idx(path_of(folder, "test_labels"), SMALL["test_labels"])  # now both forms of one file
    path_of(folder, "train_labels", gz=False).unlink()
    write_idx(path_of(folder, "train_labels"), SMALL["train_labels"])  # only the .gz of another
    ds = load_fashion_mnist(folder, download=False)
    np.testing.assert_array_equal(ds.train_labels.numpy(), SMALL["train_labels"])


def _damage(good: Path, key: str, data: bytes, gz: bool = False) -> Path:
    path_of(good, key).unlink()
    path = path_of(good, key, gz=gz)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _raw(key: str) -> bytes:
    return idx_bytes(SMALL[key])


CASES = {
    # case: (file, damaged bytes (uncompressed unless the case says gzip), words the message must contain)
    "wrong magic": ("train_images", b"\x00\x00\x0d\x03" + _raw("train_images")[4:], ["magic number", "0x00000803"]),
    "labels file with image magic": ("train_labels", idx_bytes(np.zeros((60, 1, 1), np.uint8)), ["0x00000801"]),
    "wrong image size": ("train_images", idx_bytes(np.zeros((60, 32, 32), np.uint8)), ["60x28x28", "60x32x32"]),
    "wrong count": ("test_images", idx_bytes(SMALL["test_images"][:19]), ["number of items", "20x28x28", "19x28x28"]),
    "label out of range": ("test_labels", idx_bytes(np.full(20, 10, np.uint8)), ["label", "0-9", "found 10"]),
    "truncated": ("train_images", _raw("train_images")[:-5], ["truncated", "47,056", "47,051"]),
    "trailing data": ("train_labels", _raw("train_labels") + b"\x00", ["trailing", "68", "69"]),
    "header only": ("train_labels", b"\x00\x00\x08", ["too short", "found 3"]),
    "hash mismatch": ("train_images", idx_bytes(255 - SMALL["train_images"]), ["SHA-256", "differs"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_file_is_a_data_error_naming_the_file(good, case):
    key, data, words = CASES[case]
    path = _damage(good, key, data)
    with pytest.raises(DataError) as e:
        load_fashion_mnist(good, download=False)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg
    for word in words:
        assert word in msg, msg


def test_truncated_gzip(good):
    path = path_of(good, "train_images")
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match="truncated gzip") as e:
        load_fashion_mnist(good, download=False)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("where", ["crc", "stream"])
def test_corrupt_gzip(good, where):
    path = path_of(good, "test_images")
    data = bytearray(path.read_bytes())
    i = len(data) - 8 if where == "crc" else len(data) // 2  # the CRC-32 in the trailer, or the deflate stream
    data[i : i + 4] = bytes(255 - b for b in data[i : i + 4])
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="gzip") as e:
        load_fashion_mnist(good, download=False)
    assert str(path) in str(e.value)


def test_full_size_file_with_the_right_shape_but_other_content_fails_the_official_hash(tmp_path, monkeypatch):
    # the real table: 60,000 x 28 x 28 passes every structural check, so only the SHA-256 can catch it
    monkeypatch.setattr(fm, "FILES", REAL_FILES)
    folder = write_files(tmp_path / "full")  # small files are enough for the three that are never reached
    path_of(folder, "train_images").unlink()
    zeros = np.zeros((60000, 28, 28), np.uint8)
    path = write_idx(path_of(folder, "train_images", gz=False), zeros)
    with pytest.raises(DataError) as e:
        load_fashion_mnist(folder, download=False)
    msg = str(e.value)
    expected, found = REAL_FILES["train_images"].sha256, hashlib.sha256(idx_bytes(zeros)).hexdigest()
    assert msg.startswith(f"{path}: content differs from the official file: expected SHA-256 {expected} "), msg
    assert f"found {found}" in msg


def test_damaged_cache_file_says_to_delete_it(tmp_path):
    cache = write_files(fm.cache_dir())
    path = path_of(cache, "test_labels")
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(DataError, match=re.escape(f"delete {path}")):
        load_fashion_mnist(download=False)


# ----------------------------------------------------------------------------------------------------------------------
# where the data is looked for


def test_search_order(tmp_path, monkeypatch):
    data_dir, env, cache, debian = (tmp_path / n for n in ("flag", "env", "cache", "debian"))
    for folder in (data_dir, env, debian):
        write_files(folder)
    monkeypatch.setenv("RESLAB_DATA", str(env))
    monkeypatch.setattr(fm, "cache_dir", lambda: cache)
    write_files(cache)
    assert find_data_dir(data_dir) == data_dir
    assert find_data_dir(None) == env
    monkeypatch.delenv("RESLAB_DATA")
    assert find_data_dir(None) == cache
    path_of(cache, "test_labels").unlink()  # an incomplete folder is passed over
    assert find_data_dir(None) == debian
    assert load_fashion_mnist(download=False).source == str(debian)
    # a folder the user names is used or is an error, never passed over for another copy (issue 11)
    with pytest.raises(DataError, match="nowhere: no such folder"):
        find_data_dir(tmp_path / "nowhere")


def test_default_cache_is_under_home(tmp_path):
    assert fm.cache_dir() == tmp_path / "home" / ".cache" / "reslab" / "fashion-mnist"


def test_no_data_anywhere_is_found_as_none(tmp_path):
    assert find_data_dir(None) is None  # a folder named but lacking the files is an error: tests/test_datasets.py


# ----------------------------------------------------------------------------------------------------------------------
# download (from a server on 127.0.0.1) and the offline message


@pytest.fixture
def server(tmp_path, serve):
    return serve(tmp_path / "www", "data/")


def test_download_into_the_cache_when_nothing_is_found(tmp_path, monkeypatch, server, capsys):
    write_files(tmp_path / "www" / "data")
    dead = fm.MIRRORS[0]
    monkeypatch.setattr(fm, "MIRRORS", (dead, server.url))  # the first mirror is down: the second one serves
    ds = load_fashion_mnist()
    cache = fm.cache_dir()
    assert ds.source == str(cache)
    assert sorted(p.name for p in cache.iterdir()) == sorted(s.name + ".gz" for s in fm.FILES.values())
    np.testing.assert_array_equal(ds.test_images.numpy(), SMALL["test_images"])
    assert "train-images-idx3-ubyte.gz" in capsys.readouterr().err  # the progress bar
    # now found in the cache: no second download
    n = len(server.requests)
    assert load_fashion_mnist().source == str(cache) and len(server.requests) == n


def test_download_fetches_only_missing_files(tmp_path, monkeypatch, server):
    write_files(tmp_path / "www" / "data")
    monkeypatch.setattr(fm, "MIRRORS", (server.url,))
    cache = write_files(fm.cache_dir())
    path_of(cache, "train_labels").unlink()
    load_fashion_mnist()
    assert [r.rsplit("/", 1)[1] for r in server.requests] == ["train-labels-idx1-ubyte.gz"]


def test_download_that_fails_verification_leaves_nothing_behind(tmp_path, monkeypatch, server):
    www = write_files(tmp_path / "www" / "data")
    _damage(www, "train_images", idx_bytes(255 - SMALL["train_images"]), gz=True)
    monkeypatch.setattr(fm, "MIRRORS", (server.url,))
    with pytest.raises(DataError) as e:
        load_fashion_mnist()
    msg = str(e.value)
    assert "SHA-256" in msg and "train-images-idx3-ubyte.gz" in msg
    assert not (fm.cache_dir() / "train-images-idx3-ubyte.gz").exists()
    assert not list(fm.cache_dir().glob("*.part"))


def _assert_three_ways(msg: str):
    assert "\n" not in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "--data-dir" in msg and "RESLAB_DATA" in msg
    assert str(fm.cache_dir()) in msg and "reslab data" in msg


def test_offline_message_gives_the_three_ways():
    with pytest.raises(DataError) as e:
        load_fashion_mnist()
    _assert_three_ways(str(e.value))
    assert "Connection refused" in str(e.value)
    assert not list(fm.cache_dir().glob("*"))


def test_not_found_without_download_gives_the_three_ways():
    with pytest.raises(DataError) as e:
        load_fashion_mnist(download=False)
    _assert_three_ways(str(e.value))


# ----------------------------------------------------------------------------------------------------------------------
# `reslab data`


def test_cli_check(good, capsys):
    assert main(["data", "--check", "--data-dir", str(good)]) == 0
    assert str(good) in capsys.readouterr().out
    assert main(["data", "--check"]) == 1
    assert "not found" in capsys.readouterr().out
    path_of(good, "test_labels").write_bytes(b"\x1f\x8b junk")
    assert main(["data", "--check", "--data-dir", str(good)]) == 2
    err = capsys.readouterr().err
    assert "t10k-labels-idx1-ubyte.gz" in err and "Traceback" not in err and err.count("\n") == 1


def test_cli_data_offline_is_one_paragraph(capsys):
    assert main(["data"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    _assert_three_ways(err.strip())


def test_cli_data_loads(good, capsys):
    assert main(["data", "--data-dir", str(good)]) == 0
    assert "60 training and 20 test images" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------------------------
# real data (Debian's package), when installed


@pytest.mark.skipif(
    not (REAL_DEBIAN_DIR / "train-images-idx3-ubyte.gz").exists(), reason="dataset-fashion-mnist absent"
)
def test_real_fashion_mnist_loads_and_verifies(monkeypatch):
    monkeypatch.setattr(fm, "FILES", REAL_FILES)
    ds = load_fashion_mnist(REAL_DEBIAN_DIR, download=False)
    assert ds.train_images.shape == (60000, 28, 28) and ds.test_images.shape == (10000, 28, 28)
    assert torch.bincount(ds.train_labels).tolist() == [6000] * 10
    assert torch.bincount(ds.test_labels).tolist() == [1000] * 10
    assert abs(ds.train_images.float().mean().item() / 255 - MEAN) < 1e-3


# ----------------------------------------------------------------------------------------------------------------------
# synthetic data and load_dataset


def test_synthetic_dataset_is_deterministic_and_learnable():
    ds = synthetic_dataset(num_train=500, num_test=200, seed=1)
    again = synthetic_dataset(num_train=500, num_test=200, seed=1)
    assert torch.equal(ds.train_images, again.train_images) and torch.equal(ds.test_labels, again.test_labels)
    assert ds.train_images.dtype == torch.uint8 and ds.train_images.shape == (500, 28, 28)
    assert ds.train_labels.dtype == torch.int64 and ds.num_classes == 10 and ds.classes[0] == "class0"
    # nearest class mean already separates the classes, so a network can learn them in a few steps
    x, xt = ds.train_images.flatten(1).float(), ds.test_images.flatten(1).float()
    means = torch.stack([x[ds.train_labels == k].mean(0) for k in range(10)])
    acc = (torch.cdist(xt, means).argmin(1) == ds.test_labels).float().mean()
    assert acc > 0.9
    # horizontal flips keep the class (the patterns are mirror-symmetric, like clothes)
    flipped = ds.test_images.flip(-1).flatten(1).float()
    assert (torch.cdist(flipped, means).argmin(1) == ds.test_labels).float().mean() > 0.9


def test_synthetic_sizes():
    ds = synthetic_dataset(num_train=30, num_test=10, num_classes=3, image_size=16, seed=0)
    assert ds.train_images.shape == (30, 16, 16) and ds.num_classes == 3 and int(ds.train_labels.max()) < 3


def test_load_dataset_dispatch(good):
    assert load_dataset("synthetic", None).source.startswith("synthetic")
    assert load_dataset("fashion-mnist", str(good)).source == str(good)
    with pytest.raises(ReslabError, match="--dataset"):
        load_dataset("imagenet", None)


# ----------------------------------------------------------------------------------------------------------------------
# split and loaders


def test_split_train_val_is_fixed_disjoint_and_complete():
    images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1).expand(100, 2, 2)
    labels = torch.arange(100)
    tx, ty, vx, vy = split_train_val(images, labels, 20, seed=3)
    assert len(tx) == 80 and len(vx) == 20 and torch.equal(vx[:, 0, 0].long(), vy)
    assert sorted(torch.cat([ty, vy]).tolist()) == list(range(100))
    assert torch.equal(vy, split_train_val(images, labels, 20, seed=3)[3])
    assert not torch.equal(vy, split_train_val(images, labels, 20, seed=4)[3])
    assert len(split_train_val(images, labels, 0, 0)[3]) == 0
    with pytest.raises(ReslabError, match="--val-size"):
        split_train_val(images, labels, 100, 0)


def _ids(n=100, size=28):
    """Images whose labels are their index, so a batch says which items it holds."""
    return torch.randint(0, 256, (n, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)), (
        torch.arange(n)
    )


def _epoch(loader, epoch=0):
    loader.set_epoch(epoch)
    return list(loader)


@pytest.mark.parametrize("n,world_size,batch_size", [(100, 3, 8), (100, 4, 25), (7, 2, 2), (10, 1, 256)])
def test_train_shards_are_equal_disjoint_and_drop_the_remainder(n, world_size, batch_size):
    images, labels = _ids(n)
    loaders = [
        BatchLoader(images, labels, batch_size=batch_size, train=True, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    steps = {len(loader) for loader in loaders}
    assert len(steps) == 1
    seen = [torch.cat([y for _, y in _epoch(loader)]) for loader in loaders]
    bs = min(batch_size, n // world_size)
    assert all(len(s) == len(loaders[0]) * bs for s in seen)
    everything = torch.cat(seen)
    assert len(set(everything.tolist())) == len(everything)  # no item twice in an epoch
    assert [len(list(loader)) for loader in loaders] == [len(loaders[0])] * world_size


@pytest.mark.parametrize("n,world_size,batch_size", [(100, 3, 8), (10, 4, 3), (5, 8, 2), (64, 1, 64)])
def test_eval_shards_partition_the_set_exactly(n, world_size, batch_size):
    images, labels = _ids(n)
    seen = []
    for r in range(world_size):
        loader = BatchLoader(images, labels, batch_size=batch_size, train=False, rank=r, world_size=world_size)
        batches = list(loader)
        assert len(batches) == len(loader)
        seen += [y for _, y in batches]
    assert torch.equal(torch.cat(seen), labels)


def test_eval_batches_are_unaugmented():
    images, labels = _ids(10)
    loader = BatchLoader(images, labels, batch_size=4, train=False, crop_padding=4, hflip=True)
    x = torch.cat([x for x, _ in loader])
    assert torch.equal(x, normalize(images))


def _loader(**kw):
    images, labels = _ids(96)
    args = dict(batch_size=16, train=True, seed=5, crop_padding=3, hflip=True, resize=40)
    return BatchLoader(images, labels, **{**args, **kw})


def _same(a, b):
    return len(a) == len(b) and all(
        torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b, strict=True)
    )


def test_iter_from_is_the_tail_of_a_full_epoch_bitwise():
    full = _epoch(_loader(), epoch=2)
    for k in (0, 1, 4, len(full)):
        resumed = _loader()  # a fresh process: no state but (seed, epoch, step)
        resumed.set_epoch(2)
        assert _same(list(resumed.iter_from(k)), full[k:])
    with pytest.raises(ValueError):
        list(resumed.iter_from(len(full) + 1))


def test_augmentation_is_a_function_of_seed_epoch_step_rank():
    a = _loader()
    epochs = [_epoch(a, e) for e in range(3)]
    assert _same(_epoch(_loader(), 2), epochs[2])  # not of what came before
    assert _same(_epoch(a, 1), epochs[1])
    ys = [torch.cat([y for _, y in ep]) for ep in epochs]
    assert not torch.equal(ys[0], ys[1]) and not torch.equal(ys[1], ys[2])  # epochs shuffle differently
    assert not _same(_epoch(_loader(seed=6)), epochs[0])
    # the same items under a different rank get a different augmentation
    r0 = _loader(world_size=2, rank=0, crop_padding=0, resize=None)
    r1 = _loader(world_size=2, rank=1, crop_padding=0, resize=None)
    flips = []
    for loader in (r0, r1):
        loader.images = loader.images[:1].expand(96, 28, 28)  # every item the same image
        flips.append(torch.stack([x[:, 0, 0, 0] for x, _ in _epoch(loader)]))
    assert not torch.equal(flips[0], flips[1])


def test_augmentation_happens_and_batches_have_the_right_form():
    (x, y), *_ = _epoch(_loader())
    assert x.shape == (16, 1, 40, 40) and x.dtype == torch.float32 and y.dtype == torch.int64
    (plain, _), *_ = _epoch(_loader(crop_padding=0, hflip=False))
    assert not torch.equal(x, plain)
    loader = _loader(channels_last=True, resize=None)
    assert loader.input_size == (1, 28, 28)
    (x, _), *_ = _epoch(loader)
    assert x.is_contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------------------------------------------------
# transforms


def _crop_flip_reference(images, top, left, flip, padding):
    out = []
    for img, t, l, f in zip(images, top.tolist(), left.tolist(), flip.tolist(), strict=True):
        padded = torch.nn.functional.pad(img, (padding,) * 4)
        c = padded[t : t + img.shape[0], l : l + img.shape[1]]
        out.append(c.flip(-1) if f else c)
    return torch.stack(out)


def test_crop_flip_matches_a_per_image_reference():
    images, _ = _ids(6, size=5)
    b = len(images)
    p = 2
    top, left = torch.tensor([0, 1, 2, 3, 4, 2]), torch.tensor([4, 0, 2, 1, 3, 2])
    flip = torch.tensor([False, True, False, True, True, False])
    assert torch.equal(crop_flip(images, top, left, flip, padding=p), _crop_flip_reference(images, top, left, flip, p))
    centre, none = torch.full((b,), p), torch.zeros(b, dtype=torch.bool)
    assert torch.equal(crop_flip(images, centre, centre, none, padding=p), images)  # centred crop: identity
    zero = torch.zeros(b, dtype=torch.long)
    assert torch.equal(crop_flip(images, zero, zero, none, padding=0), images)  # padding 0: identity
    assert torch.equal(crop_flip(images, zero, zero, ~none, padding=0), images.flip(-1))  # flip really flips
    shifted = crop_flip(images, zero, zero, none, padding=1)  # top-left corner: one row and column of black
    assert (shifted[:, 0] == 0).all() and (shifted[:, :, 0] == 0).all()
    assert torch.equal(shifted[:, 1:, 1:], images[:, :-1, :-1])


def test_normalize_and_resize():
    images = torch.tensor([[[0, 255], [0, 255]]], dtype=torch.uint8)
    x = normalize(images)
    assert x.shape == (1, 1, 2, 2) and x.dtype == torch.float32
    assert torch.allclose(x[0, 0, 0], torch.tensor([-MEAN / STD, (1 - MEAN) / STD]))
    big = prepare_batch(torch.zeros(3, 28, 28, dtype=torch.uint8), resize_to=96)
    assert big.shape == (3, 1, 96, 96) and torch.allclose(big, torch.tensor(-MEAN / STD))
    x28 = normalize(torch.zeros(2, 28, 28, dtype=torch.uint8))
    assert resize(x28, None) is x28 and resize(x28, 28) is x28
