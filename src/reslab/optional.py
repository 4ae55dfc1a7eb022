"""Optional packages (ONNX, ONNX Runtime, safetensors): imported where they are used, with one message on how to
install them where they are missing."""

from __future__ import annotations

import importlib
from typing import Any

from reslab.errors import ReslabError

EXTRA_HINT = "pip install 'reslab[export]' (onnx, onnxscript, onnxruntime, safetensors)"


def require(module: str, what: str) -> Any:
    """Import an optional dependency, or a ReslabError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ReslabError(f"{what} needs the Python package {module.split('.')[0]!r}: {EXTRA_HINT}") from None
