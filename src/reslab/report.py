"""report.html: a run (or an experiment) at a glance, in one self-contained file that opens from disk.

    reslab report runs/resnet8-20261205-103000          # RUN/report.html (and mistakes.png, gradcam.png)
    reslab report runs/experiments/degradation          # every network's curves, the table and the verdict

A run's report holds its status, the learning curves (loss, accuracies, the learning rate of every step), the
confusion matrix and per-class accuracy, a grid of the model's most confident mistakes on the test split (the
validation split for data without one) with true label, predicted label and confidence, Grad-CAM overlays
(reslab.understand.cam) of a few of them for the predicted and the true class, the results `reslab eval` added, the
command and configuration, the machine, and links to the checkpoints. Images are inlined as base64 PNG data URIs and
a Content-Security-Policy forbids every other source, so the page loads nothing from anywhere.

`reslab train` writes it as epochs finish (curves and configuration only, at most 5% of the training time: an update
waits until 20 times its own cost has passed since the previous one, the first 10 s) and in full at the end;
`reslab eval` adds its results. Besides report.html the run folder gets report.json (the machine, the commands, the
analysis and the eval results the page is made from), mistakes.png and gradcam.png; every file is written
atomically.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import functools
import html
import io
import json
import math
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reslab import distributed as D
from reslab.atomic import write_bytes
from reslab.checkpoint import CHECKPOINT_NAMES, read_checkpoint, trained_model
from reslab.config import TrainConfig
from reslab.data import BatchLoader, folder_options, input_pipeline, load_dataset, make_splits, prepare_batch
from reslab.data.transforms import center_crop
from reslab.device import autocast, describe_machine, machine_line, pick_device, resolve_amp
from reslab.errors import ReslabError
from reslab.evaluate import tta_logits
from reslab.optim import Schedule
from reslab.plots import pyplot
from reslab.tblog import TensorBoardLog, final_metrics
from reslab.understand import grad_cam
from reslab.understand.cam import jet

REPORT, STATE, MISTAKES, GRADCAM = "report.html", "report.json", "mistakes.png", "gradcam.png"
MISTAKES_SHOWN = 24  # the grid: 4 rows of 6
CAMS_SHOWN = 4  # Grad-CAM rows: the most confident mistakes
ANALYSIS_BATCH = 256  # images per forward pass when a split is scored for the report
LIVE_OVERHEAD = 0.05  # the per-epoch update may cost at most this fraction of the training time
FIRST_UPDATE_S = 10.0  # and comes first after this long (an update costs about 0.3 s): a run of seconds is not watched
REFRESH_S = 30  # a report of a run in progress reloads itself this often in a browser


# ----------------------------------------------------------------------------------------------------------------------
# report.json: what the page is made from besides config.json and metrics.csv


def read_state(run_dir: Path) -> dict[str, Any]:
    try:
        state = json.loads((Path(run_dir) / STATE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def write_state(run_dir: Path, state: dict[str, Any]) -> None:
    write_bytes(Path(run_dir) / STATE, (json.dumps(state, indent=1) + "\n").encode())


def _as_command(argv: Sequence[str]) -> str | None:
    """The command line that started this process, when it was `reslab ...` (not Python calling fit())."""
    program = Path(argv[0]) if argv else Path()
    if not (program.name == "reslab" or (program.name == "__main__.py" and program.parent.name == "reslab")):
        return None
    return shlex.join(["reslab", *argv[1:]])


# ----------------------------------------------------------------------------------------------------------------------
# what `reslab train` calls


class RunWatch:
    """What a training run leaves to be watched by: report.html as epochs finish and at the end, and TensorBoard
    events with --log tensorboard. Every rank makes one; only rank 0 writes."""

    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path,
        *,
        is_main: bool,
        step: int,
        steps_per_epoch: int,
        world_size: int,
        say: Callable[..., None] = print,
    ):
        self.config, self.run_dir, self.enabled, self.say = config, Path(run_dir), is_main, say
        self.tb: TensorBoardLog | None = None
        self._next_update = time.perf_counter() + FIRST_UPDATE_S
        error = None
        if is_main:
            try:
                if config.log == "tensorboard":
                    self.tb = TensorBoardLog(run_dir, step=step)
                state = read_state(run_dir)
                command = _as_command(sys.argv)
                commands = state.get("commands", [])
                state.update(
                    machine=describe_machine(),
                    commands=commands + [command] if command and command not in commands[-1:] else commands,
                    schedule={"steps_per_epoch": steps_per_epoch, "world_size": world_size},
                )
                write_state(run_dir, state)
            except ReslabError as e:
                error = str(e)
        error = D.broadcast_object(error)  # a missing tensorboard stops every rank, not rank 0 alone
        if error is not None:
            raise ReslabError(error)

    @property
    def on_step(self) -> Callable[[int, torch.Tensor, float], None] | None:
        """train_one_epoch's per-step callback, or None when nothing is logged per step."""
        return self.tb.on_step if self.tb is not None else None

    def first_batch(self, loader: BatchLoader, epoch: int, mean: Sequence[float], std: Sequence[float]) -> None:
        """A fresh run's first training batch into TensorBoard, as the model sees it (augmented)."""
        if self.tb is None:
            return
        loader.set_epoch(epoch)
        batches = loader.iter_from(len(loader) - 1)  # the epoch's last batch: one batch decoded, not a pipeline
        x, _ = next(batches)
        batches.close()
        self.tb.images(x, mean, std, step=0)

    def epoch_end(self, history: Sequence[dict[str, Any]]) -> None:
        """After an epoch: its scalars to TensorBoard, and report.html with the curves, when the last update is old
        enough that this one keeps the overhead under LIVE_OVERHEAD (the first after FIRST_UPDATE_S)."""
        if not self.enabled:
            return
        if self.tb is not None:
            self.tb.epoch_end(history[-1])
        now = time.perf_counter()
        if now < self._next_update or history[-1]["epoch"] >= self.config.epochs:
            return  # too soon after the last update, or the last epoch: finish() writes the page next
        render_run(self.run_dir, config=self.config, history=history, live=True)
        cost = time.perf_counter() - now
        self._next_update = now + cost / LIVE_OVERHEAD

    def finish(
        self,
        history: Sequence[dict[str, Any]],
        *,
        completed: bool,
        model: nn.Module,
        classes: Sequence[str],
        splits: Any,
        mean: Sequence[float],
        std: Sequence[float],
        crop: int | None,
        amp_dtype: torch.dtype | None,
    ) -> None:
        """The end of fit(): the full report, with a finished run's confusion matrix, mistakes and Grad-CAMs."""
        if not self.enabled:
            return
        if completed:
            split = "test" if splits.test is not None else "val"
            chosen = splits.get(split)
            if chosen is not None:
                analysis = analyse(
                    model,
                    *chosen,
                    self.run_dir,
                    classes=classes,
                    split=split,
                    weights=f"the final weights (epoch {history[-1]['epoch']}, step {history[-1]['step']})",
                    pipe=Pipeline(mean, std, crop, self.config.resize),
                    amp_dtype=amp_dtype,
                    tta=self.config.tta,
                )
                state = read_state(self.run_dir)
                state["analysis"] = analysis
                write_state(self.run_dir, state)
        path = render_run(self.run_dir, config=self.config, history=history, live=False)
        self.say(f"report: {path}")

    def close(self, history: Sequence[dict[str, Any]], best_val_acc: float | None) -> None:
        """However the loop ended: the hyperparameters with the metrics reached, and the event file closed."""
        if self.tb is None:
            return
        if history:
            self.tb.hparams(self.config, final_metrics(history, best_val_acc), step=history[-1]["step"])
        self.tb.close()
        self.tb = None


