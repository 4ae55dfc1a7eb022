"""Lesion study at test time: delete residual blocks, or reorder them, and measure what a trained network loses.

Veit, Wilber and Belongie (2016), "Residual Networks Behave Like Ensembles of Relatively Shallow Networks" (NeurIPS),
section 4: a residual block computes y = f(x) + shortcut(x); deleting it leaves y = shortcut(x), so every path through
the network that skipped that block survives. They (a) delete each block of a trained CIFAR ResNet-110 in turn
(fig. 3: small damage, except at the blocks that change resolution, whose shortcut is a projection), (b) delete k
random blocks (fig. 5a: the error rises smoothly with k) and (c) reorder the network by swapping k random pairs of
blocks of compatible shape (fig. 5b, against the Kendall tau of the new order). A plain network (VGG in the paper)
has one path, so deleting any layer breaks it.

What "deleting a block" means here, for each block reslab builds (`BranchRemoved`):

  BasicBlock, Bottleneck (post-activation)  relu(shortcut(x)): the branch goes, the ReLU after the addition stays, as
                                             it acts on the shortcut's signal too (a no-op for identity and option-A
                                             shortcuts, whose inputs are already post-ReLU; it matters for a 1x1
                                             projection with its BN, options B and C)
  PreActBasicBlock, PreActBottleneck         shortcut(x): the identity, or the projection of the pre-activated input
                                             relu(bn1(x)) (the block's own projection input, fb.resnet.torch)
  Residual (d2l)                             relu(x), or relu(conv3(x)) with its 1x1 shortcut conv
  a plain block (shortcut="none")            the identity, where the block keeps the shape

A plain block that changes the shape (stride 2, more channels) has no shortcut whose signal could stand in for it,
so by default it is reported as not removable and skipped (`plain_downsampling="skip"`): substituting a module the
plain network never had would measure the substitute, not the network. `plain_downsampling="zero-pad"` puts option A
(subsample by the stride, zero channels appended, `ShortcutA`) in its place for those who want that comparison.

Deletion swaps modules in and out (`lesioned`, `reordered`) and puts the very same module objects back, so the model
is left bit for bit as it was; nothing is copied or re-initialised.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reslab.errors import ReslabError
from reslab.models import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck, Residual, ShortcutA
from reslab.understand.common import Evaluate, eval_mode

BLOCK_TYPES = (BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck, Residual)
PLAIN_DOWNSAMPLING = ("skip", "zero-pad")


@dataclass(frozen=True)
class BlockInfo:
    """One block of a network, in depth order, and what deleting it means."""

    name: str  # module path, e.g. "layer2.0"
    stage: str  # the Sequential holding it, e.g. "layer2"
    index: int  # its index in that stage
    position: int  # its index among all blocks, input to output
    inplanes: int
    out_planes: int
    stride: int
    residual: bool  # False in a plain network (shortcut="none")
    substitute: str | None  # what stands in when deleted: "shortcut", "identity", "zero-pad"; None: not removable

    @property
    def changes_shape(self) -> bool:
        return self.stride != 1 or self.inplanes != self.out_planes

    @property
    def removable(self) -> bool:
        return self.substitute is not None


def _last_conv(block: nn.Module) -> nn.Conv2d:
    # Residual's conv3 is its shortcut, not its branch
    return block.conv3 if isinstance(block, (Bottleneck, PreActBottleneck)) else block.conv2


def _stride(block: nn.Module) -> int:
    return block.conv1.stride[0] if isinstance(block, Residual) else block.stride


def list_blocks(model: nn.Module, *, plain_downsampling: str = "skip") -> list[BlockInfo]:
    """Every residual (or plain) block of `model`, in the order the input meets them."""
    if plain_downsampling not in PLAIN_DOWNSAMPLING:
        raise ReslabError(
            f"plain_downsampling: expected 'skip' (plain blocks that change shape are not removed) or 'zero-pad' "
            f"(option A in their place), got {plain_downsampling!r}"
        )
    blocks = []
    for name, m in model.named_modules():
        if not isinstance(m, BLOCK_TYPES):
            continue
        stage, _, index = name.rpartition(".")
        residual = isinstance(m, Residual) or m.residual
        inplanes, out_planes, stride = m.conv1.in_channels, _last_conv(m).out_channels, _stride(m)
        changes_shape = stride != 1 or inplanes != out_planes
        if residual:
            substitute = "shortcut"
        elif not changes_shape:
            substitute = "identity"
        else:
            substitute = None if plain_downsampling == "skip" else "zero-pad"
        blocks.append(
            BlockInfo(name, stage, int(index), len(blocks), inplanes, out_planes, stride, residual, substitute)
        )
    if not blocks:
        raise ReslabError(
            f"{type(model).__name__} has no residual blocks to lesion (expected a reslab ResNet or D2LResNet)"
        )
    return blocks


class BranchRemoved(nn.Module):
    """A residual block whose branch is deleted: only its shortcut path computes (Veit et al. 2016, section 4.2).

    Holds the original block (for its shortcut modules) without changing it; see the module docstring for what the
    shortcut path of each block type is.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        if isinstance(block, (BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck)) and not block.residual:
            raise ReslabError("a plain block has no shortcut to keep; delete it with an identity instead")
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.block
        if isinstance(b, Residual):
            return F.relu(x if b.conv3 is None else b.conv3(x))
        if isinstance(b, (PreActBasicBlock, PreActBottleneck)):
            if b.downsample is None:
                return x
            return b.downsample(x if b.bn1 is None else F.relu(b.bn1(x)))
        # post-activation: not in place, the input may still be needed (autograd, the caller)
        return F.relu(x if b.downsample is None else b.downsample(x))


