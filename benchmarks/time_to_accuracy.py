"""Time to 91.4% Fashion-MNIST test accuracy with the default recipe, on this machine.

    python benchmarks/time_to_accuracy.py                 # the default recipe, then the verdict
    python benchmarks/time_to_accuracy.py --baseline      # also: throughput vs fp32 + NCHW (same steps, same model)
    python benchmarks/time_to_accuracy.py --recipe d2l    # the seeds' configuration instead
    python benchmarks/time_to_accuracy.py --smoke         # seconds, synthetic data: checks the script itself

Reports the machine (CPU model, cores, torch, bf16 support), the test accuracy after every epoch with the wall time
since fit() started, the time to the first epoch at or above --target, and the whole run including interpreter and
torch start-up. Results are also written to OUTPUT/time_to_accuracy.json. One run is one sample (n=1): rerun it for
the spread, and keep the machine otherwise idle (other processes on the same cores slow CPU training many-fold).
"""

from __future__ import annotations

import time

T_PROCESS = time.perf_counter()  # before torch is imported: the whole command's wall time counts start-up

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="default")
    p.add_argument("--target", type=float, default=0.914, help="test accuracy to reach (default 0.914)")
    p.add_argument("--output", default=None, help="parent folder of the benchmark's run folders (default: a temp dir)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--baseline", action="store_true", help="also compare throughput with --amp off --no-channels-last")
    p.add_argument("--baseline-steps", type=int, default=60, help="steps per throughput measurement (default 60)")
    p.add_argument("--smoke", action="store_true", help="a few seconds on synthetic data: checks the script runs")
    args = p.parse_args()

    from reslab.config import make_config
    from reslab.runtime import describe_machine, machine_line
    from reslab.train import fit

    output = Path(args.output or tempfile.mkdtemp(prefix="reslab-bench-"))
    common = dict(output=str(output), data_dir=args.data_dir, device=args.device)
    if args.smoke:
        common.update(dataset="synthetic", val_size=200, train_subset=512, resize=8, epochs=2, batch_size=64)
        args.baseline_steps = min(args.baseline_steps, 8)
    info = describe_machine()
    print(f"machine: {machine_line(info)}", flush=True)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    config = make_config(args.recipe, name=f"tta-{args.recipe}-{stamp}", **common)
    t0 = time.perf_counter()
    result = fit(config)
    fit_s = time.perf_counter() - t0
    whole_s = time.perf_counter() - T_PROCESS
    reached = next((row for row in result.history if row["test_acc"] >= args.target), None)
    report = {
        "machine": info,
        "recipe": args.recipe,
        "config": config.to_dict(),
        "target": args.target,
        "epochs": [
            {k: row[k] for k in ("epoch", "train_loss", "val_acc", "test_acc", "elapsed_s", "images_per_s")}
            for row in result.history
        ],
        "time_to_target_s": reached["elapsed_s"] if reached else None,
        "fit_s": fit_s,
        "whole_command_s": whole_s,
        "final_test_acc": result.test_acc,
        "images_per_s": result.images_per_s,
    }

    print()
    print(
        f"recipe {args.recipe!r}: {config.model}, {config.epochs} epochs, batch {config.batch_size}, {config.opt} "
        f"lr {config.lr:g} {config.sched}, amp {config.amp}, channels_last {config.channels_last}"
    )
    for row in result.history:
        print(f"  epoch {row['epoch']}: test acc {row['test_acc']:.4f} at {row['elapsed_s']:.1f} s")
    if reached:
        print(
            f"time to {100 * args.target:.1f}% test accuracy: {reached['elapsed_s']:.1f} s (epoch {reached['epoch']}, "
            f"from fit() start); whole command {whole_s:.1f} s including start-up (n=1)"
        )
    else:
        print(
            f"{100 * args.target:.1f}% test accuracy NOT reached: final {100 * (result.test_acc or 0):.2f}% after "
            f"{fit_s:.1f} s; whole command {whole_s:.1f} s (n=1)"
        )

    if args.baseline:
        # the same model and data for the same number of steps: what bf16 autocast + channels_last buy
        speeds = {}
        for label, overrides in [("fp32, NCHW", dict(amp="off", channels_last=False)), (args.recipe, {})]:
            c = make_config(
                args.recipe,
                name=f"tta-speed-{label.replace(', ', '-')}-{stamp}",
                max_steps=args.baseline_steps,
                progress=False,
                **{**common, **overrides},
            )
            speeds[label] = fit(c).images_per_s
            print(f"  {label}: {speeds[label]:.0f} img/s over {args.baseline_steps} training steps", flush=True)
        ratio = speeds[args.recipe] / speeds["fp32, NCHW"]
        print(f"throughput: {args.recipe} recipe is {ratio:.2f}x fp32 + NCHW on this machine (n=1)")
        report["throughput_img_per_s"] = speeds
        report["throughput_ratio_vs_fp32_nchw"] = ratio

    path = output / "time_to_accuracy.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
