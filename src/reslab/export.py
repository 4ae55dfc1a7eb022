"""Take a trained model out of reslab, verified: `reslab export CHECKPOINT --format onnx|pt2|safetensors`.

- onnx: torch's own exporter (`torch.onnx.export(..., dynamo=True)`: torch.export, then onnxscript's translation and
  optimiser), one self-contained file with input "input" (batch, C, H, W), the batch dimension symbolic, and output
  "logits" (batch, num_classes); reslab's description of the model (classes, preprocessing, ...) is in its
  metadata_props (see reslab.metadata). Runs in ONNX Runtime, `reslab predict` and `reslab eval`.
- pt2: `torch.export` of the model, saved by `torch.export.save` with the description as an extra file
  ("reslab.json"). `torch.export.load` reads it back without reslab, but only with the torch version that wrote it.
- safetensors: the state_dict (every buffer included) and the description in the header. No code, readable from any
  language; `reslab.load_checkpoint` and `build_model(weights=...)` read it back.

Every export is verified unless asked not to: the written file is loaded back (ONNX Runtime on the CPU, the
torch.export program, the reloaded weights) and run beside eager PyTorch on random batches of two sizes and on the
given image files; the largest absolute difference of the logits and the top-1 agreement are reported, and an export
beyond the format's tolerance is an error (the file is removed).

    from reslab.export import export_checkpoint
    export_checkpoint("runs/resnet20/best.pt", format="onnx")   # -> runs/resnet20/best.onnx, verified
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reslab.atomic import atomic_path, write_bytes
from reslab.backends import INPUT_NAME, OUTPUT_NAME, check_input_size, load_onnx
from reslab.checkpoint import model_from_checkpoint, read_checkpoint, state_dict_differences, trained_model
from reslab.errors import ReslabError
from reslab.metadata import describe, to_strings
from reslab.optional import require
from reslab.predict import image_batch
from reslab.safetensors_io import read_safetensors, write_safetensors

FORMATS = {"onnx": ".onnx", "pt2": ".pt2", "safetensors": ".safetensors"}
PT2_METADATA = "reslab.json"  # the extra file of a .pt2 archive that holds reslab's description
# The largest |logit difference| against eager PyTorch an export may show, relative to the largest |logit| (at least
# 1): ONNX Runtime and torch.export run other kernels (fused conv+BN, another summation order), which in fp32 differ
# by ~1e-6 of the logits' scale (measured on ResNet-20 and a ResNet-50 at 224x224); 1e-4 leaves a wide margin while
# still failing on any real mistake (a wrong layer, weight or BN statistic moves logits by far more). safetensors
# holds the very tensors, so its reloaded model must match to the bit.
TOLERANCE = {"onnx": 1e-4, "pt2": 1e-4, "safetensors": 0.0}
RANDOM_BATCHES = (1, 5)  # two sizes, one of them 1: the symbolic batch dimension must take both


@dataclass(frozen=True)
class Check:
    """One comparison of the exported artefact with eager PyTorch."""

    label: str  # "random, batch 5", "3 images"
    max_abs_diff: float
    scale: float  # the largest |logit| of eager PyTorch on these inputs
    top1_agree: int
    total: int

    @property
    def relative_diff(self) -> float:
        return self.max_abs_diff / max(1.0, self.scale)


@dataclass
class ExportResult:
    path: Path
    format: str
    tolerance: float
    checks: list[Check] = field(default_factory=list)  # empty when not verified
    notes: list[str] = field(default_factory=list)  # what else was checked (the safetensors bit-exact round trip)

    @property
    def verified(self) -> bool:
        return bool(self.checks) and all(c.relative_diff <= self.tolerance for c in self.checks)


# ----------------------------------------------------------------------------------------------------------------------
# writing each format


def _example_input(input_size: Sequence[int], batch: int = 2) -> torch.Tensor:
    # batch 2, not 1: torch.export specialises a dimension seen as 1, which would make the batch static
    return torch.randn(batch, *input_size, generator=torch.Generator().manual_seed(0))


@contextlib.contextmanager
def _quiet_exporter():
    """Silence what torch.onnx / torch.export print that is not about the user's model: warnings that torchvision's
    operators (nms, roi_align) are not registered, and deprecations inside torch itself."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def export_onnx(model: nn.Module, desc: dict[str, Any], path: str | Path, *, opset: int | None = None) -> Path:
    """`model` (eval mode, CPU) -> one self-contained ONNX file at `path`, the description in its metadata_props."""
    for module in ("onnxscript", "onnx"):
        require(module, "--format onnx")
    x = _example_input(desc["input_size"])
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                model,
                (x,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                opset_version=opset,
                external_data=False,
                optimize=True,  # onnxscript: constant folding, BN folded into the convs (ResNet-20: 256 -> 56 nodes)
                verbose=False,
            )
    except Exception as e:  # the exporter raises many types (TorchExportError, ConversionError, ...)
        raise ReslabError(f"--format onnx: torch.onnx.export failed for {desc['model_name']}: {_first_line(e)}") from e
    program.model.metadata_props.update(to_strings(desc))
    program.model.doc_string = f"{desc['model_name']} exported by reslab {desc['reslab_version']}"
    with atomic_path(path) as tmp:  # onnx_ir writes by file name
        program.save(tmp, external_data=False)
    return Path(path)


