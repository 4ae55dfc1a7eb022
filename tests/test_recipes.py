"""The recipes' tricks: alternating flips, random erasing, an EMA of the weights (resumed bit for bit), a higher lr
for BatchNorm biases, test-time augmentation, evaluation only where due, and the named recipes themselves."""

import csv
import math

import pytest
import torch
from torch import nn

from reslab.checkpoint import read_checkpoint
from reslab.config import RECIPES, make_config
from reslab.data import BatchLoader, synthetic_dataset
from reslab.data.transforms import erase, erase_params
from reslab.ema import EMA
from reslab.errors import ReslabError
from reslab.evaluate import evaluate_checkpoint, tta_logits
from reslab.optim import build_optimizer, set_lr
from reslab.train import fit

TRICKS = dict(crop_padding=1, hflip=True, hflip_mode="alternate", random_erasing=0.5, ema=0.9, bn_bias_lr=4.0)


def images_with_sides(n=64, size=6):
    """uint8 images whose left half is bright and right half dark: a flipped image is told apart by one pixel."""
    x = torch.zeros(n, size, size, dtype=torch.uint8)
    x[:, :, : size // 2] = 200
    return x, torch.arange(n) % 10


def flipped(loader: BatchLoader, epoch: int) -> torch.Tensor:
    """Which items (by their index in the set) the loader's epoch shows mirrored."""
    loader.set_epoch(epoch)
    order = loader._indices()
    flags = torch.cat([x[:, 0, 0, 0] < 0 for x, _ in loader])  # normalised: the dark side is negative
    out = torch.zeros(len(loader.images), dtype=torch.bool)
    out[order[: len(flags)]] = flags
    return out


def test_alternating_flips_show_both_sides_of_every_image_in_two_epochs():
    images, labels = images_with_sides()
    alt = BatchLoader(images, labels, batch_size=16, train=True, hflip=True, hflip_mode="alternate", seed=3)
    e0, e1, e2 = (flipped(alt, e) for e in range(3))
    assert 0.25 < e0.float().mean() < 0.75  # random in the first epoch
    assert torch.equal(e1, ~e0) and torch.equal(e2, e0)
    rand = BatchLoader(images, labels, batch_size=16, train=True, hflip=True, seed=3)
    r0, r1 = flipped(rand, 0), flipped(rand, 1)
    assert (r0 == r1).any()  # independent flips leave some images on the same side two epochs running


def test_random_erasing_blanks_one_box_of_some_images_to_the_mean():
    g = torch.Generator().manual_seed(0)
    top, left, h, w = erase_params(400, 28, 28, p=0.5, generator=g)
    erased = h > 0
    assert 0.4 < erased.float().mean() < 0.6
    area = (h * w)[erased].double() / (28 * 28)
    assert area.min() >= 0.015 and area.max() <= 0.34  # torchvision's scale (0.02, 0.33), up to rounding
    assert ((top + h) <= 28).all() and ((left + w) <= 28).all()
    x = torch.randn(400, 1, 28, 28).contiguous(memory_format=torch.channels_last) + 5  # nowhere 0 before
    out = erase(x, top, left, h, w)
    assert out.is_contiguous(memory_format=torch.channels_last)
    zeros = (out == 0).sum((1, 2, 3))
    assert torch.equal(zeros, h * w)
    i = int(erased.nonzero()[0])
    assert (out[i, :, top[i] : top[i] + h[i], left[i] : left[i] + w[i]] == 0).all()


def test_random_erasing_leaves_the_crops_and_flips_as_they_were():
    images, labels = images_with_sides(64, 8)
    common = dict(batch_size=16, train=True, crop_padding=1, hflip=True, seed=1)
    plain = next(iter(BatchLoader(images, labels, **common)))[0]
    erased = next(iter(BatchLoader(images, labels, random_erasing=1.0, **common)))[0]
    kept = erased != 0
    assert torch.equal(plain[kept], erased[kept]) and (~kept).any()


def test_ema_follows_the_weights_with_its_decay():
    model = nn.Linear(3, 1, bias=False)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    start = ema.module.weight.clone()
    ema.update(step=1000)  # past the ramp: decay 0.9
    assert torch.allclose(ema.module.weight, 0.9 * start + 0.1)
    assert ema.decay_at(0) < 0.2 and ema.decay_at(10**6) == 0.9  # early averages forget the random start


def test_bn_bias_lr_multiplies_only_the_batchnorm_biases():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(2, 1, 5, 5))
    optimizer = build_optimizer(model, make_config(bn_bias_lr=64.0), lr=0.1)
    set_lr(optimizer, 0.1)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert lr_of[id(model[1].bias)] == pytest.approx(6.4)
    assert {lr_of[id(p)] for p in (model[0].weight, model[1].weight, model[3].bias)} == {0.1}
    assert len(build_optimizer(model, make_config(), lr=0.1).param_groups) == 2  # the default: as before


