"""Training and inference throughput of models under each precision / memory-format mode, as ratios against fp32
NCHW measured in the same run, plus each mode's peak memory above the interpreter's (each mode runs in its own
process so that its peak is its own); then how close each mode comes to the machine's arithmetic peak.

The peak is that of a 2048x2048 matrix product (GEMM) in fp32 and in bf16, measured in the same run before and after
the models (best of 5 after 2 warm-ups, each time; the larger is reported): GFLOP/s = 2 n^3 / seconds. A mode's
achieved GFLOP/s counts the model's forward multiply-adds per image (reslab's summary, torchvision's way of counting
GFLOPS: convolutions and linear layers) x 2 FLOPs, x 3 for training (forward, and a backward pass that costs about
two forwards), times images/s; bf16 modes are compared with the bf16 peak, fp32 modes with the fp32 peak.

    .venv/bin/python benchmarks/throughput.py                        # resnet20 at 1x28x28, the default recipe's batch
    .venv/bin/python benchmarks/throughput.py --models resnet8@28,d2l_resnet18@96 --steps 5
    .venv/bin/python benchmarks/throughput.py --roofline --json roofline.json   # the issue's list, a few minutes
    .venv/bin/python benchmarks/throughput.py --markdown roofline.json          # its table for the docs

A model is NAME@SIZE, NAME@CxSIZE or either with :BATCH (resnet50@3x224:16). Without C, the CIFAR and d2l networks
get 1 channel (reslab trains them on Fashion-MNIST) and the ImageNet ones the registry's 3. NAME/W1-W2-W3 gives the
stages other widths (`planes`): resnet8/32-64-128@24 is ResNet-8 twice as wide.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

MODES = {  # name -> (amp dtype, channels_last, torch.compile)
    "fp32": ("off", False, False),
    "fp32+channels_last": ("off", True, False),
    "bf16": ("bf16", False, False),
    "bf16+channels_last": ("bf16", True, False),
    # only when --modes names them: compiling costs tens of seconds per model and phase (reported apart)
    "fp32+channels_last+compile": ("off", True, True),
    "bf16+channels_last+compile": ("bf16", True, True),
}
DEFAULT_MODES = [name for name, (_, _, with_compile) in MODES.items() if not with_compile]
# the issue-27 list: ResNet-8/20/56 at 28 px (the default and best recipes train the first two), the d2l recipe's
# ResNet-18 at 96 px, ResNet-50 at 224 px at batch 16 (its fp32 training took 2.2 GB above the interpreter there, so
# batch 128 would need about 17 GB)
ROOFLINE = "resnet8@28,resnet20@28,resnet56@28,d2l_resnet18@96,resnet50@3x224:16"
# per phase; estimated at 3-4 minutes for the four modes of all five on the idle 2-core AMX Xeon (from the images/s
# measured before; not yet timed there: a run on the loaded machine at one thread took 6 minutes for two modes)
ROOFLINE_STEPS, ROOFLINE_MIN_TIME = 3, 2.0
FLOPS_PER_MAC = 2
TRAIN_PASSES = 3  # forward + backward (the backward computes gradients of inputs and of weights: two forwards' work)


def parse_model(spec: str, default_batch: int) -> dict:
    """'resnet50@3x224:16' -> {"model", "input_size": [C, H, W], "batch", "num_classes", "widths"}
    ('resnet8/32-64-128@24': widths [32, 64, 128], else None); ValueError if malformed."""
    from reslab.models import model_entry

    m = re.fullmatch(r"([\w.-]+?)(?:/(\d+(?:-\d+)*))?@(?:(\d+)x)?(\d+)(?::(\d+))?", spec.strip())
    if not m:
        raise ValueError(
            f"expected NAME@SIZE, NAME@CxSIZE, optionally /WIDTHS after NAME and :BATCH (e.g. resnet50@3x224:16, "
            f"resnet8/32-64-128@24), got {spec!r}"
        )
    name, widths, chans, size, batch = m.groups()
    entry = model_entry(name)  # a ReslabError naming the nearest names
    in_chans = int(chans) if chans else (1 if entry.family in ("cifar", "d2l") else entry.default_in_chans)
    return {
        "model": name,
        "input_size": [in_chans, int(size), int(size)],
        "batch": int(batch) if batch else default_batch,
        "num_classes": entry.default_num_classes,
        "widths": [int(w) for w in widths.split("-")] if widths else None,
    }


def label(m: dict) -> str:
    """The model's name in the tables: NAME, or NAME/W1-W2-W3 with other widths."""
    return m["model"] + ("/" + "-".join(map(str, m["widths"])) if m.get("widths") else "")