def _substitute(block: nn.Module, info: BlockInfo) -> nn.Module:
    if info.substitute == "shortcut":
        return BranchRemoved(block)
    if info.substitute == "identity":
        return nn.Identity()
    return ShortcutA(info.inplanes, info.out_planes, info.stride)


def _swap_in(model: nn.Module, info: BlockInfo, module: nn.Module) -> nn.Module:
    """Put `module` where `info`'s block sits; returns what was there."""
    parent = model.get_submodule(info.stage) if info.stage else model
    old = parent._modules[str(info.index)]
    parent._modules[str(info.index)] = module  # same key, so the Sequential's order is kept
    return old


def _by_name(model: nn.Module, names: Sequence[str], plain_downsampling: str) -> list[BlockInfo]:
    blocks = {b.name: b for b in list_blocks(model, plain_downsampling=plain_downsampling)}
    unknown = [n for n in names if n not in blocks]
    if unknown:
        raise ReslabError(f"no block named {', '.join(map(repr, unknown))}; the blocks are {', '.join(blocks)}")
    if len(set(names)) != len(names):
        raise ReslabError(f"each block can be deleted once, got {list(names)}")
    return [blocks[n] for n in names]


@contextlib.contextmanager
def lesioned(model: nn.Module, names: Sequence[str], *, plain_downsampling: str = "skip") -> Iterator[nn.Module]:
    """Inside the block, the named blocks are deleted (see `BranchRemoved`); after it, the model is as it was.

    Raises ReslabError for an unknown name or a plain block that changes shape (with plain_downsampling="skip").
    """
    infos = _by_name(model, names, plain_downsampling)
    fixed = [b.name for b in infos if not b.removable]
    if fixed:
        raise ReslabError(
            f"{', '.join(fixed)}: a plain block that changes the shape cannot be removed (nothing carries its "
            "input to the next block's shape); pass plain_downsampling='zero-pad' to put option A in its place"
        )
    originals = []
    try:
        for info in infos:
            block = model.get_submodule(info.name)
            originals.append((info, _swap_in(model, info, _substitute(block, info))))
        yield model
    finally:
        for info, block in reversed(originals):
            _swap_in(model, info, block)


def _signature(b: BlockInfo) -> tuple[int, int, int]:
    return (b.inplanes, b.out_planes, b.stride)


@contextlib.contextmanager
def reordered(model: nn.Module, swaps: Sequence[tuple[str, str]]) -> Iterator[nn.Module]:
    """Inside the block, the pairs of blocks in `swaps` trade places, applied in order; after it, the original order.

    Only blocks with the same (inplanes, out_planes, stride) can trade places (Veit et al. 2016, section 4.4:
    "compatible dimensionality"); ReslabError otherwise.
    """
    infos = {b.name: b for b in list_blocks(model)}
    arrangement = {name: name for name in infos}  # slot -> the block that sits there
    for a, b in swaps:
        for n in (a, b):
            if n not in infos:
                raise ReslabError(f"no block named {n!r}; the blocks are {', '.join(infos)}")
        if _signature(infos[a]) != _signature(infos[b]):
            raise ReslabError(
                f"{a} and {b} cannot trade places: (inplanes, planes, stride) {_signature(infos[a])} vs "
                f"{_signature(infos[b])}"
            )
        arrangement[a], arrangement[b] = arrangement[b], arrangement[a]
    modules = {name: model.get_submodule(name) for name in infos}
    moved = [slot for slot, name in arrangement.items() if slot != name]
    try:
        for slot in moved:
            _swap_in(model, infos[slot], modules[arrangement[slot]])
        yield model
    finally:
        for slot in moved:
            _swap_in(model, infos[slot], modules[slot])


