import contextlib
import csv
import dataclasses
import io
import json

import pytest
import torch

from reslab.errors import ReslabError
from reslab.experiments import (
    Run,
    RunResult,
    degradation_verdict,
    experiment_setup,
    format_table,
    parse_depths,
    shortcuts_verdict,
    write_results,
)

# ----------------------------------------------------------------------------------------------------------------------
# verdicts: pure functions, checked on hand-made numbers both ways


def test_degradation_verdict_as_in_the_paper():
    v = degradation_verdict({20: 0.08, 56: 0.12}, {20: 0.07, 56: 0.05})
    assert v.plain_degrades and v.residual_improves
    assert "plain-56 vs plain-20" in v.text and "4.00 points higher" in v.text and "as in the paper" in v.text


def test_degradation_verdict_no_degradation_and_residual_worse():
    v = degradation_verdict({20: 0.12, 56: 0.08}, {20: 0.05, 56: 0.07})
    assert not v.plain_degrades and not v.residual_improves
    assert "no degradation" in v.text and "trained worse" in v.text and "as in the paper" not in v.text


def test_degradation_verdict_mixed_outcomes():
    assert not degradation_verdict({20: 0.1, 56: 0.2}, {20: 0.05, 56: 0.06}).residual_improves
    v = degradation_verdict({20: 0.2, 56: 0.1}, {20: 0.05, 56: 0.05})  # equal counts as "at least as well"
    assert not v.plain_degrades and v.residual_improves


def test_degradation_verdict_compares_shallowest_with_deepest():
    v = degradation_verdict({20: 0.10, 32: 0.09, 56: 0.11}, {56: 0.04, 20: 0.06, 32: 0.05})
    assert v.plain_degrades and v.residual_improves and "plain-56 vs plain-20" in v.text


def test_degradation_verdict_needs_two_depths():
    with pytest.raises(ValueError):
        degradation_verdict({20: 0.1}, {20: 0.1})


def test_a_single_run_verdict_says_it_is_a_single_run():
    v = degradation_verdict({20: 0.08, 56: 0.12}, {20: 0.07, 56: 0.05})
    assert v.resolved is None and "A single run (one seed)" in v.text and "--seeds N" in v.text


# several seeds: a difference is called only beyond the noise (reslab.experiments.spread)
CLEAR_PLAIN = {20: [0.070, 0.072, 0.071], 56: [0.090, 0.091, 0.089]}  # 2 points apart, 0.1 points of scatter


def test_degradation_verdict_over_seeds_as_in_the_paper():
    residual = {20: [0.060, 0.061, 0.059], 56: [0.050, 0.051, 0.052]}
    v = degradation_verdict(CLEAR_PLAIN, residual)
    assert v.plain_degrades and v.residual_improves and v.resolved
    assert "7.10% ± 0.06 (SEM, 3 seeds)" in v.text and "resolved by 3 seeds" in v.text
    assert "Verdict: as in the paper" in v.text and "beyond 2 standard errors" in v.text


def test_degradation_verdict_over_seeds_not_resolved():
    # plain-56 0.5 points above plain-20 on average, but each seed moves them by about a point
    noisy = {20: [0.060, 0.080, 0.070], 56: [0.085, 0.065, 0.075]}
    v = degradation_verdict(noisy, {20: [0.06, 0.061, 0.059], 56: [0.05, 0.051, 0.052]})
    assert not v.plain_degrades and v.resolved is False
    assert "not resolved: within the seeds' noise" in v.text and "3 seeds do not resolve it" in v.text
    assert "Verdict: not resolved: 3 seeds do not tell plain-56's training error from plain-20's" in v.text
    assert "seeds would at this spread" in v.text and "as in the paper" not in v.text


