"""Checkpoints: the state schema and its version, an atomic save, and a safe load.

A checkpoint is one dict of plain Python values and tensors, so `torch.load(path, weights_only=True)` reads it
without running any pickled code:

    {"format_version": 1, "reslab_version", "config": TrainConfig.to_dict(), "model_name", "model_kwargs",
     "input_size": [C, H, W], "classes": [...], "model": state_dict (unwrapped), "optimizer", "scheduler",
     "scaler" (or None), "epoch" (epochs completed), "step" (optimizer steps in all), "step_in_epoch",
     "world_size", "rng": {"torch", "cuda"}, "history": [one dict per epoch], "best_val_acc", "epoch_progress"}

`last.pt` holds everything needed to continue a run; `best.pt` is a copy of the `last.pt` of the epoch with the best
validation accuracy.
"""

from __future__ import annotations

import os
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reslab.errors import ReslabError

FORMAT_VERSION = 1
CHECKPOINT_NAMES = ("best.pt", "last.pt")  # what a run folder is searched for, in this order


def _fsync_dir(folder: Path) -> None:
    # the rename itself is only durable once the directory entry is on disk; not possible everywhere (Windows)
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, write) -> Path:
    """Run `write(file)` on a temporary file next to `path`, then rename it over `path`.

    A crash or Ctrl-C at any point leaves either the old file or the new one, never a truncated mix: os.replace is
    atomic within one filesystem, hence the temporary file in the same folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write `state` to `path` atomically (the previous file stays intact if this is interrupted)."""
    return _atomic_write(Path(path), lambda f: torch.save(state, f))


def copy_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Copy a checkpoint file atomically (best.pt from last.pt, without serialising the state twice)."""
    with open(src, "rb") as s:
        return _atomic_write(Path(dst), lambda f: shutil.copyfileobj(s, f, 1 << 20))


def resolve_checkpoint(path: str | Path) -> Path:
    """A .pt file as is, or a run folder's best.pt (else last.pt); ReslabError if there is none."""
    p = Path(path)
    if p.is_dir():
        for name in CHECKPOINT_NAMES:
            if (p / name).is_file():
                return p / name
        raise ReslabError(f"checkpoint {str(p)!r}: the folder has no {' or '.join(CHECKPOINT_NAMES)}")
    if not p.exists():
        raise ReslabError(f"checkpoint {str(p)!r}: no such file or folder (expected a .pt file or a run folder)")
    return p


def read_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint dict at `path` (a file or a run folder), checked to be a reslab checkpoint this version reads."""
    p = resolve_checkpoint(path)
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ReslabError(
            f"checkpoint {str(p)!r}: not a reslab checkpoint (torch.load failed: {first_line[:200]})"
        ) from None
    if not isinstance(ckpt, dict) or "format_version" not in ckpt:
        raise ReslabError(f"checkpoint {str(p)!r}: not a reslab checkpoint (no 'format_version' entry)")
    version = ckpt["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ReslabError(
            f"checkpoint {str(p)!r}: format version {version!r} was written by a newer reslab "
            f"({ckpt.get('reslab_version', '?')}); this one reads up to version {FORMAT_VERSION}: upgrade reslab"
        )
    ckpt["path"] = str(p)
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """The architecture named in `ckpt` with its weights loaded (on the CPU, in eval mode)."""
    from reslab.config import TrainConfig
    from reslab.models import build_model

    model = build_model(ckpt["model_name"], **ckpt["model_kwargs"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    # what predict/evaluate need to feed the model as it was trained
    model.reslab_config = TrainConfig.from_dict(ckpt["config"])
    model.reslab_classes = tuple(ckpt["classes"])
    model.reslab_input_size = tuple(ckpt["input_size"])
    return model


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """A ready model from a checkpoint file or run folder: weights loaded, in eval mode, on `device`.

    The model carries `.reslab_config` (the TrainConfig it was trained with), `.reslab_classes` (class names) and
    `.reslab_input_size` ((C, H, W) it expects).
    """
    if isinstance(device, str):
        from reslab.distributed import pick_device

        device = pick_device(device)
    return model_from_checkpoint(read_checkpoint(path)).to(device)
