"""Time to 91.4% Fashion-MNIST test accuracy with the default recipe, on this machine.

    python benchmarks/time_to_accuracy.py                  # the default recipe, once, then the verdict
    python benchmarks/time_to_accuracy.py --repeats 3      # three runs: mean, min and max of every time
    python benchmarks/time_to_accuracy.py --recipe best --target 0.94
    python benchmarks/time_to_accuracy.py --set model=resnet20 --set test_every=1   # a candidate recipe
    python benchmarks/time_to_accuracy.py --baseline       # also: throughput vs fp32 + NCHW (same steps, same model)
    python benchmarks/time_to_accuracy.py --smoke          # seconds, synthetic data: checks the script itself

Reports the machine (CPU model, cores, torch, bf16 support, load average before and after), the git commit, the
test accuracy of every epoch where it was evaluated with the wall time since fit() started, the time to the first
evaluation at or above --target, and where the time went: training steps, evaluation and checkpoints, and the rest
(data loading, building the model, run folder); plus the interpreter and torch start-up before the first fit().
Results are also written to OUTPUT/time_to_accuracy.json. The accuracy is the same in every repeat (CPU training is
deterministic); the times are not, so keep the machine otherwise idle (other processes on the same cores slow CPU
training many-fold) and compare the load averages.
"""

from __future__ import annotations

import time

T_PROCESS = time.perf_counter()  # before torch is imported: the whole command's wall time counts start-up

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    """The commit of this checkout, with '-dirty' where tracked files differ from it; 'unknown' outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "-uno"], cwd=ROOT, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip()[:12] + ("-dirty" if status.stdout.strip() else "")


def parse_sets(items: list[str]) -> dict:
    """--set KEY=VALUE pairs -> config overrides; VALUE is read as JSON where it parses (numbers, true, null)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set: expected KEY=VALUE, got {item!r}")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


def spread(values: list[float]) -> str:
    """'mean 101.2 s (min 99.0, max 104.1, n=3)'."""
    if len(values) == 1:
        return f"{values[0]:.1f} s (n=1)"
    return f"mean {statistics.mean(values):.1f} s (min {min(values):.1f}, max {max(values):.1f}, n={len(values)})"


