"""The benchmark scripts run on tiny settings, name the machine, and report consistently; no figure is asserted (no
timed tests)."""

import importlib.util
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
    assert len(saved) == report["config"]["epochs"] == 2 and saved[0][1] is None  # the test set: after the last
    assert "epoch 1: test not evaluated" in out
    assert printed == [(e, pytest.approx(acc, abs=5e-5)) for e, acc in saved if acc is not None]
    assert ("NOT reached" in out) == (report["time_to_target_s"] is None)
    assert len(report["runs"]) == 2 and f"commit {report['commit']}" in out
    assert "fit(): mean " in out and "n=2)" in out  # the spread of the repeats
    # the same seed on the CPU: every repeat reaches the same accuracy
    assert report["runs"][0]["final_test_acc"] == report["runs"][1]["final_test_acc"]


def cifar_resnet_macs(n: int, size: int, in_chans: int, num_classes: int) -> int:
    """Multiply-adds of He et al.'s CIFAR ResNet-(6n+2) with option A shortcuts, from its definition: a 3x3 stem to
    16 channels, then 3 stages of 2n 3x3 convolutions at 16/32/64 channels (the 2nd and 3rd halve the size with their
    first conv), then a linear layer; option A shortcuts and BN are free."""
    macs = size * size * 16 * 9 * in_chans
    chans = 16
    for planes in (16, 32, 64):
        if planes != chans:
            size = (size + 1) // 2
        macs += size * size * planes * 9 * chans + (2 * n - 1) * size * size * planes * 9 * planes
        chans = planes
    return macs + 64 * num_classes


