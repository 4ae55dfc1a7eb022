"""fit() on tiny synthetic data: it learns, resumes bit for bit, stops cleanly on NaN and Ctrl-C; reslab eval."""

import csv
import dataclasses
import hashlib
import io
import json
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
from reslab.errors import NonFiniteLossError, ReslabError
from reslab.evaluate import evaluate_checkpoint
from reslab.optim import lr_factor
from reslab.train import fit


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


def test_short_run_learns_and_writes_its_run_folder(tmp_path, capsys, tiny):
    result = fit(tiny(tmp_path, epochs=3, progress=True), data=tiny.data)
    assert result.completed and result.step == 3 * (512 // 32)
    run = tmp_path / "run"
    # the report's pictures of the test split's mistakes, where there are any (reslab.report)
    mistakes = json.loads((run / "report.json").read_text())["analysis"]["mistakes"]
    assert {p.name for p in run.iterdir()} == {
        "config.json",
        "metrics.csv",
        "curves.png",
        "confusion_matrix.png",
        "last.pt",
        "best.pt",
        "report.html",
        "report.json",
        *(["mistakes.png", "gradcam.png"] if mistakes else []),
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
def straight(tmp_path_factory, tiny):
    """A 2-epoch run left alone: what stopped-and-resumed runs must reproduce bit for bit."""
    return fit(tiny(tmp_path_factory.mktemp("straight"), epochs=2), data=tiny.data)


@pytest.mark.parametrize("stop_at", [5, 16], ids=["mid-epoch", "epoch-boundary"])
def test_resume_is_bitwise_exact(tmp_path, straight, stop_at, tiny):
    first = fit(tiny(tmp_path, epochs=2, name="split", max_steps=stop_at), data=tiny.data)
    assert not first.completed and first.step == stop_at
    resumed = fit(tiny(tmp_path, epochs=2, name="split", resume="auto"), data=tiny.data)
    assert resumed.completed and resumed.step == straight.step
    a, b = read_checkpoint(straight.run_dir / "last.pt"), read_checkpoint(tmp_path / "split" / "last.pt")
    assert states_equal(a, b)
    assert a["step"] == b["step"] and [r["lr"] for r in a["history"]] == [r["lr"] for r in b["history"]]
    assert [r["test_acc"] for r in a["history"]] == [r["test_acc"] for r in b["history"]]
    # elapsed_s counts the whole run's time, across the stop: each epoch ends at least its own time_s later
    ends = [0.0] + [r["elapsed_s"] for r in b["history"]]
    assert all(ends[i + 1] >= ends[i] + r["time_s"] for i, r in enumerate(b["history"]))


def test_ctrl_c_saves_a_checkpoint_that_resumes_exactly(tmp_path, straight, monkeypatch, capsys, tiny):
    hook_model(monkeypatch, 7, lambda out: (os.kill(os.getpid(), signal.SIGINT), out)[1])
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a process started in the background
    with pytest.raises(KeyboardInterrupt):
        fit(tiny(tmp_path, epochs=2, progress=True), data=tiny.data)
    assert "--resume" in capsys.readouterr().out
    saved = read_checkpoint(tmp_path / "run" / "last.pt")
    assert (saved["epoch"], saved["step"], saved["step_in_epoch"]) == (0, 7, 7)  # the step in flight completes
    assert signal.getsignal(signal.SIGINT) is before  # the handler fit installed is gone again
    monkeypatch.undo()
    fit(tiny(tmp_path, epochs=2, resume=str(tmp_path / "run")), data=tiny.data)
    assert states_equal(read_checkpoint(tmp_path / "run" / "last.pt"), read_checkpoint(straight.run_dir / "last.pt"))


def test_non_finite_loss_stops_without_touching_checkpoints(tmp_path, monkeypatch, tiny):
    digests = {}

    def poison(out):
        # the state on disk just before the bad step: epoch 1's checkpoints
        digests.update(
            {n: hashlib.sha256((tmp_path / "run" / n).read_bytes()).hexdigest() for n in ("last.pt", "best.pt")}
        )
        return out * float("nan")

    hook_model(monkeypatch, 16 + 3, poison)  # step 3 of epoch 2
    with pytest.raises(NonFiniteLossError) as e:
        fit(tiny(tmp_path, epochs=2, ckpt_interval=1), data=tiny.data)
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


def test_eval_checkpoint_matches_training_and_prints_per_class_table(tmp_path, capsys, tiny):
    config = tiny(tmp_path, dataset="synthetic", resize=8, train_subset=256, epochs=1, val_size=100)
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


def test_load_checkpoint_gives_a_ready_model(tmp_path, tiny):
    result = fit(tiny(tmp_path, epochs=1), data=tiny.data)
    trained = reslab.load_checkpoint(result.run_dir / "last.pt")
    assert not trained.model.training and trained.classes == tiny.data.classes and trained.input_size == (1, 8, 8)
    assert trained.config.epochs == 1 and trained.epoch == 1 and trained.model_name == "resnet20"
    saved, trained_now = trained.model.state_dict(), result.model.state_dict()
    assert all(torch.equal(saved[k], trained_now[k]) for k in trained_now)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():  # the run's model is channels_last: other kernels, the same values to float tolerance
        torch.testing.assert_close(trained.model(x), result.model(x))


def test_sync_bn_outside_cuda_ddp_is_noted_and_the_run_goes_on(tmp_path, capsys, tiny):
    # SyncBatchNorm needs CUDA processes under torchrun; elsewhere the flag is reported as ignored, not an error
    result = fit(tiny(tmp_path, epochs=1, sync_bn=True, progress=True), data=tiny.data)
    assert result.completed
    assert "note: --sync-bn only acts with several CUDA processes under torchrun; ignored" in capsys.readouterr().out
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in result.model.modules())


FIXTURES = Path(__file__).parent / "fixtures"
# written by reslab 0.1 (checkpoint format 1, with a LambdaLR "scheduler" entry) on a 2-core AMD EPYC (fp32: no bf16
# there), at step 21 of 2 x 16, with the tiny run's settings at widths 4/8/16 and --ckpt-interval 7
FORMAT_1 = FIXTURES / "format1-resnet20-tiny-step21.pt"
# what the run that wrote it was asked for (and --max-steps 21)
FORMAT_1_RUN = dict(model_kwargs={"widths": [4, 8, 16]}, epochs=2, ckpt_interval=7)


def as_format_1(ckpt: dict, schema: dict) -> dict:
    """A format-2 checkpoint written in format 1's schema, read from a file reslab 0.1 wrote (`schema`): its
    entries only (no "threads", "preprocess", "live_model"), its config's fields only, and the LambdaLR state 0.1
    kept under "scheduler", at this checkpoint's step."""
    old = {k: ckpt[k] for k in schema if k in ckpt}
    old["format_version"], old["reslab_version"] = 1, schema["reslab_version"]
    old["config"] = {k: v for k, v in ckpt["config"].items() if k in schema["config"]}
    old["scheduler"] = {**schema["scheduler"], "last_epoch": ckpt["step"], "_step_count": ckpt["step"] + 1}
    return old


def test_a_checkpoint_of_format_1_resumes_bitwise_like_a_run_left_alone(tmp_path, tiny):
    # both sides on this machine: a run stopped at step 21 here, its checkpoint rewritten in format 1's schema, then
    # resumed by the current code, against a run left alone here (bit equality holds on one CPU, not across CPUs)
    fit(tiny(tmp_path, name="v1", max_steps=21, **FORMAT_1_RUN), data=tiny.data)
    old = tmp_path / "old"
    old.mkdir()
    schema = torch.load(FORMAT_1, weights_only=True)
    torch.save(as_format_1(read_checkpoint(tmp_path / "v1" / "last.pt"), schema), old / "last.pt")
    saved = read_checkpoint(old / "last.pt")
    assert saved["format_version"] == 1 and "scheduler" in saved and "threads" not in saved
    assert saved.keys() - {"path"} == schema.keys() and (saved["step"], saved["step_in_epoch"]) == (21, 5)
    resumed = fit(tiny(tmp_path, resume=str(old), **FORMAT_1_RUN), data=tiny.data)
    straight = fit(tiny(tmp_path, name="straight", **FORMAT_1_RUN), data=tiny.data)
    assert resumed.step == straight.step == 32
    assert states_equal(read_checkpoint(old / "last.pt"), read_checkpoint(straight.run_dir / "last.pt"))
    assert read_checkpoint(old / "last.pt")["format_version"] == 2


def relative_distance(a: dict, b: dict) -> float:
    """||a - b|| / ||b|| over the floating-point tensors of two state_dicts."""
    keys = [k for k in b if b[k].is_floating_point()]
    diff = sum(((a[k].double() - b[k].double()) ** 2).sum() for k in keys)
    return float((diff / sum((b[k].double() ** 2).sum() for k in keys)).sqrt())


def test_the_committed_format_1_checkpoint_is_this_recipe_on_another_cpu_and_resumes_close_to_it(tmp_path, tiny):
    # across CPUs only to float tolerance: the file was computed in fp32 on another CPU, so this side runs in fp32
    # too (--amp off; bf16 autocast, where this CPU has it, moves these weights by tens of percent)
    # and without precise BatchNorm statistics, which reslab 0.1 did not have: its "model" holds the running averages
    fp32 = dict(FORMAT_1_RUN, amp="off", precise_bn=0)
    here = fit(tiny(tmp_path, name="here", max_steps=21, **fp32), data=tiny.data)
    saved = read_checkpoint(FORMAT_1)
    assert saved["format_version"] == 1 and (saved["step"], saved["step_in_epoch"]) == (21, 5)
    assert saved["config"]["model_kwargs"] == FORMAT_1_RUN["model_kwargs"] and here.step == 21
    assert relative_distance(saved["model"], read_checkpoint(here.run_dir / "last.pt")["model"]) < 1e-3
    # resumed by the current code, it ends where a run left alone here ends, to the tolerance 11 more steps allow
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(FORMAT_1, old / "last.pt")
    resumed = fit(tiny(tmp_path, resume=str(old), **fp32), data=tiny.data)
    straight = fit(tiny(tmp_path, name="straight", **fp32), data=tiny.data)
    assert resumed.step == straight.step == 32 and read_checkpoint(old / "last.pt")["format_version"] == 2
    ends = [read_checkpoint(run / "last.pt")["model"] for run in (old, straight.run_dir)]
    assert relative_distance(*ends) < 0.02


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


def test_compile_without_a_cpp_compiler_is_refused_by_name(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    code, out, err = run_cli(capsys, "--output", str(tmp_path), "--compile")
    assert code == 2 and "error: --compile: torch.compile needs a C++ compiler" in err and "g++" in err
    assert "Traceback" not in err and not any(tmp_path.iterdir())


def test_name_of_an_existing_run_without_resume_is_refused(tmp_path, capsys, tiny):
    fit(tiny(tmp_path, epochs=1, max_steps=2), data=tiny.data)
    code, _, err = run_cli(capsys, "--output", str(tmp_path), "--name", "run", "--epochs", "1")
    assert code == 2 and "already holds a run (last.pt); pass --resume auto" in err


def test_resume_auto_without_name_is_refused(tmp_path, capsys):
    code, _, err = run_cli(capsys, "--output", str(tmp_path), "--resume", "auto")
    assert code == 2 and "--resume auto: needs --name" in err


def test_resume_of_a_checkpoint_of_another_model_is_refused(tmp_path, capsys, tiny):
    fit(tiny(tmp_path, epochs=1, max_steps=2), data=tiny.data)
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


def test_pretrained_weights_are_read_and_verified_once(tmp_path, monkeypatch, tiny):
    # --pretrained decides the data's preprocessing before the data and the model's weights after it: one read of
    # the file must serve both (a second parse and hash of a ResNet-152 or a Caffe file costs seconds)
    from reslab.models import build_model
    from reslab.weights import load as weights_load

    data = tiny.data
    model = build_model("resnet20", widths=[8, 16, 32], in_chans=data.in_chans, num_classes=len(data.classes))
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    weights = tmp_path / f"tiny-{hashlib.sha256(buf.getvalue()).hexdigest()[:8]}.pth"  # a name that carries its hash
    weights.write_bytes(buf.getvalue())
    reads, hashes = [], []
    real_load, real_verify = torch.load, weights_load.verify_file

    def counting_load(f, *args, **kwargs):
        if Path(str(f)) == weights:
            reads.append(f)
        return real_load(f, *args, **kwargs)

    def counting_verify(path, *args, **kwargs):
        hashes.append(path)
        return real_verify(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    monkeypatch.setattr(weights_load, "verify_file", counting_verify)
    result = fit(tiny(tmp_path, pretrained=str(weights), epochs=1, max_steps=2), data=data)
    assert result.step == 2
    assert len(reads) == 1, f"the weights file was read {len(reads)} times"
    assert len(hashes) == 1, f"the weights file was hashed {len(hashes)} times"


# ----------------------------------------------------------------------------------------------------------------------
# bf16 where the CPU kernels compute wrong gradients


def test_the_bf16_hazard_is_a_strided_convolution_on_a_1x1_map():
    from reslab.models import build_model
    from reslab.models.probe import cpu_bf16_hazard

    assert "'layer4.0.conv1'" in cpu_bf16_hazard(build_model("resnet18"), (3, 16, 16))
    assert cpu_bf16_hazard(build_model("resnet18"), (3, 32, 32)) is None
    assert "'4.0.conv1'" in cpu_bf16_hazard(build_model("d2l_resnet18"), (1, 16, 16))
    assert cpu_bf16_hazard(build_model("resnet8", in_chans=1), (1, 24, 24)) is None  # the default recipe's
    spare = build_model("resnet18")
    spare.unused = torch.nn.Conv2d(3, 3, 3, stride=2)  # a layer the forward pass never calls has no hazard
    assert cpu_bf16_hazard(spare, (3, 64, 64)) is None


@pytest.mark.parametrize("native", [True, False])
def test_a_model_bf16_would_train_wrongly_trains_in_fp32_or_is_refused(tmp_path, tiny, capsys, monkeypatch, native):
    # resnet18 at 8x8: layer3.0.conv1 (3x3, stride 2) is the first to see a 1x1 map
    monkeypatch.setattr(reslab.device, "cpu_has_bf16", lambda: native)
    small = dict(model="resnet18", model_kwargs={}, max_steps=1, precise_bn=0, amp="auto", progress=True)
    result = fit(tiny(tmp_path, **small), data=tiny.data)
    assert result.completed is False and read_checkpoint(result.run_dir / "last.pt")["step"] == 1
    out = capsys.readouterr().out
    assert ("note: training in fp32, not bf16: 'layer3.0.conv1'" in out) == native and ", fp32," in out
    with pytest.raises(ReslabError, match=r"--amp bf16: 'layer3.0.conv1'.*use --amp off"):
        fit(tiny(tmp_path, **{**small, "amp": "bf16"}, name="explicit"), data=tiny.data)


def record_input_sizes(monkeypatch) -> list[tuple[bool, int]]:
    """(a training step?, the image size) of every forward of fit's model, in order."""
    real, seen = reslab.train.build_model, []

    def build(*args, **kwargs):
        model = real(*args, **kwargs)
        model.register_forward_pre_hook(
            lambda m, args: seen.append((m.training and torch.is_grad_enabled(), args[0].shape[-1]))
        )
        return model

    monkeypatch.setattr(reslab.train, "build_model", build)
    return seen


def test_progressive_resizing_trains_the_first_epochs_smaller_and_resumes_exactly(tmp_path, monkeypatch, tiny):
    seen = record_input_sizes(monkeypatch)
    small = dict(resize=12, progressive_resize=8, progressive_epochs=2)
    straight = fit(tiny(tmp_path, epochs=3, name="straight", **small), data=tiny.data)
    steps = [size for step, size in seen if step]
    assert steps == [8] * 32 + [12] * 16
    # evaluation, and the precise BatchNorm statistics it uses, at --resize
    first_step = seen.index((True, 8))  # before it, the bf16 hazard probe sees both sizes
    assert {size for step, size in seen[first_step:] if not step} == {12}
    first = fit(tiny(tmp_path, epochs=3, name="split", max_steps=5, **small), data=tiny.data)
    assert first.step == 5
    fit(tiny(tmp_path, epochs=3, name="split", resume="auto", **small), data=tiny.data)
    assert states_equal(read_checkpoint(straight.run_dir / "last.pt"), read_checkpoint(tmp_path / "split" / "last.pt"))
    # the last epoch always trains at --resize: a 1-epoch run has no progressive epoch
    seen.clear()
    fit(tiny(tmp_path, epochs=1, name="one", **small), data=tiny.data)
    assert {size for step, size in seen} == {12}


def test_a_whitened_stem_is_set_before_training_stays_frozen_and_resumes_exactly(tmp_path, monkeypatch, tiny):
    real, set_to = reslab.train.whiten_stem, []

    def whiten(model, batches):
        used = real(model, batches)
        set_to.append(model.conv1.weight.detach().clone())
        return used

    monkeypatch.setattr(reslab.train, "whiten_stem", whiten)
    straight = fit(tiny(tmp_path, epochs=2, name="straight", whiten_stem=True), data=tiny.data)
    trained, start = read_checkpoint(straight.run_dir / "last.pt")["model"], set_to[0]
    assert torch.equal(start[4:], -start[:4])  # whitened: each of the 8 filters paired with its negative
    assert torch.equal(trained["conv1.weight"], start)  # and never trained
    fit(tiny(tmp_path, epochs=2, name="split", max_steps=20, whiten_stem=True), data=tiny.data)
    fit(tiny(tmp_path, epochs=2, name="split", resume="auto", whiten_stem=True), data=tiny.data)
    assert states_equal(read_checkpoint(straight.run_dir / "last.pt"), read_checkpoint(tmp_path / "split" / "last.pt"))
    with pytest.raises(ReslabError, match="--whiten-stem"):  # what the checkpoint means cannot change on resume
        fit(tiny(tmp_path, epochs=3, name="split", resume="auto"), data=tiny.data)


def test_compile_trains_a_compiled_graph_keeps_the_names_and_resumes_exactly(tmp_path, tiny):
    from torch._dynamo.utils import counters  # dynamo's own tally of the graphs it compiled

    # fp32 on every CPU: bf16 autocast, where the CPU has it, rounds differently in fused kernels
    small = dict(epochs=2, model="resnet8", model_kwargs={"widths": [8, 16, 32]}, val_size=0, amp="off")
    graphs = counters["stats"]["unique_graphs"]
    compiled = fit(tiny(tmp_path, name="compiled", compile=True, **small), data=tiny.data)
    assert counters["stats"]["unique_graphs"] > graphs  # the loop ran a compiled graph, not eager code
    fit(tiny(tmp_path, name="split", compile=True, max_steps=20, **small), data=tiny.data)
    fit(tiny(tmp_path, name="split", compile=True, resume="auto", **small), data=tiny.data)
    assert states_equal(read_checkpoint(compiled.run_dir / "last.pt"), read_checkpoint(tmp_path / "split" / "last.pt"))
    # the same training as eager, to float tolerance: inductor fuses and reorders float arithmetic. Over the first
    # steps only: by step 9 this tiny network amplifies any 1e-7 change of its weights (eager ones too) 500-fold
    eager, short = (
        fit(tiny(tmp_path, name=n, max_steps=6, compile=n == "c6", **small), data=tiny.data) for n in ("e6", "c6")
    )
    a, b = (read_checkpoint(run.run_dir / "last.pt")["model"] for run in (eager, short))
    assert a.keys() == b.keys()  # no "_orig_mod." prefix: checkpoints load into an eager model
    assert relative_distance(b, a) < 1e-5