def export_pt2(model: nn.Module, desc: dict[str, Any], path: str | Path) -> Path:
    """`model` -> a torch.export program saved with torch.export.save, the description in its "reslab.json"."""
    x = _example_input(desc["input_size"])
    try:
        with _quiet_exporter():
            program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as e:
        raise ReslabError(f"--format pt2: torch.export failed for {desc['model_name']}: {_first_line(e)}") from e
    meta = json.dumps({**desc, "torch_version": torch.__version__})
    # serialised in memory, then written by reslab: torch's C++ zip writer, writing to a file on a full disk, aborts
    # the whole process (exit 134) instead of raising; a plain write says ENOSPC
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={PT2_METADATA: meta})
    return write_bytes(path, buffer.getbuffer())


def load_pt2(path: str | Path) -> tuple[torch.export.ExportedProgram, dict[str, Any]]:
    """A .pt2 written by `reslab export` -> (the ExportedProgram, reslab's description). Needs the torch version that
    wrote it (torch.export's format changes between versions)."""
    extra = {PT2_METADATA: ""}
    try:
        program = torch.export.load(str(path), extra_files=extra)
    except FileNotFoundError:
        raise ReslabError(f"{str(path)!r}: no such file") from None
    except Exception as e:
        hint = ""
        with contextlib.suppress(Exception):
            written = json.loads(_read_pt2_metadata(path)).get("torch_version")
            if written and written != torch.__version__:
                hint = f"; it was written by torch {written} and this is torch {torch.__version__}: use that version"
        raise ReslabError(f"{str(path)!r}: torch.export.load failed ({_first_line(e)}){hint}") from None
    if not extra[PT2_METADATA]:
        raise ReslabError(f"{str(path)!r}: a torch.export program without reslab's {PT2_METADATA}")
    return program, json.loads(extra[PT2_METADATA])


def _read_pt2_metadata(path: str | Path) -> str:
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith(f"extra/{PT2_METADATA}"))
        return z.read(name).decode()


class Pt2Runner:
    """A loaded .pt2 program as a runner: (B, C, H, W) -> logits, with a clear error for a wrong input size."""

    device = torch.device("cpu")

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.program, self.desc = load_pt2(path)
        self.module = self.program.module()
        self.input_size = tuple(self.desc["input_size"])

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.input_size, self.path)
        return self.module(x.to(torch.float32)).float()


# ----------------------------------------------------------------------------------------------------------------------
# verification


def compare(reference: Callable, candidate: Callable, inputs: Sequence[tuple[str, torch.Tensor]]) -> list[Check]:
    """Run both on each (label, batch); the largest |difference| of logits and the top-1 agreement of each."""
    checks = []
    for label, x in inputs:
        with torch.inference_mode():
            want, got = reference(x).float(), candidate(x).float()
        if got.shape != want.shape:
            raise ReslabError(f"verification ({label}): the export gives {tuple(got.shape)}, eager {tuple(want.shape)}")
        checks.append(
            Check(
                label=label,
                max_abs_diff=float((got - want).abs().max()),
                scale=float(want.abs().max()),
                top1_agree=int((got.argmax(1) == want.argmax(1)).sum()),
                total=len(x),
            )
        )
    return checks


def verification_inputs(input_size: Sequence[int], images: torch.Tensor | None = None) -> list:
    """Random normal batches of RANDOM_BATCHES sizes (seeded: the same every run), then the images if any."""
    g = torch.Generator().manual_seed(1)
    inputs = [(f"random, batch {b}", torch.randn(b, *input_size, generator=g)) for b in RANDOM_BATCHES]
    if images is not None and len(images):
        inputs.append((f"{len(images)} image{'s' * (len(images) > 1)}", images))
    return inputs


def _artefact_runner(fmt: str, path: Path, ckpt: dict[str, Any]) -> tuple[Callable, list[str]]:
    """The exported file loaded back as something to compare with eager PyTorch, and notes on what else held."""
    if fmt == "onnx":
        onnx = require("onnx", "verifying an ONNX export")
        proto = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(proto, full_check=True)
        model = load_onnx(path)  # reads the metadata back too: it must describe the same model
        ort = require("onnxruntime", "verifying an ONNX export")
        return model.runner, [
            f"onnx.checker passed (opset {_opset(proto)}); loaded back in ONNX Runtime {ort.__version__}, CPU"
        ]
    if fmt == "pt2":
        return Pt2Runner(path), [f"loaded back with torch.export.load (torch {torch.__version__})"]
    reread = read_safetensors(path)
    diff = state_dict_differences(ckpt["model"], reread["model"])
    if diff:
        raise ReslabError(f"verification: {path} does not hold the checkpoint's tensors bit for bit: {diff[:5]}")
    model = model_from_checkpoint(reread)
    n = len(reread["model"])
    return model, [f"read back: all {n} tensors (buffers included) equal the checkpoint's bit for bit"]


