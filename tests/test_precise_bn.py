"""Precise BatchNorm statistics (--precise-bn): pycls's average of per-batch statistics, a collapsed evaluation of a
small folder repaired, the training and its resume untouched to the bit; a batch of one at 1x1; end-of-run warnings."""

import torch
from torch import nn

from reslab.checkpoint import model_from_checkpoint, read_checkpoint
from reslab.cli import main
from reslab.config import make_config
from reslab.data import BatchLoader, export_png_folder, load_dataset, synthetic_dataset
from reslab.device import resolve_amp
from reslab.evaluate import evaluate, run_warnings
from reslab.models import build_model
from reslab.precise_bn import bn_layers, update_bn_stats
from reslab.train import fit


def test_statistics_are_the_mean_of_per_batch_means_and_unbiased_variances():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
    model = nn.Sequential(conv, bn, nn.ReLU()).eval()
    batches = [torch.randn(8, 3, 6, 6) * (1 + i) + i for i in range(3)]
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    used = update_bn_stats(model, iter(batches), num_batches=5)
    with torch.no_grad():
        outs = [conv(x) for x in batches]  # what the BatchNorm layer sees, computed here without it
    mean = torch.stack([y.mean((0, 2, 3)) for y in outs]).mean(0)
    var = torch.stack([y.transpose(0, 1).reshape(4, -1).var(1, unbiased=True) for y in outs]).mean(0)
    assert used == 3  # fewer batches than asked: all of them
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)
    assert not model.training and bn.momentum == 0.1  # the model's mode and momentum are its own again
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())  # weights untouched


def test_layers_of_a_frozen_module_keep_their_statistics():
    model = build_model("resnet8", num_classes=3, widths=[4, 8, 16])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(16, 3, 16, 16) * 3 + 1
    update_bn_stats(model, [x], num_batches=1, skip=["layer1"])
    after = model.state_dict()
    for name, _ in bn_layers(model):
        same = torch.equal(after[f"{name}.running_mean"], before[f"{name}.running_mean"])
        assert same == name.startswith("layer1."), name


def _folder(root):
    # three colour patterns, 160 training and 90 validation PNGs at 16x16: 5 steps of 32 per epoch
    data = synthetic_dataset(num_train=160, num_test=90, num_classes=3, image_size=16, in_chans=3, seed=1)
    export_png_folder(data, root / "train", split="train")
    export_png_folder(data, root / "val", split="test")
    return root


def test_precise_statistics_repair_the_collapsed_evaluation_of_a_small_folder(tmp_path):
    # issue 22's small-folder failure, shrunk: one epoch of 5 steps at lr 0.4 leaves running statistics that lag
    # the weights so far that the network predicts one class; the same weights with precise statistics do not
    folder = _folder(tmp_path / "folder")
    config = make_config(
        dataset="imagefolder",
        data_dir=str(folder),
        image_size=16,
        model="resnet8",
        model_kwargs={"widths": [8, 16, 32]},
        batch_size=32,
        lr=0.4,
        epochs=1,
        threads=1,
        progress=False,
        output=str(tmp_path / "runs"),
        name="run",
        precise_bn=512,
    )
    result = fit(config)
    ckpt = read_checkpoint(tmp_path / "runs" / "run" / "last.pt")
    accumulated = model_from_checkpoint({**ckpt, "model": {**ckpt["model"], **ckpt["running_stats"]}})
    data = load_dataset("imagefolder", folder, image_size=16, in_chans=3, progress=False)
    pre = ckpt["preprocess"]
    val = BatchLoader(data.val_images, data.val_labels, batch_size=90, train=False, mean=pre["mean"], std=pre["std"])
    amp = resolve_amp(config.amp, torch.device("cpu"))  # as the run evaluated
    collapsed = evaluate(accumulated, val, num_classes=3, amp_dtype=amp)
    precise = evaluate(result.model, val, num_classes=3, amp_dtype=amp)
    assert precise.accuracy == result.best_val_acc  # what the run reported is what its checkpoint gives
    assert collapsed.confusion.sum(0).max() >= 0.85 * 90  # (nearly) every image one class
    assert precise.accuracy >= 0.75 and precise.accuracy >= collapsed.accuracy + 0.3


