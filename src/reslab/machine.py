"""What machine a measurement came from: every reported speed names it (benchmarks, experiment results)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def describe_machine() -> dict[str, Any]:
    """CPU model, cores, torch threads and version, CPU bf16 support, the GPU if any, and the load average."""
    import torch

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
        "cpu_bf16": bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)()),
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