def kendall_tau(order: Sequence[int]) -> float:
    """Kendall's tau between `order` (the original position of the block now at each slot) and 0..n-1.

    1.0 for the original order, -1.0 for the reversed one; Veit et al. (2016, fig. 5b) plot the error against it.
    """
    n = len(order)
    if n < 2:
        return 1.0
    s = sum((1 if order[j] > order[i] else -1) for i in range(n) for j in range(i + 1, n))
    return s / (n * (n - 1) / 2)


# ----------------------------------------------------------------------------------------------------------------------
# the three experiments of Veit et al. (2016), as rows of plain data


def _fill_missing(rows: list[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    for row in rows:
        for k in keys:
            row.setdefault(k, None)
    return rows


def delete_each_block(model: nn.Module, evaluate: Evaluate, *, plain_downsampling: str = "skip") -> list[dict]:
    """Delete each block in turn and `evaluate` the rest (Veit et al. 2016, fig. 3): one row per block.

    Row: block, position, stage, index, downsampling (the block changes shape), substitute (what stood in; "" if
    the block could not be removed) and `evaluate`'s metrics (None where the block was not removed).
    """
    rows, keys = [], []
    with eval_mode(model):
        for b in list_blocks(model, plain_downsampling=plain_downsampling):
            row = {
                "block": b.name,
                "position": b.position,
                "stage": b.stage,
                "index": b.index,
                "downsampling": b.changes_shape,
                "substitute": b.substitute or "",
            }
            if b.removable:
                with lesioned(model, [b.name], plain_downsampling=plain_downsampling):
                    metrics = evaluate(model)
                keys = list(metrics)
                row.update(metrics)
            rows.append(row)
    return _fill_missing(rows, keys)


def removable_blocks(model: nn.Module, *, include_downsampling: bool = True, plain_downsampling: str = "skip"):
    """Names of the blocks that can be deleted; without those that change shape if not `include_downsampling`."""
    return [
        b.name
        for b in list_blocks(model, plain_downsampling=plain_downsampling)
        if b.removable and (include_downsampling or not b.changes_shape)
    ]


def delete_random_blocks(
    model: nn.Module,
    evaluate: Evaluate,
    *,
    ks: Sequence[int] = tuple(range(1, 11)),
    draws: int = 5,
    seed: int = 0,
    candidates: Sequence[str] | None = None,
    plain_downsampling: str = "skip",
) -> list[dict]:
    """Delete k random blocks at once, `draws` times for each k (Veit et al. 2016, fig. 5a): one row per draw.

    Blocks are drawn without replacement from `candidates` (default: every removable block); a k larger than the
    number of candidates has no rows. Row: k, draw, blocks (space-separated names, in depth order), metrics.
    The same seed draws the same blocks.
    """
    if candidates is None:
        candidates = removable_blocks(model, plain_downsampling=plain_downsampling)
    pool = list(candidates)
    position = {b.name: b.position for b in list_blocks(model, plain_downsampling=plain_downsampling)}
    g = torch.Generator().manual_seed(seed)
    rows = []
    with eval_mode(model):
        for k in ks:
            if k > len(pool):
                continue
            for draw in range(draws):
                drawn = torch.randperm(len(pool), generator=g)[:k].tolist()
                picked = sorted((pool[i] for i in drawn), key=position.get)
                with lesioned(model, picked, plain_downsampling=plain_downsampling):
                    metrics = evaluate(model)
                rows.append({"k": k, "draw": draw, "blocks": " ".join(picked), **metrics})
    return rows


def compatible_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Every pair of blocks that can trade places: same (inplanes, out_planes, stride), in depth order."""
    blocks = list_blocks(model)
    return [(a.name, b.name) for i, a in enumerate(blocks) for b in blocks[i + 1 :] if _signature(a) == _signature(b)]


def reorder_blocks(
    model: nn.Module,
    evaluate: Evaluate,
    *,
    ks: Sequence[int] = tuple(range(1, 11)),
    draws: int = 5,
    seed: int = 0,
) -> list[dict]:
    """Swap k random pairs of compatible blocks, `draws` times for each k (Veit et al. 2016, fig. 5b).

    Each swap is drawn uniformly from `compatible_pairs` (a later swap may undo an earlier one, as in the paper, so
    the Kendall tau of the resulting order says how shuffled the network really is). Row: k, draw, swaps
    ("a<->b" separated by spaces), kendall_tau, metrics.
    """
    pairs = compatible_pairs(model)
    if not pairs:
        raise ReslabError("no two blocks of this network have the same shape, so none can trade places")
    blocks = list_blocks(model)
    position = {b.name: b.position for b in blocks}
    g = torch.Generator().manual_seed(seed)
    rows = []
    with eval_mode(model):
        for k in ks:
            for draw in range(draws):
                swaps = [pairs[i] for i in torch.randint(len(pairs), (k,), generator=g).tolist()]
                arrangement = {b.name: b.name for b in blocks}
                for a, b in swaps:
                    arrangement[a], arrangement[b] = arrangement[b], arrangement[a]
                tau = kendall_tau([position[arrangement[b.name]] for b in blocks])
                with reordered(model, swaps):
                    metrics = evaluate(model)
                rows.append(
                    {"k": k, "draw": draw, "swaps": " ".join(f"{a}<->{b}" for a, b in swaps), "kendall_tau": tau}
                    | metrics
                )
    return rows


def lesion_study(
    model: nn.Module,
    evaluate: Evaluate,
    *,
    ks: Sequence[int] = tuple(range(1, 11)),
    draws: int = 5,
    seed: int = 0,
    plain_downsampling: str = "skip",
) -> dict[str, Any]:
    """All three lesion experiments of Veit et al. (2016) on one model, as plain data.

    Returns {"baseline": metrics of the intact model, "blocks": [BlockInfo as dicts], "single": delete_each_block
    rows, "random": delete_random_blocks rows, "reorder": reorder_blocks rows}. The model is left as it was.
    """
    with eval_mode(model):
        baseline = evaluate(model)
    blocks = list_blocks(model, plain_downsampling=plain_downsampling)
    pairs = compatible_pairs(model)
    return {
        "baseline": baseline,
        "blocks": [asdict(b) | {"changes_shape": b.changes_shape} for b in blocks],
        "single": delete_each_block(model, evaluate, plain_downsampling=plain_downsampling),
        "random": delete_random_blocks(
            model, evaluate, ks=ks, draws=draws, seed=seed, plain_downsampling=plain_downsampling
        ),
        "reorder": reorder_blocks(model, evaluate, ks=ks, draws=draws, seed=seed) if pairs else [],
    }


def summarize_lesions(study: dict[str, Any], *, metric: str = "error") -> dict[str, Any]:
    """The numbers a verdict needs, from `lesion_study`'s result: each a plain float (None where there is no data).

    baseline; single_median / single_max (over deleted blocks that keep the shape), single_max_block;
    downsampling_mean (deleted blocks that change the shape); not_removed (names); random_mean and reorder_mean
    ({k: mean over draws}); all of `metric` (a key of evaluate's result, "error" by default).
    """

    def mean_by_k(rows: list[dict]) -> dict[int, float]:
        by_k: dict[int, list[float]] = {}
        for r in rows:
            by_k.setdefault(r["k"], []).append(r[metric])
        return {k: statistics.fmean(v) for k, v in sorted(by_k.items())}

    single = [r for r in study["single"] if r[metric] is not None]
    same_shape = [r for r in single if not r["downsampling"]]
    changing = [r for r in single if r["downsampling"]]
    worst = max(same_shape, key=lambda r: r[metric], default=None)
    return {
        "metric": metric,
        "baseline": study["baseline"][metric],
        "single_median": statistics.median(r[metric] for r in same_shape) if same_shape else None,
        "single_max": worst[metric] if worst else None,
        "single_max_block": worst["block"] if worst else None,
        "downsampling_mean": statistics.fmean(r[metric] for r in changing) if changing else None,
        "not_removed": [r["block"] for r in study["single"] if r[metric] is None],
        "random_mean": mean_by_k(study["random"]),
        "reorder_mean": mean_by_k(study["reorder"]),
    }