def test_degradation_verdict_over_seeds_the_other_way():
    # the deeper plain network clearly better, the deeper residual one clearly worse: both resolved, and said so
    plain = {20: CLEAR_PLAIN[56], 56: CLEAR_PLAIN[20]}
    v = degradation_verdict(plain, {20: [0.050, 0.051, 0.052], 56: [0.060, 0.061, 0.059]})
    assert not v.plain_degrades and not v.residual_improves and v.resolved
    assert "the deeper residual network trained worse" in v.text and "Verdict: no degradation" in v.text
    # a residual difference within the noise is not resolved, and not taken for "at least as well": here ResNet-56
    # failed to start on one seed of three (12% against 7%), as it can in three epochs
    within = degradation_verdict(CLEAR_PLAIN, {20: [0.0675, 0.068, 0.0678], 56: [0.1235, 0.0693, 0.070]})
    assert within.plain_degrades and not within.residual_improves and "as in the paper" in within.text
    assert "ResNet-56 vs ResNet-20" in within.text and "-> not resolved: within the seeds' noise." in within.text
    assert "whether ResNet-56 trains at least as well as ResNet-20 is not resolved" in within.text
    assert "seeds would tell them apart at this spread" in within.text


def test_shortcuts_verdict_orders_the_options():
    as_paper = shortcuts_verdict({"A": (0.05, 0.09), "B": (0.04, 0.085), "C": (0.03, 0.08)})
    assert "C 8.00% < B 8.50% < A 9.00%" in as_paper and "As in the paper" in as_paper
    other = shortcuts_verdict({"A": (0.05, 0.07), "B": (0.04, 0.085), "C": (0.03, 0.08)})
    assert "A 7.00% < C 8.00% < B 8.50%" in other and "does not show here" in other
    tie = shortcuts_verdict({"A": (0.05, 0.08), "B": (0.04, 0.08), "C": (0.03, 0.07)})
    assert "test error:     C 7.00% < A 8.00% = B 8.00%" in tie


# ----------------------------------------------------------------------------------------------------------------------
# outputs of a comparison, from hand-made results (no training)


def _fake_results():
    results = []
    for i, (label, model, panel) in enumerate(
        [("plain-20", "plain20", "plain"), ("plain-56", "plain56", "plain"), ("ResNet-20", "resnet20", "residual")]
    ):
        history = [
            {
                "epoch": e,
                "train_error": 0.3 / e + 0.01 * i,
                "test_error": 0.32 / e,
                "train_loss": 1.0 / e,
                "time_s": 60.0,
            }
            for e in (1, 2, 3)
        ]
        results.append(RunResult(Run(label, model, {}, panel), history, params=270_000, run_dir=f"runs/{label}"))
    return results


def test_write_results_writes_figure_table_csv_json(tmp_path):
    from PIL import Image

    from reslab.config import make_config

    results = _fake_results()
    write_results(results, tmp_path, config=make_config("degradation", epochs=3), title="test")
    with Image.open(tmp_path / "figure.png") as im:
        assert im.width > 2 * im.height * 0.9  # two panels side by side
    rows = list(csv.DictReader((tmp_path / "results.csv").read_text().splitlines()))
    assert len(rows) == 9 and rows[0]["label"] == "plain-20" and float(rows[2]["train_error"]) == pytest.approx(0.1)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert [r["label"] for r in doc["runs"]] == ["plain-20", "plain-56", "ResNet-20"]
    assert doc["config"]["epochs"] == 3 and doc["runs"][1]["final_train_error"] == pytest.approx(0.11)
    table = (tmp_path / "table.md").read_text()
    assert table == format_table(results) + "\n"
    assert "| plain-56 | 270,000 | 3 | 11.00% | 10.67% | 3.0 min |" in table


def test_the_figure_over_seeds_draws_the_mean_in_a_band_of_one_sem(tmp_path, monkeypatch):
    import matplotlib.axes

    from reslab.experiments.harness import plot_comparison

    bands = []
    real = matplotlib.axes.Axes.fill_between
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "fill_between",
        lambda ax, x, lo, hi, **kw: bands.append((x, lo, hi)) or real(ax, x, lo, hi, **kw),
    )
    one = _fake_results()
    plot_comparison(one, tmp_path / "one.png")
    assert bands == []  # a single seed has no spread to draw
    # a second seed: each error 0.02 higher, so mean +0.01 and SEM (std 0.01414 / sqrt 2) = 0.01 at every epoch
    two = [dataclasses.replace(r, seed=1, history=[h | {"train_error": h["train_error"] + 0.02,
           "test_error": h["test_error"] + 0.02} for h in r.history]) for r in one]  # fmt: skip
    plot_comparison(one + two, tmp_path / "two.png", title="t")
    assert len(bands) == 2 * len(one)  # training and test error of each network
    x, lo, hi = bands[0]  # plain-20's training error: 0.3 / epoch, mean + 0.01, ± 0.01
    assert list(x) == [1, 2, 3]
    assert lo == pytest.approx([100 * 0.3 / e for e in (1, 2, 3)])
    assert hi == pytest.approx([100 * (0.3 / e + 0.02) for e in (1, 2, 3)])