# ----------------------------------------------------------------------------------------------------------------------
# the analysis: the confusion matrix, the most confident mistakes, their Grad-CAMs


@torch.inference_mode()
def _predictions(model: nn.Module, loader: BatchLoader, amp_dtype: torch.dtype | None, tta: str):
    """(predicted class, its softmax probability) of every image, in the loader's order, on the CPU."""
    preds, confs = [], []
    for x, _ in loader:
        with autocast(loader.device, amp_dtype):
            logits = tta_logits(model, x, tta)
        conf, pred = logits.float().softmax(1).max(1)
        preds.append(pred.cpu())
        confs.append(conf.cpu())
    return torch.cat(preds), torch.cat(confs)


def _display(images: Any, index: Sequence[int], crop: int | None) -> list[np.ndarray]:
    """The stored images at `index` as the model saw them (the centre crop), (H, W, 3) uint8 each."""
    out = []
    for i in index:
        a = center_crop(images[int(i)], crop).cpu()
        a = a[None] if a.dim() == 2 else a  # (C, H, W)
        a = a.expand(3, *a.shape[-2:]) if a.shape[0] == 1 else a
        out.append(a.permute(1, 2, 0).contiguous().numpy())
    return out


@dataclass(frozen=True)
class Pipeline:
    """What a stored image goes through before the model: resize, centre crop, normalisation."""

    mean: Sequence[float]
    std: Sequence[float]
    crop: int | None
    resize: int | None


