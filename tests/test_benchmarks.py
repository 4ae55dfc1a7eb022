"""The benchmark scripts run on tiny settings and name the machine; no figure is asserted (no timed tests)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(*args: str) -> str:
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_time_to_accuracy_smoke(tmp_path):
    out = run_script("benchmarks/time_to_accuracy.py", "--smoke", "--output", str(tmp_path))
    assert out.startswith("machine: ") and "cores" in out
    assert (tmp_path / "time_to_accuracy.json").exists()


def test_throughput_reports_ratios_against_the_first_mode():
    out = run_script("benchmarks/throughput.py", "--steps", "1", "--batch", "4", "--modes", "fp32,bf16+channels_last")
    lines = out.splitlines()
    assert lines[0].startswith("machine: ")
    fp32 = next(line for line in lines if line.startswith("fp32 "))
    assert fp32.split()[2] == "1.00"  # the baseline's ratio to itself
    assert any(line.startswith("bf16+channels_last") for line in lines)