@pytest.mark.parametrize(
    "text, which, message",
    [
        ("20,x", "degradation", "comma-separated"),
        ("20,57", "degradation", "both a plain and a resnet"),
        ("20", "degradation", "at least two depths"),
        ("20,56", "shortcuts", "at one depth"),
    ],
)
def test_bad_depths_are_clear_errors(text, which, message):
    with pytest.raises(ReslabError, match=f"--depths: .*{message}"):
        parse_depths(text, which)


def test_depths_default_and_parse():
    assert parse_depths(None, "degradation") == (20, 56)
    assert parse_depths("56, 20,32", "degradation") == (20, 32, 56)
    assert parse_depths(None, "shortcuts") == (20,)


# ----------------------------------------------------------------------------------------------------------------------
# --quick: the whole pipeline on a tiny subset (checks that it runs and writes its outputs, not the finding)


def _no_fashion_mnist(monkeypatch):
    """--quick must run where Fashion-MNIST is not installed (CI): it falls back to the synthetic stand-in."""
    import reslab.experiments.degradation

    monkeypatch.setattr(reslab.experiments.degradation, "find_data_dir", lambda data_dir=None: None)


@pytest.fixture
def no_fashion_mnist(monkeypatch):
    _no_fashion_mnist(monkeypatch)


@pytest.fixture(scope="module")
def quick_degradation(tmp_path_factory):
    """`reslab experiment degradation --quick` once: its output folder and what it printed. Its networks are the
    ones the lesion, landscape and gradients tests study (--networks), as a user's would be."""
    from reslab.cli import main

    output = tmp_path_factory.mktemp("degradation-quick")
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()) as out:
        _no_fashion_mnist(mp)
        assert main(["experiment", "degradation", "--quick", "--output", str(output)]) == 0
    return output, out.getvalue()


def test_quick_degradation_from_the_cli(quick_degradation, capsys, no_fashion_mnist):
    from reslab.cli import main

    output, out = quick_degradation
    for name in ("figure.png", "table.md", "results.csv", "results.json", "verdict.txt"):
        assert (output / name).stat().st_size > 0, name
    assert "synthetic" in out and "plain-56 vs plain-20" in out and "Verdict:" in out
    doc = json.loads((output / "results.json").read_text())
    assert [r["label"] for r in doc["runs"]] == ["plain-20", "plain-56", "ResNet-20", "ResNet-56"]
    assert all(len(r["history"]) == 1 for r in doc["runs"])
    # --quick trains 256 images for one epoch, 4 steps of 64, one thread: a pipeline check that stays cheap
    assert all(r["history"][-1]["epoch"] == 1 for r in doc["runs"]) and doc["machine"]["threads"] == 1
    assert doc["config"]["train_subset"] == 256 and doc["config"]["batch_size"] == 64

    # run again into the same folder: the finished runs are reused, not retrained
    assert main(["experiment", "degradation", "--quick", "--output", str(output)]) == 0
    assert capsys.readouterr().out.count("reusing the run") == 4
    assert json.loads((output / "results.json").read_text())["runs"] == doc["runs"]


def test_quick_shortcuts(tmp_path, capsys, no_fashion_mnist):
    from reslab.experiments import run_experiment

    results, verdict = run_experiment("shortcuts", quick=True, output=tmp_path)
    assert [r.run.model_kwargs["shortcut"] for r in results] == ["A", "B", "C"]
    # A has no parameters on its shortcuts; B projects where the shape changes; C everywhere
    assert results[0].params < results[1].params < results[2].params
    assert "training error:" in verdict and (tmp_path / "figure.png").exists()


