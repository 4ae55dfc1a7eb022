"""Fault injection on run folders: a kill at each point of a checkpoint set's write, two runs started together under
one name, failed runs, settings that cannot fit in memory, more threads than cores."""

import io
import json
import multiprocessing
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch

from reslab.checkpoint import read_checkpoint
from reslab.cli import main
from reslab.config import make_config
from reslab.data import synthetic_dataset
from reslab.device import usable_cpus
from reslab.train import fit

TINY = dict(model="resnet20", model_kwargs={"widths": [4, 8, 16]}, batch_size=32, threads=1, progress=False)
# no validation split: best.pt is then written at every epoch end, so a 2-epoch run renames best, last, best, last
KILL_RUN = """
import os, signal, sys
real_replace, count = os.replace, [0]
nth, when = int(sys.argv[2]), sys.argv[3]

def replace(src, dst):  # the nth rename of best.pt or last.pt: the process is killed just before or just after it
    if os.path.basename(dst) not in ("best.pt", "last.pt"):
        return real_replace(src, dst)
    count[0] += 1
    if count[0] == nth and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
    if count[0] == nth and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace
from reslab.config import make_config
from reslab.data import synthetic_dataset
from reslab.train import fit
fit(make_config(**{TINY}, epochs=2, val_size=0, output=sys.argv[1], name="run"),
    data=synthetic_dataset(num_train=256, num_test=64, image_size=8))
"""


