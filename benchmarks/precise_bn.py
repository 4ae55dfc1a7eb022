"""Validation accuracy with precise BatchNorm statistics from N training images, and what computing them costs.

    PYTHONPATH=src python benchmarks/precise_bn.py --seeds 0,1 --sizes 0,512,1024,2048,4096,8192
    PYTHONPATH=src python benchmarks/precise_bn.py --dataset imagefolder --data-dir DIR --model resnet8

Precise statistics leave the training untouched (the weights are bit for bit those of a run without them), so one
training run per seed serves every N: the run is trained once with --precise-bn 0, then its final weights are
evaluated on the validation split with the statistics recomputed from N training images (N = 0: the running
averages training accumulated), as `reslab train --precise-bn N` evaluates them. Prints one row per N: the
validation accuracy of each seed, their mean, and the seconds one computation of the statistics took. `--test`
also reports the test split (once N is chosen on validation: the test set only reports).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch

from reslab.config import make_config
from reslab.data import input_pipeline, load_dataset, make_loaders, make_splits
from reslab.data.splits import folder_options
from reslab.device import resolve_amp
from reslab.evaluate import evaluate
from reslab.precise_bn import PreciseBN
from reslab.train import fit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="default")
    p.add_argument("--dataset", default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seeds", default="0")
    p.add_argument("--sizes", default="0,512,1024,2048,4096,8192")
    p.add_argument("--test", action="store_true", help="also evaluate the test split")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (1 on a machine shared with other jobs)")
    a = p.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    if a.threads:
        torch.set_num_threads(a.threads)  # the evaluations too, not only fit
    rows = {n: {"val": [], "test": [], "seconds": []} for n in sizes}
    with tempfile.TemporaryDirectory() as out:
        for seed in [int(s) for s in a.seeds.split(",")]:
            config = make_config(
                a.recipe,
                dataset=a.dataset,
                data_dir=a.data_dir,
                model=a.model,
                epochs=a.epochs,
                seed=seed,
                threads=a.threads,
                precise_bn=0,
                output=out,
                name=f"seed{seed}",
                progress=False,
            )
            t0 = time.perf_counter()
            result = fit(config)
            print(f"seed {seed}: trained in {time.perf_counter() - t0:.0f} s", flush=True)
            model = result.model  # the running averages of training (precise_bn=0)
            data = (
                load_dataset(config.dataset, config.data_dir, **folder_options(config, None), progress=False)
                if (config.dataset == "imagefolder")
                else load_dataset(config.dataset, config.data_dir)
            )
            splits = make_splits(data, config)
            mean, std, crop = input_pipeline(config, data, None)
            device = next(model.parameters()).device
            loaders = make_loaders(splits, config, mean=mean, std=std, crop_size=crop, device=device)
            amp = resolve_amp(config.amp, device)
            for n in sizes:
                net = model
                if n:
                    precise = PreciseBN(model, copy.copy(loaders["train"]), n, amp_dtype=amp)
                    net = precise.network(result.step)
                    rows[n]["seconds"].append(precise.seconds)
                for split in ("val", "test") if a.test else ("val",):
                    if split in loaders:
                        acc = evaluate(net, loaders[split], num_classes=len(data.classes), amp_dtype=amp).accuracy
                        rows[n][split].append(acc)
                print(f"  N={n}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in rows[n].items() if v), flush=True)
    print("\nN       val acc per seed           mean     test mean  seconds per computation (mean)")
    for n, r in rows.items():
        per = " ".join(f"{v:.4f}" for v in r["val"])
        test = f"{statistics.mean(r['test']):.4f}" if r["test"] else "-"
        secs = f"{statistics.mean(r['seconds']):.2f}" if r["seconds"] else "-"
        print(f"{n:<7} {per:<26} {statistics.mean(r['val']):.4f}   {test:<9}  {secs}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
