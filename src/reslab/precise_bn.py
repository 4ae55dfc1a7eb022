"""Precise BatchNorm statistics: each BatchNorm layer's running mean and variance recomputed for the weights as
they are, from N training images, instead of the running average that training accumulated.

    precise = PreciseBN(net, train_images_loader, num_images=2048, amp_dtype=torch.bfloat16)
    evaluate(precise.network(step), val_loader, ...)     # a copy of `net` with the precise statistics
    checkpoint["model"] = precise.network(step).state_dict()

Why: training updates the running statistics with momentum 0.1 while the weights move under them. When the weights
change fast (a few steps per epoch at a high learning rate, a small image folder), the statistics lag the weights
and the evaluated network can be far worse than the trained one: issue 22's folder of 900 images trained to 0.87
and validated at 0.333, every image predicted as one class. Recomputing the statistics with the weights held fixed
is the field's answer: pycls's `compute_precise_bn_stats` (on by default there, with 8,192 images), fvcore's
`update_bn_stats`, mmpretrain's `PreciseBNHook`; Wu and Johnson 2021 ("Rethinking 'Batch' in BatchNorm", section 3).

As pycls computes them: each layer's statistics are the average over batches of the per-batch mean and of the
per-batch (unbiased) variance, the batches being those training would see (training mode, the training
augmentation, the training batch size, the same autocast). Under torchrun each process takes its own shard and
the averages are all-reduced, so every rank holds the same statistics.

The network the run trains is never touched: the statistics go into a copy (`PreciseBN.network`), which is what is
evaluated and what a checkpoint stores as its "model"; the running statistics training accumulated are stored beside
it ("running_stats") so that a resumed run continues bit for bit. A BatchNorm layer inside a frozen module (`--freeze
backbone`) is in eval mode while training and keeps its (pretrained) statistics here too.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Collection, Iterable

import torch
from torch import nn

from reslab import distributed as D
from reslab.device import autocast
from reslab.errors import ReslabError
from reslab.models.probe import input_shapes

_BN = nn.modules.batchnorm._BatchNorm  # BatchNorm1d/2d/3d and SyncBatchNorm
RUNNING = ("running_mean", "running_var", "num_batches_tracked")


def bn_layers(model: nn.Module, *, skip: Collection[str] = ()) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every BatchNorm layer that tracks running statistics, except those in the modules named in
    `skip` (and below them)."""
    out = []
    for name, m in model.named_modules():
        if not isinstance(m, _BN) or not m.track_running_stats:
            continue
        if any(name == s or name.startswith(s + ".") for s in skip):
            continue
        out.append((name, m))
    return out