def test_throughput_ratios_and_roofline_are_consistent_with_the_images_per_second_and_the_gemm_peak(tmp_path):
    report = tmp_path / "roofline.json"
    args = ["--steps", "1", "--batch", "4", "--modes", "fp32,bf16+channels_last", "--threads", "1"]
    out = run_script("benchmarks/throughput.py", *args, "--gemm-size", "128", "--json", str(report))
    lines = out.splitlines()
    assert lines[0].startswith("machine: ") and lines[1].endswith("ratios against fp32")
    assert "resnet20 at 1x28x28, batch 4" in lines[1]
    header = ["mode", "train", "img/s", "ratio", "infer", "img/s", "ratio", "peak", "MB", "ratio", "compile", "s"]
    assert lines[2].split() == header
    end = lines.index("", 3)
    assert all(line.split()[-1] == "-" for line in lines[3:end])  # nothing compiled
    rows = {line.split()[0]: [float(v) for v in line.split()[1:-1]] for line in lines[3:end]}
    assert list(rows) == ["fp32", "bf16+channels_last"]
    base, mode = rows["fp32"], rows["bf16+channels_last"]
    for col in (0, 2, 4):  # train img/s, infer img/s, peak MB; each is followed by its ratio
        # the figures are printed as integers, so the ratio lies within what their rounding allows (and its own)
        low = (mode[col] - 0.5) / (base[col] + 0.5) - 0.005
        high = (mode[col] + 0.5) / max(base[col] - 0.5, 1e-9) + 0.005
        assert low <= mode[col + 1] <= high, "\n".join(lines[2:end])

    # the JSON: each mode's GFLOP/s is multiply-adds x 2 x 3 (x 1 for inference) x img/s, over its precision's peak
    doc = json.loads(report.read_text())
    peaks = doc["gemm"]["peak_gflop_s"]
    assert set(peaks) == {"fp32", "bf16"} and doc["gemm"]["flops"] == 2 * 128**3
    for p in peaks.values():
        assert len(p["before"]) == len(p["after"]) == 5 and p["best"] == max(p["before"] + p["after"])
    (model,) = doc["models"]
    assert model["input_size"] == [1, 28, 28] and model["batch"] == 4
    assert model["macs_per_image"] == cifar_resnet_macs(3, 28, in_chans=1, num_classes=10)  # resnet20: n = 3
    assert [r["mode"] for r in model["modes"]] == ["fp32", "bf16+channels_last"]
    for r in model["modes"]:
        assert r["precision"] == r["mode"].split("+")[0] and r["peak_gflop_s"] == peaks[r["precision"]]["best"]
        for phase, passes in (("train", 3), ("infer", 1)):
            expected = model["macs_per_image"] * 2 * passes * r[f"{phase}_img_s"] / 1e9
            assert r[f"{phase}_gflop_s"] == pytest.approx(expected, rel=1e-12)
            assert r[f"{phase}_fraction_of_peak"] == pytest.approx(r[f"{phase}_gflop_s"] / r["peak_gflop_s"], rel=1e-12)
            assert r[f"{phase}_steps"] >= 1

    # the printed roofline: the peaks and one row per mode, each figure as in the JSON (to its rounding)
    peak_line = next(line for line in lines if line.startswith("GEMM peak (128x128 matmul"))
    printed_peaks = dict(re.findall(r"(fp32|bf16) ([\d.]+) GFLOP/s", peak_line))
    assert {k: float(v) for k, v in printed_peaks.items()} == {
        k: pytest.approx(v["best"], abs=0.05) for k, v in peaks.items()
    }
    header = next(i for i, line in enumerate(lines) if line.startswith("model ") and "%peak" in line)
    printed = [line.split() for line in lines[header + 1 : header + 3]]
    for cells, r in zip(printed, model["modes"], strict=True):
        assert cells[:5] == ["resnet20", "1x28x28", "4", f"{model['macs_per_image']:,}", r["mode"]]
        img_s, gflop_s, pct = (float(c) for c in cells[5:8])
        assert img_s == pytest.approx(r["train_img_s"], abs=0.05)
        assert gflop_s == pytest.approx(r["train_gflop_s"], abs=0.05)
        # the printed % agrees with the printed GFLOP/s over the printed peak, within their rounding (0.05 each)
        peak = float(printed_peaks[r["precision"]])
        slack = 0.05 + 100 * 0.05 / (peak - 0.05) + 100 * (gflop_s + 0.05) * 0.05 / (peak - 0.05) ** 2
        assert abs(pct - 100 * gflop_s / peak) <= slack
    assert lines[-1].startswith("took ")

    # the docs' table, regenerated from the JSON without measuring: one row per mode, the same figures
    table = run_script("benchmarks/throughput.py", "--markdown", str(report)).splitlines()
    assert table[0].startswith("Measured by `benchmarks/throughput.py --steps 1") and doc["machine"] in table[0]
    md_rows = [[c.strip() for c in line.strip("|").split("|")] for line in table if line.startswith("| resnet20")]
    assert [row[4] for row in md_rows] == ["fp32", "bf16+channels_last"]
    for row, r in zip(md_rows, model["modes"], strict=True):
        assert float(row[7]) == pytest.approx(100 * r["train_fraction_of_peak"], abs=0.05)


def test_throughput_compiles_only_the_modes_that_say_so_and_times_the_compiling_apart(tmp_path):
    report = tmp_path / "compiled.json"
    modes = "fp32+channels_last,fp32+channels_last+compile,fp32+channels_last"  # a mode may repeat, to alternate
    args = ["--models", "resnet8@8", "--steps", "1", "--batch", "4", "--modes", modes, "--threads", "1"]
    out = run_script("benchmarks/throughput.py", *args, "--gemm-size", "64", "--json", str(report))
    (model,) = json.loads(report.read_text())["models"]
    assert [r["mode"] for r in model["modes"]] == modes.split(",")
    eager, compiled, again = model["modes"]
    assert "train_compile_s" not in eager and "train_compile_s" not in again
    assert compiled["train_compile_s"] > 0 and compiled["infer_compile_s"] > 0 and compiled["train_steps"] >= 1
    rows = [line.split() for line in out.splitlines() if line.startswith("fp32+channels_last")][:3]
    assert [row[-1] for row in rows] == [
        "-",
        f"{compiled['train_compile_s']:.1f}+{compiled['infer_compile_s']:.1f}",
        "-",
    ]