# ----------------------------------------------------------------------------------------------------------------------
# lesion, landscape, gradients: verdicts on hand-made numbers, then one --quick run each on the degradation networks


def _lesion_summary(baseline, median, worst, down, random, reorder, not_removed=()):
    return {
        "baseline": baseline,
        "single_median": median,
        "single_max": worst,
        "single_max_block": "layer1.3",
        "downsampling_mean": down,
        "not_removed": list(not_removed),
        "random_mean": random,
        "reorder_mean": reorder,
    }


def test_lesion_verdict_as_veit_et_al_and_otherwise():
    from reslab.experiments import lesion_verdict

    resnet = _lesion_summary(0.08, 0.085, 0.12, 0.25, {1: 0.09, 10: 0.3}, {1: 0.09, 10: 0.2})
    resnet |= {"harmful_blocks": ["layer1.0", "layer1.3"], "same_shape_blocks": 25}
    plain = _lesion_summary(0.09, 0.85, 0.9, None, {1: 0.85, 10: 0.9}, {1: 0.8, 10: 0.9}, ["layer2.0", "layer3.0"])
    v = lesion_verdict(resnet, plain, chance=0.9, depth=56)
    assert v.residual_robust and v.plain_collapses
    assert "ResNet-56 8.0% -> median 8.5% (+0.5 points" in v.text and "as Veit et al." in v.text
    assert "worse than any other block" in v.text and "2 such blocks cannot be removed" in v.text
    assert "k=10 30.0%" in v.text and "more than 5 points: 2 of 25 (layer1.0, layer1.3)." in v.text
    hurt = lesion_verdict(_lesion_summary(0.08, 0.2, 0.3, 0.25, {}, {}), plain, chance=0.9, depth=56)
    assert not hurt.residual_robust and "is hurt too" in hurt.text and "no worse than the worst" in hurt.text
    sturdy_plain = _lesion_summary(0.09, 0.2, 0.3, None, {}, {})
    v = lesion_verdict(resnet, sturdy_plain, chance=0.9, depth=56)
    assert v.residual_robust and not v.plain_collapses and "does not collapse" in v.text
    # the sampling error is stated when the number of images is given: at 10,000 images and 10%, 0.30 points
    sized = lesion_verdict(resnet | {"single_median": 0.1}, plain, chance=0.9, depth=56, images=10_000).text
    assert "10,000 test images" in sized and "about 0.30 points" in sized and "damage is 6.7 of them." in sized
    small = lesion_verdict(_lesion_summary(0.08, 0.081, 0.2, 0.3, {}, {}), plain, chance=0.9, depth=56, images=100)
    assert "within the sampling error" in small.text
    untrained = lesion_verdict(_lesion_summary(0.88, 0.9, 0.9, 0.9, {}, {}), plain, chance=0.9, depth=20)
    assert not untrained.residual_robust and "Verdict: none" in untrained.text


def test_the_lesion_figure_takes_draws_that_are_all_equal(tmp_path):
    # a broken network scores the same on every draw; the mean of equal values can round above their min
    # (fmean of three 89.85s is 1.4e-14 above it), which matplotlib refuses as a negative error bar
    from reslab.experiments.lesion import plot_lesions

    single = [{"block": f"layer1.{i}", "position": i, "downsampling": False, "error": 0.8985} for i in range(3)]
    study = {
        "family": "plain",
        "baseline": {"error": 0.12},
        "single": single,
        "random": [{"k": k, "draw": d, "error": 0.8985} for k in (1, 2) for d in range(3)],
        "reorder": [{"kendall_tau": 0.5, "error": 0.8985}],
    }
    assert plot_lesions({"plain-56": study}, tmp_path / "lesion.png", chance=0.9).is_file()


def _surface(rise, nonconvex=0.1, center=0.2, basin=0.5):
    two = {"loss_center": center, "loss_rise": rise, "basin_fraction": basin, "nonconvex_fraction": nonconvex}
    return {"2d": two, "1d": {"loss_center": center, "loss_rise": rise * 1.2}, "hessian": None}