def breakdown(history: list[dict], batch_size: int) -> dict:
    """Seconds spent in the optimizer steps, and in evaluating and checkpointing, summed over the run's epochs
    (an epoch's time_s is both; its images_per_s counts the steps alone)."""
    steps = [row["step"] - prev for row, prev in zip(history, [0] + [r["step"] for r in history[:-1]], strict=True)]
    train_s = sum(n * batch_size / row["images_per_s"] for n, row in zip(steps, history, strict=True))
    return {"train_s": train_s, "eval_and_checkpoint_s": sum(row["time_s"] for row in history) - train_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="default")
    p.add_argument("--target", type=float, default=0.914, help="test accuracy to reach (default 0.914)")
    p.add_argument("--repeats", type=int, default=1, help="runs of the recipe; times as mean, min and max (default 1)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field (repeatable)"
    )
    p.add_argument("--output", default=None, help="parent folder of the benchmark's run folders (default: a temp dir)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--baseline", action="store_true", help="also compare throughput with --amp off --no-channels-last")
    p.add_argument("--baseline-steps", type=int, default=60, help="steps per throughput measurement (default 60)")
    p.add_argument("--smoke", action="store_true", help="a few seconds on synthetic data: checks the script runs")
    args = p.parse_args()
    if args.repeats < 1:
        raise SystemExit(f"--repeats: expected a positive number of runs, got {args.repeats}")

    from reslab.config import make_config
    from reslab.device import describe_machine, machine_line
    from reslab.train import fit

    t_imported = time.perf_counter()
    output = Path(args.output or tempfile.mkdtemp(prefix="reslab-bench-"))
    common = dict(output=str(output), data_dir=args.data_dir, device=args.device, **parse_sets(args.set))
    if args.smoke:
        common.update(dataset="synthetic", val_size=200, train_subset=512, resize=8, epochs=2, batch_size=64)
        args.baseline_steps = min(args.baseline_steps, 8)
    info = describe_machine()
    commit = git_commit()
    print(f"machine: {machine_line(info)}", flush=True)
    print(f"commit: {commit}", flush=True)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs = []
    for i in range(args.repeats):
        config = make_config(args.recipe, name=f"tta-{args.recipe}-{stamp}-{i + 1}", **common)
        t0 = time.perf_counter()
        result = fit(config)
        fit_s = time.perf_counter() - t0
        hist = result.history
        reached = next((r for r in hist if r["test_acc"] is not None and r["test_acc"] >= args.target), None)
        runs.append(
            {
                "epochs": [
                    {k: r[k] for k in ("epoch", "train_loss", "val_acc", "test_acc", "elapsed_s", "images_per_s")}
                    for r in hist
                ],
                "time_to_target_s": reached["elapsed_s"] if reached else None,
                "fit_s": fit_s,
                **breakdown(hist, config.batch_size),
                "final_test_acc": result.test_acc,
                "images_per_s": result.images_per_s,
                "load_average_after": os.getloadavg()[0],
            }
        )
        print(f"run {i + 1}/{args.repeats}: {fit_s:.1f} s, test acc {result.test_acc:.4f}", flush=True)
    startup_s = t_imported - T_PROCESS  # the interpreter and the imports, before the first fit()
    whole_s = time.perf_counter() - T_PROCESS

    print()
    print(
        f"recipe {args.recipe!r}: {config.model}, {config.epochs} epochs, batch {config.batch_size}, {config.opt} "
        f"lr {config.lr:g} {config.sched}, amp {config.amp}, channels_last {config.channels_last}"
        + (f"; set {', '.join(args.set)}" if args.set else "")
    )
    for row in runs[0]["epochs"]:
        test = f"test acc {row['test_acc']:.4f}" if row["test_acc"] is not None else "test not evaluated"
        print(f"  epoch {row['epoch']}: {test} at {row['elapsed_s']:.1f} s (run 1)")
    times = [r["time_to_target_s"] for r in runs if r["time_to_target_s"] is not None]
    load = f"load average {info.get('load_average_1min', '?')} before, {os.getloadavg()[0]:.2f} after"
    if len(times) == len(runs):
        print(f"time to {100 * args.target:.1f}% test accuracy (from fit() start): {spread(times)}")
    else:
        finals = ", ".join(f"{100 * (r['final_test_acc'] or 0):.2f}%" for r in runs)
        print(
            f"{100 * args.target:.1f}% test accuracy NOT reached in {len(runs) - len(times)} of {len(runs)} runs "
            f"(final test accuracy {finals})"
        )
    print(f"  fit(): {spread([r['fit_s'] for r in runs])}")
    print(f"    training steps: {spread([r['train_s'] for r in runs])}")
    print(f"    evaluation and checkpoints: {spread([r['eval_and_checkpoint_s'] for r in runs])}")
    rest = [r["fit_s"] - r["train_s"] - r["eval_and_checkpoint_s"] for r in runs]
    print(f"    the rest (data, model, run folder): {spread(rest)}")
    print(f"  start-up before fit() (interpreter, torch import): {startup_s:.1f} s; whole command {whole_s:.1f} s")
    print(f"  {load}; commit {commit}")
    report = {
        "machine": info,
        "commit": commit,
        "recipe": args.recipe,
        "set": args.set,
        "config": dataclasses.asdict(config),
        "target": args.target,
        "runs": runs,
        "time_to_target_s": {"mean": statistics.mean(times), "min": min(times), "max": max(times), "n": len(times)}
        if times
        else None,
        "startup_s": startup_s,
        "whole_command_s": whole_s,
        "load_average_after": os.getloadavg()[0],
    }

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
