"""reslab's safetensors file: the model's state_dict, every buffer included (BN running statistics and
num_batches_tracked), under its own key names and dtypes, with the model's description (reslab.metadata) in the
header. It reads back as a weights-only checkpoint dict (`read_safetensors`), so
`reslab.load_checkpoint("model.safetensors")` works. The `safetensors` package is optional
(`pip install -e '.[export]'`): it is imported where it is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reslab.atomic import write_bytes
from reslab.errors import ReslabError
from reslab.metadata import describe, from_strings, to_strings
from reslab.optional import require


def write_safetensors(ckpt: dict[str, Any], path: str | Path) -> Path:
    """The weights of `ckpt` (its "model" state_dict, buffers included) and its description, in one .safetensors."""
    st = require("safetensors.torch", "writing a .safetensors file")
    tensors = {k: v.detach().cpu().contiguous() for k, v in ckpt["model"].items()}
    # weights only: no training config (a checkpoint with one would look like a run to continue or evaluate)
    desc = {k: v for k, v in describe(ckpt).items() if k not in ("config", "epoch")}
    # serialised in memory, written atomically by reslab: safetensors' own file writer reports a full disk as its own
    # error type and leaves a partial file
    return write_bytes(Path(path), st.save(tensors, metadata=to_strings(desc)))


def read_safetensors(path: str | Path) -> dict[str, Any]:
    """A reslab .safetensors file -> a weights-only checkpoint dict (format 2: the description and "model")."""
    path = Path(path)
    st = require("safetensors", f"reading {str(path)!r}")
    try:
        with st.safe_open(str(path), framework="pt") as f:
            strings = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    except FileNotFoundError:
        raise ReslabError(f"checkpoint {str(path)!r}: no such file") from None
    except Exception as e:  # safetensors raises its own SafetensorError on a damaged header
        why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ReslabError(f"checkpoint {str(path)!r}: not a safetensors file ({why})") from None
    desc = from_strings(strings, path)
    return {**desc, "model": state}
