"""reslab's modules are layered: each imports only from the layers below it, so data flows one way
(CLI -> config -> data + model -> loop -> checkpoint/metrics/plots) and there is no import cycle."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "reslab"

# bottom first; a module may import from any lower layer and from its own package (reslab.models.*, reslab.data.*)
LAYERS = [
    {"errors"},
    {"atomic"},
    {"config"},
    {"device"},
    {"distributed"},
    {"models", "data", "plots", "optional"},
    {"metadata", "memory"},
    {"safetensors_io"},
    {"checkpoint"},
    {"backends"},
    {"evaluate", "optim", "weights", "understand", "ema", "precise_bn"},
    {"runstate"},
    {"loop", "finetune", "tblog"},
    {"rundir", "report"},
    {"train"},
    {"experiments", "predict", "summary"},
    {"export"},
    {"cli"},
    {"__main__"},
]
LAYER_OF = {name: i for i, layer in enumerate(LAYERS) for name in layer}
FIT_CALLERS = {"experiments", "cli"}  # who may import reslab.train


def unit(module: str) -> str:
    """reslab.data.loader -> data; reslab.train -> train."""
    return module.split(".")[1]


def reslab_imports(path: Path) -> list[tuple[str, int]]:
    """(imported reslab module, line) for every import in the file, at any depth (function-level ones too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("reslab.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "reslab":  # `from reslab import distributed as D`, `from reslab import __version__`
                found += [(f"reslab.{a.name}", node.lineno) for a in node.names if not a.name.startswith("__")]
            elif node.module.startswith("reslab."):
                found.append((node.module, node.lineno))
    return found


MODULES = sorted(p for p in SRC.rglob("*.py") if p.name != "__init__.py" or p.parent != SRC)


def test_every_module_has_a_layer():
    units = {p.relative_to(SRC).parts[0].removesuffix(".py") for p in MODULES}
    assert units <= set(LAYER_OF), f"modules without a layer in this test: {sorted(units - set(LAYER_OF))}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_only_from_below(path):
    me = path.relative_to(SRC).parts[0].removesuffix(".py")
    for module, line in reslab_imports(path):
        other = unit(module)
        if other == me:
            assert path.parent != SRC or module == f"reslab.{me}", f"{path.name}:{line} imports itself"
            continue
        assert LAYER_OF[other] < LAYER_OF[me], f"{path.relative_to(SRC)}:{line}: {me} imports {module} (upward)"
        if other == "train":
            assert me in FIT_CALLERS, f"{path.relative_to(SRC)}:{line}: only fit's callers import reslab.train"


HEAVY = ("torch", "numpy", "matplotlib", "PIL", "onnx", "onnxruntime", "safetensors", "tensorboard", "huggingface_hub")


def test_the_package_itself_imports_nothing_heavy():
    # `import reslab` (and so `reslab --help`) must not load torch: its API is resolved lazily. What a fresh
    # interpreter holds after the import, not what the file names: an import hidden in any module counts too
    code = "import sys, reslab, reslab.cli; print(' '.join(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(SRC.parent)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    loaded = {name.split(".")[0] for name in out.split()}
    assert "reslab" in loaded and loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))