def model_kwargs(m: dict) -> dict:
    return {"widths": m["widths"]} if m.get("widths") else {}


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


def _timed(step, dev, *, steps: int, min_time: float) -> tuple[int, float]:
    """(steps run, seconds): at least `steps` calls and `min_time` seconds, after 2 warm-up calls."""
    for _ in range(2):
        step()
    _sync(dev)
    n, t0 = 0, time.perf_counter()
    while n < steps or time.perf_counter() - t0 < min_time:
        step()
        n += 1
    _sync(dev)
    return n, time.perf_counter() - t0


def measure(spec: dict, mode: str, *, steps: int, min_time: float, device: str) -> dict:
    """Images/s of training steps and of inference batches (see _timed), and the peak memory they needed."""
    import torch
    import torch.nn.functional as F

    from reslab.device import autocast, compiled, resolve_amp
    from reslab.models import build_model

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux: torch and the interpreter
    amp, channels_last, with_compile = MODES[mode]
    dev = torch.device(device)
    dtype = resolve_amp(amp, dev)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    batch, (c, h, w) = spec["batch"], spec["input_size"]
    torch.manual_seed(0)
    model = build_model(spec["model"], in_chans=c, num_classes=spec["num_classes"], **model_kwargs(spec))
    model = model.to(dev, memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, c, h, w, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, spec["num_classes"], (batch,), device=dev)
    net = compiled(model, dev) if with_compile else model  # as `reslab train --compile` compiles

    def train_step():
        with autocast(dev, dtype):
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer_step():
        with torch.inference_mode(), autocast(dev, dtype):
            net(x)

    result = {"mode": mode}
    for name, step in [("train", train_step), ("infer", infer_step)]:
        model.train(name == "train")
        if with_compile:  # the first call compiles this phase's graph: timed apart, never among the steps
            t0 = time.perf_counter()
            step()
            _sync(dev)
            result[f"{name}_compile_s"] = time.perf_counter() - t0
        n, seconds = _timed(step, dev, steps=steps, min_time=min_time)
        result[f"{name}_steps"] = n
        result[f"{name}_img_s"] = n * batch / seconds
    if dev.type == "cuda":
        result["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:  # what the model, its activations and the optimizer added on top of the interpreter and torch
        result["peak_mem_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    return result


def gemm_peak(precisions: list[str], *, n: int, device: str, repeats: int = 5) -> dict:
    """precision -> GFLOP/s of each of `repeats` n x n matrix products (2 n^3 FLOPs each), after 2 warm-ups."""
    import torch

    dev = torch.device(device)
    out = {}
    for precision in precisions:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
        g = torch.Generator().manual_seed(0)
        a, b = (torch.randn(n, n, generator=g).to(dev, dtype) for _ in range(2))
        for _ in range(2):
            torch.mm(a, b)
        _sync(dev)
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            _sync(dev)
            runs.append(FLOPS_PER_MAC * n**3 / (time.perf_counter() - t0) / 1e9)
        out[precision] = runs
    return out


def precision_of(mode: str) -> str:
    return "fp32" if MODES[mode][0] == "off" else "bf16"


def roofline_rows(models: list[dict], peak: dict[str, float]) -> None:
    """Add each mode's achieved GFLOP/s and fraction of its precision's peak to `models` (in place)."""
    for m in models:
        for r in m["modes"]:
            r["precision"] = precision_of(r["mode"])
            r["peak_gflop_s"] = peak[r["precision"]]
            for phase, passes in (("train", TRAIN_PASSES), ("infer", 1)):
                gflop_s = m["macs_per_image"] * FLOPS_PER_MAC * passes * r[f"{phase}_img_s"] / 1e9
                r[f"{phase}_gflop_s"] = gflop_s
                r[f"{phase}_fraction_of_peak"] = gflop_s / r["peak_gflop_s"]


def format_ratios(m: dict, *, steps: int, min_time: float, device: str) -> str:
    """One model's table: each mode's images/s and peak memory, and their ratios against the first mode's."""
    base = m["modes"][0]
    timed = f"{steps} timed steps" + (f" and at least {min_time:g} s" if min_time else "")
    lines = [
        f"model: {label(m)} at {'x'.join(map(str, m['input_size']))}, batch {m['batch']}, {timed} per mode, "
        f"device {device}; ratios against {base['mode']}",
        f"{'mode':<26} {'train img/s':>12} {'ratio':>6} {'infer img/s':>12} {'ratio':>6} {'peak MB':>8} {'ratio':>6}"
        f" {'compile s':>9}",
    ]
    for r in m["modes"]:
        compiling = f"{r['train_compile_s']:.1f}+{r['infer_compile_s']:.1f}" if "train_compile_s" in r else "-"
        lines.append(
            f"{r['mode']:<26} {r['train_img_s']:>12.0f} {r['train_img_s'] / base['train_img_s']:>6.2f} "
            f"{r['infer_img_s']:>12.0f} {r['infer_img_s'] / base['infer_img_s']:>6.2f} "
            f"{r['peak_mem_mb']:>8.0f} {r['peak_mem_mb'] / base['peak_mem_mb']:>6.2f} {compiling:>9}"
        )
    return "\n".join(lines)


def format_roofline(models: list[dict], peak: dict, gemm_size: int) -> str:
    """The GEMM peaks, then one row per model and mode: achieved GFLOP/s and % of its precision's peak."""
    peaks = "; ".join(
        f"{p} {v['best']:.1f} GFLOP/s (before {max(v['before']):.1f}, after {max(v['after']):.1f})"
        for p, v in peak.items()
    )
    lines = [
        f"GEMM peak ({gemm_size}x{gemm_size} matmul, best of {len(next(iter(peak.values()))['before'])} after 2 "
        f"warm-ups, before and after the models): {peaks}",
        f"FLOPs per image: multiply-adds x {FLOPS_PER_MAC}, x {TRAIN_PASSES} for training (forward and backward); "
        "% of the GEMM peak of the mode's precision",
        f"{'model':<14} {'input':>9} {'batch':>5} {'MACs/image':>13} {'mode':<26} {'train img/s':>11} {'GFLOP/s':>8} "
        f"{'%peak':>6} {'infer img/s':>11} {'GFLOP/s':>8} {'%peak':>6}",
    ]
    for m in models:
        for r in m["modes"]:
            lines.append(
                f"{label(m):<14} {'x'.join(map(str, m['input_size'])):>9} {m['batch']:>5} "
                f"{m['macs_per_image']:>13,} {r['mode']:<26} {r['train_img_s']:>11.1f} {r['train_gflop_s']:>8.1f} "
                f"{100 * r['train_fraction_of_peak']:>6.1f} {r['infer_img_s']:>11.1f} {r['infer_gflop_s']:>8.1f} "
                f"{100 * r['infer_fraction_of_peak']:>6.1f}"
            )
    return "\n".join(lines)


def format_markdown(doc: dict) -> str:
    """A --json file's roofline as a Markdown table, with the machine, the peaks and the command that measured it."""
    gemm = doc["gemm"]
    peaks = ", ".join(f"{p} {v['best']:,.0f} GFLOP/s" for p, v in gemm["peak_gflop_s"].items())
    lines = [
        f"Measured by `{doc['command']}` on {doc['machine']}; took {doc['took_s']:.0f} s.",
        f"GEMM peak ({gemm['n']}x{gemm['n']} matmul): {peaks}. Training FLOPs per image: multiply-adds x "
        f"{doc['flops_per_mac']} x {doc['train_passes']}; each mode against its precision's peak.",
        "",
        "| model | input | batch | GMACs/image | mode | train img/s | train GFLOP/s | % of peak | infer img/s "
        "| infer GFLOP/s | % of peak |",
        "|---|---|--:|--:|---|--:|--:|--:|--:|--:|--:|",
    ]
    for m in doc["models"]:
        for r in m["modes"]:
            lines.append(
                f"| {label(m)} | {'x'.join(map(str, m['input_size']))} | {m['batch']} | "
                f"{m['macs_per_image'] / 1e9:.4f} | {r['mode']} | {r['train_img_s']:,.1f} | {r['train_gflop_s']:.1f} | "
                f"{100 * r['train_fraction_of_peak']:.1f} | {r['infer_img_s']:,.1f} | {r['infer_gflop_s']:.1f} | "
                f"{100 * r['infer_fraction_of_peak']:.1f} |"
            )
    if doc.get("note"):
        lines += ["", doc["note"]]
    return "\n".join(lines)


def write_json(path: Path, doc: dict) -> None:
    """Atomically: a temporary file beside `path`, fsynced, renamed over it (an interrupted run keeps the old one)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(doc, indent=1) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _child(args: argparse.Namespace, *extra: str) -> dict:
    """Run this script with `extra` in a fresh process (its own peak memory and thread pools); its JSON line."""
    cmd = [sys.executable, __file__, *extra, "--device", args.device]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"throughput.py: {' '.join(extra)} failed:\n{out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=None, help="comma-separated NAME@[Cx]SIZE[:BATCH] (default: resnet20@28)")
    p.add_argument("--model", default="resnet20", help="one model (use --models for several)")
    p.add_argument("--size", type=int, default=28, help="--model's input height and width")
    p.add_argument("--batch", type=int, default=128, help="images per step (default: the default recipe's 128)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"timed steps per mode and phase, after 2 warm-up steps (default 30; --roofline: {ROOFLINE_STEPS})",
    )
    p.add_argument(
        "--min-time",
        type=float,
        default=None,
        help=f"and at least this many seconds per phase (default 0; --roofline: {ROOFLINE_MIN_TIME:g})",
    )
    p.add_argument(
        "--roofline",
        action="store_true",
        help=f"{ROOFLINE}, each phase {ROOFLINE_STEPS} steps and "
        f"{ROOFLINE_MIN_TIME:g} s; bf16 modes only where the CPU has native bf16 (unless --modes)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch threads in every process (default: torch's)")
    p.add_argument(
        "--modes",
        default=None,
        help="comma-separated modes, measured in this order (one may repeat, to alternate): "
        + ", ".join(MODES)
        + f" (default: {', '.join(DEFAULT_MODES)})",
    )
    p.add_argument("--gemm-size", type=int, default=2048, help="n of the n x n GEMM that measures the peak")
    p.add_argument("--json", default=None, metavar="PATH", help="also write every figure as JSON to PATH")
    p.add_argument("--markdown", metavar="PATH", help="print a --json file's roofline as Markdown")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one mode in this process, print JSON
    p.add_argument("--spec", help=argparse.SUPPRESS)  # internal: the model of --one, as JSON
    p.add_argument("--peak", help=argparse.SUPPRESS)  # internal: GEMM peaks of these precisions, print JSON
    args = p.parse_args()
    if args.markdown:
        try:
            print(format_markdown(json.loads(Path(args.markdown).read_text())))
        except (OSError, ValueError, KeyError, TypeError) as e:
            p.error(f"--markdown: {args.markdown!r} is not a JSON file written by --json ({type(e).__name__}: {e})")
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.one:
        print(
            json.dumps(
                measure(json.loads(args.spec), args.one, steps=args.steps, min_time=args.min_time, device=args.device)
            )
        )
        return
    if args.peak:
        print(json.dumps(gemm_peak(args.peak.split(","), n=args.gemm_size, device=args.device)))
        return

    from reslab.device import cpu_has_bf16, machine_line
    from reslab.errors import ReslabError
    from reslab.summary import model_macs

    started = time.perf_counter()
    note = None
    if args.roofline:  # what is given explicitly wins over the preset
        args.models = args.models or ROOFLINE
        args.steps = ROOFLINE_STEPS if args.steps is None else args.steps
        args.min_time = ROOFLINE_MIN_TIME if args.min_time is None else args.min_time
        if args.modes is None and args.device == "cpu" and not cpu_has_bf16():
            args.modes = "fp32,fp32+channels_last"
            note = "bf16 modes left out: this CPU emulates bf16 (several times slower than fp32); --modes adds them"
    args.steps = 30 if args.steps is None else args.steps
    args.min_time = 0.0 if args.min_time is None else args.min_time
    minimum = {
        "--steps": (args.steps, 1),
        "--batch": (args.batch, 1),
        "--gemm-size": (args.gemm_size, 1),
        "--min-time": (args.min_time, 0),
    }
    for flag, (value, least) in minimum.items():
        if value < least:
            p.error(f"{flag}: expected at least {least}, got {value}")
    modes = args.modes.split(",") if args.modes else DEFAULT_MODES
    if unknown := [m for m in modes if m not in MODES]:
        p.error(f"--modes: expected a comma-separated subset of {', '.join(MODES)}, got {', '.join(unknown)}")
    specs = args.models or f"{args.model}@{args.size}"
    try:
        models = [parse_model(s, args.batch) for s in specs.split(",")]
        for m in models:
            m["macs_per_image"] = model_macs(
                m["model"],
                tuple(m["input_size"]),
                num_classes=m["num_classes"],
                in_chans=m["input_size"][0],
                **model_kwargs(m),
            )
    except (ValueError, TypeError, ReslabError) as e:  # TypeError: widths for a network that takes none
        p.error(f"--models: {e}")

    print(f"machine: {machine_line()}", flush=True)
    precisions = sorted({precision_of(m) for m in modes}, key=["fp32", "bf16"].index)
    size = ["--gemm-size", str(args.gemm_size)]
    before = _child(args, "--peak", ",".join(precisions), *size)
    for m in models:
        spec = {k: m[k] for k in ("model", "input_size", "batch", "num_classes", "widths")}
        m["modes"] = []
        for mode in modes:
            timing = ["--steps", str(args.steps), "--min-time", str(args.min_time)]
            m["modes"].append(_child(args, "--one", mode, "--spec", json.dumps(spec), *timing))
        print(format_ratios(m, steps=args.steps, min_time=args.min_time, device=args.device), flush=True)
        print(flush=True)
    after = _child(args, "--peak", ",".join(precisions), *size)
    # the larger of two bests: a peak lowered by a moment's load would flatter every fraction
    peak = {q: {"before": before[q], "after": after[q], "best": max(before[q] + after[q])} for q in precisions}
    roofline_rows(models, {q: v["best"] for q, v in peak.items()})
    print(format_roofline(models, peak, args.gemm_size))
    if note:
        print(note)
    took = time.perf_counter() - started
    load = f", load average now {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    print(f"took {took:.0f} s{load}")
    if args.json:
        doc = {
            "machine": machine_line(),
            "command": " ".join(["benchmarks/throughput.py", *sys.argv[1:]]),
            "device": args.device,
            "threads": args.threads,
            "steps": args.steps,
            "min_time_s": args.min_time,
            "gemm": {"n": args.gemm_size, "flops": FLOPS_PER_MAC * args.gemm_size**3, "peak_gflop_s": peak},
            "flops_per_mac": FLOPS_PER_MAC,
            "train_passes": TRAIN_PASSES,
            "models": models,
            "note": note,
            "took_s": took,
        }
        write_json(Path(args.json), doc)


if __name__ == "__main__":
    main()
