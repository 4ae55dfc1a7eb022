"""reslab: deep residual networks (ResNet) to build, inspect, train and understand."""

__version__ = "0.2.0"

# The public API, imported lazily so that `import reslab` and `reslab --help` stay fast (torch loads on first use).
_API = {
    "list_models": "reslab.models",
    "build_model": "reslab.weights",  # reslab.models.build_model, plus weights=... (reslab.weights.build_model)
    "fit": "reslab.train",
    "TrainConfig": "reslab.config",
    "load_checkpoint": "reslab.checkpoint",
}


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'reslab' has no attribute {name!r}")


__all__ = ["__version__", *_API]