def test_tta_averages_the_mirror_image_and_one_pixel_shifts():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Flatten(), nn.Linear(3 * 36, 4)).eval()
    x = torch.randn(5, 1, 6, 6)
    with torch.no_grad():
        assert not torch.allclose(model(x), model(x.flip(-1)))
        assert torch.allclose(tta_logits(model, x, "flip"), tta_logits(model, x.flip(-1), "flip"), atol=1e-6)
        assert torch.equal(tta_logits(model, x, "none"), model(x))
        seen = []
        model.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        tta_logits(model, x, "flip-shift")
    assert len(seen) == 6
    down_right = [v for v in seen if torch.equal(v[..., 1:, 1:], x[..., :-1, :-1])]
    up_left = [v for v in seen if torch.equal(v[..., :-1, :-1], x[..., 1:, 1:])]
    assert len(down_right) == len(up_left) == 1
    assert any(torch.equal(v, down_right[0].flip(-1)) for v in seen)  # and their mirror images


def test_a_run_with_every_trick_resumes_bit_for_bit(tmp_path, tiny):
    straight = fit(tiny(tmp_path, epochs=2, name="straight", **TRICKS), data=tiny.data)
    first = fit(tiny(tmp_path, epochs=2, name="split", max_steps=21, **TRICKS), data=tiny.data)
    assert not first.completed
    resumed = fit(tiny(tmp_path, epochs=2, name="split", resume="auto", **TRICKS), data=tiny.data)
    assert resumed.completed and resumed.step == straight.step
    a, b = read_checkpoint(straight.run_dir / "last.pt"), read_checkpoint(tmp_path / "split" / "last.pt")
    for key in ("model", "live_model"):  # the average, and the weights it averages
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert [r["val_acc"] for r in a["history"]] == [r["val_acc"] for r in b["history"]]
    # the run delivers the average: fit's model, and what eval, predict and export read from the checkpoint
    assert not all(torch.equal(a["model"][k], a["live_model"][k]) for k in a["model"])
    assert all(torch.equal(v, a["model"][k]) for k, v in straight.model.state_dict().items())
    # the average does not change the training: the same run without it trains the very same weights
    plain = fit(tiny(tmp_path, epochs=2, name="plain", **{**TRICKS, "ema": 0.0}), data=tiny.data)
    c = read_checkpoint(plain.run_dir / "last.pt")
    trained = c["model"] | c["running_stats"]  # its BatchNorm statistics as training accumulated them (--precise-bn)
    assert c["live_model"] is None and all(torch.equal(trained[k], a["live_model"][k]) for k in trained)