def analyse(
    model: nn.Module,
    images: Any,
    labels: torch.Tensor,
    run_dir: Path,
    *,
    classes: Sequence[str],
    split: str,
    weights: str,
    pipe: Pipeline,
    amp_dtype: torch.dtype | None = None,
    tta: str = "none",
) -> dict[str, Any]:
    """Score every image of a split with `model` (on its own device), write mistakes.png and gradcam.png into
    run_dir, and return what report.json keeps: the split, the confusion matrix, the mistakes shown (index, true,
    predicted, confidence)."""
    device = next(model.parameters()).device
    mean, std, crop, resize = pipe.mean, pipe.std, pipe.crop, pipe.resize
    loader = BatchLoader(
        images, labels, batch_size=ANALYSIS_BATCH, train=False, resize=resize, crop_size=crop, mean=mean, std=std,
        device=device,
    )  # fmt: skip
    was_training = model.training
    model.eval()
    try:
        pred, conf = _predictions(model, loader, amp_dtype, tta)
    finally:
        model.train(was_training)
    true = labels.cpu()
    k = len(classes)
    confusion = torch.bincount(true * k + pred, minlength=k * k).view(k, k)
    wrong = (pred != true).nonzero()[:, 0]
    order = wrong[conf[wrong].argsort(descending=True, stable=True)][:MISTAKES_SHOWN].tolist()
    mistakes = [{"index": i, "true": int(true[i]), "pred": int(pred[i]), "conf": float(conf[i])} for i in order]
    shown = _display(images, order, crop)
    titles = [f"{classes[m['true']]} / {classes[m['pred']]} ({m['conf']:.2f})" for m in mistakes]
    files = {}
    if mistakes:
        write_bytes(run_dir / MISTAKES, _png(image_grid(shown, titles, cols=6)))
        files["mistakes"] = MISTAKES
        cams = _cam_rows(
            model, images, mistakes[:CAMS_SHOWN], shown[:CAMS_SHOWN], classes, mean, std, crop, resize, device
        )
        if cams is not None:
            write_bytes(run_dir / GRADCAM, _png(cams))
            files["gradcam"] = GRADCAM
    for name in (MISTAKES, GRADCAM):  # an earlier analysis's picture must not stand beside this one's numbers
        if name not in files.values():
            (run_dir / name).unlink(missing_ok=True)
    return {
        "split": split,
        "weights": weights,
        "tta": tta,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "classes": list(classes),
        "confusion": confusion.tolist(),
        "mistakes": mistakes,
        "files": files,
    }


def _cam_rows(model, images, mistakes, shown, classes, mean, std, crop, resize, device):
    """One row per mistake: the image, the Grad-CAM of the predicted class, the Grad-CAM of the true class."""
    if not mistakes:
        return None
    stored = torch.stack([images[m["index"]] for m in mistakes])
    x = prepare_batch(stored, resize_to=resize, mean=mean, std=std, crop=crop).to(device)
    try:
        pred = grad_cam(model, x, torch.tensor([m["pred"] for m in mistakes]))  # (B, H, W) in [0, 1]
        true = grad_cam(model, x, torch.tensor([m["true"] for m in mistakes]))
    except ReslabError:  # a model without forward_features/forward_head: no Grad-CAM, the rest of the report stands
        return None
    cells, titles = [], []
    for m, image, cam_pred, cam_true in zip(mistakes, shown, pred, true, strict=True):
        big = _enlarge(image)
        cells += [big, _blend(big, cam_pred), _blend(big, cam_true)]
        titles += [
            f"true {classes[m['true']]}",
            f"Grad-CAM of {classes[m['pred']]} ({m['conf']:.2f})",
            f"Grad-CAM of {classes[m['true']]}",
        ]
    return image_grid(cells, titles, cols=3, cell=160)


# ----------------------------------------------------------------------------------------------------------------------
# pictures: PIL for the image grids (fast), matplotlib for the curves


@functools.cache
def _font(size: int):
    from PIL import ImageFont

    try:  # matplotlib ships DejaVu Sans, so every reslab install has it
        import matplotlib

        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)
    except (ImportError, OSError):
        return ImageFont.load_default(size=size)


