"""Inference speed along each path reslab can run a model, as speed-ups over eager fp32 measured in the same run:
latency (batch 1, milliseconds) and throughput (batch 32, images/s) of

    eager fp32                the model as `reslab predict` runs it (NCHW, fp32, inference mode)
    eager channels_last       the same with model and batches in NHWC
    eager bf16                bf16 autocast; only where the CPU has native bf16 (AVX512-BF16/AMX) unless --bf16
    eager bf16+channels_last  both
    eager fused+channels_last BatchNorm folded into the convs (reslab.models.fuse_batchnorm), fp32, channels_last
    torch.compile             inductor, one static graph per batch size (compile time reported apart)
    onnxruntime               the model exported by reslab.export, run as `reslab predict` runs an ONNX file
                              (ONNX Runtime's CPU provider, all graph optimisations, threads that sleep when idle)
    onnxruntime spinning      the same with ONNX Runtime's default of threads that spin while waiting for work
                              (faster between small operators; reslab turns it off so as not to take the cores
                              of other processes)
    onnxruntime parallel      operators that do not depend on each other (a block's shortcut and its convs) run at
                              once (ORT_PARALLEL, as many inter-op threads as intra-op)
    onnxruntime fp16          the ONNX model's weights and activations in fp16, inputs and logits in fp32
                              (onnxruntime.transformers.float16; there is no bf16 path: ONNX's Conv operator
                              does not take bf16 tensors, so ONNX Runtime rejects such a model)
    onnxruntime int8 dynamic  int8 weights, activations quantised on the fly (onnxruntime.quantization)
    onnxruntime int8 static   int8 weights per channel and uint8 activations (QDQ), their ranges calibrated on
                              4 batches of 8 random inputs other than the compared batch

for ResNet-20 at 1x28x28 (Fashion-MNIST) and ResNet-50 at 3x224x224 (ImageNet), random weights (speed does not depend
on them). Paths are timed in turns, round after round, and each speed-up is the median over rounds of the ratio within
a round, so a change in the machine's load mid-run moves all paths alike. Each path's logits are compared with eager
fp32 on one batch: the largest absolute difference ("abs diff"), the same relative to the largest logit ("rel diff";
a path is "correct" within reslab.export's tolerance, 1e-4) and the share of images whose top-1 class agrees. The
ONNX paths share one export, counted in the setup time of the first of them (onnxruntime, unless --paths says
otherwise); the others count their own conversion and session. Runs on as many threads as torch uses
(set OMP_NUM_THREADS, or --threads); ONNX Runtime gets the same number.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/inference.py             # both networks; minutes on 2 cores
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/inference.py --models resnet20 --rounds 5
    .venv/bin/python benchmarks/inference.py --smoke                       # seconds: resnet8, tiny batches
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
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
from reslab.models import build_model, fuse_batchnorm

# name -> (build_model kwargs, input size, timed calls per round at batch 1, at the throughput batch)
MODELS = {
    "resnet20": ({"in_chans": 1, "num_classes": 10}, (1, 28, 28), 20, 5),
    "resnet50": ({"num_classes": 1000}, (3, 224, 224), 3, 1),
    "resnet8": ({"in_chans": 1, "num_classes": 10}, (1, 28, 28), 2, 1),  # --smoke
}
PATHS = (
    "eager fp32",
    "eager channels_last",
    "eager bf16",
    "eager bf16+channels_last",
    "eager fused+channels_last",
    "torch.compile",
    "onnxruntime",
    "onnxruntime spinning",
    "onnxruntime parallel",
    "onnxruntime fp16",
    "onnxruntime int8 dynamic",
    "onnxruntime int8 static",
)
BF16_PATHS = ("eager bf16", "eager bf16+channels_last")
ONNX_PATHS = tuple(p for p in PATHS if p.startswith("onnxruntime"))
CALIBRATION = (4, 8)  # batches x images that set the int8 activations' ranges


class OrtSession:
    """ONNX Runtime's CPU provider with reslab.backends.OnnxRunner's settings (all graph optimisations, `threads`
    intra-op threads that sleep when idle, one operator at a time) except where asked: threads that spin while
    waiting, or independent operators run in parallel."""

    def __init__(self, path: Path, threads: int, *, spinning: bool = False, parallel: bool = False) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # the default, said aloud
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = threads if parallel else 1
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL if parallel else ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run(None, {self.input_name: x.contiguous().numpy()})
        return torch.from_numpy(logits).float()


def onnx_variant(path: str, onnx_file: Path, input_size, workdir: Path) -> Path:
    """The ONNX file that `path` runs: the export itself, or its fp16 conversion or int8 quantisation."""
    if path == "onnxruntime fp16":
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        out = workdir / "fp16.onnx"
        onnx.save(convert_float_to_float16(onnx.load(str(onnx_file)), keep_io_types=True), str(out))
        return out
    if path not in ("onnxruntime int8 dynamic", "onnxruntime int8 static"):
        return onnx_file
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    out = workdir / f"{path.split()[-1]}.onnx"
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime.quantization's advice to pre-process the model, on every call
    try:
        if path == "onnxruntime int8 dynamic":
            quantize_dynamic(str(onnx_file), str(out), weight_type=QuantType.QInt8)
        else:
            g = torch.Generator().manual_seed(2)  # not the compared batch's seed
            count, size = CALIBRATION
            batches = [{"input": torch.randn(size, *input_size, generator=g).numpy()} for _ in range(count)]

            class Batches(CalibrationDataReader):
                def __init__(self):
                    self.it = iter(batches)

                def get_next(self):
                    return next(self.it, None)

            quantize_static(
                str(onnx_file),
                str(out),
                Batches(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
    finally:
        root.setLevel(level)
    return out


def build_paths(name: str, model: torch.nn.Module, input_size, *, paths, batches, workdir: Path, threads, log):
    """(path name -> (callable on a batch, seconds it took to prepare), path -> why it cannot run here)."""
    made, failed = {}, {}
    onnx_file = None
    for path in paths:
        t0 = time.perf_counter()
        try:
            if path == "eager fp32":
                run = TorchRunner(model)
            elif path == "eager channels_last":
                run = TorchRunner(_copy(model), channels_last=True)
            elif path == "eager bf16":
                run = TorchRunner(_copy(model), amp_dtype=torch.bfloat16)
            elif path == "eager bf16+channels_last":
                run = TorchRunner(_copy(model), channels_last=True, amp_dtype=torch.bfloat16)
            elif path == "eager fused+channels_last":
                run = TorchRunner(fuse_batchnorm(model), channels_last=True)
            elif path == "torch.compile":
                compiled = torch.compile(_copy(model), dynamic=False)
                run = TorchRunner(compiled)
                for b in batches:  # compile now, one graph per batch size, so that timing sees none of it
                    run(torch.randn(b, *input_size))
            elif path in ONNX_PATHS:
                if onnx_file is None:  # one export for every ONNX path, counted in the first one's setup
                    about = {"model_name": name, "model_kwargs": {}, "input_size": list(input_size)}
                    desc = describe({**about, "classes": [], "model": {}})
                    onnx_file = export_onnx(model, desc, workdir / f"{name}.onnx")
                if path == "onnxruntime":
                    run = OnnxRunner(onnx_file)  # what `reslab predict` and `reslab eval` run
                else:
                    run = OrtSession(
                        onnx_variant(path, onnx_file, input_size, workdir),
                        threads,
                        spinning=path == "onnxruntime spinning",
                        parallel=path == "onnxruntime parallel",
                    )
                for b in batches:  # a session that cannot run its model fails here, not in the timing
                    run(torch.randn(b, *input_size))
            else:
                raise ValueError(path)
        except Exception as e:  # a path this machine or this ONNX Runtime cannot run is reported, not fatal
            if path in ("eager fp32", "onnxruntime") or isinstance(e, ValueError):
                raise
            failed[path] = f"failed to prepare: {type(e).__name__}: {str(e).strip().splitlines()[0][:160]}"
            log(f"  {path}: {failed[path]}")
            continue
        setup = time.perf_counter() - t0
        made[path] = (run, setup)
        log(f"  {path}: ready in {setup:.1f} s")
    return made, failed


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
    if not (args.bf16 or cpu_has_bf16()):
        for path in set(paths) & set(BF16_PATHS):
            skipped[path] = "no native bf16 on this CPU (emulated: several times slower); --bf16 measures it"
    if find_spec("onnxruntime") is None or find_spec("onnxscript") is None:
        for path in set(paths) & set(ONNX_PATHS):
            skipped[path] = "not installed: pip install -e '.[export]'"
    paths = [path for path in paths if path not in skipped]
    log(f"{name} at {'x'.join(map(str, input_size))}: preparing {', '.join(paths)}")
    with tempfile.TemporaryDirectory() as tmp:
        threads = args.threads or torch.get_num_threads()
        made, failed = build_paths(
            name, model, input_size, paths=paths, batches=(1, batch), workdir=Path(tmp), threads=threads, log=log
        )
        skipped.update(failed)
        g = torch.Generator().manual_seed(1)
        x1, xn = torch.randn(1, *input_size, generator=g), torch.randn(batch, *input_size, generator=g)
        reference = made["eager fp32"][0](xn)
        rows = {}
        for path, (run, setup) in made.items():
            out = run(xn)
            abs_diff = float((out - reference).abs().max())
            rows[path] = {
                "setup_s": setup,
                "abs_diff": abs_diff,
                "rel_diff": abs_diff / max(1.0, float(reference.abs().max())),
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
        f"{'path':<24} {'batch 1 ms':>10} {'speed-up':>8} {throughput:>15} {'speed-up':>8} "
        f"{'abs diff':>9} {'rel diff':>9} {'top-1':>6} {'setup s':>8}",
    ]
    for path, r in res["rows"].items():
        lines.append(
            f"{path:<24} {r['latency_ms']:>10.2f} {r['latency_speedup']:>8.2f} {r['throughput_img_s']:>15.1f} "
            f"{r['throughput_speedup']:>8.2f} {r['abs_diff']:>9.1e} {r['rel_diff']:>9.1e} "
            f"{100 * r['top1_agree']:>5.0f}% {r['setup_s']:>8.1f}"
            + ("" if r["correct"] else "  (beyond 1e-4: not exact)")
        )
    for path, why in res["skipped"].items():
        lines.append(f"{path:<24} skipped: {why}")
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
