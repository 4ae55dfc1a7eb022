"""Optional packages (ONNX, ONNX Runtime, safetensors): imported where they are used, with one message on how to
install them where they are missing."""

from __future__ import annotations

import importlib
from typing import Any

from reslab.errors import ReslabError

EXTRA_HINT = "pip install -e '.[export]' (onnx, onnxscript, onnxruntime, safetensors)"


def require(module: str, what: str) -> Any:
    """Import an optional dependency, or a ReslabError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if interrupted(e):  # Ctrl-C during the import: a C extension's init reports it as an ImportError
            raise KeyboardInterrupt from None
        raise ReslabError(f"{what} needs the Python package {module.split('.')[0]!r}: {EXTRA_HINT}") from None


def interrupted(e: BaseException) -> bool:
    """Whether `e` was caused by a KeyboardInterrupt (pybind11 turns one raised in a module's init into ImportError)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False
