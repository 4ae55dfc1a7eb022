"""Training and inference throughput of one model under each precision / memory-format mode, as ratios against
fp32 NCHW measured in the same run, plus each mode's peak memory above the interpreter's (each mode runs in its own
process so that its peak is its own).

    .venv/bin/python benchmarks/throughput.py                       # resnet20 at 1x28x28, the default recipe's model
    .venv/bin/python benchmarks/throughput.py --model d2l_resnet18 --size 96 --steps 5
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

MODES = {  # name -> (amp dtype, channels_last)
    "fp32": ("off", False),
    "fp32+channels_last": ("off", True),
    "bf16": ("bf16", False),
    "bf16+channels_last": ("bf16", True),
}


def measure(model_name: str, mode: str, *, size: int, batch: int, steps: int, device: str) -> dict:
    """Images/s of `steps` training steps and of `steps` inference batches after 2 warm-up steps of each."""
    import torch
    import torch.nn.functional as F

    from reslab.device import autocast, resolve_amp
    from reslab.models import build_model

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux: torch and the interpreter
    amp, channels_last = MODES[mode]
    dev = torch.device(device)
    dtype = resolve_amp(amp, dev)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = build_model(model_name, in_chans=1, num_classes=10).to(dev, memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 1, size, size, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def train_step():
        with autocast(dev, dtype):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer_step():
        with torch.inference_mode(), autocast(dev, dtype):
            model(x)

    result = {"mode": mode}
    for name, step in [("train", train_step), ("infer", infer_step)]:
        model.train(name == "train")
        for _ in range(2):
            step()
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        result[f"{name}_img_s"] = steps * batch / (time.perf_counter() - t0)
    if dev.type == "cuda":
        result["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:  # what the model, its activations and the optimizer added on top of the interpreter and torch
        result["peak_mem_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--size", type=int, default=28, help="input height and width (1 channel)")
    p.add_argument("--batch", type=int, default=128, help="images per step (default: the default recipe's 128)")
    p.add_argument("--steps", type=int, default=30, help="timed steps per mode (after 2 warm-up steps)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ", ".join(MODES))
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one mode in this process, print JSON
    args = p.parse_args()
    if args.one:
        print(
            json.dumps(
                measure(args.model, args.one, size=args.size, batch=args.batch, steps=args.steps, device=args.device)
            )
        )
        return

    rows = []
    for mode in args.modes.split(","):
        cmd = [
            sys.executable,
            __file__,
            "--one",
            mode,
            "--model",
            args.model,
            "--size",
            str(args.size),
            "--batch",
            str(args.batch),
            "--steps",
            str(args.steps),
            "--device",
            args.device,
        ]
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
    base = rows[0]
    from reslab.device import machine_line

    print(f"machine: {machine_line()}")
    print(
        f"model: {args.model} at 1x{args.size}x{args.size}, batch {args.batch}, {args.steps} timed steps per mode, "
        f"device {args.device}; ratios against {base['mode']}"
    )
    print(f"{'mode':<20} {'train img/s':>12} {'ratio':>6} {'infer img/s':>12} {'ratio':>6} {'peak MB':>8} {'ratio':>6}")
    for r in rows:
        print(
            f"{r['mode']:<20} {r['train_img_s']:>12.0f} {r['train_img_s'] / base['train_img_s']:>6.2f} "
            f"{r['infer_img_s']:>12.0f} {r['infer_img_s'] / base['infer_img_s']:>6.2f} "
            f"{r['peak_mem_mb']:>8.0f} {r['peak_mem_mb'] / base['peak_mem_mb']:>6.2f}"
        )


if __name__ == "__main__":
    main()