DATA = synthetic_dataset(num_train=320, num_test=64, image_size=8)
TINY = dict(
    model="resnet20",
    model_kwargs={"widths": [4, 8, 16]},
    batch_size=32,
    lr=0.2,
    val_size=64,
    threads=1,
    progress=False,
    epochs=2,
    ema=0.9,
)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _optimizer_same(a: dict, b: dict) -> bool:
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])


def test_training_is_untouched_and_a_resumed_run_ends_bit_for_bit_as_one_left_alone(tmp_path):
    cfg = dict(TINY, output=str(tmp_path))
    off = fit(make_config(**cfg, name="off", precise_bn=0), data=DATA)
    on = fit(make_config(**cfg, name="on", precise_bn=64), data=DATA)
    fit(make_config(**cfg, name="split", precise_bn=64, max_steps=13), data=DATA)  # stops mid-epoch 2
    fit(make_config(**cfg, name="split", precise_bn=64, resume="auto"), data=DATA)
    a, b, c = (read_checkpoint(tmp_path / n / "last.pt") for n in ("off", "on", "split"))
    assert off.step == on.step == c["step"] == 2 * (256 // 32)
    # the weights and the optimiser are those of the run without precise statistics, to the bit
    assert _same(a["live_model"], b["live_model"]) and _optimizer_same(a, b)
    # the EMA's accumulated statistics are kept beside the precise ones that evaluation and the checkpoint use
    assert _same(b["running_stats"], {k: a["model"][k] for k in b["running_stats"]})
    stats = b["running_stats"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"] if k not in stats)
    assert not any(torch.equal(a["model"][k], b["model"][k]) for k in stats if k.endswith("running_var"))
    # stopped and resumed: every tensor of the checkpoint as the run left alone
    for key in ("model", "live_model", "running_stats"):
        assert _same(b[key], c[key]), key
    assert _optimizer_same(b, c) and [r["val_acc"] for r in b["history"]] == [r["val_acc"] for r in c["history"]]


def test_a_batch_of_one_at_a_1x1_batchnorm_is_one_line_before_training(tmp_path, capsys):
    # ResNet-18 on 28x28 images: layer4 runs at 1x1
    base = ["train", "--dataset", "synthetic", "--model", "resnet18", "--threads", "1", "--output", str(tmp_path)]
    code = main([*base, "--batch-size", "1", "--name", "a"])
    err = capsys.readouterr().err
    assert code == 2 and "--batch-size 1: a training batch of one image reaches BatchNorm layer 'layer4." in err
    assert "at 1x1" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a" / "last.pt").exists()
    code = main([*base, "--train-subset", "1", "--val-size", "100", "--name", "b"])
    err = capsys.readouterr().err
    assert code == 2 and "the training split has one image" in err and "Traceback" not in err


def test_end_of_run_warnings_name_a_collapse_and_a_gap_and_stay_silent_otherwise():
    classes = ("a", "b", "c")
    healthy = torch.tensor([[90, 5, 5], [4, 92, 4], [6, 6, 88]])
    collapsed = torch.tensor([[0, 100, 0], [0, 100, 0], [2, 97, 1]])
    history = [{"train_acc": 0.93, "val_acc": 0.91}]
    assert run_warnings(history, healthy, classes, split="val") == []
    # an imbalanced split where one class is nearly everything: predicting it is right, not a collapse
    imbalanced = torch.tensor([[95, 0, 0], [2, 1, 0], [1, 0, 1]])
    assert run_warnings(history, imbalanced, classes) == []
    lines = run_warnings([{"train_acc": 0.87, "val_acc": 0.337}], collapsed, classes, split="val", precise_bn=0)
    assert len(lines) == 2
    assert "predicted as 'b' for 297 of its 300 images (99%; 33% of them are)" in lines[0]
    assert "--precise-bn" in lines[0] and "far below training accuracy 0.870" in lines[1]
    # with precise statistics on, the advice is not to turn them on
    assert all("--precise-bn" not in line for line in run_warnings(history, collapsed, classes, precise_bn=2048))
