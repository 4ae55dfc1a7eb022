"""Where and how tensors are computed: the device, mixed precision, and a description of the machine.

One place answers "what does --device auto mean here", "is bf16 native on this CPU" and "what machine produced this
number"; training, evaluation, prediction, benchmarks and experiments all ask here.
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reslab.errors import ReslabError


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def pick_device(name: str | torch.device, *, local_rank: int = 0) -> torch.device:
    """`--device auto|cpu|cuda|mps` -> a torch.device; under torchrun each process takes GPU `local_rank`."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ReslabError("--device cuda: no CUDA GPU is visible to this torch build; use --device cpu or auto")
        if local_rank >= torch.cuda.device_count():
            raise ReslabError(
                f"--nproc-per-node: process {local_rank} has no GPU of its own "
                f"({torch.cuda.device_count()} visible); start at most one process per GPU"
            )
        return torch.device("cuda", local_rank)
    if name == "mps":
        if not _mps_available():
            raise ReslabError("--device mps: MPS is not available here; use --device cpu or auto")
        return torch.device("mps")
    if name != "cpu":
        raise ReslabError(f"--device: expected one of auto, cpu, cuda, mps, got {name!r}")
    return torch.device("cpu")


@functools.cache
def cpu_has_bf16() -> bool:
    """True when oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower
    than fp32 (measured about 7x on an AVX2-only AMD EPYC)."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(probe is not None and probe())


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """`--amp` -> the autocast dtype (None = full fp32).

    auto: bf16 where the hardware does it natively (CUDA with bf16 support, CPUs with AVX512-BF16/AMX), fp16 on older
    GPUs (with a GradScaler), fp32 elsewhere (MPS, CPUs without native bf16, where it would be slower).
    """
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_bf16() else None
    return None


def amp_warning(amp: str, device: torch.device) -> str | None:
    """A warning when an explicit --amp will be much slower than fp32 here (None when it will not)."""
    if device.type != "cpu":
        return None
    if amp == "fp16":
        return "--amp fp16 on a CPU: torch has no fast fp16 CPU kernels (9-15x slower than fp32); prefer --amp auto"
    if amp == "bf16" and not cpu_has_bf16():
        return (
            "--amp bf16: this CPU has no native bf16 (no AVX512-BF16/AMX), so bf16 is emulated and runs several "
            "times slower than fp32; --amp auto picks fp32 here"
        )
    return None


def amp_name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[dtype]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast for `dtype`; a no-op context for fp32 (dtype None)."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def configure_device(device: torch.device) -> None:
    """Speed settings that never change results on the CPU: cuDNN autotuning and TF32 matmuls on CUDA."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def compiled(module: nn.Module, device: torch.device) -> nn.Module:
    """torch.compile(module) for training: one static graph per input shape (progressive resizing compiles two;
    a dynamic-shape graph runs slower on the CPU). The returned wrapper shares `module`'s parameters, so the
    state_dict that checkpoints save keeps its names. Inductor builds C++ for the CPU: without a compiler it would
    fail on the first step with a long traceback, so the missing compiler is named here instead."""
    if device.type == "cpu":
        cxx = os.environ.get("CXX")
        if not any(shutil.which(c) for c in ([cxx] if cxx else ["g++", "clang++"])):
            found = f"CXX={cxx!r} is not on PATH" if cxx else "neither g++ nor clang++ is on PATH"
            raise ReslabError(f"--compile: torch.compile needs a C++ compiler for the CPU; {found}")
    return torch.compile(module, dynamic=False)


def describe_machine() -> dict[str, Any]:
    """CPU model, cores, torch threads and version, CPU bf16 support, the GPU if any, and the load average."""
    cpu = platform.processor() or platform.machine() or "unknown CPU"
    try:  # platform.processor() is often empty or just "x86_64" on Linux
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_bf16": cpu_has_bf16(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    if hasattr(os, "getloadavg"):  # other work on the same cores is the first thing to check in a slow result
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    return info


def machine_line(info: dict[str, Any] | None = None) -> str:
    """describe_machine() as one line for a report."""
    info = info or describe_machine()
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ""
    load = f", load average {info['load_average_1min']}" if "load_average_1min" in info else ""
    return (
        f"{info['cpu']}, {info['cores']} cores (torch uses {info['torch_threads']} threads){gpu}, "
        f"torch {info['torch']}, CPU bf16 {'yes' if info['cpu_bf16'] else 'no'}{load}"
    )


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: a container's or taskset's share, not the machine's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def usable_threads(requested: int, *, flag: str = "--threads") -> tuple[int, str | None]:
    """(threads to use, a note or None): `requested` capped at usable_cpus().

    Capped with a note rather than refused: a run's thread count travels in its checkpoint, and a run started on a
    large machine must still resume on a small one; threads beyond the cores only wait for each other (OpenMP's
    spinning made 2 threads on 1 free core 20x slower, experiments/degradation.py)."""
    cpus = usable_cpus()
    if requested <= cpus:
        return requested, None
    return cpus, (
        f"{flag} {requested} is more than the {cpus} CPUs this process may use: using {cpus} (more threads than "
        "cores only slow PyTorch down)"
    )
