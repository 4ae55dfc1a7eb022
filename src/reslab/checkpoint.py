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
import hashlib
import io
import pickle
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reslab import __version__
from reslab.atomic import describe_os_error, remove_stale_temporaries, write_bytes, write_with
from reslab.atomic import ensure_folder as ensure_folder  # re-exported: rundir, evaluate and predict import it here
from reslab.config import TrainConfig
from reslab.device import pick_device
from reslab.errors import NonFiniteLossError, ReslabError
from reslab.metadata import FORMAT_VERSION, check_description
from reslab.models import build_model
from reslab.safetensors_io import read_safetensors

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


def non_finite_tensors(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point tensors that hold a NaN or an infinity."""
    return [
        k
        for k, t in state_dict.items()
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]


def state_dict_differences(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """The keys on which two state dicts differ in name, dtype, shape or any bit; [] when identical."""
    diff = sorted(set(a) ^ set(b))
    for k in sorted(set(a) & set(b)):
        x, y = a[k].detach().cpu(), b[k].detach().cpu()
        if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(_bits(x), _bits(y)):
            diff.append(k)
    return diff


def _bits(t: torch.Tensor) -> torch.Tensor:
    # the raw bytes: torch.equal on floats would call -0.0 equal to 0.0 and NaN unequal to itself
    return t.contiguous().reshape(-1).view(torch.uint8)


def payload_checksum(ckpt: dict[str, Any]) -> str:
    """sha256 of everything a checkpoint dict holds but its own "checksum" and "path": every tensor's dtype, shape and
    bytes, every other value's repr, in the dict's order. Stored in the file as "checksum", so that a flipped byte
    (disk, copy or hand) is found on load instead of being evaluated as a model."""
    h = hashlib.sha256()

    def walk(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous()
            h.update(f"tensor {t.dtype} {tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(v, dict):
            h.update(b"{")
            for k, x in v.items():
                walk(k)
                walk(x)
            h.update(b"}")
        elif isinstance(v, list | tuple):
            h.update(b"[" if isinstance(v, list) else b"(")
            for x in v:
                walk(x)
            h.update(b"]")
        else:
            h.update(f"{type(v).__name__} {v!r};".encode())

    walk({k: v for k, v in ckpt.items() if k not in ("checksum", "path")})
    return f"sha256:{h.hexdigest()}"


def save_checkpoint(state: TrainState | dict[str, Any], path: str | Path, *, best: str | Path | None = None) -> Path:
    """Write `state` to `path` atomically (the previous file stays intact if this is interrupted), with its checksum.

    With `best`, the same bytes go to `best` first, then to `path`: a run's set (best.pt, last.pt) is then recoverable
    after a kill at any instant (`recover_checkpoint_set`), and best.pt is only ever replaced by its successor.
    A state whose model holds a NaN or an infinity is never written: NonFiniteLossError, the files on disk untouched.
    """
    d = state.to_dict() if isinstance(state, TrainState) else state
    bad = non_finite_tensors(d.get("model", {}))
    if bad:
        raise NonFiniteLossError(
            f"not writing {str(path)!r}: {len(bad)} of the model's tensors are not finite "
            f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})"
        )
    d = {k: v for k, v in d.items() if k not in ("checksum", "path")}
    d["checksum"] = payload_checksum(d)
    # serialised in memory first: torch's own file writer reports a full disk as an opaque RuntimeError, a plain
    # write as the OSError (ENOSPC) it is
    buffer = io.BytesIO()
    torch.save(d, buffer)
    for p in (best, path) if best is not None else (path,):
        write_bytes(Path(p), buffer.getbuffer())
    return Path(path)


def copy_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Copy a checkpoint file atomically (without serialising the state twice)."""
    with open(src, "rb") as s:
        return write_with(Path(dst), lambda f: shutil.copyfileobj(s, f, 1 << 20))


def _step_of(path: Path) -> int | None:
    """The "step" a checkpoint file records, read lazily (mmap: the tensors are not loaded); None if unreadable."""
    try:
        step = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("step")
    except Exception:
        return None
    return step if isinstance(step, int) else None


def recover_checkpoint_set(run_dir: str | Path) -> list[str]:
    """Finish what a kill left of a run folder's checkpoint set; returns what was done, as lines to show.

    best.pt is written before last.pt at an epoch that improves (save_checkpoint's `best`): a best.pt at a later step
    than last.pt is the write of last.pt that the kill cut off, so it is completed by a copy. Temporary files of
    writers that are gone are removed.
    """
    run_dir = Path(run_dir)
    stale = [t for name in CHECKPOINT_NAMES for t in remove_stale_temporaries(run_dir / name)]
    done = [f"removed {t.name}, left by a killed write" for t in stale]
    best, last = run_dir / "best.pt", run_dir / "last.pt"
    if best.is_file():
        best_step, last_step = _step_of(best), _step_of(last) if last.is_file() else None
        if best_step is not None and (last_step is None or best_step > last_step):
            copy_checkpoint(best, last)
            done.append(
                f"completed the checkpoint set that a stop cut short: last.pt (step {last_step}) replaced by a copy "
                f"of best.pt (step {best_step}), the newer state"
            )
    return done


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
    check_integrity(ckpt, p)
    check_description(ckpt, p)  # a checkpoint of an older reslab has no checksum: its entries are checked one by one
    if p.name == "last.pt" and Path(path).is_dir() and ckpt.get("best_val_acc") is not None:
        print(
            f"reslab: note: {str(path)!r} has no best.pt although its run recorded a best validation accuracy "
            f"({ckpt['best_val_acc']:.4f}); using last.pt (epoch {ckpt.get('epoch', '?')})",
            file=sys.stderr,
        )
    ckpt["path"] = str(p)
    return ckpt


def check_integrity(ckpt: dict[str, Any], path: str | Path) -> None:
    """ReslabError if the checkpoint's recorded checksum does not match what it holds (older checkpoints have none),
    or if its weights hold a NaN or an infinity (reslab never writes such a checkpoint: it was damaged, or made by
    something else)."""
    recorded = ckpt.get("checksum")
    if recorded is not None and recorded != payload_checksum(ckpt):
        raise ReslabError(
            f"checkpoint {str(path)!r}: damaged: what it holds no longer matches the checksum written with it (the "
            "file was changed after it was saved: a disk or copy error, or an edit); use another checkpoint or "
            "retrain"
        )
    for key in ("model", "live_model"):
        weights = ckpt.get(key)
        bad = non_finite_tensors(weights) if isinstance(weights, dict) else []
        if bad:
            names = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise ReslabError(
                f"checkpoint {str(path)!r}: its weights hold NaN or infinite values ({names}): not a usable model"
            )


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
