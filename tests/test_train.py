"""fit() on tiny synthetic data: it learns, resumes bit for bit, stops cleanly on NaN and Ctrl-C; reslab eval."""

import csv
import dataclasses
import hashlib
import os
import shutil
import signal
import types
from pathlib import Path

import pytest
import torch

import reslab
import reslab.cli
import reslab.train
from reslab.checkpoint import read_checkpoint
from reslab.cli import main
from reslab.config import make_config
from reslab.data import synthetic_dataset
from reslab.errors import NonFiniteLossError
from reslab.evaluate import evaluate_checkpoint
from reslab.optim import lr_factor
from reslab.train import fit

# 8x8 images and a 4/8/16-channel resnet20: a step takes milliseconds, yet it learns the synthetic classes
DATA = synthetic_dataset(num_train=640, num_test=200, image_size=8)
TINY = dict(
    model="resnet20",
    model_kwargs={"widths": [8, 16, 32]},
    batch_size=32,
    lr=0.2,
    val_size=128,
    threads=1,
    progress=False,
)


def tiny_config(tmp_path, **overrides):
    return make_config(**{**TINY, "output": str(tmp_path), "name": "run", **overrides})


def states_equal(a: dict, b: dict) -> bool:
    """Model and optimizer state of two checkpoints, bit for bit."""
    if a["model"].keys() != b["model"].keys():
        return False
    if not all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]):
        return False
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    return sa.keys() == sb.keys() and all(
        torch.equal(sa[i][k], sb[i][k]) if torch.is_tensor(sa[i][k]) else sa[i][k] == sb[i][k]
        for i in sa
        for k in sa[i]
    )


def hook_model(monkeypatch, at, action):
    """Make fit's model call `action(output)` on its `at`-th training forward (1-based) and return that instead."""
    real = reslab.train.build_model

    def build(*args, **kwargs):
        model = real(*args, **kwargs)
        calls = [0]

        def hooked(self, x):
            out = type(self).forward(self, x)
            if self.training and torch.is_grad_enabled():  # a training step, not precise BatchNorm statistics
                calls[0] += 1
                if calls[0] == at:
                    return action(out)
            return out

        # an instance attribute (the state_dict keeps its names), bound so that a copy of the model runs itself
        model.forward = types.MethodType(hooked, model)
        return model

    monkeypatch.setattr(reslab.train, "build_model", build)


def test_short_run_learns_and_writes_its_run_folder(tmp_path, capsys):
    result = fit(tiny_config(tmp_path, epochs=3, progress=True), data=DATA)
    assert result.completed and result.step == 3 * (512 // 32)
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} == {
        "config.json",
        "metrics.csv",
        "curves.png",
        "confusion_matrix.png",
        "last.pt",
        "best.pt",
    }
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert result.test_acc > 0.5  # chance is 0.1
    out = capsys.readouterr().out
    # the seeds' line, plus val acc and throughput
    assert "epoch 3, loss " in out and ", train acc " in out and ", val acc " in out and " sec, " in out
    assert " img/s" in out
    best = read_checkpoint(run)  # a folder resolves to best.pt
    assert best["history"][-1]["val_acc"] == result.best_val_acc == max(r["val_acc"] for r in result.history)
    assert not result.model.training


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """A 2-epoch run left alone: what stopped-and-resumed runs must reproduce bit for bit."""
    return fit(tiny_config(tmp_path_factory.mktemp("straight"), epochs=2), data=DATA)


@pytest.mark.parametrize("stop_at", [5, 16], ids=["mid-epoch", "epoch-boundary"])
def test_resume_is_bitwise_exact(tmp_path, straight, stop_at):
    first = fit(tiny_config(tmp_path, epochs=2, name="split", max_steps=stop_at), data=DATA)
    assert not first.completed and first.step == stop_at
    resumed = fit(tiny_config(tmp_path, epochs=2, name="split", resume="auto"), data=DATA)
    assert resumed.completed and resumed.step == straight.step
    a, b = read_checkpoint(straight.run_dir / "last.pt"), read_checkpoint(tmp_path / "split" / "last.pt")
    assert states_equal(a, b)
    assert a["step"] == b["step"] and [r["lr"] for r in a["history"]] == [r["lr"] for r in b["history"]]
    assert [r["test_acc"] for r in a["history"]] == [r["test_acc"] for r in b["history"]]
    # elapsed_s counts the whole run's time, across the stop: each epoch ends at least its own time_s later
    ends = [0.0] + [r["elapsed_s"] for r in b["history"]]
    assert all(ends[i + 1] >= ends[i] + r["time_s"] for i, r in enumerate(b["history"]))