def test_resuming_without_the_average_continues_the_trained_weights(tmp_path, tiny):
    straight = fit(tiny(tmp_path, epochs=2, name="straight"), data=tiny.data)
    fit(tiny(tmp_path, epochs=2, name="split", max_steps=21, ema=0.9), data=tiny.data)
    fit(tiny(tmp_path, epochs=2, name="split", resume="auto", ema=0.0), data=tiny.data)
    a, b = read_checkpoint(straight.run_dir / "last.pt"), read_checkpoint(tmp_path / "split" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_test_split_only_after_the_last_epoch_and_tta_in_eval(tmp_path, capsys, tiny):
    result = fit(tiny(tmp_path, epochs=3, test_every=0, val_every=2), data=tiny.data)
    with open(result.run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["test_acc"] != "" for r in rows] == [False, False, True]
    assert [r["val_acc"] != "" for r in rows] == [False, True, True]
    assert result.test_acc is not None and (result.run_dir / "confusion_matrix.png").is_file()
    plain = evaluate_checkpoint(result.run_dir / "last.pt", split="val", data=tiny.data, quiet=True)
    assert plain.accuracy == result.history[-1]["val_acc"]
    tta = evaluate_checkpoint(result.run_dir / "last.pt", split="val", data=tiny.data, tta="flip-shift")
    assert "test-time augmentation flip-shift" in capsys.readouterr().out
    assert tta.result.total == plain.result.total == 128


def test_fit_evaluates_with_its_tta(tmp_path, tiny):
    result = fit(tiny(tmp_path, epochs=1, tta="flip"), data=tiny.data)
    again = evaluate_checkpoint(result.run_dir / "last.pt", split="val", data=tiny.data, quiet=True)  # the run's --tta
    none = evaluate_checkpoint(result.run_dir / "last.pt", split="val", data=tiny.data, quiet=True, tta="none")
    assert again.accuracy == result.history[-1]["val_acc"]
    assert again.result.confusion.tolist() != none.result.confusion.tolist()


@pytest.mark.parametrize(
    "flags, message",
    [
        (dict(ema=1.0), "--ema"),
        (dict(random_erasing=1.5), "--random-erasing"),
        (dict(hflip_mode="sometimes"), "--hflip-mode"),
        (dict(tta="rotate"), "--tta"),
        (dict(test_every=-1), "--test-every"),
        (dict(whiten_stem=True, pretrained="resnet18.tv_in1k"), "--whiten-stem and --pretrained"),
        (dict(bn_bias_lr=0.0), "--bn-bias-lr"),
    ],
)
def test_bad_values_name_their_flag(flags, message):
    with pytest.raises(ReslabError, match=message):
        make_config(**flags)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_recipe_trains_on_a_tiny_set(tmp_path, recipe):
    # two synthetic classes, 8 steps: each recipe's network must learn, its training accuracy over the epoch well
    # above a guess's (three standard errors of a guesser's accuracy on as many images: a 1-in-700 chance). The
    # running training accuracy, not the test accuracy: 8 steps leave the BN running statistics of a deep network
    # (d2l's ResNet-18) far from its batch statistics, so its eval-mode predictions say little this early
    # At 32 px, not 8: below 32 px d2l's last stages run a 3x3 stride-2 conv on a 1x1 map, whose weight gradient in
    # bf16 + channels_last reads uninitialised memory in torch 2.13's CPU kernels (NaN in about one run of six)
    n, chance = 256, 0.5
    small = dict(dataset="synthetic", val_size=64, train_subset=n, resize=32, epochs=1, batch_size=32)
    config = make_config(recipe, **small, output=str(tmp_path), name="r", threads=1, progress=False)
    data = synthetic_dataset(num_train=n + 64, num_test=64, image_size=8, num_classes=2)
    result = fit(config, data=data, explicit=None)
    assert result.completed and result.test_acc is not None
    assert result.history[-1]["train_acc"] > chance + 3 * math.sqrt(chance * (1 - chance) / n)


def test_the_default_recipe_trains_fashion_mnist_at_24_px_and_other_data_at_their_own_size():
    assert make_config().resize == 24 and make_config(dataset="fashion-mnist").resize == 24
    assert make_config(resize=28).resize == 28  # the flag wins
    assert make_config(dataset="cifar10").resize is None and make_config(dataset="imagefolder").resize is None
    assert make_config(pretrained="resnet18.tv_in1k").resize is None  # the weights' own preprocessing
    assert make_config("best").resize is None and make_config("d2l").resize == 96  # other recipes as they were chosen


def test_the_default_recipe_trains_its_first_epoch_at_16_px_only_at_its_own_24():
    assert make_config().progressive_resize == 16 and make_config().progressive_epochs == 1
    assert make_config(progressive_resize=0).progressive_resize == 0  # the flag turns it off
    assert make_config(resize=28).progressive_resize is None  # chosen for 24x24, not for the size asked
    assert make_config(model="resnet18").progressive_resize is None  # nor for another network (bf16 at 1x1 maps)
    assert make_config(dataset="cifar10").progressive_resize is None
    assert make_config(pretrained="resnet18.tv_in1k").progressive_resize is None
    assert make_config("best").progressive_resize is None and make_config("d2l").progressive_resize is None


def test_the_default_recipe_whitens_the_stem_of_its_own_network_on_its_own_data_only():
    assert make_config().whiten_stem is True and make_config(whiten_stem=False).whiten_stem is False
    others = dict(model="resnet18"), dict(dataset="cifar10"), dict(resize=28), dict(pretrained="resnet18.tv_in1k")
    for other in others:
        assert not make_config(**other).whiten_stem, other
    assert not make_config("best").whiten_stem and not make_config("d2l").whiten_stem
