"""`reslab train --log tensorboard`: the run's scalars, hyperparameters and a batch of its images for TensorBoard.

    tensorboard --logdir runs          # every run folder is one TensorBoard run, named after the folder

Written into the run folder itself (events.out.tfevents.*), under rank 0 only:
- per step: `train/loss` (rank 0's batch loss) and `train/lr` at global step n, the loss of the step that made the
  step count n (1-based);
- per epoch, at the epoch's last step: `epoch/train_loss`, `epoch/train_acc`, `epoch/val_acc`, `epoch/test_acc` (where
  evaluated) and `epoch/images_per_s`;
- at the start of a fresh run, one batch of training images as the model sees them (augmented, un-normalised);
- at the end, the hyperparameters with the final metrics (HParams tab), in the run's own folder: SummaryWriter's
  add_hparams would open a timestamped sub-folder, a second TensorBoard run.

A resumed run opens the same folder with purge_step = the resumed step + 1: TensorBoard then hides whatever the
stopped run had logged after its checkpoint, so the curve continues without repeated steps.

tensorboard is an optional extra (`pip install -e '.[tensorboard]'`), imported only when --log tensorboard is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from reslab.config import TrainConfig
from reslab.errors import ReslabError

EPOCH_SCALARS = ("train_loss", "train_acc", "val_acc", "test_acc", "images_per_s")


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises it when the tensorboard package is missing
        raise ReslabError(
            "--log tensorboard: the tensorboard package is not installed; pip install -e '.[tensorboard]' "
            "(or leave out --log)"
        ) from None
    return SummaryWriter


class TensorBoardLog:
    """One run's TensorBoard event stream, in its run folder; every method is cheap enough to call per step."""

    def __init__(self, run_dir: str | Path, *, step: int = 0):
        """Open the run folder's event stream; `step` is the optimizer steps already taken (a resumed run's)."""
        self.run_dir = Path(run_dir)
        # purge_step: events of a stopped run at steps > `step` (logged after its last checkpoint) are hidden
        self.writer = _summary_writer()(log_dir=str(self.run_dir), purge_step=step + 1, flush_secs=30)

    def on_step(self, step: int, loss: torch.Tensor, lr: float) -> None:
        """After optimizer step number `step` (1-based): its loss (a 0-dim tensor) and learning rate."""
        self.writer.add_scalar("train/loss", float(loss), step)
        self.writer.add_scalar("train/lr", lr, step)

    def epoch_end(self, row: dict[str, Any]) -> None:
        """A finished epoch's metrics.csv row, at the epoch's last step."""
        for key in EPOCH_SCALARS:
            if row.get(key) is not None:
                self.writer.add_scalar(f"epoch/{key}", row[key], row["step"])
        self.writer.flush()  # an epoch's numbers on disk now, not up to flush_secs later

    def images(self, x: torch.Tensor, mean: Sequence[float], std: Sequence[float], *, step: int = 0) -> None:
        """A grid of a normalised batch x (B, C, H, W), shown as the pixels the model was given."""
        pixels = x.detach().float().cpu()[:64]
        c = pixels.shape[1]
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1).expand(1, c, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1).expand(1, c, 1, 1)
        self.writer.add_images("train/batch", (pixels * s + m).clamp(0, 1), step, dataformats="NCHW")

    def hparams(self, config: TrainConfig, metrics: dict[str, float | None], *, step: int) -> None:
        """The run's configuration with its final metrics, for TensorBoard's HParams tab, in this run's folder."""
        from torch.utils.tensorboard.summary import hparams

        params = {k: _hparam_value(v) for k, v in config.to_dict().items() if k not in ("resume", "progress")}
        final = {f"hparam/{k}": float(v) for k, v in metrics.items() if v is not None}
        exp, ssi, sei = hparams(params, final)
        for summary in (exp, ssi, sei):
            self.writer.file_writer.add_summary(summary)
        for tag, value in final.items():  # the HParams tab reads each metric from a scalar of the same tag
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _hparam_value(v: Any) -> bool | int | float | str:
    """HParams take bool, int, float and str: None and containers are shown as text."""
    if isinstance(v, bool | int | float | str):
        return v
    return "none" if v is None else str(v)


def final_metrics(history: Sequence[dict[str, Any]], best_val_acc: float | None) -> dict[str, float | None]:
    """What the HParams tab compares runs by: the last epoch's numbers and the best validation accuracy."""
    last = history[-1] if history else {}
    return {
        "test_acc": last.get("test_acc"),
        "best_val_acc": best_val_acc,
        "train_loss": last.get("train_loss"),
        "train_acc": last.get("train_acc"),
    }