def running_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    """The BatchNorm buffers of `model` (running mean, variance and count) by state_dict name, copied."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, _BN) and m.track_running_stats:
            for b in RUNNING:
                out[f"{name}.{b}" if name else b] = getattr(m, b).detach().clone()
    return out


def module_names(model: nn.Module, modules: Iterable[nn.Module]) -> list[str]:
    """The names in `model` of `modules` (its frozen ones, say): names carry over to a copy of `model`."""
    wanted = {id(m) for m in modules}
    return [name for name, m in model.named_modules() if id(m) in wanted]


@torch.no_grad()
def update_bn_stats(
    model: nn.Module,
    batches: Iterable[torch.Tensor | tuple[torch.Tensor, ...]],
    *,
    num_batches: int,
    amp_dtype: torch.dtype | None = None,
    skip: Collection[str] = (),
) -> int:
    """Set the running statistics of `model`'s BatchNorm layers (but those under `skip`) to the average of the
    per-batch statistics of the first `num_batches` batches (pycls's compute_precise_bn_stats), in place; averaged
    over processes under torchrun. Returns the number of batches used (on this rank).

    `model` is put in training mode for the forward passes (the layers under `skip` in eval mode, as training keeps
    them) and back in its own mode after. Its weights are not changed.
    """
    layers = [m for _, m in bn_layers(model, skip=skip)]
    if not layers:
        return 0
    was_training = {m: m.training for m in model.modules()}
    means = [torch.zeros_like(m.running_mean) for m in layers]
    variances = [torch.zeros_like(m.running_var) for m in layers]
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.momentum = 1.0  # running_mean/var := this batch's mean and unbiased variance
    model.train()
    for name, m in model.named_modules():
        if any(name == s or name.startswith(s + ".") for s in skip):
            m.eval()
    device = next(itertools.chain(model.parameters(), model.buffers())).device
    used = 0
    try:
        for batch in itertools.islice(batches, num_batches):
            x = batch[0] if isinstance(batch, tuple | list) else batch
            with autocast(device, amp_dtype):
                model(x)
            used += 1
            for i, m in enumerate(layers):
                means[i] += m.running_mean
                variances[i] += m.running_var
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        for m, mode in was_training.items():
            m.training = mode
    # the mean over every batch of every rank (each rank runs the same number of batches)
    total = D.all_reduce_sum(torch.tensor([float(used)], device=device)).item()
    if total == 0:
        raise ValueError("update_bn_stats: no batches to compute the statistics from")
    for i, m in enumerate(layers):
        m.running_mean.copy_(D.all_reduce_sum(means[i]) / total)
        m.running_var.copy_(D.all_reduce_sum(variances[i]) / total)
        m.num_batches_tracked.fill_(int(total))
    return used


class PreciseBN:
    """The precise BatchNorm statistics of `net` (the model, or its EMA), recomputed once per optimizer step asked
    for, into a copy of `net`; `net` itself, its statistics included, is left exactly as training has it.

    `loader` yields training batches (x, y) as training sees them: a BatchLoader over the training split with the
    training augmentation; its epoch is set to the run's epoch, so the images are a pure function of (seed, epoch,
    rank) and the training loader's own order and augmentation are untouched. `num_images` is the total over all
    processes, rounded up to whole batches (at most one epoch's). `skip`: names of frozen modules (their BatchNorm
    layers keep their statistics).
    """

    def __init__(
        self,
        net: nn.Module,
        loader,
        num_images: int,
        *,
        amp_dtype: torch.dtype | None = None,
        skip: Collection[str] = (),
    ):
        if num_images < 1:
            raise ValueError(f"num_images must be positive, got {num_images}")
        self.net, self.loader, self.amp_dtype, self.skip = net, loader, amp_dtype, tuple(skip)
        per_step = loader.batch_size * D.world_size()
        self.num_batches = max(1, min(len(loader), math.ceil(num_images / per_step)))
        self.num_images = self.num_batches * per_step
        self.seconds = 0.0  # spent computing statistics, in all
        self.computed = 0  # times
        self._copy: nn.Module | None = None
        self._at: int | None = None

    @property
    def active(self) -> bool:
        """False when `net` has no BatchNorm layer to recompute."""
        return bool(bn_layers(self.net, skip=self.skip))

    def network(self, step: int) -> nn.Module:
        """A copy of `net` with precise statistics for its weights at optimizer step `step` (computed once per
        step), in eval mode. The images: the first batches of the training order of the epoch `step` falls in
        (step // steps per epoch), a pure function of the seed and the step."""
        if self._copy is not None and self._at == step:
            return self._copy
        t0 = time.perf_counter()
        copied = copy.deepcopy(self.net)
        self.loader.set_epoch(step // max(1, len(self.loader)))
        update_bn_stats(copied, self.loader, num_batches=self.num_batches, amp_dtype=self.amp_dtype, skip=self.skip)
        D.broadcast_buffers(copied)  # one copy on every rank, to the bit
        self._copy, self._at = copied.eval(), step
        self.seconds += time.perf_counter() - t0
        self.computed += 1
        return self._copy


def precise_bn_for_run(
    num_images: int, net: nn.Module, train_loader, amp_dtype: torch.dtype | None, skip: Collection[str]
) -> PreciseBN | None:
    """fit's PreciseBN (--precise-bn N) for `net`, on images drawn as `train_loader` draws them, from a loader of its
    own (a shallow copy: the same images and augmentation, at the size evaluation uses, its own epoch); None when off
    or `net` has no BatchNorm layer to recompute."""
    if not num_images:
        return None
    precise = PreciseBN(net, train_loader.at_full_size(), num_images, amp_dtype=amp_dtype, skip=skip)
    return precise if precise.active else None


# ----------------------------------------------------------------------------------------------------------------------
# a batch of one at 1x1


def smallest_bn_input(
    model: nn.Module, input_size: tuple[int, int, int], *, skip: Collection[str] = ()
) -> tuple[str, int] | None:
    """(name, H * W) of the BatchNorm layer (but those under `skip`) that sees the fewest values per channel of one
    image of `input_size` (C, H, W); None without such layers. One forward pass of one image, in eval mode (nothing
    changes)."""
    shapes = input_shapes(model, input_size, [name for name, _ in bn_layers(model, skip=skip)])
    if not shapes:
        return None
    sizes = {name: math.prod(shape[2:]) for name, shape in shapes.items()}  # H * W of one image (1 for BatchNorm1d)
    name = min(sizes, key=sizes.get)
    return name, sizes[name]


def check_batch_statistics(
    model: nn.Module,
    input_size: tuple[int, int, int],
    batch_size: int,
    *,
    requested: int | None = None,
    skip: Collection[str] = (),
) -> None:
    """ReslabError, before training starts, when a training batch of `batch_size` images (the loader's: `requested`,
    the --batch-size asked for, or fewer when the training split is smaller) would reach a BatchNorm layer with one
    value per channel: BatchNorm has no batch variance to normalise by then, and PyTorch stops mid-run with
    "Expected more than 1 value per channel when training"."""
    found = smallest_bn_input(model, input_size, skip=skip)  # a frozen layer normalises with its stored statistics
    if found is None:
        return
    name, per_image = found
    if per_image * batch_size > 1:
        return
    requested = batch_size if requested is None else requested
    _, h, w = input_size
    where = f"BatchNorm layer {name!r} at 1x1 (of a {h}x{w} input): one value per channel, no batch statistics"
    if requested == batch_size:
        raise ReslabError(
            f"--batch-size {requested}: a training batch of one image reaches {where}; use --batch-size 2 or more "
            f"(per process under torchrun)"
        )
    raise ReslabError(
        f"--batch-size {requested}: the training split has one image (per process), so a training batch of one "
        f"image reaches {where}; train on 2 or more images per process (--train-subset, --val-size, the folder)"
    )
