"""Checkpoints: the state schema as a type, an atomic save, a safe load, and the trained model they hold.

A checkpoint is one dict of plain Python values and tensors, so `torch.load(path, weights_only=True)` reads it
without running any pickled code. Every checkpoint describes a model:

    {"format_version": 2, "reslab_version", "model_name", "model_kwargs" (build_model's), "input_size": [C, H, W],
     "classes": [...], "model": state_dict (unwrapped), "preprocess": dict or None}

and one written by `reslab train` also holds the state to continue the run (`TrainState`): "config"
(TrainConfig.to_dict()), "optimizer", "scaler" (or None), "epoch" (epochs completed), "step" (optimizer steps in
all), "step_in_epoch", "steps_per_epoch", "world_size", "rng": {"torch", "cuda"}, "history" (one dict per epoch),
"best_val_acc", "epoch_progress" (the running sums of the epoch in progress). With --ema, "model" is the moving
average of the weights (the network the run delivers: what eval, predict and export read) and "live_model" the
weights the optimizer trains, which a resumed run continues from.

Format 1 (reslab 0.1) had a "scheduler" entry too, whose only state was the step count; it still loads and resumes.
`last.pt` holds everything needed to continue a run; `best.pt` is a copy of the `last.pt` of the epoch with the best
validation accuracy.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import os
import pickle
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reslab import __version__
from reslab.config import TrainConfig
from reslab.device import pick_device
from reslab.errors import NonFiniteLossError, ReslabError
from reslab.formats import read_safetensors
from reslab.models import build_model

FORMAT_VERSION = 2
CHECKPOINT_NAMES = ("best.pt", "last.pt")  # what a run folder is searched for, in this order
MODEL_KEYS = ("model_name", "model_kwargs", "input_size", "classes", "model")


# ----------------------------------------------------------------------------------------------------------------------
# the schema


@dataclass
class EpochProgress:
    """The running sums of the epoch in progress, over all ranks: what a mid-epoch resume continues from."""

    loss_sum: float = 0.0  # sum over images of the per-image loss
    correct: float = 0.0  # training images classified correctly (by the network as it was at their step)
    seen: int = 0  # images, all ranks
    train_time: float = 0.0  # seconds spent training in this epoch

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass
class TrainState:
    """Everything `last.pt` holds to continue a run exactly."""

    config: dict[str, Any]  # TrainConfig.to_dict()
    model_name: str
    model_kwargs: dict[str, Any]
    input_size: list[int]  # (C, H, W)
    classes: list[str]
    model: dict[str, torch.Tensor]  # state_dict of the unwrapped model
    optimizer: dict[str, Any]
    scaler: dict[str, Any] | None
    epoch: int  # epochs completed
    step: int  # optimizer steps in all
    step_in_epoch: int  # 0 at an epoch end
    steps_per_epoch: int
    world_size: int
    rng: dict[str, Any]  # {"torch": CPU generator state, "cuda": per-device states or None}
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_acc: float | None = None
    epoch_progress: EpochProgress = field(default_factory=EpochProgress)
    preprocess: dict[str, Any] | None = None
    threads: int | None = None  # CPU threads it was trained with: CPU results are bitwise exact only at the same count
    live_model: dict[str, torch.Tensor] | None = None  # with --ema: the trained weights ("model" is their average)
    # with --precise-bn: "model" holds BatchNorm statistics recomputed for evaluation and inference; these are the
    # running statistics training accumulated in that network, which a resumed run continues from
    running_stats: dict[str, torch.Tensor] | None = None

    def trained_model_state(self) -> dict[str, torch.Tensor]:
        """The model state as training left it: `model` with the accumulated BatchNorm statistics, not the precise
        ones evaluation uses."""
        return self.model if self.running_stats is None else {**self.model, **self.running_stats}

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["epoch_progress"] = self.epoch_progress.to_dict()
        return {"format_version": FORMAT_VERSION, "reslab_version": __version__, **d}

    @classmethod
    def from_dict(cls, ckpt: dict[str, Any]) -> TrainState:
        """The state in a checkpoint dict of any format this version reads; ReslabError if it cannot be resumed."""
        fields = dataclasses.fields(cls)
        required = [f.name for f in fields if f.default is f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if name not in ckpt]
        if missing:
            raise ReslabError(
                f"checkpoint {ckpt.get('path', '?')!r}: cannot resume from it: it holds no training state "
                f"(missing {', '.join(missing)}); it can still be evaluated or used with --pretrained"
            )
        values = {f.name: ckpt[f.name] for f in fields if f.name in ckpt}
        values["epoch_progress"] = EpochProgress(**(ckpt.get("epoch_progress") or {}))
        return cls(**values)


# ----------------------------------------------------------------------------------------------------------------------
# writing


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


def _remove_stale_temporaries(path: Path) -> None:
    """Delete the temporary files of earlier writes of `path` that were killed mid-write (their process is gone)."""
    for tmp in path.parent.glob(f".{path.name}.tmp*"):
        pid = tmp.name.rsplit(".tmp", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but is another user's
        return True
    return True


def _atomic_write(path: Path, write) -> Path:
    """Run `write(file)` on a temporary file next to `path`, then rename it over `path`.

    A crash or Ctrl-C at any point leaves either the old file or the new one, never a truncated mix: os.replace is
    atomic within one filesystem, hence the temporary file in the same folder. A full disk or an unwritable folder
    is a ReslabError naming the path; the previous file is then intact.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(path)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise ReslabError(f"cannot write {str(path)!r}: {describe_os_error(e)}") from None
        raise
    _fsync_dir(path.parent)
    return path


