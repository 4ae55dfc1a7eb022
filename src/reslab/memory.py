"""What a training setting needs in memory, estimated before anything is allocated, against what the machine has.

A too-large `--resize` or `--image-size` otherwise fails far from its cause: a MemoryError traceback in the middle of
the first batch, or (decoding one huge image, or on Linux's overcommit) the kernel kills the process with no message
at all. The estimate is a lower bound, so only what cannot fit is refused:

- one batch of stored images (uint8) and its float32 copy, and, for an image folder, one image decoded at that size;
- the activations training keeps for the backward pass: the outputs of every convolution, BatchNorm and linear layer
  for one batch, counted by running one image through the model: a zero-weight copy on the CPU, or for images larger
  than 512x512 (whose one-image pass would itself be large) on PyTorch's "meta" device (shapes only: nothing is
  allocated). The meta device is not the default because its first call imports sympy and torch._dynamo, 1.5 s of
  every run's start-up;
- the weights, their gradients and the optimiser's momentum.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
from torch import nn

from reslab.config import TrainConfig
from reslab.errors import ReslabError
from reslab.models import build_model
from reslab.models.probe import output_shapes

NATIVE_SIZE = {"cifar10": 32, "cifar100": 32, "imagefolder": 32}  # the others: 28x28
RGB = ("cifar10", "cifar100", "imagefolder")
FLOAT32 = 4
SMALL_INPUT = 512 * 512  # pixels: activation_bytes runs one such image on the CPU, larger ones on "meta"


def available_memory(device: torch.device) -> int | None:
    """Bytes this process can still allocate on `device`: the GPU's free memory, or MemAvailable capped by the
    cgroup's (a container's) limit; None where it cannot be told."""
    if device.type == "cuda":
        with contextlib.suppress(Exception):
            return torch.cuda.mem_get_info(device)[0]
        return None
    if device.type != "cpu":
        return None
    found = None
    with contextlib.suppress(OSError, ValueError, StopIteration):
        lines = Path("/proc/meminfo").read_text().splitlines()
        found = int(next(x for x in lines if x.startswith("MemAvailable:")).split()[1]) * 1024
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            left = int(limit) - used
            found = left if found is None else min(found, left)
    return found


def activation_bytes(model: nn.Module, input_size: tuple[int, int, int], batch: int, *, itemsize: int) -> int:
    """Bytes of the conv/BN/linear outputs of one forward pass of `batch` images: what backward keeps. `model` is
    on the meta device (no weights); each output is measured for one image, times `batch`."""
    _, h, w = input_size
    if h * w <= SMALL_INPUT:
        model = model.to_empty(device="cpu")
        with torch.no_grad():
            for t in [*model.parameters(), *model.buffers()]:
                t.zero_()  # uninitialised memory may hold denormals or NaNs, which are slow to compute with
    layers = [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
    shapes = output_shapes(model, input_size, layers)
    return sum(math.prod(shape[1:]) for shape in shapes.values()) * itemsize * batch


def training_estimate(config: TrainConfig) -> tuple[int, list[str], str]:
    """(bytes, what they are made of, the flag that sets the image size) for one training step of `config`."""
    native = NATIVE_SIZE.get(config.dataset, 28)
    # the largest batch trained: --progressive-resize is usually the smaller size, but need not be
    size = max(config.crop_size or config.resize or config.image_size or native, config.progressive_resize or 0)
    stored = max(s for s in (config.resize, config.image_size, size) if s is not None)
    sizes = (
        ("--crop-size", config.crop_size),
        ("--resize", config.resize),
        ("--progressive-resize", config.progressive_resize),
    )
    flag = next(  # a size at or below the images' own is not what makes a step too large: the batch is
        (f for f, v in sizes if v == size and v > native),
        "--image-size" if config.image_size and config.image_size > native else "--batch-size",
    )
    chans = config.in_chans or (3 if config.dataset in RGB else 1)
    b = config.batch_size
    parts = {
        "the batch's images": b * chans * stored * stored * (1 + FLOAT32),
        "one image decoded": chans * stored * stored if config.dataset == "imagefolder" else 0,
    }
    with contextlib.suppress(Exception):  # an architecture that cannot run on "meta": its activations not counted
        kwargs = {**config.model_kwargs, "in_chans": chans, "num_classes": 10}
        with torch.device("meta"):
            model = build_model(config.model, **kwargs)
        itemsize = FLOAT32 if config.amp == "off" else 2  # under autocast (bf16, fp16) at least half of them are 16-bit
        parts[f"{config.model}'s activations"] = activation_bytes(model, (chans, size, size), b, itemsize=itemsize)
        parts["weights, gradients, momentum"] = 3 * FLOAT32 * sum(p.numel() for p in model.parameters())
    described = [f"{name} {gib(n)}" for name, n in parts.items() if n]
    return sum(parts.values()), described, flag


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 / 10 else f"{n / 2**20:.0f} MiB"


def check_training_memory(config: TrainConfig, device: torch.device) -> None:
    """ReslabError, before any allocation, if one training step of `config` cannot fit in what `device` has free."""
    free = available_memory(device)
    if free is None:
        return
    need, parts, flag = training_estimate(config)
    if need <= free:
        return
    size = config.crop_size or config.resize or config.image_size
    at = f"at {size}x{size}, " if size else ""
    raise ReslabError(
        f"{flag}: training needs at least {gib(need)} ({at}batch {config.batch_size}: {', '.join(parts)}), more than "
        f"the {gib(free)} this machine has available ({device.type}); choose a smaller {flag}"
        + (" or --batch-size" if flag != "--batch-size" else "")
    )