def load_throughput():
    """benchmarks/throughput.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("throughput", ROOT / "benchmarks" / "throughput.py")
    throughput = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(throughput)
    return throughput


def test_throughput_roofline_preset_is_the_issues_list_at_the_inputs_the_models_expect():
    throughput = load_throughput()
    models = [throughput.parse_model(s, 128) for s in throughput.ROOFLINE.split(",")]
    assert [(m["model"], m["input_size"], m["batch"], m["num_classes"]) for m in models] == [
        ("resnet8", [1, 28, 28], 128, 10),  # the default recipe's, on Fashion-MNIST
        ("resnet20", [1, 28, 28], 128, 10),  # --recipe best's
        ("resnet56", [1, 28, 28], 128, 10),
        ("d2l_resnet18", [1, 96, 96], 128, 10),  # --recipe d2l's
        ("resnet50", [3, 224, 224], 16, 1000),
    ]


def test_throughput_models_take_other_widths():
    throughput = load_throughput()
    wide = throughput.parse_model("resnet8/32-64-128@24:64", 128)
    assert (wide["model"], wide["input_size"], wide["batch"], wide["widths"]) == (
        "resnet8",
        [1, 24, 24],
        64,
        [32, 64, 128],
    )
    assert throughput.label(wide) == "resnet8/32-64-128" and throughput.parse_model("resnet8@24", 128)["widths"] is None


@pytest.mark.parametrize(
    "models, message",
    [
        ("resnet20@28,resnet21@28", "--models: unknown model 'resnet21'; did you mean"),
        ("d2l_resnet18/8-16@96", "--models: d2l_resnet18 does not take 'widths'"),
    ],
)
def test_throughput_bad_model_is_one_clear_line(models, message):
    out = subprocess.run(
        [sys.executable, "benchmarks/throughput.py", "--models", models],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert message in out.stderr.splitlines()[-1]


def test_inference_smoke_reports_every_path_with_its_difference_from_eager_fp32(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    paths = ["eager fp32", "eager bf16+channels_last", "onnxruntime", "onnxruntime spinning", "onnxruntime int8 static"]
    report = tmp_path / "inference.json"
    args = ["--smoke", "--threads", "1", "--paths", ",".join(paths), "--output", str(report)]
    lines = run_script("benchmarks/inference.py", *args).splitlines()
    assert lines[0].startswith("machine: ") and "(torch uses 1 threads)" in lines[0]
    (result,) = json.loads(report.read_text())["results"]
    rows, skipped = result["rows"], result["skipped"]
    assert sorted([*rows, *skipped]) == sorted(paths)  # each path measured, or skipped with its reason
    assert "eager bf16+channels_last" in rows or "native bf16" in skipped["eager bf16+channels_last"]
    assert rows["eager fp32"]["abs_diff"] == 0.0 and rows["eager fp32"]["throughput_speedup"] == 1.0
    base = rows["eager fp32"]
    for path, r in rows.items():
        (line,) = [line for line in lines if line[:24].rstrip() == path]  # the path column is 24 wide
        assert r["latency_speedup"] == pytest.approx(base["latency_s"][0] / r["latency_s"][0])  # one round
        assert r["rel_diff"] <= r["abs_diff"] and f"{100 * r['top1_agree']:.0f}%" in line.split()
        assert f"{r['abs_diff']:.1e}" in line.split() and f"{r['rel_diff']:.1e}" in line.split()
        assert ("not exact" in line) == (r["rel_diff"] > 1e-4)
    # spinning changes how ONNX Runtime's threads wait, not what they compute; int8 is stated as approximate
    assert rows["onnxruntime spinning"]["abs_diff"] == rows["onnxruntime"]["abs_diff"]
    assert rows["onnxruntime"]["rel_diff"] <= 1e-4 < rows["onnxruntime int8 static"]["rel_diff"]
