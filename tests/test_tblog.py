"""`reslab train --log tensorboard`, read back with TensorBoard's own reader: the scalars at the expected steps, the
hyperparameters in the run's own folder, a batch of images, and a resumed run that continues the stream without
repeating steps."""

import shutil
import sys

import pytest

from reslab.cli import main
from reslab.config import make_config
from reslab.optim import Schedule
from reslab.train import fit

# 256 training images / batch 32 = 8 steps per epoch, 16 in all
SETTINGS = dict(
    dataset="synthetic", train_subset=256, val_size=64, batch_size=32, epochs=2, threads=1, progress=False,
    log="tensorboard",
)  # fmt: skip
STEPS = 16


def events(run):
    """TensorBoard's reader of the run folder (what `tensorboard --logdir` shows), everything kept."""
    pytest.importorskip("tensorboard", reason="the optional extra reslab[tensorboard] is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    reader = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0})
    reader.Reload()
    return reader


def steps(reader, tag):
    return [e.step for e in reader.Scalars(tag)]


def test_the_events_hold_per_step_and_per_epoch_scalars_hparams_and_images(tmp_path):
    pytest.importorskip("tensorboard", reason="the optional extra reslab[tensorboard] is not installed")
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    config = make_config(**SETTINGS, output=str(tmp_path), name="tb")
    result = fit(config)
    reader = events(result.run_dir)
    assert steps(reader, "train/loss") == list(range(1, STEPS + 1))
    # the lr of step n is the schedule's (a pure function of the step) for the 0-based step n - 1
    schedule = Schedule.for_run(config, steps_per_epoch=8)
    lrs = [e.value for e in reader.Scalars("train/lr")]
    assert lrs == pytest.approx([schedule(s) for s in range(STEPS)], rel=1e-6)
    for key in ("train_loss", "train_acc", "val_acc", "test_acc", "images_per_s"):
        values = reader.Scalars(f"epoch/{key}")
        assert [e.step for e in values] == ([16] if key == "test_acc" else [8, 16])  # the test set: after the last
        rows = [row[key] for row in result.history if row[key] is not None]
        assert [e.value for e in values] == pytest.approx(rows, rel=1e-6)
    (grid,) = reader.Images("train/batch")
    assert grid.step == 0 and grid.width > 28 and grid.height > 28  # a grid of the 28x28 images
    # the hyperparameters, in this run's folder (not a timestamped sub-folder: one TensorBoard run per run)
    assert [p for p in result.run_dir.iterdir() if p.is_dir()] == []
    plugin = EventAccumulator(str(result.run_dir))
    plugin.Reload()
    content = plugin.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["lr"].number_value == config.lr
    assert start.session_start_info.hparams["model"].string_value == config.model
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} >= {"hparam/test_acc", "hparam/best_val_acc"}
    assert reader.Scalars("hparam/test_acc")[-1].value == pytest.approx(result.test_acc, rel=1e-6)


def test_a_resumed_run_continues_the_stream_without_repeated_steps(tmp_path):
    pytest.importorskip("tensorboard", reason="the optional extra reslab[tensorboard] is not installed")
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    base = {**SETTINGS, "output": str(tmp_path), "name": "tb"}
    run = fit(make_config(**base, max_steps=4)).run_dir
    shutil.copy(run / "last.pt", tmp_path / "step4.pt")
    fit(make_config(**base, max_steps=6, resume=str(run)))
    # a crash after step 6 whose last checkpoint was step 4: steps 5 and 6 are in the events, and will be again
    shutil.copy(tmp_path / "step4.pt", run / "last.pt")
    result = fit(make_config(**base, resume=str(run)))
    assert result.completed and result.step == STEPS

    written = [
        e.step
        for f in sorted(run.glob("events.out.tfevents.*"))
        for e in EventFileLoader(str(f)).Load()
        if any(v.tag == "train/loss" for v in e.summary.value)
    ]
    assert sorted(written) == sorted([*range(1, 7), *range(5, STEPS + 1)])  # 5 and 6 twice on disk
    reader = events(run)
    assert steps(reader, "train/loss") == list(range(1, STEPS + 1))  # once each as TensorBoard shows them
    assert steps(reader, "epoch/train_acc") == [8, 16]
    assert [i.step for i in reader.Images("train/batch")] == [0]  # from the fresh start only


def test_without_tensorboard_installed_the_flag_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what an install without it gives
    args = ["train", "--dataset", "synthetic", "--train-subset", "64", "--epochs", "1", "--log", "tensorboard"]
    assert main([*args, "--output", str(tmp_path), "--name", "x", "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--log tensorboard" in err[0] and "pip install -e '.[tensorboard]'" in err[0]
