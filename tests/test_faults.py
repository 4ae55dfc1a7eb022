"""Fault injection: what reslab does when things go wrong, on tiny synthetic runs.

A kill in the middle of a checkpoint write, NaN or divergence at a checkpoint step, resuming from an older
checkpoint or with flags that change what a checkpoint means, output folders that cannot be used, a full disk, bad
checkpoint files. Each case: a one-line error (no traceback), and nothing already saved is lost or called good when
it is not.
"""

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.optim.optimizer import register_optimizer_step_post_hook

import reslab.checkpoint
import reslab.device
import reslab.train
from reslab.checkpoint import non_finite_tensors, read_checkpoint, save_checkpoint
from reslab.cli import main
from reslab.errors import NonFiniteLossError
from reslab.train import fit

CLI = ["--dataset", "synthetic", "--resize", "8", "--threads", "1", "--val-size", "100", "--train-subset", "256"]


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train_cli(capsys, *argv):
    code = main(["train", *CLI, *argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


@pytest.fixture
def at_step():
    """at_step(n, action): call action() right after optimizer step n (1-based) of this process."""
    handles = []

    def install(n, action):
        count = [0]

        def hook(optimizer, args, kwargs):
            count[0] += 1
            if count[0] == n:
                action()

        handles.append(register_optimizer_step_post_hook(hook))

    yield install
    for h in handles:
        h.remove()


# ----------------------------------------------------------------------------------------------------------------------
# a kill during a checkpoint write

STUCK_SAVE_RUN = """
import os, sys, time
from pathlib import Path
real_fsync = os.fsync
def stuck_fsync(fd):
    # the second write of last.pt (one is already there) stops between writing its temporary file and renaming it:
    # it says so with a marker file and waits there for the kill
    path = Path(os.readlink(f"/proc/self/fd/{fd}"))
    if path.name.startswith(".last.pt.tmp") and (path.parent / "last.pt").exists():
        Path(sys.argv[2]).touch()
        time.sleep(3600)
    real_fsync(fd)
os.fsync = stuck_fsync
from reslab.config import TrainConfig
from reslab.data import synthetic_dataset
from reslab.train import fit
config = TrainConfig(**{TINY}, output=sys.argv[1], name="run", epochs=2, ckpt_interval=2)
fit(config, data=synthetic_dataset(num_train=640, num_test=200, image_size=8))
"""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds the file being synced through /proc")
def test_a_kill_during_a_checkpoint_write_leaves_a_loadable_last_pt_and_the_next_save_cleans_up(tmp_path, tiny):
    script = STUCK_SAVE_RUN.replace("{TINY}", repr(tiny.settings))
    marker = tmp_path / "inside-fsync"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(marker)], env=env)
    run = tmp_path / "run"
    try:
        # wait until the second write is inside its fsync (pytest-timeout bounds the wait), then kill it there
        while not marker.exists():
            assert proc.poll() is None, "the run ended before a second save"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    stale = list(run.glob(".last.pt.tmp*"))
    assert len(stale) == 1  # the killed write's temporary file
    saved = read_checkpoint(run / "last.pt")  # the previous checkpoint, whole
    assert saved["step"] == 2 and not non_finite_tensors(saved["model"])
    # the next run's first save removes the dead write's file
    result = fit(tiny(tmp_path, epochs=2, ckpt_interval=2, resume="auto"), data=tiny.data)
    assert result.completed and not list(run.glob(".last.pt.tmp*"))


# ----------------------------------------------------------------------------------------------------------------------
# NaN and divergence


def test_weights_that_stop_being_finite_at_a_checkpoint_step_are_not_saved(tmp_path, at_step, tiny):
    model_ref = {}
    real_fit_model = reslab.train.build_model

    def build(*args, **kwargs):
        model_ref["m"] = real_fit_model(*args, **kwargs)
        return model_ref["m"]

    reslab.train.build_model, saved_build = build, reslab.train.build_model
    try:
        # after step 6 a BatchNorm statistic overflows (as with too high an lr) while the loss may stay finite
        at_step(6, lambda: model_ref["m"].bn1.running_var.fill_(float("inf")))
        with pytest.raises(NonFiniteLossError) as e:
            fit(tiny(tmp_path, epochs=1, ckpt_interval=3), data=tiny.data)
    finally:
        reslab.train.build_model = saved_build
    last = read_checkpoint(tmp_path / "run" / "last.pt")
    assert last["step"] == 3 and not non_finite_tensors(last["model"])  # step 6's was refused
    msg = str(e.value)
    assert "after step 6" in msg and "bn1.running_var" in msg
    assert f"{tmp_path / 'run' / 'last.pt'} holds step 3, with finite weights" in msg