def test_ctrl_c_saves_a_checkpoint_that_resumes_exactly(tmp_path, straight, monkeypatch, capsys):
    hook_model(monkeypatch, 7, lambda out: (os.kill(os.getpid(), signal.SIGINT), out)[1])
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a process started in the background
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_config(tmp_path, epochs=2, progress=True), data=DATA)
    assert "--resume" in capsys.readouterr().out
    saved = read_checkpoint(tmp_path / "run" / "last.pt")
    assert (saved["epoch"], saved["step"], saved["step_in_epoch"]) == (0, 7, 7)  # the step in flight completes
    assert signal.getsignal(signal.SIGINT) is before  # the handler fit installed is gone again
    monkeypatch.undo()
    fit(tiny_config(tmp_path, epochs=2, resume=str(tmp_path / "run")), data=DATA)
    assert states_equal(read_checkpoint(tmp_path / "run" / "last.pt"), read_checkpoint(straight.run_dir / "last.pt"))


def test_non_finite_loss_stops_without_touching_checkpoints(tmp_path, monkeypatch):
    digests = {}

    def poison(out):
        # the state on disk just before the bad step: epoch 1's checkpoints
        digests.update(
            {n: hashlib.sha256((tmp_path / "run" / n).read_bytes()).hexdigest() for n in ("last.pt", "best.pt")}
        )
        return out * float("nan")

    hook_model(monkeypatch, 16 + 3, poison)  # step 3 of epoch 2
    with pytest.raises(NonFiniteLossError) as e:
        fit(tiny_config(tmp_path, epochs=2, ckpt_interval=1), data=DATA)
    msg = str(e.value)
    assert "epoch 2" in msg and "step 19" in msg and "lr " in msg and "nan" in msg
    # the last good checkpoint is the one saved after step 18, untouched
    assert read_checkpoint(tmp_path / "run" / "last.pt")["step"] == 18
    now = {n: hashlib.sha256((tmp_path / "run" / n).read_bytes()).hexdigest() for n in ("last.pt", "best.pt")}
    assert now == digests


