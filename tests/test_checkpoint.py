"""Checkpoints: atomic writes survive an interrupted save; bad files give clear errors; weights_only loading."""

import os

import pytest
import torch

from reslab.checkpoint import FORMAT_VERSION, load_checkpoint, read_checkpoint, save_checkpoint
from reslab.errors import ReslabError


def small_state(value: float) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "model_name": "resnet20",
        "model_kwargs": {},
        "input_size": [1, 28, 28],
        "classes": ["a", "b"],
        "model": {"w": torch.full((1000,), value)},
        "history": [{"epoch": 1}],
    }


@pytest.mark.parametrize(
    "error, raised",
    [(OSError(28, "No space left on device"), ReslabError), (KeyboardInterrupt(), KeyboardInterrupt)],
    ids=["disk-full", "ctrl-c"],
)
def test_an_interrupted_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch, error, raised):
    path = tmp_path / "last.pt"
    save_checkpoint(small_state(1.0), path)
    before = path.read_bytes()
    real_fsync = os.fsync

    def tear_then_fail(fd):
        os.ftruncate(fd, os.fstat(fd).st_size // 2)  # a torn file, as a crash mid-write would leave
        raise error

    monkeypatch.setattr(os, "fsync", tear_then_fail)
    with pytest.raises(raised) as e:
        save_checkpoint(small_state(2.0), path)
    monkeypatch.setattr(os, "fsync", real_fsync)
    if raised is ReslabError:  # one line that names the file and says the disk is full
        assert str(path) in str(e.value) and "no space left on the device" in str(e.value)
    assert path.read_bytes() == before
    assert torch.equal(read_checkpoint(path)["model"]["w"], torch.full((1000,), 1.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_a_save_replaces_the_file_and_loads_with_weights_only(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(small_state(1.0), path)
    save_checkpoint(small_state(2.0), path)
    assert torch.load(path, weights_only=True)["model"]["w"][0] == 2.0


def test_clear_errors_for_missing_foreign_and_newer_files(tmp_path):
    with pytest.raises(ReslabError, match="no such file"):
        read_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(ReslabError, match="has no best.pt or last.pt"):
        read_checkpoint(tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ReslabError, match="not a reslab checkpoint"):
        read_checkpoint(tmp_path / "junk.pt")
    torch.save({"w": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(ReslabError, match="no 'format_version'"):
        read_checkpoint(tmp_path / "plain.pt")
    torch.save({"format_version": FORMAT_VERSION + 1, "reslab_version": "9.0"}, tmp_path / "new.pt")
    with pytest.raises(ReslabError, match="newer reslab"):
        load_checkpoint(tmp_path / "new.pt")


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must not run",))

    torch.save({"format_version": 1, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ReslabError, match="not a reslab checkpoint"):
        read_checkpoint(tmp_path / "evil.pt")