@pytest.mark.parametrize(
    "argv, why",
    [
        # a non-finite loss, with checkpoints every 4 steps before it
        ([*CLI, "--lr", "1e6", "--epochs", "3", "--ckpt-interval", "4"], ("the loss became", "training diverged")),
        # the loss stays finite while BatchNorm statistics overflow (28x28 synthetic, 14 steps per epoch)
        (["--dataset", "synthetic", "--threads", "1", "--lr", "50", "--epochs", "2"], ("training diverged",)),
    ],
    ids=["lr-1e6", "lr-50"],
)
def test_a_diverging_run_stops_and_leaves_only_finite_checkpoints(tmp_path, capsys, argv, why):
    # both must stop with exit 2, never save inf, and say the truth about what is on disk
    code = main(["train", *argv, "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and any(w in err for w in why) and "Traceback" not in err, err
    run = next(tmp_path.iterdir())
    for name in ("last.pt", "best.pt"):
        if (run / name).exists():
            assert not non_finite_tensors(read_checkpoint(run / name)["model"]), name
    if (run / "last.pt").exists():
        step = read_checkpoint(run / "last.pt")["step"]
        assert f"holds step {step}, with finite weights" in err
    else:
        assert "no checkpoint had been written yet" in err


# ----------------------------------------------------------------------------------------------------------------------
# resuming


@pytest.fixture
def two_epochs(tmp_path, capsys):
    """A finished 2-epoch run (8 steps per epoch) whose best.pt (epoch 1) is older than its last.pt (epoch 2)."""
    assert train_cli(capsys, "-b", "32", "--epochs", "2", "--output", str(tmp_path), "--name", "run")[0] == 0
    run = tmp_path / "run"
    if read_checkpoint(run / "best.pt")["step"] == read_checkpoint(run / "last.pt")["step"]:
        # epoch 2 was the best: the checkpoint of a 1-epoch run of the same settings stands in for best.pt
        assert train_cli(capsys, "-b", "32", "--epochs", "1", "--output", str(tmp_path), "--name", "one")[0] == 0
        os.replace(tmp_path / "one" / "last.pt", run / "best.pt")
    return run


def resume_cli(capsys, *argv):
    """`reslab train --resume ...`: the run's own settings, and only the flags given."""
    code = main(["train", "--resume", *argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def test_resuming_an_older_checkpoint_over_a_newer_last_pt_is_refused(two_epochs, capsys):
    before = {p.name: digest(p) for p in two_epochs.iterdir() if p.is_file()}
    code, _, err = resume_cli(capsys, str(two_epochs / "best.pt"), "--epochs", "3")
    assert code == 2 and "holds later progress (step 16)" in err and "give a new --name" in err
    assert {p.name: digest(p) for p in two_epochs.iterdir() if p.is_file()} == before


def test_an_older_checkpoint_continues_in_a_new_folder_with_name(two_epochs, capsys):
    before = {p.name: digest(p) for p in two_epochs.iterdir() if p.is_file()}
    code, _, _ = resume_cli(capsys, str(two_epochs / "best.pt"), "--name", "branch", "--epochs", "2")
    assert code == 0
    assert read_checkpoint(two_epochs.parent / "branch" / "last.pt")["step"] == 16
    assert (
        read_checkpoint(two_epochs.parent / "branch" / "last.pt")["history"][0]
        == read_checkpoint(two_epochs / "best.pt")["history"][0]
    )  # it continued from best.pt's state
    assert {p.name: digest(p) for p in two_epochs.iterdir() if p.is_file()} == before


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--dataset", "fashion-mnist"], "--dataset 'synthetic'"),
        (["--resize", "16"], "--resize 8"),
        (["--seed", "1"], "--seed 0"),
        (["--opt", "adam"], "--opt 'sgd'"),
    ],
)
def test_resume_refuses_flags_that_change_what_the_checkpoint_means(tmp_path, capsys, flags, named):
    code, _, _ = train_cli(capsys, "--epochs", "1", "--max-steps", "3", "--output", str(tmp_path), "--name", "r")
    assert code == 0
    before = {p.name: digest(p) for p in (tmp_path / "r").iterdir()}
    code, _, err = resume_cli(capsys, str(tmp_path / "r"), *flags)
    assert code == 2 and f"was trained with {named}" in err and "these may change on resume: " in err
    assert {p.name: digest(p) for p in (tmp_path / "r").iterdir()} == before  # config.json not rewritten


def test_resume_may_change_epochs_and_lr(tmp_path, capsys):
    assert train_cli(capsys, "--epochs", "1", "--output", str(tmp_path), "--name", "r")[0] == 0
    code, out, _ = resume_cli(capsys, str(tmp_path / "r"), "--epochs", "2", "--lr", "0.05")
    assert code == 0 and "epoch 2, loss" in out
    assert read_checkpoint(tmp_path / "r" / "last.pt")["config"]["lr"] == 0.05


def test_resuming_a_finished_run_says_it_is_complete_and_writes_nothing(tmp_path, capsys):
    assert train_cli(capsys, "--epochs", "1", "--output", str(tmp_path), "--name", "r")[0] == 0
    before = {p.name: (digest(p), p.stat().st_mtime_ns) for p in (tmp_path / "r").iterdir()}
    code, out, _ = resume_cli(capsys, str(tmp_path / "r"))
    assert code == 0 and "the run is complete" in out and "--epochs N (N > 1)" in out and "resuming from" not in out
    assert {p.name: (digest(p), p.stat().st_mtime_ns) for p in (tmp_path / "r").iterdir()} == before


def test_ctrl_c_during_the_very_last_step_reports_a_completed_run(tmp_path, at_step, tiny):
    at_step(16, lambda: os.kill(os.getpid(), signal.SIGINT))  # the last of 16 steps
    result = fit(tiny(tmp_path, epochs=1), data=tiny.data)  # no KeyboardInterrupt
    assert result.completed and result.step == 16 and len(result.history) == 1


def test_resume_with_other_threads_says_the_result_may_differ(tmp_path, capsys, tiny):
    fit(tiny(tmp_path, epochs=1, max_steps=1, threads=2), data=tiny.data)  # one step: 2 threads are slow on a busy CPU
    fit(tiny(tmp_path, epochs=1, max_steps=2, threads=1, resume="auto", progress=True), data=tiny.data)
    assert "trained with 2 CPU threads and continues with 1" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------------------------
# output folders, full disks


@pytest.mark.parametrize("case", ["a file", "under a file", "unwritable"])
def test_an_unusable_output_folder_is_one_line_for_train_and_eval(tmp_path, capsys, case, tiny):
    if case == "a file":
        output = tmp_path / "out"
        output.write_text("x")
    elif case == "under a file":
        (tmp_path / "f").write_text("x")
        output = tmp_path / "f" / "out"
    else:
        output = "/proc/reslab-test-output"  # not writable even by root
    blocker = tmp_path / "f" if case == "under a file" else output  # the file in the way, or the folder itself
    code, _, err = train_cli(capsys, "--epochs", "1", "--output", str(output))
    assert code == 2 and "error: --output: " in err and str(blocker) in err
    fit(tiny(tmp_path, epochs=1, max_steps=2), data=tiny.data)
    assert main(["eval", str(tmp_path / "run"), "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert "error: --output: " in err and "Traceback" not in err


@pytest.fixture
def tiny_disk(tmp_path):
    """An 8 MiB filesystem (room for a few ResNet-20 checkpoints): a tmpfs where one can be mounted (root on
    Linux), else None."""
    mount = tmp_path / "disk"
    mount.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True)
    if ok.returncode != 0:
        yield None
        return
    yield mount
    subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_full_disk_is_said_as_such_and_the_previous_checkpoint_survives(tmp_path, tiny_disk, monkeypatch, capsys):
    if tiny_disk is not None:  # a real full filesystem: after the first checkpoint, fill what is left of it
        output = tiny_disk

        def fill(optimizer, args, kwargs):
            if (output / "run" / "last.pt").exists() and not (output / "filler").exists():
                with contextlib.suppress(OSError), open(output / "filler", "wb") as f:
                    f.write(bytes(max(0, shutil.disk_usage(output).free - 4096)))

        hook = register_optimizer_step_post_hook(fill)
    else:  # no tmpfs (not root): the write of the second checkpoint meets ENOSPC
        output, hook, real_replace, calls = tmp_path, None, os.replace, [0]

        def replace(src, dst):
            calls[0] += int(str(dst).endswith("last.pt"))
            if calls[0] >= 2:
                raise OSError(28, "No space left on device")
            return real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
    try:
        argv = [*CLI, "-b", "32", "--epochs", "1", "--ckpt-interval", "2", "--output", str(output), "--name", "run"]
        code = main(["train", *argv])
    finally:
        if hook is not None:
            hook.remove()
    err = capsys.readouterr().err
    assert code == 2 and "no space left on the device" in err and "Traceback" not in err, err
    assert str(output / "run") in err
    assert read_checkpoint(output / "run" / "last.pt")["step"] == 2  # the first checkpoint, whole


# ----------------------------------------------------------------------------------------------------------------------
# bad checkpoint files


def test_bad_checkpoint_files_are_one_line(tmp_path, capsys, tiny):
    good = tmp_path / "good.pt"
    fit(tiny(tmp_path, epochs=1, max_steps=2), data=tiny.data)
    ckpt = read_checkpoint(tmp_path / "run" / "last.pt")
    ckpt.pop("path")
    (tmp_path / "text.pt").write_text("not a checkpoint\n" * 10)
    save_checkpoint({k: v for k, v in ckpt.items() if k != "model"}, tmp_path / "nomodel.pt")
    other = dict(ckpt, model_kwargs={"widths": [8, 16, 64]})  # records another width than its weights have
    save_checkpoint(other, tmp_path / "mismatch.pt")
    save_checkpoint(ckpt, good)
    cases = {
        "text.pt": "not a file written by torch.save, or a damaged one",
        "nomodel.pt": "incomplete: it has no 'model'",
        "mismatch.pt": "its weights do not fit the model it records",
    }
    for name, expected in cases.items():
        for argv in (["eval", str(tmp_path / name)], ["predict", str(tmp_path / name), str(good)]):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
            assert len(err) < 600  # a summary, not a screen of keys
    assert "of another shape" in err and "layer3.0.conv1.weight" in err


def test_pickled_code_is_refused_without_torch_s_unsafe_advice(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("this must not run",))

    torch.save({"format_version": 2, "x": Evil()}, tmp_path / "evil.pt")
    assert main(["eval", str(tmp_path / "evil.pt")]) == 2
    captured = capsys.readouterr()
    assert "this must not run" not in captured.out
    assert "pickled Python objects (print)" in captured.err and "arbitrary code" in captured.err
    assert "weights_only" not in captured.err  # torch's advice to turn the protection off is never passed on


# ----------------------------------------------------------------------------------------------------------------------
# slow precision modes, empty images


@pytest.mark.parametrize("amp, native", [("fp16", True), ("bf16", False)])
def test_a_slow_precision_on_the_cpu_is_warned_about(tmp_path, capsys, monkeypatch, amp, native, tiny):
    monkeypatch.setattr(reslab.device, "cpu_has_bf16", lambda: native)
    fit(tiny(tmp_path, epochs=1, max_steps=1, amp=amp, progress=True), data=tiny.data)
    out = capsys.readouterr().out
    assert f"warning: --amp {amp}" in out and "slower than fp32" in out


def test_an_empty_image_is_said_to_have_nothing_in_it(tmp_path, capsys, tiny):
    fit(tiny(tmp_path, epochs=1, max_steps=2), data=tiny.data)
    Image.fromarray(np.zeros((40, 30), np.uint8)).save(tmp_path / "black.png")
    Image.fromarray(np.full((40, 30), 255, np.uint8)).save(tmp_path / "white.png")
    assert main(["predict", str(tmp_path / "run"), str(tmp_path / "black.png"), str(tmp_path / "white.png")]) == 0
    out = capsys.readouterr().out
    assert out.count("nothing in it: a uniform image") == 2 and "%" not in out


def test_the_issue_s_momentum_nan_is_refused_before_training(tmp_path, capsys):
    code, _, err = train_cli(capsys, "--momentum", "nan", "--output", str(tmp_path))
    assert code == 2 and "--momentum: expected a momentum in [0, 1), got nan" in err
    assert not any(tmp_path.iterdir())


def test_the_guarantees_page_lists_exactly_the_flags_that_may_change_on_resume():
    from pathlib import Path

    from reslab.rundir import FIXED_ON_RESUME, MAY_CHANGE_ON_RESUME

    page = " ".join((Path(__file__).parents[1] / "docs" / "guarantees.md").read_text().split())
    fixed, may = page.split("*A resumed run keeps what its checkpoint means.*")[1].split("These may change:")
    fixed, may = fixed.split("cannot change")[0], may.split("- *")[0]

    def flags(text):
        return {f.split("/")[-1].strip("`.)") for f in text.replace(",", " ").split() if f.startswith("`-")}

    def as_flags(names):
        return {"--" + n.replace("_", "-") for n in names}

    assert flags(may) == as_flags(MAY_CHANGE_ON_RESUME)
    assert flags(fixed) == as_flags(FIXED_ON_RESUME) - {"--model-kwargs"}