def test_landscape_verdict_compares_sharpness_and_convexity_pair_by_pair():
    from reslab.experiments import landscape_verdict

    li = {
        "plain-20": _surface(1.0),
        "ResNet-20": _surface(0.8),
        "plain-56": _surface(5.0, nonconvex=0.4),
        "ResNet-56": _surface(1.0, nonconvex=0.05),
    }
    v = landscape_verdict(li, depths=(20, 56), radius=0.5)
    assert v.plain_sharper == {20: True, 56: True} and v.plain_less_convex == {20: False, 56: True}
    assert v.gap_grows_with_depth and "rises 5x as much" in v.text
    assert "more non-convex (40% of the grid's interior points vs 5%) and sharper" in v.text
    assert "as Li et al. (2018) found; the plain/ResNet rise ratio grows with depth (1.2x at 20 layers" in v.text
    wide_but_chaotic = dict(li, **{"plain-56": _surface(0.5, nonconvex=0.4)})
    v = landscape_verdict(wide_but_chaotic, depths=(20, 56), radius=0.5)
    assert not v.plain_sharper[56] and v.plain_less_convex[56] and not v.gap_grows_with_depth
    assert "but not sharper: its loss rises 0.5x as much as ResNet-56's at distance 0.5 (1.2x at 20 layers)." in v.text
    neither = dict(li, **{"plain-56": _surface(0.9, nonconvex=0.0)})
    v = landscape_verdict(neither, depths=(20, 56), radius=0.5)
    assert "neither sharper nor more non-convex" in v.text
    sampled = {k: v | {"sampling": {"rise": 1.0, "se": 0.04, "images": 500}} for k, v in li.items()}
    text = landscape_verdict(sampled, depths=(56,), radius=0.5).text
    assert "Sampling error over the 500 images, of the rise at distance 0.5" in text and "1 ± 0.04" in text
    one_depth = landscape_verdict(li, depths=(56,), radius=0.5)
    assert one_depth.gap_grows_with_depth is None and "grows" not in one_depth.text


def _grad_row(family, depth, state, ratio, growth, corr):
    label = f"{'plain' if family == 'plain' else 'ResNet'}-{depth}"
    return {
        "label": label,
        "family": family,
        "depth": depth,
        "state": state,
        "first_over_last": ratio,
        "growth_towards_input": growth,
        "correlation_lag1": corr,
    }


def test_gradients_verdict_checks_explosion_and_shattering_not_assumes_them():
    from reslab.experiments import gradients_verdict

    init = [
        _grad_row("plain", 20, "init", 30.0, 1.2, 0.3),
        _grad_row("plain", 110, "init", 3000.0, 1.08, 0.02),
        _grad_row("residual", 20, "init", 3.0, 1.05, 0.8),
        _grad_row("residual", 110, "init", 5.0, 1.01, 0.7),
    ]
    trained = [_grad_row("plain", 20, "trained", 5.0, 1.1, 0.7), _grad_row("residual", 20, "trained", 2.0, 1.0, 0.9)]
    v = gradients_verdict(init + trained)
    assert v.explodes_at_init and v.shatters_at_init
    assert "plain-20 30, plain-110 3e+03" in v.text and "Depth 110: at initialisation only" in v.text
    assert "both explode towards the input and shatter" in v.text
    assert "After training" in v.text and "not shattered by the test" in v.text  # 0.7 vs 0.9: not under half
    # two plain correlations that have both reached zero are not a rise: still shattered
    saturated = (
        init[:1]
        + [
            _grad_row("plain", 56, "init", 300.0, 1.1, -0.001),
            _grad_row("plain", 110, "init", 3000.0, 1.08, 0.0005),
            _grad_row("residual", 56, "init", 4.0, 1.02, 0.75),
        ]
        + init[2:]
    )
    assert gradients_verdict(saturated).shatters_at_init
    # no growth with depth, correlations alike: neither, and the verdict says so
    calm = [
        _grad_row("plain", 20, "init", 30.0, 1.2, 0.8),
        _grad_row("plain", 110, "init", 20.0, 1.01, 0.75),
        _grad_row("residual", 20, "init", 3.0, 1.05, 0.8),
        _grad_row("residual", 110, "init", 5.0, 1.01, 0.7),
    ]
    v = gradients_verdict(calm)
    assert v.explodes_at_init is False and v.shatters_at_init is False
    assert "neither explode nor shatter" in v.text