def _opset(proto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


# ----------------------------------------------------------------------------------------------------------------------
# the command


def output_path(checkpoint_file: str | Path, fmt: str) -> Path:
    """Default output: the checkpoint file's path with the format's suffix (runs/x/best.pt -> runs/x/best.onnx)."""
    return Path(checkpoint_file).with_suffix(FORMATS[fmt])


def resolve_format(fmt: str | None, output: str | Path | None) -> str:
    if fmt is None:
        suffix = Path(output).suffix.lower() if output is not None else ".onnx"
        by_suffix = {s: f for f, s in FORMATS.items()}
        if suffix not in by_suffix:
            raise ReslabError(f"-o {output}: cannot tell the format from {suffix!r}; give --format {'|'.join(FORMATS)}")
        return by_suffix[suffix]
    if fmt not in FORMATS:
        raise ReslabError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


def export_checkpoint(
    checkpoint: str | Path,
    *,
    format: str | None = None,
    output: str | Path | None = None,
    images: Sequence[str | Path] = (),
    invert: bool = False,
    verify: bool = True,
    opset: int | None = None,
    quiet: bool = False,
) -> ExportResult:
    """Export a checkpoint (file or run folder, with or without training state) and verify the file written.

    `format` defaults to what `output`'s suffix says, else onnx; `output` to the checkpoint's path with the format's
    suffix. `images` (files) are prepared as `reslab predict` prepares them and join the random batches in the
    verification. Raises ReslabError if the export fails, or if verification finds a difference beyond TOLERANCE;
    the file appears at its path only once verified.
    """
    fmt = resolve_format(format, output)
    ckpt = read_checkpoint(checkpoint)
    desc = describe(ckpt)
    path = Path(output) if output is not None else output_path(ckpt["path"], fmt)
    if path.resolve() == Path(ckpt["path"]).resolve():
        raise ReslabError(f"-o {path}: is the checkpoint itself; choose another file")
    if path.is_dir():  # found before the work, not at the final rename
        example = path / output_path(ckpt["path"], fmt).name
        raise ReslabError(f"-o {path}: is a folder; give a file name (e.g. {example})")
    trained = trained_model(ckpt)
    model = trained.model  # eval mode, CPU, fp32: the reference
    batch = image_batch(trained, images, invert=invert) if images else None
    result = ExportResult(path=path, format=fmt, tolerance=TOLERANCE[fmt])
    # written and verified under a temporary name: the file appears at `path` only once verified (or with
    # --no-verify), so a failure, a full disk or Ctrl-C during verification leaves the previous file, if any
    with atomic_path(path) as tmp:
        if fmt == "onnx":
            export_onnx(model, desc, tmp, opset=opset)
        elif fmt == "pt2":
            export_pt2(model, desc, tmp)
        else:
            write_safetensors(ckpt, tmp)
        if not quiet:
            size = tmp.stat().st_size / 1e6
            c, h, w = desc["input_size"]
            print(
                f"exported {ckpt['path']} ({desc['model_name']}, {c}x{h}x{w} input, {len(desc['classes'])} classes) "
                f"to {path} ({size:.1f} MB, {fmt})"
            )
        if verify:
            candidate, notes = _artefact_runner(fmt, tmp, ckpt)
            result.notes = notes
            result.checks = compare(model, candidate, verification_inputs(desc["input_size"], batch))
            del candidate  # ONNX Runtime and torch.export hold the file open
            if not quiet:
                print(format_checks(result))
            if not result.verified:
                worst = max(result.checks, key=lambda c: c.relative_diff)
                raise ReslabError(
                    f"verification failed: {fmt} export differs from eager PyTorch by {worst.max_abs_diff:.3g} on "
                    f"{worst.label} (tolerance {result.tolerance:g} x max(1, largest |logit| = {worst.scale:.3g})); "
                    f"the unverified file was removed and {path} left as it was (--no-verify keeps an unverified "
                    "file)"
                )
    return result


def format_checks(result: ExportResult) -> str:
    """The verification as lines: what was loaded back, then each comparison, then the verdict."""
    lines = ["verification against eager PyTorch (fp32, CPU):", *(f"  {note}" for note in result.notes)]
    width = max(len(c.label) for c in result.checks)
    for c in result.checks:
        lines.append(
            f"  {c.label:<{width}}  max |diff| {c.max_abs_diff:.2e} (largest |logit| {c.scale:.3g})  "
            f"top-1 agreement {c.top1_agree}/{c.total}"
        )
    bound = "bit-exact" if result.tolerance == 0 else f"{result.tolerance:g} x max(1, largest |logit|)"
    lines.append(f"  tolerance {bound}: {'passed' if result.verified else 'FAILED'}")
    return "\n".join(lines)
