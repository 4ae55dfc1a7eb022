"""What one image meets inside a model, from one forward pass in eval mode: the input or output shape of named
layers, and what that says before training starts (reslab.precise_bn: a BatchNorm layer left with one value per
channel; reslab.memory: the activations a batch keeps; here: a convolution that torch's bf16 CPU kernels get
wrong)."""

from __future__ import annotations

import itertools
from collections.abc import Collection

import torch
from torch import nn


def first_conv(model: nn.Module) -> str | None:
    """The name of the model's first convolution (conv1, conv1.0 for the deep stem, 0.0 for the seeds' network):
    the first Conv2d registered, as every network of the family registers its stem first; None without one."""
    return next((name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def input_shapes(model: nn.Module, input_size: tuple[int, int, int], names: Collection[str]) -> dict[str, torch.Size]:
    """{name: the shape of its input} for the modules of `model` named in `names`, on one forward pass of one image
    of zeros of `input_size` (C, H, W), in eval mode (the mode is restored; nothing else changes)."""
    return _shapes(model, input_size, names, outputs=False)


def output_shapes(model: nn.Module, input_size: tuple[int, int, int], names: Collection[str]) -> dict[str, torch.Size]:
    """{name: the shape of its output}, as input_shapes."""
    return _shapes(model, input_size, names, outputs=True)


@torch.no_grad()
def _shapes(model: nn.Module, input_size: tuple[int, int, int], names: Collection[str], *, outputs: bool):
    shapes: dict[str, torch.Size] = {}

    def recorder(name: str):
        def record(module, args, output=None) -> None:
            shapes[name] = (output if outputs else args[0]).shape

        return record

    register = "register_forward_hook" if outputs else "register_forward_pre_hook"
    hooks = [getattr(m, register)(recorder(name)) for name, m in model.named_modules() if name in names]
    if not hooks:
        return shapes
    was_training = model.training
    model.eval()
    try:
        p = next(itertools.chain(model.parameters(), model.buffers()))
        model(torch.zeros(1, *input_size, device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return shapes


def cpu_bf16_hazard(model: nn.Module, input_size: tuple[int, int, int]) -> str | None:
    """Where training `model` on images of `input_size` (C, H, W) in bf16 on a CPU goes wrong, in words; None where
    it does not. torch 2.13's bf16 CPU convolution backward reads uninitialised memory for a convolution with a
    kernel larger than 1 and a stride above 1 that sees a 1x1 map (gradients differ from run to run, NaN in some;
    fp32 is exact): ImageNet-style networks on images of 16 px or less."""
    strided = [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1 and max(m.stride) > 1
    ]
    shapes = input_shapes(model, input_size, strided)
    # in the order the forward pass met them; a layer the forward pass never calls has no shape and no hazard
    name = next((n for n, shape in shapes.items() if tuple(shape[-2:]) == (1, 1)), None)
    if name is None:
        return None
    _, h, w = input_size
    return (
        f"{name!r}, a strided convolution, sees a 1x1 map of a {h}x{w} input, where torch's bf16 CPU kernels compute "
        "wrong gradients"
    )
