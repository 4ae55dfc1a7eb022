"""Fault injection on what reslab writes and reads: a full disk, a read-only folder, Ctrl-C mid-way, files changed
after they were written (a flipped byte, a NaN weight, metadata that contradicts the graph).

Each case: one line naming the file (exit 2, 130 for Ctrl-C), the previous file intact, no temporary file left.
"""

import ast
import contextlib
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import reslab.atomic
import reslab.export as E
import reslab.optional
from reslab.checkpoint import read_checkpoint, save_checkpoint
from reslab.cli import main

SRC = Path(__file__).resolve().parents[1] / "src" / "reslab"
CLI = ["--dataset", "synthetic", "--resize", "8", "--threads", "1", "--train-subset", "256", "--val-size", "64"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 1-epoch run folder (best.pt, last.pt) of a ResNet-8 on 8x8 synthetic images."""
    out = tmp_path_factory.mktemp("runs")
    argv = ["train", *CLI, "--epochs", "1", "--output", str(out), "--name", "run"]
    assert main(argv) == 0
    return out / "run"


@pytest.fixture
def image(tmp_path):
    a = np.zeros((8, 8), np.uint8)
    a[2:6, 2:6] = 200
    Image.fromarray(a).save(tmp_path / "img.png")
    return tmp_path / "img.png"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line_error(capsys, code, expected_code=2):
    err = capsys.readouterr().err
    assert code == expected_code and "Traceback" not in err, err
    lines = [x for x in err.strip().splitlines() if "error:" in x or "interrupted" in x]
    assert len(lines) == 1, err
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


@contextlib.contextmanager
def mounted_tmpfs(path: Path, options: str):
    """A tmpfs at `path` (root on Linux), or None where it cannot be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    try:
        yield path if ok.returncode == 0 else None
    finally:
        if ok.returncode == 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(folder: Path) -> None:
    """Take every free byte of the filesystem holding `folder`."""
    with contextlib.suppress(OSError), open(folder / "filler", "wb") as f:
        while True:
            f.write(bytes(1 << 16))
            f.flush()


@pytest.fixture
def full_disk(tmp_path, monkeypatch):
    """full_disk(prepare) -> a folder whose filesystem is full once `prepare(folder)` has put files in it: a real
    4 MiB tmpfs where one can be mounted (root on Linux), else a folder where every write meets ENOSPC (patched)."""
    with mounted_tmpfs(tmp_path / "disk", "size=4m") as mount:

        def make(prepare=lambda folder: None) -> Path:
            folder = mount if mount is not None else tmp_path / "disk"
            prepare(folder)
            if mount is not None:
                fill(folder)
            else:
                monkeypatch.setattr(reslab.atomic, "open", refusing(errno.ENOSPC, folder), raising=False)
            return folder

        yield make


def refusing(code: int, folder: Path):
    """An `open` that refuses to write in `folder` with OSError `code` (the filesystem stand-in without root)."""

    def fake_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax") and str(file).startswith(str(folder)):
            raise OSError(code, os.strerror(code), str(file))
        return open(file, mode, *args, **kwargs)

    return fake_open


# ----------------------------------------------------------------------------------------------------------------------
# one helper for every writer


def test_every_file_written_in_the_package_goes_through_the_atomic_helper():
    """No module but reslab.atomic opens a file for writing, calls Path.write_text/write_bytes or savefig to a path:
    each of those would replace a file non-atomically (a full disk leaves it truncated)."""
    exempt = {"atomic.py", "data/download.py", "weights/download.py"}  # downloads: their own temporary + rename
    found = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        if rel in exempt:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr in ("write_text", "write_bytes", "save_file"):
                found.append(f"{rel}:{node.lineno} .{f.attr}()")
            if isinstance(f, ast.Attribute) and f.attr == "savefig" and not _to_buffer(node):
                found.append(f"{rel}:{node.lineno} savefig to a path")
            if isinstance(f, ast.Name) and f.id == "open" and len(node.args) > 1:
                mode = node.args[1]
                if isinstance(mode, ast.Constant) and any(c in str(mode.value) for c in "wax"):
                    found.append(f"{rel}:{node.lineno} open(..., {mode.value!r})")
    assert not found, found


def _to_buffer(node: ast.Call) -> bool:
    return bool(node.args) and isinstance(node.args[0], ast.Name) and node.args[0].id == "buffer"


# ----------------------------------------------------------------------------------------------------------------------
# a full disk


def test_eval_on_a_full_disk_keeps_the_previous_confusion_matrix(run, full_disk, capsys):
    def prepare(folder):
        assert main(["eval", str(run), "--output", str(folder)]) == 0
        capsys.readouterr()

    folder = full_disk(prepare)
    png = folder / "confusion_matrix.png"
    before = digest(png)
    line = one_line_error(capsys, main(["eval", str(run), "--output", str(folder)]))
    assert str(png) in line and "no space left on the device" in line
    assert digest(png) == before and leftovers(folder) == []


def test_predict_cam_on_a_full_disk_leaves_no_empty_overlay(run, full_disk, image, capsys):
    folder = full_disk()
    line = one_line_error(capsys, main(["predict", str(run), str(image), "--cam", str(folder)]))
    assert "no space left on the device" in line and str(folder) in line
    assert not (folder / "img.png").exists() and leftovers(folder) == []


# onnx: slow to export (torch.onnx's dynamo path); its file goes through the same atomic_path as pt2's and safetensors'
@pytest.mark.parametrize("fmt", ["safetensors", pytest.param("onnx", marks=pytest.mark.slow)])
def test_export_on_a_full_disk_is_one_line_and_keeps_the_previous_file(run, full_disk, capsys, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxscript")
    out_name = f"model.{fmt}"

    def prepare(folder):
        (folder / out_name).write_bytes(b"the previous file")

    folder = full_disk(prepare)
    line = one_line_error(capsys, main(["export", str(run), "--format", fmt, "-o", str(folder / out_name)]))
    assert "no space left on the device" in line and str(folder / out_name) in line
    assert (folder / out_name).read_bytes() == b"the previous file" and leftovers(folder) == []


def test_export_pt2_on_a_real_full_disk_is_one_line_not_an_abort(run, tmp_path):
    # torch's C++ zip writer aborts the process (exit 134) on a full disk; reslab serialises in memory and writes
    with mounted_tmpfs(tmp_path / "disk", "size=256k") as mount:
        if mount is None:
            pytest.skip("needs a tmpfs (root on Linux) for a real full disk")
        fill(mount)
        env = {**os.environ, "PYTHONPATH": str(SRC.parent), "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(
            [sys.executable, "-m", "reslab", "export", str(run), "--format", "pt2", "-o", str(mount / "m.pt2")],
            capture_output=True,
            text=True,
            env=env,
            timeout=240,
        )
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert "no space left on the device" in proc.stderr and not (mount / "m.pt2").exists()
        assert leftovers(mount) == []


# ----------------------------------------------------------------------------------------------------------------------
# a read-only folder


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A folder no file can be created in: a read-only tmpfs where one can be mounted, else one whose writes and
    unlinks meet EROFS (patched), as a read-only filesystem answers even the clean-up's unlink of a missing file."""
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as mount:
        if mount is not None:
            yield mount
            return
        folder = tmp_path / "ro"
        real_unlink = Path.unlink

        def unlink(self, missing_ok=False):
            if str(self).startswith(str(folder)):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
            return real_unlink(self, missing_ok=missing_ok)

        monkeypatch.setattr(reslab.atomic, "open", refusing(errno.EROFS, folder), raising=False)
        monkeypatch.setattr(Path, "unlink", unlink)
        yield folder


@pytest.mark.parametrize("command", ["export-safetensors", "export-pt2", "convert"])
def test_export_and_convert_into_a_read_only_folder_are_one_line(run, read_only, capsys, command):
    if command == "convert":
        argv = ["convert", str(run / "best.pt"), "-o", str(read_only / "converted.pt")]
    else:
        fmt = command.split("-")[1]
        argv = ["export", str(run), "--format", fmt, "-o", str(read_only / f"m.{fmt}")]
    line = one_line_error(capsys, main(argv))
    assert "read-only" in line and str(read_only) in line


# ----------------------------------------------------------------------------------------------------------------------
# export: the file appears only once verified


def test_ctrl_c_during_export_verification_leaves_no_unverified_file(run, tmp_path, capsys, monkeypatch):
    pytest.importorskip("safetensors")
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"the previous export")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(E, "compare", interrupted)
    one_line_error(capsys, main(["export", str(run), "--format", "safetensors", "-o", str(out)]), 130)
    assert out.read_bytes() == b"the previous export" and leftovers(tmp_path) == []


def test_ctrl_c_while_an_optional_package_is_imported_is_an_interrupt(run, capsys, monkeypatch):
    def import_interrupted(name):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:  # what pybind11 makes of Ctrl-C in a C extension's init
            raise ImportError("initialization failed") from e

    monkeypatch.setattr(reslab.optional.importlib, "import_module", import_interrupted)
    line = one_line_error(capsys, main(["export", str(run), "--format", "safetensors", "-o", "x.safetensors"]), 130)
    assert "interrupted" in line and "needs the Python package" not in line


# ----------------------------------------------------------------------------------------------------------------------
# files changed after they were written


def test_a_flipped_byte_in_a_checkpoint_is_found_by_eval_predict_and_resume(run, tmp_path, image, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    ckpt = read_checkpoint(bad / "last.pt")
    weight = ckpt["model"]["fc.weight"].contiguous().numpy().tobytes()
    for name in ("best.pt", "last.pt"):
        data = bytearray((bad / name).read_bytes())
        at = bytes(data).find(weight)
        assert at > 0
        data[at + 5] ^= 0x01  # one bit of one weight: torch.load reads it without complaint
        (bad / name).write_bytes(bytes(data))
    for argv in (
        ["eval", str(bad)],
        ["predict", str(bad), str(image)],
        ["train", "--resume", str(bad), "--epochs", "2", "--dataset", "synthetic"],
    ):
        line = one_line_error(capsys, main(argv))
        assert "damaged" in line and "checksum" in line and str(bad) in line, argv


def test_a_nan_weight_is_refused_on_every_load(run, tmp_path, image, capsys):
    ckpt = read_checkpoint(run / "best.pt")
    ckpt.pop("path")
    ckpt.pop("checksum")  # as a checkpoint of an older reslab, which had none
    ckpt["model"] = {**ckpt["model"], "fc.bias": ckpt["model"]["fc.bias"].clone()}
    ckpt["model"]["fc.bias"][3] = float("nan")
    torch.save(ckpt, tmp_path / "nan.pt")
    for argv in (
        ["eval", str(tmp_path / "nan.pt")],
        ["predict", str(tmp_path / "nan.pt"), str(image)],
        ["convert", str(tmp_path / "nan.pt"), "-o", str(tmp_path / "converted.pt")],
        ["train", "--dataset", "synthetic", "--pretrained", str(tmp_path / "nan.pt"), "--output", str(tmp_path)],
    ):
        line = one_line_error(capsys, main(argv))
        assert "NaN or infinite" in line and "fc.bias" in line, argv
    assert not (tmp_path / "converted.pt").exists()


def test_a_run_folder_without_best_pt_says_so_when_its_run_had_one(run, tmp_path, capsys):
    shutil.copy(run / "last.pt", tmp_path / "last.pt")
    assert read_checkpoint(tmp_path)["path"] == str(tmp_path / "last.pt")
    assert "has no best.pt although its run recorded a best validation accuracy" in capsys.readouterr().err


def test_a_checkpoint_without_a_checksum_still_loads(run, tmp_path):
    ckpt = read_checkpoint(run / "best.pt")
    ckpt.pop("path")
    ckpt.pop("checksum")
    torch.save(ckpt, tmp_path / "old.pt")
    assert torch.equal(read_checkpoint(tmp_path / "old.pt")["model"]["fc.weight"], ckpt["model"]["fc.weight"])
    save_checkpoint(ckpt, tmp_path / "new.pt")
    assert read_checkpoint(tmp_path / "new.pt")["checksum"].startswith("sha256:")


@pytest.fixture(scope="module")
def onnx_file(run, tmp_path_factory):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    E.export_checkpoint(run, format="onnx", output=path, quiet=True)
    return path


def changed_onnx(onnx_file, tmp_path, change):
    import onnx

    proto = onnx.load(str(onnx_file))
    change(proto)
    out = tmp_path / "changed.onnx"
    onnx.save(proto, str(out))
    return out


def _set_meta(proto, key, value):
    for p in proto.metadata_props:
        if p.key == key:
            p.value = json.dumps(value)


def _nan_initializer(proto):
    from onnx import numpy_helper

    t = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
    a = numpy_helper.to_array(t).copy()
    a.flat[0] = np.nan
    t.CopyFrom(numpy_helper.from_array(a, t.name))


@pytest.mark.parametrize(
    "change, expected",
    [
        (_nan_initializer, "NaN or infinite"),
        (lambda p: _set_meta(p, "classes", ["a", "b", "c"]), "3 classes"),
        (lambda p: _set_meta(p, "preprocess", {"mean": [0.5], "std": [0.0]}), "'std'"),
    ],
    ids=["nan-initializer", "classes-mismatch", "std-zero"],
)
def test_a_changed_onnx_file_is_one_line(onnx_file, tmp_path, image, capsys, change, expected):
    bad = changed_onnx(onnx_file, tmp_path, change)
    for argv in (["predict", str(bad), str(image)], ["eval", str(bad), "--dataset", "synthetic"]):
        line = one_line_error(capsys, main(argv))
        assert expected in line and str(bad) in line, (argv, line)


# ----------------------------------------------------------------------------------------------------------------------
# a timm config.json with fields of the wrong type


@pytest.mark.parametrize(
    "field, value",
    [("input_size", "big"), ("crop_pct", "0.9"), ("std", [0.2, 0.0, 0.2]), ("num_classes", 2.5), ("mean", None)],
)
def test_a_timm_config_with_a_wrong_field_is_one_line(tmp_path, capsys, field, value):
    from reslab.models import build_model

    folder = tmp_path / "timm"
    folder.mkdir()
    torch.save(build_model("resnet18", num_classes=10).state_dict(), folder / "pytorch_model.bin")
    pcfg = {"input_size": [3, 32, 32], "crop_pct": 0.9, "mean": [0.5] * 3, "std": [0.2] * 3, "num_classes": 10}
    if value is None:  # a whole pretrained_cfg of the wrong type
        cfg = {"architecture": "resnet18", "pretrained_cfg": [1, 2]}
        field = "pretrained_cfg"
    else:
        cfg = {"architecture": "resnet18", "pretrained_cfg": {**pcfg, field: value}}
    (folder / "config.json").write_text(json.dumps(cfg))
    line = one_line_error(capsys, main(["convert", str(folder), "-o", str(tmp_path / "out.pt")]))
    assert "config.json" in line and field in line
    assert not (tmp_path / "out.pt").exists()
