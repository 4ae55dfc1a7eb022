"""Inference speed along each path reslab can run a model, as speed-ups over eager fp32 measured in the same run:
latency (batch 1, milliseconds) and throughput (batch 32, images/s) of

    eager fp32            the model as `reslab predict` runs it (NCHW, fp32, inference mode)
    eager channels_last   the same with model and batches in NHWC
    eager bf16            bf16 autocast; only where the CPU has native bf16 (AVX512-BF16/AMX) unless --bf16
    torch.compile         inductor, one static graph per batch size (compile time reported apart)
    onnxruntime           the model exported by reslab.export (ONNX Runtime, CPU; export time reported apart)

for ResNet-20 at 1x28x28 (Fashion-MNIST) and ResNet-50 at 3x224x224 (ImageNet), random weights (speed does not depend
on them). Paths are timed in turns, round after round, and each speed-up is the median over rounds of the ratio within
a round, so a change in the machine's load mid-run moves all paths alike. Each path's logits are compared with eager
fp32 on one batch ("max |diff|", relative to the largest logit): a path is only "correct" within reslab.export's
tolerance (1e-4). Runs on as many threads as torch uses (set OMP_NUM_THREADS, or --threads); ONNX Runtime gets the
same number.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/inference.py             # both networks; minutes on 2 cores
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/inference.py --models resnet20 --rounds 5
    .venv/bin/python benchmarks/inference.py --smoke                       # seconds: resnet8, tiny batches
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path

import torch

from reslab.backends import OnnxRunner, TorchRunner
from reslab.device import cpu_has_bf16, machine_line
from reslab.export import TOLERANCE, export_onnx
from reslab.metadata import describe
from reslab.models import build_model

# name -> (build_model kwargs, input size, timed calls per round at batch 1, at the throughput batch)
MODELS = {
    "resnet20": ({"in_chans": 1, "num_classes": 10}, (1, 28, 28), 20, 5),
    "resnet50": ({"num_classes": 1000}, (3, 224, 224), 3, 1),
    "resnet8": ({"in_chans": 1, "num_classes": 10}, (1, 28, 28), 2, 1),  # --smoke
}
PATHS = ("eager fp32", "eager channels_last", "eager bf16", "torch.compile", "onnxruntime")


def build_paths(name: str, model: torch.nn.Module, input_size, *, paths, batches, workdir: Path, log) -> dict:
    """path name -> (callable on a batch, seconds it took to prepare); the paths that cannot run here are noted."""
    made = {}
    for path in paths:
        t0 = time.perf_counter()
        if path == "eager fp32":
            run = TorchRunner(model)
        elif path == "eager channels_last":
            run = TorchRunner(_copy(model), channels_last=True)
        elif path == "eager bf16":
            run = TorchRunner(_copy(model), amp_dtype=torch.bfloat16)
        elif path == "torch.compile":
            compiled = torch.compile(_copy(model), dynamic=False)
            run = TorchRunner(compiled)
            for b in batches:  # compile now, one graph per batch size, so that timing sees none of it
                run(torch.randn(b, *input_size))
        elif path == "onnxruntime":
            desc = describe(
                {"model_name": name, "model_kwargs": {}, "input_size": list(input_size), "classes": [], "model": {}}
            )
            onnx_file = export_onnx(model, desc, workdir / f"{name}.onnx")
            run = OnnxRunner(onnx_file)
        else:
            raise ValueError(path)
        made[path] = (run, time.perf_counter() - t0)
        log(f"  {path}: ready in {made[path][1]:.1f} s")
    return made


def _copy(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model)


def time_calls(run, x: torch.Tensor, calls: int) -> float:
    """Seconds per call, over `calls` calls after one warm-up call."""
    run(x)
    t0 = time.perf_counter()
    for _ in range(calls):
        run(x)
    return (time.perf_counter() - t0) / calls


def bench_model(name: str, args, log) -> dict:
    kwargs, input_size, calls1, calls_n = MODELS[name]
    if args.smoke:
        calls1 = calls_n = 1
    batch = args.batch
    torch.manual_seed(0)
    model = build_model(name, **kwargs).eval()
    with torch.no_grad():  # BN statistics away from (0, 1), so that a path that dropped them would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    paths, skipped = list(args.paths), {}
    if "eager bf16" in paths and not (args.bf16 or cpu_has_bf16()):
        paths.remove("eager bf16")
        skipped["eager bf16"] = "no native bf16 on this CPU (emulated: several times slower); --bf16 measures it"
    if "onnxruntime" in paths and (find_spec("onnxruntime") is None or find_spec("onnxscript") is None):
        paths.remove("onnxruntime")
        skipped["onnxruntime"] = "not installed: pip install 'reslab[export]'"
    log(f"{name} at {'x'.join(map(str, input_size))}: preparing {', '.join(paths)}")
    with tempfile.TemporaryDirectory() as tmp:
        made = build_paths(name, model, input_size, paths=paths, batches=(1, batch), workdir=Path(tmp), log=log)
        g = torch.Generator().manual_seed(1)
        x1, xn = torch.randn(1, *input_size, generator=g), torch.randn(batch, *input_size, generator=g)
        reference = made["eager fp32"][0](xn)
        rows = {}
        for path, (run, setup) in made.items():
            out = run(xn)
            rows[path] = {
                "setup_s": setup,
                "rel_diff": float((out - reference).abs().max()) / max(1.0, float(reference.abs().max())),
                "top1_agree": float((out.argmax(1) == reference.argmax(1)).float().mean()),
                "latency_s": [],
                "throughput": [],
            }
        for r in range(args.rounds):
            for path, (run, _) in made.items():
                rows[path]["latency_s"].append(time_calls(run, x1, calls1))
                rows[path]["throughput"].append(batch / time_calls(run, xn, calls_n))
            log(f"  round {r + 1}/{args.rounds} done")
    base = rows["eager fp32"]
    for row in rows.values():
        # per-round ratios, then their median: load that changes between rounds cancels within each round
        row["latency_speedup"] = statistics.median(
            b / t for b, t in zip(base["latency_s"], row["latency_s"], strict=True)
        )
        row["throughput_speedup"] = statistics.median(
            t / b for b, t in zip(base["throughput"], row["throughput"], strict=True)
        )
        row["latency_ms"] = 1000 * statistics.median(row["latency_s"])
        row["throughput_img_s"] = statistics.median(row["throughput"])
        row["correct"] = row["rel_diff"] <= TOLERANCE["onnx"]
    return {"model": name, "input_size": list(input_size), "batch": batch, "rows": rows, "skipped": skipped}


def format_result(res: dict, rounds: int) -> str:
    c, h, w = res["input_size"]
    throughput = f"batch {res['batch']} img/s"
    lines = [
        f"{res['model']} at {c}x{h}x{w}, random weights; speed-up over eager fp32, median of {rounds} round(s)",
        f"{'path':<20} {'batch 1 ms':>10} {'speed-up':>8} {throughput:>15} {'speed-up':>8} "
        f"{'max |diff|':>10} {'top-1':>6} {'setup s':>8}",
    ]
    for path, r in res["rows"].items():
        lines.append(
            f"{path:<20} {r['latency_ms']:>10.2f} {r['latency_speedup']:>8.2f} {r['throughput_img_s']:>15.1f} "
            f"{r['throughput_speedup']:>8.2f} {r['rel_diff']:>10.1e} {100 * r['top1_agree']:>5.0f}% "
            f"{r['setup_s']:>8.1f}" + ("" if r["correct"] else "  (beyond 1e-4: not exact)")
        )
    for path, why in res["skipped"].items():
        lines.append(f"{path:<20} skipped: {why}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet20,resnet50", help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset of: " + ", ".join(PATHS))
    p.add_argument("--batch", type=int, default=32, help="the throughput batch (default 32)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of timing, each path in turn (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch (and ONNX Runtime) threads (default: torch's)")
    p.add_argument("--bf16", action="store_true", help="measure bf16 autocast even where the CPU emulates it")
    p.add_argument("--output", default=None, help="also write the figures as JSON to this file")
    p.add_argument("--smoke", action="store_true", help="resnet8, batch 4, one round, no torch.compile: seconds")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.paths = [s.strip() for s in args.paths.split(",")]
    unknown = [s for s in args.paths if s not in PATHS]
    if unknown or "eager fp32" not in args.paths:
        p.error(f"--paths: known paths are {', '.join(PATHS)}, 'eager fp32' (the baseline) among them; got {unknown}")
    models = args.models.split(",")
    if args.smoke:
        models, args.batch, args.rounds = ["resnet8"], 4, 1
        args.paths = [s for s in args.paths if s != "torch.compile"]

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    print(f"machine: {machine_line()}")
    started = time.perf_counter()
    results = []
    for name in models:
        if name not in MODELS:
            p.error(f"--models: {name!r} is not one of {', '.join(MODELS)}")
        results.append(bench_model(name, args, log))
        print(format_result(results[-1], args.rounds), flush=True)
    load = f", load average now {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    print(f"took {time.perf_counter() - started:.0f} s{load}")
    if args.output:
        Path(args.output).write_text(json.dumps({"machine": machine_line(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
