"""Look inside a model: the list of models, a layer table with output shapes, parameters and multiply-adds, and the
paper's architecture table.

Shapes and costs come from one forward pass with hooks, on the meta device when the model is built here: no memory
for weights or activations, and a ResNet-152 at 224x224 takes a fraction of a second.

Multiply-adds (MACs) count convolutions and linear layers only, per image; that is how torchvision's published
GFLOPS are counted (1.814 for resnet18 ... 11.514 for resnet152). BN, ReLU, pooling and additions are left out:
together they are under 1% of a ResNet's cost.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from reslab.errors import ReslabError
from reslab.models import list_models, model_entry
from reslab.models.probe import first_conv

PAPER_DEPTHS = (18, 34, 50, 101, 152)
# He et al. 2015, table 1, bottom row ("FLOPs", which are multiply-adds): the v1 models, stride on the first 1x1
PAPER_GFLOPS = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}


@dataclass(frozen=True)
class LayerRow:
    name: str  # dotted path, as in state_dict keys ("layer1.0.conv1")
    type: str
    depth: int  # 1 for the model's children, 2 for their children, ...
    output_shape: tuple[int, ...] | None  # without the batch dimension; None if the module never ran
    params: int  # of the whole subtree
    macs: int  # multiply-adds of the whole subtree, per image


@dataclass(frozen=True)
class ModelSummary:
    input_size: tuple[int, int, int]
    rows: list[LayerRow]
    output_shape: tuple[int, ...]
    total_params: int
    trainable_params: int
    macs: int  # per image: convolutions and linear layers
    collapsed: list[str]  # strided layers whose input is smaller than their stride (the input is too small)


def summarize(model: nn.Module, input_size: tuple[int, int, int]) -> ModelSummary:
    """Run one image of `input_size` (C, H, W) through `model` in eval mode and record every module's output shape,
    parameters and multiply-adds. A model on the meta device costs no memory and little time."""
    names = {m: name for name, m in model.named_modules()}  # first name of a shared module
    shapes: dict[str, tuple[int, ...]] = {}
    own_macs: dict[str, int] = {}
    collapsed: list[str] = []

    def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
        name = names[module]
        if isinstance(output, torch.Tensor) and name not in shapes:
            shapes[name] = tuple(output.shape[1:])
        if isinstance(module, nn.Conv2d):
            # each output element: (in_channels / groups) * kh * kw multiply-adds
            per_out = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            own_macs[name] = own_macs.get(name, 0) + output.numel() * per_out
        elif isinstance(module, nn.Linear):
            own_macs[name] = own_macs.get(name, 0) + output.numel() * module.in_features
        stride = getattr(module, "stride", 1)
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)) and inputs:
            sh, sw = (stride, stride) if isinstance(stride, int) else stride
            h, w = inputs[0].shape[-2:]
            if h < sh or w < sw:
                collapsed.append(name)

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    handles = [m.register_forward_hook(hook) for m in names]
    was_training = model.training
    model.eval()  # BN in training mode refuses a batch of one 1x1 map
    try:
        with torch.no_grad(), _FastMeta():
            out = model(torch.zeros(1, *input_size, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    rows = []
    for module, name in names.items():
        if not name:
            continue
        prefix = name + "."
        macs = sum(v for k, v in own_macs.items() if k == name or k.startswith(prefix))
        rows.append(
            LayerRow(
                name=name,
                type=type(module).__name__,
                depth=name.count(".") + 1,
                output_shape=shapes.get(name),
                params=sum(p.numel() for p in module.parameters()),
                macs=macs,
            )
        )
    return ModelSummary(
        input_size=tuple(input_size),
        rows=rows,
        output_shape=tuple(out.shape[1:]),
        total_params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        macs=sum(own_macs.values()),
        collapsed=collapsed,
    )


class _FastMeta(TorchFunctionMode):
    """Shape-only stand-ins for the meta kernels that are slow. Batch norm runs a Python decomposition (about 10 ms
    a layer, most of a ResNet-152 summary); the first out-of-place ReLU, addition, adaptive pool or linear layer
    imports torch._dynamo (over a second). Their outputs' shapes are all a summary needs."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        x = args[0] if args else None
        if not (isinstance(x, torch.Tensor) and x.is_meta):
            return func(*args, **kwargs)
        if func is F.batch_norm or func is torch.batch_norm or func is torch.relu:
            return torch.empty_like(x)
        if func is F.relu:
            return x if kwargs.get("inplace", args[1] if len(args) > 1 else False) else torch.empty_like(x)
        if func is torch.Tensor.add or func is torch.add:  # `a + b` arrives as Tensor.add
            other = args[1] if len(args) > 1 else kwargs["other"]
            shape = torch.broadcast_shapes(x.shape, other.shape) if isinstance(other, torch.Tensor) else x.shape
            return x.new_empty(shape)
        if func is F.adaptive_avg_pool2d:
            size = args[1] if len(args) > 1 else kwargs["output_size"]
            h, w = (size, size) if isinstance(size, int) else size
            return x.new_empty((*x.shape[:-2], h or x.shape[-2], w or x.shape[-1]))
        if func is F.linear:
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            return x.new_empty((*x.shape[:-1], weight.shape[0]))
        return func(*args, **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# input checks


def parse_input_size(text: str) -> tuple[int, int, int]:
    """ "3x224x224" -> (3, 224, 224)."""
    m = re.fullmatch(r"\s*(\d+)\s*[x,]\s*(\d+)\s*[x,]\s*(\d+)\s*", text.lower())
    if not m or 0 in (size := tuple(int(g) for g in m.groups())):
        raise ReslabError(
            f"--input: expected CxHxW (three positive whole numbers), e.g. 3x224x224 or 1x28x28; got {text!r}"
        )
    return size


def expected_in_chans(model: nn.Module) -> int | None:
    """Input channels of the first convolution (None if there is none)."""
    name = first_conv(model)
    return None if name is None else model.get_submodule(name).in_channels


def min_input_size(model: nn.Module, in_chans: int, limit: int = 4096) -> int:
    """The smallest square size at which no stride-2 layer receives a map smaller than its stride.

    Convolutions with padding accept any size, so this is the meaningful floor: below it, some layer has a 1x1 map
    left to halve and later stages compute on padding alone."""
    lo, hi = 1, limit
    while lo < hi:  # output sizes grow with the input size, so the predicate is monotone
        mid = (lo + hi) // 2
        if summarize(model, (in_chans, mid, mid)).collapsed:
            lo = mid + 1
        else:
            hi = mid
    return lo


def model_macs(name: str, input_size: tuple[int, int, int], **overrides: Any) -> int:
    """Multiply-adds per image of registered model `name` at `input_size` (C, H, W), counted as `reslab summary`
    counts them (convolutions and linear layers: torchvision's GFLOPS) on the meta device; overrides go to
    build_model. A ReslabError if the input does not suit the model (channels, or too small)."""
    return _checked_summary(name, _build_meta(name, **overrides), tuple(input_size)).macs


def _build_meta(name: str, **overrides: Any) -> nn.Module:
    entry = model_entry(name)  # unknown name: a ReslabError with the nearest names
    with torch.device("meta"):
        return entry.build(**overrides)


def _checked_summary(name: str, model: nn.Module, input_size: tuple[int, int, int]) -> ModelSummary:
    shape = "x".join(map(str, input_size))
    want = expected_in_chans(model)
    if want is not None and input_size[0] != want:
        raise ReslabError(
            f"input {shape}: {name} expects {want}-channel images (in_chans={want}), found {input_size[0]} "
            f"channel{'s' if input_size[0] != 1 else ''}; build it with in_chans={input_size[0]} "
            f"(--in-chans {input_size[0]}) or give a {want}x{input_size[1]}x{input_size[2]} input"
        )
    summary = summarize(model, input_size)
    if summary.collapsed:
        need = min_input_size(model, input_size[0])
        raise ReslabError(
            f"input {shape} is too small for {name}: it needs at least {need}x{need} pixels "
            f"(at {input_size[1]}x{input_size[2]}, {summary.collapsed[0]} would have a 1x1 map left to downsample); "
            f"give an input of at least {input_size[0]}x{need}x{need}"
        )
    return summary


# ----------------------------------------------------------------------------------------------------------------------
# text


def _si(n: int | float) -> str:
    if n == 0:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}" if unit == "G" else f"{n / scale:.1f}{unit}"
    return str(int(n))


