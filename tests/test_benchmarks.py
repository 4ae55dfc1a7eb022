"""The benchmark scripts run on tiny settings, name the machine, and report consistently; no figure is asserted (no
timed tests)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(*args: str) -> str:
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_time_to_accuracy_smoke_saves_the_epochs_it_prints_and_the_spread_of_its_repeats(tmp_path):
    out = run_script("benchmarks/time_to_accuracy.py", "--smoke", "--repeats", "2", "--output", str(tmp_path))
    assert out.startswith("machine: ") and "cores" in out and "load average" in out
    report = json.loads((tmp_path / "time_to_accuracy.json").read_text())
    printed = [(int(e), float(acc)) for e, acc in re.findall(r"epoch (\d+): test acc ([\d.]+) at", out)]
    saved = [(row["epoch"], row["test_acc"]) for row in report["runs"][0]["epochs"]]
    assert len(printed) == len(saved) == report["config"]["epochs"] == 2
    assert printed == [(e, pytest.approx(acc, abs=5e-5)) for e, acc in saved]
    assert ("NOT reached" in out) == (report["time_to_target_s"] is None)
    assert len(report["runs"]) == 2 and f"commit {report['commit']}" in out
    assert "fit(): mean " in out and "n=2)" in out  # the spread of the repeats
    # the same seed on the CPU: every repeat reaches the same accuracy
    assert report["runs"][0]["final_test_acc"] == report["runs"][1]["final_test_acc"]


def test_throughput_ratios_are_each_modes_figures_over_the_first_modes():
    out = run_script("benchmarks/throughput.py", "--steps", "1", "--batch", "4", "--modes", "fp32,bf16+channels_last")
    lines = out.splitlines()
    assert lines[0].startswith("machine: ") and lines[1].endswith("ratios against fp32")
    assert lines[2].split() == ["mode", "train", "img/s", "ratio", "infer", "img/s", "ratio", "peak", "MB", "ratio"]
    rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in lines[3:]}
    assert list(rows) == ["fp32", "bf16+channels_last"]
    base, mode = rows["fp32"], rows["bf16+channels_last"]
    for col in (0, 2, 4):  # train img/s, infer img/s, peak MB; each is followed by its ratio
        # the figures are printed as integers, so the ratio lies within what their rounding allows (and its own)
        low = (mode[col] - 0.5) / (base[col] + 0.5) - 0.005
        high = (mode[col] + 0.5) / max(base[col] - 0.5, 1e-9) + 0.005
        assert low <= mode[col + 1] <= high, "\n".join(lines[2:])
