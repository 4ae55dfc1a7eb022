"""Images/s of training batches from an image folder (PNG files) against batches from uint8 tensors in memory.

    python benchmarks/data_pipeline.py                    # Fashion-MNIST's 10,000 test images written as PNG files
    python benchmarks/data_pipeline.py --workers 4 --epochs 3
    python benchmarks/data_pipeline.py --limit 64 --workers 0   # seconds: checks the script

The folder is a stand-in for a user's own images: Fashion-MNIST's test set written out as one PNG per image, in one
sub-folder per class (reslab.data.export_png_folder; the synthetic stand-in where Fashion-MNIST is not installed).
Measured in one run, as ratios against the first row:
- in-memory: an epoch of augmented training batches (padded crop and flip, batch 128) from the uint8 tensors;
- folder, decoded once: `load_imagefolder` decoding every PNG into tensors (what a folder that fits in memory
  costs, once, before training; its batches are then the in-memory row's);
- folder, streamed: an epoch of the same batches decoded from the PNG files by `--workers` processes (a folder too
  large for memory), after the up-front check of every file (its own row).
One run is one sample: rerun for the spread, on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def _epoch_rate(loader, epochs: int) -> float:
    """Training images per second over `epochs` full epochs (the first batch included: decoding starts cold)."""
    n = 0
    t0 = time.perf_counter()
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for x, _ in loader:
            n += len(x)
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", default=None, help="where to write the PNG folder (default: a temporary folder)")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST's folder (default: the usual search)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N test images")
    p.add_argument("--workers", type=int, default=2, help="decoding processes for the folder rows (default 2)")
    p.add_argument("--epochs", type=int, default=2, help="epochs timed for the batch rows (default 2)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args()

    import torch

    from reslab.data import BatchLoader, export_png_folder, find_data_dir, load_dataset, load_imagefolder
    from reslab.device import describe_machine, machine_line

    torch.set_num_threads(1)  # the loader's own work, one core: what the numbers compare is decoding against memory
    if args.data_dir or find_data_dir() is not None:
        ds, what = load_dataset("fashion-mnist", args.data_dir), "Fashion-MNIST test images"
    else:
        ds, what = load_dataset("synthetic", num_train=10, num_test=10000), "synthetic stand-in (no Fashion-MNIST)"
    n = len(ds.test_images) if args.limit is None else min(args.limit, len(ds.test_images))
    images, labels = ds.test_images[:n], ds.test_labels[:n]

    tmp = None
    if args.folder is None:
        tmp = tempfile.TemporaryDirectory(prefix="reslab-png-")
        args.folder = tmp.name
    folder = Path(args.folder)
    if sum(1 for _ in folder.rglob("*.png")) != n:
        t0 = time.perf_counter()
        export_png_folder(ds, folder, split="test", limit=n)
        print(f"wrote {n:,} PNG files to {folder} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    aug = dict(batch_size=args.batch, train=True, seed=0, crop_padding=2, hflip=True, mean=ds.mean, std=ds.std)
    rows = []
    rows.append(("in-memory (uint8 tensors)", _epoch_rate(BatchLoader(images, labels, **aug), args.epochs)))

    t0 = time.perf_counter()
    decoded = load_imagefolder(folder, image_size=28, in_chans=1, num_workers=args.workers, progress=False)
    rows.append(("folder, decoded once", n / (time.perf_counter() - t0)))
    # PNG is lossless and 28 -> 28 is no resize: the decoded set is the original, sorted by class folder
    same = sorted(decoded.train_images.flatten(1).tolist()) == sorted(images.flatten(1).tolist())

    t0 = time.perf_counter()
    streamed = load_imagefolder(
        folder, image_size=28, in_chans=1, num_workers=args.workers, max_memory_bytes=0, progress=False
    )
    rows.append(("folder, check every file", n / (time.perf_counter() - t0)))
    loader = BatchLoader(streamed.train_images, streamed.train_labels, **aug)
    rows.append((f"folder, streamed ({args.workers} workers)", _epoch_rate(loader, args.epochs)))

    base = rows[0][1]
    print(f"machine: {machine_line()}")
    print(
        f"data: {n:,} {what} as PNG in {folder}; batch {args.batch}, padded crop + flip, {args.epochs} epochs per "
        f"batch row; decoded images identical to the originals: {'yes' if same else 'NO'}"
    )
    print(f"{'path':<32} {'images/s':>12} {'ratio':>7}")
    for name, rate in rows:
        print(f"{name:<32} {rate:>12,.0f} {rate / base:>7.2f}")
    if args.json:
        result = {"machine": describe_machine(), "images": n, "rows": {k: v for k, v in rows}, "identical": same}
        Path(args.json).write_text(json.dumps(result, indent=2))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