def _enlarge(image: np.ndarray, target: int = 128) -> np.ndarray:
    """Small images (28x28) enlarged by a whole factor, nearest neighbour, so that pixels stay pixels."""
    factor = max(1, target // max(image.shape[:2]))
    return image.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else image


def _blend(image: np.ndarray, cam: torch.Tensor, alpha: float = 0.5) -> np.ndarray:
    """The heat map (bilinear to the image's size) over the image, 'jet' colours, as uint8 (H, W, 3)."""
    h, w = image.shape[:2]
    heat = F.interpolate(cam[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    mixed = (1 - alpha) * image.astype(np.float64) / 255 + alpha * jet(heat.clamp(0, 1).numpy())
    return (mixed * 255).round().astype(np.uint8)


def _wrap(title: str, font, width: int) -> list[str]:
    """A title on as few lines as fit `width` pixels, broken at spaces."""
    lines: list[str] = []
    for word in title.split(" "):
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def image_grid(images: Sequence[np.ndarray], titles: Sequence[str], *, cols: int, cell: int = 128, font_size: int = 12):
    """d2l's show_images as one PIL image: each (H, W, 3) uint8 image under its title, `cols` to a row."""
    from PIL import Image, ImageDraw

    font, pad = _font(font_size), 6
    line = font_size + 3
    tiles = []
    for image in images:
        tile = Image.fromarray(_enlarge(image, cell))
        if max(tile.size) > cell:
            tile.thumbnail((cell, cell), Image.Resampling.LANCZOS)
        tiles.append(tile)
    wrapped = [_wrap(t, font, cell + 2 * pad - 4) for t in titles]
    text_h = line * max((len(w) for w in wrapped), default=1)
    rows = math.ceil(len(tiles) / cols)
    cw, ch = cell + 2 * pad, cell + text_h + 2 * pad
    canvas = Image.new("RGB", (cols * cw, rows * ch), "white")
    draw = ImageDraw.Draw(canvas)
    for n, (tile, lines) in enumerate(zip(tiles, wrapped, strict=True)):
        x0, y0 = (n % cols) * cw, (n // cols) * ch
        for j, text in enumerate(lines):
            draw.text((x0 + cw / 2, y0 + pad + j * line), text, fill=(20, 20, 20), font=font, anchor="mt")
        canvas.paste(tile, (x0 + (cw - tile.width) // 2, y0 + pad + text_h + (cell - tile.height) // 2))
    return canvas


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _figure_png(fig) -> bytes:
    plt = pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _values(history: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in history:
        v = row.get(key)
        if isinstance(v, int | float) and math.isfinite(v):
            xs.append(float(row["epoch"]))
            ys.append(float(v))
    return xs, ys


def curves_png(
    history: Sequence[dict[str, Any]], lr_curve: tuple[list[float], list[float]] | None, *, epochs: int | None = None
) -> bytes:
    """Loss, accuracies and the learning rate per epoch; `lr_curve` (epochs, lr): the schedule at every step.
    `epochs`: the run's length, the x axes' extent (a run in progress shows how far it has come)."""
    plt = pyplot()
    # a fixed layout: matplotlib's constrained layout doubles the cost of this figure, drawn as epochs finish
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(13, 3.6))
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.14, top=0.91, wspace=0.2)
    ax_loss.plot(*_values(history, "train_loss"), "o-", color="C0", label="train")
    ax_loss.set_title("loss (cross-entropy, training)")
    for key, label, color in (("train_acc", "train", "C0"), ("val_acc", "val", "C1"), ("test_acc", "test", "C2")):
        xs, ys = _values(history, key)
        if xs:
            ax_acc.plot(xs, [100 * y for y in ys], "o-", color=color, label=label)
    ax_acc.set_title("accuracy (%)")
    if lr_curve is not None:
        done = history[-1]["epoch"] if history else 0
        xs, ys = lr_curve
        ax_lr.plot([x for x in xs if x <= done], [y for x, y in zip(xs, ys, strict=True) if x <= done], color="C3")
        ax_lr.plot(xs, ys, color="C3", alpha=0.3, label="schedule")
    else:
        ax_lr.plot(*_values(history, "lr"), "o-", color="C3")
    ax_lr.set_title("learning rate")
    last = max([epochs or 0, *(row["epoch"] for row in history)])
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.set_xlim(0, last + 0.2)
        if last <= 12:  # whole epochs only: one epoch should not get ticks at 0.96, 0.98, ...
            ax.set_xticks(range(last + 1))
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    return _figure_png(fig)


def _lr_curve(config: TrainConfig, schedule: dict[str, Any] | None) -> tuple[list[float], list[float]] | None:
    """The learning rate of every step (at most 500 points), a pure function of the step."""
    if not schedule:
        return None
    spe = int(schedule["steps_per_epoch"])
    sched = Schedule.for_run(config, steps_per_epoch=spe, world_size=int(schedule["world_size"]))
    total = config.epochs * spe
    steps = sorted({round(i * total / 500) for i in range(501)}) if total > 500 else range(total + 1)
    return [s / spe for s in steps], [sched(min(s, total - 1)) for s in steps]


# ----------------------------------------------------------------------------------------------------------------------
# the page


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1240px;padding:16px 24px;
color:#1d1d1f;background:#fff}
h1{font-size:22px;margin:4px 0}h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #ddd;padding-bottom:3px}
.status{padding:8px 12px;border-radius:6px;background:#eef5ee;margin:8px 0}.status.live{background:#fff6e0}
.numbers span{display:inline-block;margin:0 18px 6px 0}.numbers b{font-size:18px}
img{max-width:100%;height:auto;display:block;margin:6px 0}
table{border-collapse:collapse;margin:6px 0}td,th{padding:2px 8px;border:1px solid #e3e3e3;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}.cm td{text-align:center;min-width:34px}
.cm th{font-weight:normal;font-size:12px}.changed{font-weight:bold}pre{background:#f6f6f6;padding:8px;
overflow-x:auto;white-space:pre-wrap}.bar{display:inline-block;height:10px;background:#4c8bd6;vertical-align:middle}
small,.muted{color:#666}
"""


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _page(title: str, body: list[str], *, refresh: bool) -> str:
    meta = f'<meta http-equiv="refresh" content="{REFRESH_S}">' if refresh else ""
    # nothing but inline styles and data: images may load: the page needs no network, and can reach none
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">{meta}'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _read_history(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.csv's rows with numbers as numbers (an empty cell, a split not evaluated that epoch, is None)."""
    try:
        with open(run_dir / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return []

    def number(v: str) -> float | int | None:
        if v in ("", None):
            return None
        try:
            return int(v)
        except ValueError:
            try:
                return float(v)
            except ValueError:
                return None

    return [{k: number(v) for k, v in row.items()} for row in rows]


def _read_config(run_dir: Path) -> TrainConfig | None:
    try:
        return TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    except (OSError, ValueError, TypeError, ReslabError):
        return None


def equivalent_command(config: TrainConfig) -> str:
    """`reslab train` with the flags of every setting that differs from the defaults: the run, again."""
    defaults, parts = TrainConfig().to_dict(), ["reslab", "train"]
    for key, value in config.to_dict().items():
        if key in ("resume", "progress", "model_kwargs") or value == defaults[key] or value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{key.replace('_', '-')}")
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _status(config: TrainConfig | None, history: Sequence[dict[str, Any]], run_dir: Path, live: bool) -> str:
    now = time.strftime("%Y-%m-%d %H:%M:%S")
    epochs = config.epochs if config is not None else "?"
    done = history[-1]["epoch"] if history else 0
    step = f", step {history[-1]['step']}" if history else ""
    if live:
        what = f"training: epoch {done} of {epochs} done{step}; this page reloads itself every {REFRESH_S} s"
    elif config is not None and done >= config.epochs:
        what = f"finished: {done} of {epochs} epochs{step}"
    else:
        what = f"stopped after epoch {done} of {epochs}{step}; continue with: reslab train --resume {run_dir}"
    return f'<div class="status{" live" if live else ""}">{html.escape(what)} <small>(updated {now})</small></div>'


def _numbers(history: Sequence[dict[str, Any]]) -> str:
    if not history:
        return '<p class="muted">No epoch has finished yet.</p>'
    last = history[-1]
    vals = [v for v in (row.get("val_acc") for row in history) if v is not None]
    items = [
        ("test accuracy", _pct(last.get("test_acc"))),
        ("best val accuracy", _pct(max(vals)) if vals else "-"),
        ("train loss", f"{last['train_loss']:.4f}" if last.get("train_loss") is not None else "-"),
        ("images/s", f"{last['images_per_s']:,.0f}" if last.get("images_per_s") is not None else "-"),
        ("elapsed", f"{last['elapsed_s'] / 60:.1f} min" if last.get("elapsed_s") is not None else "-"),
    ]
    return '<div class="numbers">' + "".join(f"<span>{k}: <b>{v}</b></span>" for k, v in items) + "</div>"


def _confusion_html(confusion: Sequence[Sequence[int]], classes: Sequence[str]) -> str:
    """The confusion matrix as a table (rows: true class, columns: predicted), cells shaded by the row fraction, and
    the per-class accuracy (recall) beside it."""
    rows = ['<table class="cm"><tr><th>true \\ predicted</th>']
    rows += [f"<th>{html.escape(c)}</th>" for c in classes]
    rows.append("<th>accuracy</th></tr>")
    for i, name in enumerate(classes):
        total = sum(confusion[i])
        cells = []
        for j, count in enumerate(confusion[i]):
            frac = count / total if total else 0.0
            colour = f"rgba(40,110,200,{frac:.3f})" if i == j else f"rgba(215,60,40,{min(1.0, 2 * frac):.3f})"
            ink = "#fff" if frac > 0.5 else "#111"
            cells.append(f'<td style="background:{colour};color:{ink}">{count if count else ""}</td>')
        acc = confusion[i][i] / total if total else None
        bar = f'<span class="bar" style="width:{round(60 * (acc or 0))}px"></span>'
        rows.append(f"<tr><th>{html.escape(name)}</th>{''.join(cells)}<td class='n'>{_pct(acc)} {bar}</td></tr>")
    correct = sum(confusion[i][i] for i in range(len(classes)))
    total = sum(map(sum, confusion))
    rows.append(f"</table><p>{correct:,} of {total:,} correct: <b>{_pct(correct / max(total, 1))}</b></p>")
    return "".join(rows)


def _analysis_html(run_dir: Path, analysis: dict[str, Any] | None, live: bool) -> list[str]:
    if analysis is None:
        why = "at the end of the run" if live else "by `reslab report` (the run has not finished)"
        return [
            "<h2>Confusion matrix, mistakes and Grad-CAM</h2>",
            f'<p class="muted">Written {html.escape(why)}.</p>',
        ]
    split, classes = analysis["split"], analysis["classes"]
    tta = "" if analysis.get("tta", "none") == "none" else f", test-time augmentation {analysis['tta']}"
    of = f"{html.escape(analysis['weights'])} on the {split} split{tta} ({html.escape(analysis['when'])})"
    body = [f"<h2>Confusion matrix and per-class accuracy</h2><p class='muted'>Of {of}.</p>"]
    body.append(_confusion_html(analysis["confusion"], classes))
    body.append(f"<h2>Most confident mistakes ({split})</h2>")
    files = analysis.get("files", {})
    if "mistakes" in files and (run_dir / files["mistakes"]).is_file():
        body.append(
            f"<p class='muted'>The {len(analysis['mistakes'])} {split} images the model got wrong with the highest "
            f"confidence: true / predicted (softmax probability of the prediction). Also in "
            f"<a href='{quote(files['mistakes'])}'>{html.escape(files['mistakes'])}</a>.</p>"
        )
        body.append(_img((run_dir / files["mistakes"]).read_bytes(), f"most confident mistakes on the {split} split"))
    else:
        body.append("<p>No mistakes: every image is classified correctly.</p>")
    if "gradcam" in files and (run_dir / files["gradcam"]).is_file():
        body.append("<h2>Grad-CAM of the most confident mistakes</h2>")
        body.append(
            "<p class='muted'>Where the evidence for the predicted class (middle) and for the true class (right) "
            "lies (Selvaraju et al. 2017, at the last convolutional stage; red: most).</p>"
        )
        body.append(_img((run_dir / files["gradcam"]).read_bytes(), "Grad-CAM overlays of the mistakes"))
    return body


def _evals_html(evals: Sequence[dict[str, Any]]) -> list[str]:
    if not evals:
        return []
    body = ["<h2>Evaluations (reslab eval)</h2><table><tr><th>when</th><th>checkpoint</th><th>split</th>"
            "<th>test-time augmentation</th><th>accuracy</th><th>images</th></tr>"]  # fmt: skip
    for e in evals:
        epoch = f" (epoch {e['epoch']})" if e.get("epoch") is not None else ""
        body.append(
            f"<tr><td>{html.escape(e['when'])}</td><td>{html.escape(e['checkpoint'])}{epoch}</td>"
            f"<td>{html.escape(e['split'])}</td><td>{html.escape(e['tta'])}</td>"
            f"<td class='n'>{_pct(e['accuracy'])}</td><td class='n'>{e['total']:,}</td></tr>"
        )
    body.append("</table>")
    last = evals[-1]
    body.append(f"<details><summary>Per class, the last evaluation ({html.escape(last['when'])})</summary>")
    body.append(_confusion_html(last["confusion"], last["classes"]) + "</details>")
    return body


def _config_html(config: TrainConfig | None, commands: Sequence[str]) -> list[str]:
    body = ["<h2>Command and configuration</h2>"]
    if commands:
        body.append("<p>As run:</p><pre>" + html.escape("\n".join(commands)) + "</pre>")
    if config is None:
        return body + ['<p class="muted">No config.json in this folder.</p>']
    body.append("<p>The same run from the defaults:</p><pre>" + html.escape(equivalent_command(config)) + "</pre>")
    defaults = TrainConfig().to_dict()
    rows = []
    for key, value in config.to_dict().items():
        changed = ' class="changed"' if value != defaults[key] else ""
        rows.append(f"<tr{changed}><td>{key}</td><td>{html.escape(json.dumps(value))}</td></tr>")
    body.append("<details><summary>Every setting (bold: not the default)</summary><table>")
    return body + rows + ["</table></details>"]


def _files_html(run_dir: Path) -> list[str]:
    rows = []
    names = [*CHECKPOINT_NAMES, "config.json", "metrics.csv", "curves.png", "confusion_matrix.png", MISTAKES, GRADCAM]
    for name in names + [STATE]:
        p = run_dir / name
        if p.is_file():
            st = p.stat()
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(st.st_mtime))
            rows.append(
                f"<tr><td><a href='{quote(name)}'>{html.escape(name)}</a></td>"
                f"<td class='n'>{st.st_size / 1e6:.2f} MB</td><td>{when}</td></tr>"
            )
    events = sorted(run_dir.glob("events.out.tfevents.*"))
    extra = (
        f"<p>TensorBoard: {len(events)} event file(s) here; <code>tensorboard --logdir {html.escape(str(run_dir))}"
        "</code></p>"
        if events
        else ""
    )
    return ["<h2>Files</h2><table><tr><th>file</th><th>size</th><th>modified</th></tr>", *rows, "</table>", extra]


def render_run(
    run_dir: str | Path,
    *,
    config: TrainConfig | None = None,
    history: Sequence[dict[str, Any]] | None = None,
    live: bool = False,
) -> Path:
    """Write run_dir/report.html from what the folder holds (config.json, metrics.csv, report.json and its
    pictures); `config` and `history` given by a training run in progress save reading them back. `live`: a run
    in progress (the page reloads itself, the analysis comes at the end)."""
    run_dir = Path(run_dir)
    config = config if config is not None else _read_config(run_dir)
    history = list(history) if history is not None else _read_history(run_dir)
    state = read_state(run_dir)
    title = f"{run_dir.name}: {config.model if config else 'run'}"
    body = [f"<h1>{html.escape(title)}</h1>", _status(config, history, run_dir, live), _numbers(history)]
    body.append("<h2>Learning curves</h2>")
    if history:
        lr_curve = _lr_curve(config, state.get("schedule")) if config is not None else None
        body.append(
            _img(
                curves_png(history, lr_curve, epochs=config and config.epochs),
                "loss, accuracy and learning rate per epoch",
            )
        )
    else:
        body.append('<p class="muted">The curves appear when the first epoch has finished.</p>')
    body += _analysis_html(run_dir, None if live else state.get("analysis"), live)
    body += _evals_html(state.get("evals", []))
    body += _config_html(config, state.get("commands", []))
    machine = state.get("machine")
    body.append("<h2>Machine</h2><p>" + (html.escape(machine_line(machine)) if machine else "not recorded") + "</p>")
    body += _files_html(run_dir)
    return write_bytes(run_dir / REPORT, _page(title, body, refresh=live).encode())


# ----------------------------------------------------------------------------------------------------------------------
# `reslab report` and `reslab eval`


def is_experiment(folder: Path) -> bool:
    return (folder / "results.json").is_file() and not any((folder / n).is_file() for n in CHECKPOINT_NAMES)


def report(path: str | Path, *, device: str = "auto", analysis: bool = True, say=print) -> Path:
    """`reslab report PATH`: a run folder's report.html (with a fresh analysis of its last.pt unless `analysis` is
    False or the data cannot be found: the earlier analysis, if any, then stays), or an experiment folder's."""
    folder = Path(path)
    if folder.is_file() and folder.suffix == ".pt":
        folder = folder.parent
    if not folder.is_dir():
        raise ReslabError(f"report: no folder at {str(path)!r} (expected a run folder or an experiment folder)")
    if is_experiment(folder):
        return render_experiment(folder)
    if not ((folder / "config.json").is_file() or any((folder / n).is_file() for n in CHECKPOINT_NAMES)):
        raise ReslabError(
            f"report: {str(folder)!r} is neither a run folder (config.json, last.pt) nor an experiment folder "
            "(results.json)"
        )
    if analysis:
        try:
            _analyse_checkpoint(folder, device)
        except ReslabError as e:
            say(f"note: no new analysis ({e}); the report keeps the earlier one, if any")
    return render_run(folder)


def _analyse_checkpoint(folder: Path, device: str) -> None:
    """The analysis of the run's final weights (last.pt, else best.pt), stored in report.json."""
    path = next((folder / n for n in ("last.pt", "best.pt") if (folder / n).is_file()), None)
    if path is None:
        raise ReslabError(f"{folder} holds no checkpoint (last.pt or best.pt)")
    ckpt = read_checkpoint(path)
    if "config" not in ckpt:
        raise ReslabError(f"{path} holds weights only, with no record of the data it was trained on")
    config = TrainConfig.from_dict(ckpt["config"])
    preprocess = ckpt.get("preprocess")
    data = load_dataset(config.dataset, config.data_dir, **folder_options(config, preprocess))
    trained = trained_model(ckpt)
    if len(data.classes) != len(trained.classes):
        raise ReslabError(f"{data.source} has {len(data.classes)} classes, the model in {path} {len(trained.classes)}")
    splits = make_splits(data, config)
    split = "test" if splits.test is not None else "val"
    if splits.get(split) is None:
        raise ReslabError(f"the data of {path} has no test or validation split")
    mean, std, crop = input_pipeline(config, data, preprocess)
    dev = pick_device(device)
    state = read_state(folder)
    if "schedule" not in state and "steps_per_epoch" in ckpt:
        state["schedule"] = {"steps_per_epoch": ckpt["steps_per_epoch"], "world_size": ckpt.get("world_size", 1)}
    state["analysis"] = analyse(
        trained.model.to(dev),
        *splits.get(split),
        folder,
        classes=trained.classes,
        split=split,
        weights=f"{path.name} (epoch {ckpt.get('epoch')}, step {ckpt.get('step')})",
        pipe=Pipeline(mean, std, crop, config.resize),
        amp_dtype=resolve_amp(config.amp, dev),
        tta=config.tta,
    )
    write_state(folder, state)


def record_eval(checkpoint: str | Path, evaluation: Any, *, tta: str | None) -> Path | None:
    """Add a `reslab eval` result (evaluate.CheckpointEval) to its run's report; None where the checkpoint is not
    in a run folder (a converted or exported file)."""
    path = Path(checkpoint)
    folder = path if path.is_dir() else path.parent
    if path.suffix == ".onnx" or not (folder / "config.json").is_file():
        return None
    name = path.name if path.is_file() else next((n for n in CHECKPOINT_NAMES if (folder / n).is_file()), "?")
    config = _read_config(folder)
    epoch = None
    with contextlib.suppress(ReslabError):
        epoch = read_checkpoint(folder / name).get("epoch")
    state = read_state(folder)
    state.setdefault("evals", []).append(
        {
            "when": time.strftime("%Y-%m-%d %H:%M:%S"),
            "checkpoint": name,
            "epoch": epoch,
            "split": evaluation.split,
            "tta": tta or (config.tta if config is not None else "none"),
            "accuracy": evaluation.accuracy,
            "total": evaluation.result.total,
            "classes": list(evaluation.classes),
            "confusion": evaluation.result.confusion.tolist(),
        }
    )
    write_state(folder, state)
    return render_run(folder)


# ----------------------------------------------------------------------------------------------------------------------
# an experiment folder (runs/experiments/NAME)


def _markdown_table(text: str) -> str:
    """A Markdown pipe table (table.md) as HTML; other lines as paragraphs."""
    out: list[str] = []
    rows: list[list[str]] = []

    def flush():
        if rows:
            head, *rest = rows
            out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>")
            out.extend(["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rest])
            out.append("</table>")
            rows.clear()

    for line in text.splitlines():
        s = line.strip()
        if s.startswith("|"):
            cells = [c.strip() for c in s.strip("|").split("|")]
            if not all(set(c) <= set(":-") for c in cells):  # the |---|---:| line
                rows.append(cells)
        else:
            flush()
            if s:
                out.append(f"<p>{html.escape(s)}</p>")
    flush()
    return "".join(out)


def _network_folders(folder: Path, doc: dict[str, Any]) -> list[Path]:
    """The run folders of the experiment's networks: its own runs/, or the degradation folder a study used."""
    places = [folder / "runs"]
    networks = (doc.get("settings") or {}).get("networks_dir")
    if networks:
        places += [Path(networks) / "runs", folder.parent / Path(networks).name / "runs"]
    for place in places:
        found = sorted(p.parent for p in place.glob("*/metrics.csv"))
        if found:
            return found
    return []


def networks_png(runs: Sequence[tuple[str, list[dict[str, Any]]]]) -> bytes:
    """Every network's training and test error per epoch, one panel each, on one error axis."""
    plt = pyplot()
    cols = min(4, len(runs))
    rows = math.ceil(len(runs) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.3 * cols, 2.7 * rows), sharey=True, layout="constrained", squeeze=False
    )
    for ax, (label, history) in zip(axes.flat, runs, strict=False):
        for key, style, name in (("train_acc", "--", "train"), ("val_acc", ":", "val"), ("test_acc", "-", "test")):
            xs, ys = _values(history, key)
            if xs:
                ax.plot(xs, [100 * (1 - y) for y in ys], style, marker=".", label=f"{name} error")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in axes.flat[len(runs) :]:
        ax.axis("off")
    axes[0][0].set_ylabel("error (%)")
    axes[0][0].legend(fontsize=8)
    return _figure_png(fig)


def render_experiment(folder: str | Path) -> Path:
    """folder/report.html: the verdict, the table, the figure and every network's curves of an experiment."""
    folder = Path(folder)
    try:
        doc = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError) as e:
        raise ReslabError(f"report: cannot read {folder / 'results.json'}: {e}") from None
    title = doc.get("title") or f"experiment {doc.get('experiment') or folder.name}"
    body = [f"<h1>{html.escape(folder.name)}</h1><p>{html.escape(title)}</p>"]
    verdict = folder / "verdict.txt"
    if verdict.is_file():
        body.append("<h2>Verdict</h2><pre>" + html.escape(verdict.read_text().strip()) + "</pre>")
    table = folder / "table.md"
    if table.is_file():
        body += ["<h2>Table</h2>", _markdown_table(table.read_text())]
    if (folder / "figure.png").is_file():
        body += ["<h2>Figure</h2>", _img((folder / "figure.png").read_bytes(), "the experiment's figure")]
    networks = [(p.name, _read_history(p), p) for p in _network_folders(folder, doc)]
    networks = [n for n in networks if n[1]]
    if networks:
        body.append("<h2>Every network's curves</h2>")
        body.append(_img(networks_png([(name, history) for name, history, _ in networks]), "each network's error"))
        links = []
        for name, history, p in networks:
            rel = p.relative_to(folder) if p.is_relative_to(folder) else p.resolve()
            page = f" (<a href='{quote(str(rel / REPORT))}'>report</a>)" if (p / REPORT).is_file() else ""
            links.append(f"<li>{html.escape(name)}: {len(history)} epochs, {html.escape(str(rel))}{page}</li>")
        body.append("<ul>" + "".join(links) + "</ul>")
    machine = doc.get("machine")
    if isinstance(machine, dict):
        with contextlib.suppress(KeyError):  # a record written by another version of reslab
            body.append("<h2>Machine</h2><p>" + html.escape(machine_line(machine)) + "</p>")
    files = [p.name for p in sorted(folder.iterdir()) if p.is_file() and p.name != REPORT]
    body.append("<h2>Files</h2><ul>" + "".join(f"<li><a href='{quote(n)}'>{html.escape(n)}</a></li>" for n in files))
    body.append("</ul>")
    return write_bytes(folder / REPORT, _page(title, body, refresh=False).encode())