def _outputs(folder):
    for name in ("figure.png", "table.md", "results.csv", "results.json", "verdict.txt"):
        assert (folder / name).stat().st_size > 0, name
    doc = json.loads((folder / "results.json").read_text())
    assert doc["verdict"] + "\n" == (folder / "verdict.txt").read_text()
    assert doc["machine"]["threads"] == 1 and "load_average_1min" in doc["machine"]
    return doc


def _networks(quick_degradation):
    folder = quick_degradation[0]
    stamps = {p: p.stat().st_mtime_ns for p in folder.glob("runs/*/last.pt")}
    return folder, stamps


def test_quick_lesion_from_the_cli_reuses_the_degradation_networks(
    quick_degradation, tmp_path, capsys, no_fashion_mnist
):
    from reslab.cli import main

    networks, stamps = _networks(quick_degradation)
    args = ["experiment", "lesion", "--quick", "--networks", str(networks), "--output", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("reusing the network `reslab experiment degradation` trained") == 2
    assert stamps == {p: p.stat().st_mtime_ns for p in networks.glob("runs/*/last.pt")}  # nothing retrained
    doc = _outputs(tmp_path)
    assert [n["label"] for n in doc["networks"]] == ["plain-20", "ResNet-20"]
    assert doc["settings"]["test_size"] == 64 and doc["settings"]["ks"] == [1, 2, 3]
    rows = list(csv.DictReader((tmp_path / "results.csv").read_text().splitlines()))
    # per network: intact, 9 single deletions, 3 k x 2 draws random deletions and as many reorderings
    assert len(rows) == 2 * (1 + 9 + 6 + 6)
    plain_single = [r for r in rows if r["network"] == "plain-20" and r["experiment"] == "single"]
    assert sum(r["error"] == "" for r in plain_single) == 2  # layer2.0 and layer3.0 change shape: not removable
    assert "Deleting one block that keeps the shape" in out and "Verdict" in doc["verdict"]


def test_quick_landscape_from_the_cli(quick_degradation, tmp_path, capsys, no_fashion_mnist):
    from reslab.cli import main

    networks, _ = _networks(quick_degradation)
    assert main(["experiment", "landscape", "--quick", "--networks", str(networks), "--output", str(tmp_path)]) == 0
    doc = _outputs(tmp_path)
    rows = list(csv.DictReader((tmp_path / "results.csv").read_text().splitlines()))
    assert len(rows) == 2 * (7 + 5 * 5)  # per network: the 1-D line and the 2-D grid
    for label, surfaces in doc["surfaces"].items():
        # the centre of both slices is the trained network itself: one loss, whichever slice it is read from
        two, one = surfaces["2d"], surfaces["1d"]
        assert two["loss"][2][2] == one["loss"][3] == doc["summaries"][label]["2d"]["loss_center"], label
    assert "loss rise at distance 0.5" in capsys.readouterr().out


def test_quick_gradients_from_the_cli(quick_degradation, tmp_path, capsys, no_fashion_mnist):
    from reslab.cli import main

    networks, _ = _networks(quick_degradation)
    assert main(["experiment", "gradients", "--quick", "--networks", str(networks), "--output", str(tmp_path)]) == 0
    doc = _outputs(tmp_path)
    got = [(r["label"], r["state"]) for r in doc["results"]]
    assert got == [(f"{n}-{d}", "init") for n in ("plain", "ResNet") for d in (20, 32)] + [
        ("plain-20", "trained"),
        ("ResNet-20", "trained"),
    ]
    rows = list(csv.DictReader((tmp_path / "results.csv").read_text().splitlines()))
    plain32 = [r for r in rows if r["network"] == "plain-32" and r["state"] == "init"]
    assert len(plain32) == 32 and plain32[-1]["layer"] == "fc"  # 31 convs and the classifier
    assert "Depth 32: at initialisation only" in capsys.readouterr().out


def test_missing_networks_are_trained_with_the_degradation_recipe_and_then_reused(tmp_path, capsys, no_fashion_mnist):
    from reslab.checkpoint import read_checkpoint
    from reslab.experiments import Run, experiment_setup, run_config, same_settings, trained_networks

    config, data = experiment_setup("degradation", quick=True)
    run = Run("plain-20", "plain20", {}, "plain networks", "plain", 20)
    (net,) = trained_networks([run], config=config, data=data, networks=tmp_path)
    assert "not trained yet" in capsys.readouterr().out and net.state == "trained"
    last = tmp_path / "runs" / "plain-20" / "last.pt"
    # exactly where and how `reslab experiment degradation --quick --output tmp_path` would train it: it reuses it
    assert same_settings(read_checkpoint(last)["config"], run_config(run, config, tmp_path))
    stamp = last.stat().st_mtime_ns
    (again,) = trained_networks([run], config=config, data=data, networks=tmp_path)
    assert "reusing" in capsys.readouterr().out and last.stat().st_mtime_ns == stamp
    before, after = net.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_networks_made_otherwise_are_used_as_they_are_or_refused_never_deleted(
    quick_degradation, tmp_path, capsys, no_fashion_mnist
):
    from reslab.checkpoint import read_checkpoint, save_checkpoint
    from reslab.experiments import experiment_setup, trained_networks
    from reslab.experiments.degradation import degradation_runs

    config, data = experiment_setup("degradation", quick=True)
    ckpt = read_checkpoint(quick_degradation[0] / "runs" / "plain-20" / "last.pt")
    folder = tmp_path / "runs" / "plain-20"
    folder.mkdir(parents=True)
    run = degradation_runs((20,))[:1]
    ckpt["config"] = {**ckpt["config"], "seed": 7}  # finished, another seed: used, and said so
    save_checkpoint(ckpt, folder / "last.pt")  # re-saved with its checksum: a torch.save would be a damaged file
    (net,) = trained_networks(run, config=config, data=data, networks=tmp_path)
    assert "as it was trained (1 epochs, seed 7" in capsys.readouterr().out and net.config.seed == 7
    ckpt["config"] = {**ckpt["config"], "epochs": 5}  # unfinished (1 of 5 epochs), other settings: refused
    save_checkpoint(ckpt, folder / "last.pt")  # re-saved with its checksum: a torch.save would be a damaged file
    with pytest.raises(ReslabError, match="unfinished run made with other settings"):
        trained_networks(run, config=config, data=data, networks=tmp_path)
    assert (folder / "last.pt").is_file()


# ----------------------------------------------------------------------------------------------------------------------
# the studies' options: one place (reslab.config), shown by --help as the code has them


@pytest.mark.parametrize("name", ["lesion", "landscape", "gradients"])
def test_study_help_shows_the_options_defaults_from_the_code(name, capsys):
    import dataclasses

    from reslab.cli import main
    from reslab.config import STUDY_OPTIONS

    with pytest.raises(SystemExit):
        main(["experiment", name, "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for f in dataclasses.fields(STUDY_OPTIONS[name]):
        if not f.metadata["flag"] or isinstance(f.default, bool):
            continue
        shown = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f"{f.default:g}"
        assert f"--{f.name.replace('_', '-')}" in out and f"(default {shown}" in out, f.name


def test_study_options_default_quick_given_and_checked():
    from reslab.config import study_options

    assert study_options("lesion").test_size == 2000 and study_options("lesion", quick=True).test_size == 64
    assert study_options("lesion", quick=True, test_size=7).test_size == 7
    assert study_options("gradients", depths=(20, 56)).depths == (20, 56)
    with pytest.raises(ReslabError, match="--grid: expected at least 3, got 2"):
        study_options("landscape", grid=2)


def test_the_experiment_recipes_are_recipes():
    from reslab.config import EXPERIMENT_RECIPES, make_config

    # one mechanism for recipes: make_config("degradation") is what the experiment trains
    config, _ = experiment_setup("degradation", dataset="synthetic")
    assert config == make_config("degradation", dataset="synthetic")
    shortcuts = EXPERIMENT_RECIPES["shortcuts"]
    assert shortcuts == {**EXPERIMENT_RECIPES["degradation"], "epochs": shortcuts["epochs"]}


# ----------------------------------------------------------------------------------------------------------------------
# several seeds (issue 23): per-seed values, mean ± spread, verdicts from the spread


def test_shortcuts_verdict_over_seeds_calls_the_order_only_when_resolved():
    clear = {"A": ([0.05] * 3, [0.090, 0.091, 0.089]), "B": ([0.04] * 3, [0.085, 0.086, 0.084])}
    clear["C"] = ([0.03] * 3, [0.080, 0.081, 0.079])
    v = shortcuts_verdict(clear)
    assert "B vs C: difference +0.50 points" in v and "resolved by 3 seeds" in v and "As in the paper" in v
    scatter = (0.01, -0.01, 0.0)
    noisy = {k: (train, [t + d for t, d in zip(test, scatter, strict=True)]) for k, (train, test) in clear.items()}
    v = shortcuts_verdict(noisy)
    # the same means, but each seed scattered by a point: the order is not established
    assert "C 8.00% < B 8.50% < A 9.00%" in v and "3 seeds do not resolve it" in v and "As in the paper" not in v
    assert "A (zero-padded identity) has the highest" not in v  # its step is not resolved either
    # B and C tied within the noise, A clearly worse (as measured on Fashion-MNIST): the paper's main point, said so
    tied = {"A": ([0.058] * 3, [0.0770, 0.0763, 0.0757]), "B": ([0.058] * 3, [0.0738, 0.0733, 0.0743])}
    tied["C"] = ([0.06] * 3, [0.0739, 0.0720, 0.0758])
    v = shortcuts_verdict(tied)
    assert "does not show here" in v and "A (zero-padded identity) has the highest test error, resolved by 3" in v
    assert "projections help a little; the others are not told apart." in v


def test_quick_shortcuts_over_two_seeds_from_the_cli(tmp_path, capsys, no_fashion_mnist):
    from reslab.cli import main

    assert main(["experiment", "shortcuts", "--quick", "--seeds", "2", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = list(csv.DictReader((tmp_path / "results.csv").read_text().splitlines()))
    assert sorted({(r["label"], r["seed"]) for r in rows}) == [(f"ResNet-20 {o}", s) for o in "ABC" for s in "01"]
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["seeds"] == [0, 1] and len(doc["runs"]) == 6
    for spread in doc["spread"]:
        values = [r["final_train_error"] for r in doc["runs"] if r["label"] == spread["label"]]
        assert spread["final_train_error"]["values"] == values and spread["final_train_error"]["n"] == 2
        assert spread["final_train_error"]["mean"] == pytest.approx(sum(values) / 2)
    table = (tmp_path / "table.md").read_text()
    assert "mean ± SEM" in table and table.count("| 2 |") == 3
    assert "test error over seeds" in out and (tmp_path / "runs" / "resnet-20_a-seed1" / "last.pt").is_file()


def test_quick_lesion_over_two_seeds_from_the_cli(tmp_path, capsys, no_fashion_mnist):
    from reslab.cli import main

    networks, output = tmp_path / "degradation", tmp_path / "lesion"
    args = ["experiment", "lesion", "--quick", "--seeds", "2", "--networks", str(networks), "--output", str(output)]
    assert main(args) == 0
    out = capsys.readouterr().out
    # each seed's networks trained once, in their own folders, and each seed's study beside the summary
    assert {p.parent.name for p in networks.glob("runs/*/last.pt")} == {
        "plain-20", "resnet-20", "plain-20-seed1", "resnet-20-seed1"
    }  # fmt: skip
    for seed in (0, 1):
        assert json.loads((output / f"seed-{seed}" / "results.json").read_text())["networks"][0]["seed"] == seed
    doc = _outputs(output)
    assert doc["seeds"] == [0, 1] and "Over 2 seeds (0, 1)" in doc["verdict"] and "on all 2 seeds" in out
    intact = doc["spread"]["ResNet-20"]["intact test error"]
    per_seed = [json.loads((output / f"seed-{s}" / "results.json").read_text()) for s in (0, 1)]
    assert intact["values"] == [d["summaries"]["ResNet-20"]["baseline"] for d in per_seed] and intact["n"] == 2
    rows = list(csv.DictReader((output / "results.csv").read_text().splitlines()))
    assert {r["seed"] for r in rows} == {"0", "1"} and "mean ± SEM" in (output / "table.md").read_text()
