"""Runners: whatever maps a normalised float batch (B, C, H, W) to logits (B, num_classes).

Evaluation and prediction load what they run with `load_model` (a checkpoint or an exported ONNX file), and call a
runner rather than a model, so that a file exported to ONNX is used exactly as the checkpoint it came from:
- `TorchRunner`: eager PyTorch, the checkpoint's own model, optionally in channels_last and under autocast;
- `OnnxRunner`: ONNX Runtime on the CPU, from a file written by `reslab export --format onnx`; `load_onnx` reads it
  with reslab's description of the model (classes, input size, preprocessing, training config) from its metadata.

ONNX Runtime is optional (`pip install -e '.[export]'`) and is imported only when an ONNX file is opened.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from reslab.checkpoint import TrainedModel, load_checkpoint
from reslab.config import TrainConfig
from reslab.device import autocast, pick_device
from reslab.errors import ReslabError
from reslab.metadata import from_strings
from reslab.optional import require

INPUT_NAME = "input"  # (batch, C, H, W) float32, normalised as the model's "preprocess" says
OUTPUT_NAME = "logits"  # (batch, num_classes) float32


class Runner(Protocol):
    device: torch.device  # where its input batches should be

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...  # (B, C, H, W) float -> (B, K) float32 logits


class TorchRunner:
    """Eager PyTorch in inference mode: `model` (kept on its device, put in eval mode), in channels_last if asked,
    under autocast to `amp_dtype` if given."""

    def __init__(self, model: nn.Module, *, channels_last: bool = False, amp_dtype: torch.dtype | None = None):
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(memory_format=self.memory_format).eval()
        self.device = next(model.parameters()).device
        self.amp_dtype = amp_dtype

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, memory_format=self.memory_format)
        with autocast(self.device, self.amp_dtype):
            return self.model(x).float()


class OnnxRunner:
    """ONNX Runtime's CPU execution provider on an ONNX file with one input (batch, C, H, W) and one output.

    It uses `threads` intra-op threads (default: torch's own count, so OMP_NUM_THREADS and --threads apply to it as
    to eager PyTorch) and no busy-waiting between operators, which on a shared machine costs the other processes
    their cores.
    """

    device = torch.device("cpu")

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        ort = require("onnxruntime", f"running {str(path)!r}")
        self.path = str(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(self.path, sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf/NoSuchFile types
            if not Path(path).is_file():
                raise ReslabError(f"ONNX file {self.path!r}: no such file") from None
            raise ReslabError(
                f"ONNX file {self.path!r}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:200]})"
            ) from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or len(outputs) != 1:
            raise ReslabError(
                f"ONNX file {self.path!r}: expected one (batch, C, H, W) input and one output, found inputs "
                f"{[(i.name, i.shape) for i in inputs]} and outputs {[o.name for o in outputs]}"
            )
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.input_shape = tuple(inputs[0].shape)  # e.g. ('batch', 1, 28, 28): the batch dimension symbolic

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.input_shape[1:], self.path)
        a = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run([self.output_name], {self.input_name: a})
        return torch.from_numpy(np.asarray(logits))


def check_input_size(x: torch.Tensor, expected: tuple, name: str) -> None:
    """ReslabError unless `x` is a (B, *expected) batch; a non-integer entry of `expected` (symbolic) matches any."""
    fixed = [d if isinstance(d, int) else None for d in expected]
    if x.dim() != 1 + len(fixed) or any(d is not None and d != s for d, s in zip(fixed, x.shape[1:], strict=True)):
        want = ", ".join("?" if d is None else str(d) for d in fixed)
        raise ReslabError(f"{name!r}: expects input batches of (batch, {want}), got {tuple(x.shape)}")


@dataclass
class OnnxModel:
    """An ONNX file exported by reslab, with its description: what `TrainedModel` is for a checkpoint."""

    runner: OnnxRunner
    model_name: str
    model_kwargs: dict[str, Any]
    classes: tuple[str, ...]
    input_size: tuple[int, int, int]  # (C, H, W)
    preprocess: dict[str, Any] | None
    config: TrainConfig | None  # what it was trained with; None when exported from a weights-only checkpoint
    epoch: int | None
    path: str


def is_onnx(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".onnx"


def load_onnx(path: str | Path, *, threads: int | None = None) -> OnnxModel:
    """An ONNX file written by `reslab export` -> an OnnxModel ready to run on the CPU."""
    runner = OnnxRunner(path, threads=threads)
    desc = from_strings(runner.metadata, path)
    input_size = tuple(desc["input_size"])
    if tuple(runner.input_shape[1:]) != input_size:
        raise ReslabError(
            f"ONNX file {str(path)!r}: its graph takes {runner.input_shape[1:]} but its metadata says {input_size}"
        )
    outputs = runner.session.get_outputs()[0].shape
    if len(outputs) != 2 or (isinstance(outputs[1], int) and outputs[1] != len(desc["classes"])):
        raise ReslabError(
            f"ONNX file {str(path)!r}: its graph gives outputs of shape {tuple(outputs)} but its metadata names "
            f"{len(desc['classes'])} classes: the file was changed or not written by `reslab export`"
        )
    check_finite_onnx(runner, path)
    return OnnxModel(
        runner=runner,
        model_name=desc["model_name"],
        model_kwargs=desc["model_kwargs"],
        classes=tuple(desc["classes"]),
        input_size=input_size,
        preprocess=desc.get("preprocess"),
        config=TrainConfig.from_dict(desc["config"]) if desc.get("config") else None,
        epoch=desc.get("epoch"),
        path=str(path),
    )


def check_finite_onnx(runner: OnnxRunner, path: str | Path) -> None:
    """ReslabError if the file's weights hold a NaN or an infinity: named from its initializers where the `onnx`
    package is installed, else seen as non-finite logits on a probe batch (a NaN weight reaches the logits)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        onnx = None
    if onnx is not None:
        proto = onnx.load(str(path), load_external_data=False)
        bad = [
            t.name
            for t in proto.graph.initializer
            if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
            and not np.isfinite(numpy_helper.to_array(t)).all()
        ]
    else:
        shape = [d if isinstance(d, int) else 1 for d in runner.input_shape]
        probe = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        bad = [] if bool(torch.isfinite(runner(probe)).all()) else ["(found by its output on a probe batch)"]
    if bad:
        names = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise ReslabError(
            f"ONNX file {str(path)!r}: its weights hold NaN or infinite values ({names}): not a usable model"
        )


def load_model(
    source: TrainedModel | OnnxModel | str | Path, device: str | torch.device = "auto"
) -> TrainedModel | OnnxModel:
    """What `reslab eval` and `reslab predict` run: a checkpoint (a .pt file or its run folder, trained or weights
    only, or a .safetensors file) as a TrainedModel in eval mode on `device`, or an ONNX file exported by reslab as
    an OnnxModel (ONNX Runtime, on the CPU). A TrainedModel or OnnxModel already loaded is taken as it is."""
    if isinstance(source, OnnxModel) or (not isinstance(source, TrainedModel) and is_onnx(source)):
        if str(device) not in ("auto", "cpu"):
            raise ReslabError(f"--device {device}: an ONNX file runs on the CPU (ONNX Runtime's CPU build); use cpu")
        return source if isinstance(source, OnnxModel) else load_onnx(source)
    dev = pick_device(device)
    trained = source if isinstance(source, TrainedModel) else load_checkpoint(source, device=dev)
    trained.model.to(dev).eval()
    return trained
