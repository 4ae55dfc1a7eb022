import csv
import json

import pytest

from reslab.errors import ReslabError
from reslab.experiments import (
    Run,
    RunResult,
    degradation_verdict,
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

    from reslab.experiments import experiment_config

    results = _fake_results()
    write_results(results, tmp_path, config=experiment_config(epochs=3), title="test")
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


@pytest.fixture
def no_fashion_mnist(monkeypatch):
    """--quick must run where Fashion-MNIST is not installed (CI): it falls back to the synthetic stand-in."""
    import reslab.experiments.degradation

    monkeypatch.setattr(reslab.experiments.degradation, "find_data_dir", lambda data_dir=None: None)


def test_quick_degradation_from_the_cli(tmp_path, capsys, no_fashion_mnist):
    from reslab.cli import main

    assert main(["experiment", "degradation", "--quick", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in ("figure.png", "table.md", "results.csv", "results.json", "verdict.txt"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert "synthetic" in out and "plain-56 vs plain-20" in out and "Verdict:" in out
    doc = json.loads((tmp_path / "results.json").read_text())
    assert [r["label"] for r in doc["runs"]] == ["plain-20", "plain-56", "ResNet-20", "ResNet-56"]
    assert all(len(r["history"]) == 1 for r in doc["runs"])
    # --quick trains 256 images for one epoch, 4 steps of 64, one thread: a pipeline check that stays cheap
    assert all(r["history"][-1]["epoch"] == 1 for r in doc["runs"]) and doc["machine"]["threads"] == 1
    assert doc["config"]["train_subset"] == 256 and doc["config"]["batch_size"] == 64

    # run again into the same folder: the finished runs are reused, not retrained
    assert main(["experiment", "degradation", "--quick", "--output", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("reusing the run") == 4
    assert json.loads((tmp_path / "results.json").read_text())["runs"] == doc["runs"]


def test_quick_shortcuts(tmp_path, capsys, no_fashion_mnist):
    from reslab.experiments import run_experiment

    results, verdict = run_experiment("shortcuts", quick=True, output=tmp_path)
    assert [r.run.model_kwargs["shortcut"] for r in results] == ["A", "B", "C"]
    # A has no parameters on its shortcuts; B projects where the shape changes; C everywhere
    assert results[0].params < results[1].params < results[2].params
    assert "training error:" in verdict and (tmp_path / "figure.png").exists()