def test_cli_nan_exit_code_and_message(tmp_path, monkeypatch, capsys):
    hook_model(monkeypatch, 2, lambda out: out * float("inf"))
    argv = ["train", "--dataset", "synthetic", "--val-size", "100", "--train-subset", "256", "--resize", "8"]
    argv += [
        "--model",
        "resnet20",
        "--epochs",
        "1",
        "-b",
        "32",
        "--threads",
        "1",
        "--output",
        str(tmp_path),
        "--name",
        "x",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "epoch 1, step 2" in err and "Traceback" not in err


def test_lr_schedules():
    kw = dict(total_steps=100, warmup_steps=10)
    assert lr_factor(0, sched="onecycle", **kw) == pytest.approx(0.1)
    assert lr_factor(9, sched="onecycle", **kw) == 1.0
    assert lr_factor(99, sched="onecycle", **kw) == pytest.approx(1 / 90)
    assert lr_factor(99, sched="cosine", **kw) < 0.001
    assert lr_factor(80, sched="step", **kw) == pytest.approx(0.01)
    assert lr_factor(50, sched="none", **kw) == 1.0


def test_eval_checkpoint_matches_training_and_prints_per_class_table(tmp_path, capsys):
    config = tiny_config(tmp_path, dataset="synthetic", resize=8, train_subset=256, epochs=1, val_size=100)
    result = fit(config)
    capsys.readouterr()
    assert main(["eval", str(result.run_dir / "last.pt"), "--output", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert f"{100 * result.test_acc:.2f}%" in out
    assert "class0" in out and "class9" in out and "all" in out
    assert (tmp_path / "ev" / "confusion_matrix.png").is_file()
    val = evaluate_checkpoint(result.run_dir, split="val", output=tmp_path / "ev", quiet=True)
    assert val.accuracy == result.best_val_acc and val.result.total == 100
    assert (tmp_path / "ev" / "confusion_matrix_val.png").is_file()


def test_load_checkpoint_gives_a_ready_model(tmp_path):
    result = fit(tiny_config(tmp_path, epochs=1), data=DATA)
    trained = reslab.load_checkpoint(result.run_dir / "last.pt")
    assert not trained.model.training and trained.classes == DATA.classes and trained.input_size == (1, 8, 8)
    assert trained.config.epochs == 1 and trained.epoch == 1 and trained.model_name == "resnet20"
    saved, trained_now = trained.model.state_dict(), result.model.state_dict()
    assert all(torch.equal(saved[k], trained_now[k]) for k in trained_now)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():  # the run's model is channels_last: other kernels, the same values to float tolerance
        torch.testing.assert_close(trained.model(x), result.model(x))


def test_sync_bn_outside_cuda_ddp_is_noted_and_the_run_goes_on(tmp_path, capsys):
    # SyncBatchNorm needs CUDA processes under torchrun; elsewhere the flag is reported as ignored, not an error
    result = fit(tiny_config(tmp_path, epochs=1, sync_bn=True, progress=True), data=DATA)
    assert result.completed
    assert "note: --sync-bn only acts with several CUDA processes under torchrun; ignored" in capsys.readouterr().out
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in result.model.modules())


FIXTURES = Path(__file__).parent / "fixtures"


def test_a_checkpoint_of_format_1_resumes_bitwise_like_a_run_left_alone(tmp_path):
    # written by reslab 0.1 (checkpoint format 1, with a LambdaLR "scheduler" entry) at step 21 of 2 x 16, with
    # TINY's settings at widths 4/8/16 and --ckpt-interval 7; the current code must carry it on to the same bits
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(FIXTURES / "format1-resnet20-tiny-step21.pt", old / "last.pt")
    saved = read_checkpoint(old / "last.pt")
    assert saved["format_version"] == 1 and "scheduler" in saved and (saved["step"], saved["step_in_epoch"]) == (21, 5)
    kw = dict(model_kwargs={"widths": [4, 8, 16]}, epochs=2, ckpt_interval=7)
    resumed = fit(tiny_config(tmp_path, resume=str(old), **kw), data=DATA)
    straight = fit(tiny_config(tmp_path, name="straight", **kw), data=DATA)
    assert resumed.step == straight.step == 32
    assert states_equal(read_checkpoint(old / "last.pt"), read_checkpoint(straight.run_dir / "last.pt"))
    assert read_checkpoint(old / "last.pt")["format_version"] == 2


# ----------------------------------------------------------------------------------------------------------------------
# what a user gets wrong: one line naming the flag, no traceback, nothing trained


def run_cli(capsys, *argv):
    code = main(["train", "--dataset", "synthetic", "--resize", "8", "--threads", "1", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--threads", "-1", "a positive number of threads"),
        ("--ckpt-interval", "-1", "0 (epoch ends only) or more steps"),
        ("--max-steps", "0", "a positive number of steps"),
        ("--momentum", "nan", "a momentum in [0, 1)"),
        ("--lr", "inf", "a positive, finite learning rate"),
        ("--warmup-epochs", "-1", "a finite number of epochs >= 0"),
    ],
)
def test_a_bad_flag_value_names_the_flag_and_trains_nothing(tmp_path, capsys, flag, value, expected):
    code, out, err = run_cli(capsys, "--output", str(tmp_path), flag, value)
    assert code == 2 and f"error: {flag}: expected {expected}, got " in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())


def test_name_of_an_existing_run_without_resume_is_refused(tmp_path, capsys):
    fit(tiny_config(tmp_path, epochs=1, max_steps=2), data=DATA)
    code, _, err = run_cli(capsys, "--output", str(tmp_path), "--name", "run", "--epochs", "1")
    assert code == 2 and "already holds a run (last.pt); pass --resume auto" in err


def test_resume_auto_without_name_is_refused(tmp_path, capsys):
    code, _, err = run_cli(capsys, "--output", str(tmp_path), "--resume", "auto")
    assert code == 2 and "--resume auto: needs --name" in err


def test_resume_of_a_checkpoint_of_another_model_is_refused(tmp_path, capsys):
    fit(tiny_config(tmp_path, epochs=1, max_steps=2), data=DATA)
    code, _, err = run_cli(capsys, "--resume", str(tmp_path / "run"), "--model", "resnet32")
    assert code == 2 and "holds a resnet20 but --model is resnet32" in err


def test_every_train_flag_says_what_it_does_and_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    parser = reslab.cli.build_parser()
    train = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "train")[1]
    flags = [a for a in train._actions if a.option_strings and a.dest != "help"]
    # every setting a user may change has its flag
    fields = {f.name for f in dataclasses.fields(reslab.TrainConfig)} - {"model_kwargs", "progress"}
    assert fields <= {a.dest for a in flags}
    for action in flags:
        assert action.help and "default: " in action.help, action.option_strings
    assert "--epochs EPOCHS passes over the training split (default: 3; best: 27; d2l: 5; paper-cifar: 182)" in text