def ensure_folder(folder: Path, *, flag: str) -> Path:
    """Create `folder` (and its parents) and check that files can be written in it; a ReslabError naming `flag`
    otherwise (a file in the way, no permission, a read-only or full filesystem)."""
    folder = Path(folder)
    for f in (*reversed(folder.parents), folder):
        if f.exists() and not f.is_dir():
            raise ReslabError(f"{flag}: {str(f)!r} is a file, not a folder; choose another {flag}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ReslabError(f"{flag}: cannot write in {str(folder)!r}: {describe_os_error(e)}") from None
    return folder


def describe_os_error(e: OSError) -> str:
    """What an OSError means for the user, in a few words (a full disk is said as such)."""
    if e.errno == errno.ENOSPC:
        return "no space left on the device (the previous file, if any, is intact; free some space and resume)"
    if e.errno == errno.EDQUOT:
        return "disk quota exceeded (the previous file, if any, is intact)"
    return e.strerror or str(e)


def non_finite_tensors(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point tensors that hold a NaN or an infinity."""
    return [k for k, t in state_dict.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def save_checkpoint(state: TrainState | dict[str, Any], path: str | Path) -> Path:
    """Write `state` to `path` atomically (the previous file stays intact if this is interrupted).

    A state whose model holds a NaN or an infinity is never written: NonFiniteLossError, the file on disk untouched.
    """
    d = state.to_dict() if isinstance(state, TrainState) else state
    bad = non_finite_tensors(d.get("model", {}))
    if bad:
        raise NonFiniteLossError(
            f"not writing {str(path)!r}: {len(bad)} of the model's tensors are not finite "
            f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})"
        )
    # serialised in memory first: torch's own file writer reports a full disk as an opaque RuntimeError, a plain
    # write as the OSError (ENOSPC) it is
    buffer = io.BytesIO()
    torch.save(d, buffer)
    return _atomic_write(Path(path), lambda f: f.write(buffer.getbuffer()))


def copy_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Copy a checkpoint file atomically (best.pt from last.pt, without serialising the state twice)."""
    with open(src, "rb") as s:
        return _atomic_write(Path(dst), lambda f: shutil.copyfileobj(s, f, 1 << 20))


# ----------------------------------------------------------------------------------------------------------------------
# reading


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
    """The checkpoint dict at `path` (a file or a run folder), checked to be a reslab checkpoint this version reads,
    with "path" added."""
    p = resolve_checkpoint(path)
    try:
        if p.suffix == ".safetensors":  # written by `reslab export`: a weights-only checkpoint
            ckpt = read_safetensors(p)
        else:
            ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found is None:
            raise ReslabError(
                f"checkpoint {str(p)!r}: not a reslab checkpoint: not a file written by torch.save, or a damaged one "
                f"({p.stat().st_size:,} bytes)"
            ) from None
        # torch's message advises weights_only=False; that would run whatever code the file holds, so it is not
        # passed on: reslab never unpickles arbitrary objects
        raise ReslabError(
            f"checkpoint {str(p)!r}: not a reslab checkpoint: it holds pickled Python objects ({found.group(1)}), "
            "not only tensors and plain values, and reslab does not unpickle those (that could run arbitrary code)"
        ) from None
    except ReslabError:  # read_safetensors' own one-line errors
        raise
    except OSError as e:
        raise ReslabError(f"checkpoint {str(p)!r}: cannot read it: {describe_os_error(e)}") from None
    except Exception:  # torch raises KeyError, RuntimeError, EOFError, ... for files that are not torch.save's
        raise ReslabError(
            f"checkpoint {str(p)!r}: not a reslab checkpoint: not a file written by torch.save, or a damaged one "
            f"({p.stat().st_size:,} bytes)"
        ) from None
    if not isinstance(ckpt, dict) or "format_version" not in ckpt:
        raise ReslabError(f"checkpoint {str(p)!r}: not a reslab checkpoint (no 'format_version' entry)")
    version = ckpt["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ReslabError(
            f"checkpoint {str(p)!r}: format version {version!r} was written by a newer reslab "
            f"({ckpt.get('reslab_version', '?')}); this one reads up to version {FORMAT_VERSION}: upgrade reslab"
        )
    missing = [k for k in MODEL_KEYS if k not in ckpt]
    if missing:
        raise ReslabError(f"checkpoint {str(p)!r}: incomplete: it has no {', '.join(map(repr, missing))}")
    ckpt["path"] = str(p)
    return ckpt


# ----------------------------------------------------------------------------------------------------------------------
# the trained model


@dataclass
class TrainedModel:
    """A model from a checkpoint, with what is needed to feed it as it was trained."""

    model: nn.Module  # weights loaded, in eval mode
    model_name: str
    model_kwargs: dict[str, Any]
    classes: tuple[str, ...]
    input_size: tuple[int, int, int]  # (C, H, W) it expects
    preprocess: dict[str, Any] | None = None  # None: Fashion-MNIST's (see reslab.predict)
    config: TrainConfig | None = None  # what it was trained with; None for weights-only checkpoints
    epoch: int | None = None
    path: str | None = None


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """The architecture named in `ckpt` with its weights loaded (on the CPU, in eval mode)."""
    model = build_model(ckpt["model_name"], **ckpt["model_kwargs"])
    load_weights(model, ckpt["model"], what=f"checkpoint {ckpt.get('path', '?')!r}")
    return model.eval()


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], *, what: str) -> None:
    """model.load_state_dict(strict) with a short summary instead of a screen of keys when they do not match."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and state_dict[k].shape != expected[k].shape
    ]
    if missing or unexpected or shapes:

        def few(names: list[str]) -> str:
            return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

        parts = [f"{len(missing)} missing ({few(missing)})"] if missing else []
        parts += [f"{len(unexpected)} unexpected ({few(unexpected)})"] if unexpected else []
        parts += [f"{len(shapes)} of another shape (checkpoint vs model: {few(shapes)})"] if shapes else []
        raise ReslabError(
            f"{what}: its weights do not fit the model it records ({type(model).__name__} "
            f"with {len(expected)} tensors): {'; '.join(parts)}"
        )
    model.load_state_dict(state_dict)


def trained_model(ckpt: dict[str, Any]) -> TrainedModel:
    """A TrainedModel from a checkpoint dict (read_checkpoint's)."""
    return TrainedModel(
        model=model_from_checkpoint(ckpt),
        model_name=ckpt["model_name"],
        model_kwargs=dict(ckpt["model_kwargs"]),
        classes=tuple(ckpt["classes"]),
        input_size=tuple(ckpt["input_size"]),
        preprocess=ckpt.get("preprocess"),
        config=TrainConfig.from_dict(ckpt["config"]) if "config" in ckpt else None,
        epoch=ckpt.get("epoch"),
        path=ckpt.get("path"),
    )


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """A ready model from a checkpoint file or run folder: weights loaded, in eval mode, on `device`."""
    trained = trained_model(read_checkpoint(path))
    trained.model.to(pick_device(device))
    return trained