def data():
    return synthetic_dataset(num_train=256, num_test=64, image_size=8)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The weights of best.pt and last.pt of the same run, left alone."""
    out = tmp_path_factory.mktemp("reference")
    fit(make_config(**TINY, epochs=2, val_size=0, output=str(out), name="run"), data=data())
    return {name: read_checkpoint(out / "run" / name)["model"] for name in ("best.pt", "last.pt")}


@pytest.mark.parametrize(
    "nth, when",
    [(1, "after"), (2, "before"), (3, "after")],  # a kill in the middle of one write: test_faults.py
    ids=["between-best-and-last", "during-the-first-last", "after-the-second-best"],
)
def test_a_kill_at_any_point_of_a_checkpoint_set_write_is_recovered(tmp_path, reference, nth, when):
    script = KILL_RUN.replace("{TINY}", repr(TINY))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path), str(nth), when], env=env, timeout=240)
    assert proc.returncode == -9  # killed where asked
    run = tmp_path / "run"
    if (run / "best.pt").exists() or (run / "last.pt").exists():
        read_checkpoint(run)  # what `eval RUN` reads: whole, checksum and all
    # continuing the run finishes what the kill cut off, and ends where the run left alone ended, bit for bit
    config = make_config(**TINY, epochs=2, val_size=0, output=str(tmp_path), name="run", resume="auto")
    result = fit(config, data=data())
    assert result.completed
    for name in ("best.pt", "last.pt"):
        got = read_checkpoint(run / name)["model"]
        assert all(torch.equal(got[k], reference[name][k]) for k in got), name
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]  # the killed write's temporary file is gone


# ----------------------------------------------------------------------------------------------------------------------
# two runs started together under one name


def _train_when_both_are_ready(barrier, argv, results):
    err = io.StringIO()
    barrier.wait(timeout=240)  # both processes have imported reslab: they start training at the same instant
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = main(argv)
    results.put((code, err.getvalue()))


def test_two_runs_started_together_under_one_name_one_is_refused(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    common = ["train", "--dataset", "synthetic", "--resize", "8", "--threads", "1", "--train-subset", "128"]
    common += ["--val-size", "64", "--epochs", "1", "--output", str(tmp_path), "--name", "same"]
    procs = [
        ctx.Process(target=_train_when_both_are_ready, args=(barrier, [*common, "--lr", lr], results))
        for lr in ("0.1", "0.2")
    ]
    for p in procs:
        p.start()
    outcomes = sorted(results.get(timeout=280) for _ in procs)
    for p in procs:
        p.join(30)
    (ok, _), (refused, err) = outcomes
    assert (ok, refused) == (0, 2), outcomes
    assert "in use by another run" in err or "already holds a run" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    run = tmp_path / "same"
    saved = read_checkpoint(run / "last.pt")["config"]
    assert json.loads((run / "config.json").read_text())["lr"] == saved["lr"]  # one run's config with its weights
    assert not (run / ".reslab.lock").exists()


def test_a_claimed_folder_is_refused_and_a_dead_holder_s_lock_is_not(tmp_path, capsys):
    from reslab.atomic import claim_folder

    claim = claim_folder(tmp_path / "busy", flag="--output", in_use_flag="--name")
    argv = ["train", "--dataset", "synthetic", "--epochs", "1", "--output", str(tmp_path), "--name", "busy"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and f"--name: '{tmp_path / 'busy'}' is in use by another run (process {os.getpid()})" in err
    claim.release()
    # a lock file left by a killed process holds no lock: the next run goes ahead
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"from reslab.atomic import claim_folder; claim_folder({str(tmp_path / 'x')!r}, "
            "flag='--output'); import os; os._exit(0)",
        ],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")},
        check=True,
    )
    assert (tmp_path / "x" / ".reslab.lock").exists()
    claim = claim_folder(tmp_path / "x", flag="--output")
    claim.release()


# ----------------------------------------------------------------------------------------------------------------------
# failed runs, memory, threads


def test_a_failed_run_leaves_no_empty_run_folder(tmp_path, capsys):
    argv = ["train", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "nowhere"), "--output", str(tmp_path)]
    assert main([*argv, "--name", "r"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "flags, flag",
    [
        (["--resize", "5000"], "--resize"),
        (["--progressive-resize", "5000"], "--progressive-resize"),
        (["--dataset", "imagefolder", "--image-size", "100000"], "--image-size"),
        (["--batch-size", "10000000"], "--batch-size"),
    ],
)
def test_a_setting_that_cannot_fit_in_memory_is_refused_before_allocating(tmp_path, capsys, flags, flag):
    code = main(["train", *flags, "--data-dir", str(tmp_path), "--output", str(tmp_path), "--name", "r"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"error: {flag}: training needs at least" in err and "this machine has available" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name", ["resnet8", "resnet18", "preact_resnet20"])
def test_activations_are_counted_alike_on_the_cpu_and_the_meta_device(monkeypatch, name):
    """Small images run through a zero-weight copy on the CPU (fast to start), large ones on "meta": the same count."""
    from reslab import memory
    from reslab.models import build_model

    def count():
        with torch.device("meta"):
            model = build_model(name, in_chans=1, num_classes=10)
        return memory.activation_bytes(model, (1, 40, 40), 128, itemsize=2)

    on_cpu = count()
    monkeypatch.setattr(memory, "SMALL_INPUT", 0)
    assert count() == on_cpu > 128 * 40 * 40 * 2


def test_more_threads_than_cores_are_capped_with_a_note(tmp_path, capsys):
    many = usable_cpus() + 7
    config = make_config(**{**TINY, "threads": many, "progress": True}, epochs=1, max_steps=1, val_size=0)
    fit(make_config(**{**config.to_dict(), "output": str(tmp_path)}), data=data())
    out = capsys.readouterr().out
    assert f"--threads {many} is more than the {usable_cpus()} CPUs" in out
    assert f"({usable_cpus()} thread{'s' * (usable_cpus() != 1)})" in out


def test_a_run_without_name_that_meets_a_folder_in_use_takes_the_next_name(tmp_path, monkeypatch):
    from reslab import rundir
    from reslab.atomic import claim_folder

    monkeypatch.setattr(rundir.time, "strftime", lambda fmt, *t: "20260101-000000")  # two runs in the same second
    other = claim_folder(tmp_path / "resnet20-20260101-000000", flag="--output")
    try:
        config = make_config(**TINY, epochs=1, max_steps=1, val_size=0, output=str(tmp_path))
        result = fit(config, data=data())
    finally:
        other.release()
    assert result.run_dir == tmp_path / "resnet20-20260101-000000-2" and (result.run_dir / "last.pt").is_file()