def _shape(shape: tuple[int, ...] | None) -> str:
    return "-" if shape is None else "x".join(map(str, shape))


def _table(header: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> str:
    """Columns padded to fit; cells may span several lines; columns in `right` are right-aligned."""
    split = [[cell.split("\n") for cell in row] for row in [header, *rows]]
    widths = [max(len(line) for row in split for line in row[i]) for i in range(len(header))]
    out = []
    for r, row in enumerate(split):
        for k in range(max(len(cell) for cell in row)):
            parts = []
            for i, cell in enumerate(row):
                text = cell[k] if k < len(cell) else ""
                parts.append(text.rjust(widths[i]) if i in right else text.ljust(widths[i]))
            out.append("  ".join(parts).rstrip())
        if r == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def format_model_list(filter: str = "") -> str:
    """Every registered model (or those whose name contains `filter`): parameters at its defaults, default input,
    classes and a one-line description."""
    names = list_models(filter)
    if not names:
        raise ReslabError(f"--filter: no model name contains {filter!r}; `reslab models` lists them all")
    rows = []
    for name in names:
        entry = model_entry(name)
        params = sum(p.numel() for p in _build_meta(name).parameters())
        rows.append(
            [name, f"{params:,}", _shape(entry.default_input_size), str(entry.default_num_classes), entry.description]
        )
    table = _table(["model", "params", "input", "classes", "description"], rows, right={1, 3})
    return f"{table}\n\n{len(names)} models. `reslab summary NAME` shows one layer by layer."


def format_summary(name: str, input_size: tuple[int, int, int] | None = None, depth: int = 2, **overrides: Any) -> str:
    """A layer table of model `name` down to `depth` levels of the module tree, then parameter and cost totals.

    input_size (C, H, W) defaults to the model's own; overrides go to build_model (num_classes, in_chans, ...)."""
    entry = model_entry(name)
    model = _build_meta(name, **overrides)
    if input_size is None:
        c = overrides.get("in_chans", entry.default_in_chans)
        input_size = (c, *entry.default_input_size[1:])
    summary = _checked_summary(name, model, tuple(input_size))

    rows = [
        [
            "  " * (r.depth - 1) + r.name,
            r.type,
            _shape(r.output_shape),
            f"{r.params:,}" if r.params else "-",
            _si(r.macs),
        ]
        for r in summary.rows
        if r.depth <= depth
    ]
    built = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
    lines = [
        f"{name}: {entry.description}" + (f" (built with {built})" if built else ""),
        f"input: {_shape(summary.input_size)}",
        "",
    ]
    if rows:
        lines += [_table(["layer", "type", "output", "params", "mult-adds"], rows, right={3, 4}), ""]
    lines += [
        f"output:               {_shape(summary.output_shape)}",
        f"parameters:           {summary.total_params:,}",
        f"trainable parameters: {summary.trainable_params:,}",
        f"multiply-adds:        {summary.macs / 1e9:.3f} G per image (convolutions and linear layers: the way "
        "torchvision counts its GFLOPS)",
    ]
    return "\n".join(lines)


def _conv_spec(conv: nn.Conv2d) -> str:
    k = conv.kernel_size[0]
    groups = f", {conv.groups} groups" if conv.groups > 1 else ""
    return f"{k}x{k}, {conv.out_channels}{groups}"


def _block_spec(block: nn.Module, count: int) -> str:
    convs = [m for n, m in block.named_modules() if isinstance(m, nn.Conv2d) and "downsample" not in n]
    specs = [_conv_spec(c) for c in convs]
    width = max(map(len, specs))
    return "\n".join(f"[{s.ljust(width)}]" + (f" x{count}" if i == 0 else "") for i, s in enumerate(specs))


def format_stages_table(input_size: tuple[int, int, int] = (3, 224, 224)) -> str:
    """He et al. (2015) table 1, rebuilt from the models themselves: resnet18..resnet152 side by side, each stage's
    output size and blocks, then parameters and multiply-adds of each depth (v1.5 as built, v1 as in the paper)."""
    names = [f"resnet{d}" for d in PAPER_DEPTHS]
    models = [_build_meta(n) for n in names]
    summaries = [summarize(m, input_size) for m in models]
    v1_macs = [summarize(_build_meta(n, stride_placement="v1"), input_size).macs for n in names]
    shapes = {r.name: r.output_shape for r in summaries[0].rows}

    def size(layer: str) -> str:
        return "x".join(map(str, shapes[layer][1:]))

    conv1 = models[0].conv1
    stem = f"{conv1.kernel_size[0]}x{conv1.kernel_size[0]}, {conv1.out_channels}, stride {conv1.stride[0]}"
    pool = models[0].maxpool
    rows = [["conv1", size("conv1"), *[stem] * len(models)]]
    for i in range(1, 5):
        layer = f"layer{i}"
        cells = []
        for m in models:
            stage = getattr(m, layer)
            spec = _block_spec(stage[0], len(stage))
            if i == 1:
                spec = f"{pool.kernel_size}x{pool.kernel_size} max pool, stride {pool.stride}\n{spec}"
            cells.append(spec)
        rows.append([f"conv{i + 1}_x", size(layer), *cells])
    rows.append(["head", "1x1", *[f"average pool\n{m.fc.out_features}-d fc" for m in models]])
    rows.append(["params", "", *[_si(s.total_params) for s in summaries]])
    rows.append(["mult-adds (v1.5)", "", *[f"{s.macs / 1e9:.3f} G" for s in summaries]])
    rows.append(["mult-adds (v1)", "", *[f"{m / 1e9:.3f} G" for m in v1_macs]])
    rows.append(["paper (v1)", "", *[f"{PAPER_GFLOPS[d]} G" for d in PAPER_DEPTHS]])
    table = _table(["stage", "output", *names], rows)
    shape = "x".join(map(str, input_size))
    return (
        f"ResNet architectures for ImageNet (He et al. 2015, table 1), measured on the models at {shape}.\n"
        "Blocks are [kernel, channels] x count; v1.5 (torchvision, built here) strides in the 3x3 conv of a "
        "bottleneck, v1 (the paper) in its first 1x1.\n\n" + table
    )
