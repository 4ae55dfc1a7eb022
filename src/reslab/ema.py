"""An exponential moving average (EMA) of a model's weights, updated after every optimizer step.

    ema = EMA(model, decay=0.999)
    ... optimizer.step(); ema.update(step)     # `step`: optimizer steps taken so far
    evaluate(ema.module, loader, ...)           # the averaged network, an ordinary nn.Module

The average covers the parameters and the floating-point buffers (BatchNorm's running mean and variance), as timm's
ModelEmaV2 does, so the averaged network has statistics that match its averaged weights; integer buffers
(`num_batches_tracked`) are copied. The decay ramps up as min(decay, (1 + step) / (10 + step)) (TensorFlow's
ExponentialMovingAverage with num_updates), so the first steps' random weights fade out quickly. The update is a pure
function of the current weights, the average and the step: with the average saved in the checkpoint (TrainState.ema),
a resumed run continues it bit for bit.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        # (average, live) pairs in state_dict order; state_dict tensors share storage with the modules, so these
        # stay valid across load_state_dict (which copies in place)
        pairs = list(zip(self.module.state_dict().values(), model.state_dict().values(), strict=True))
        self._float = [(a, m) for a, m in pairs if a.is_floating_point()]
        self._other = [(a, m) for a, m in pairs if not a.is_floating_point()]

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Move the average towards the live weights: average += (1 - decay) * (live - average)."""
        weight = 1.0 - self.decay_at(step)
        for a, m in self._float:
            a.lerp_(m, weight)
        for a, m in self._other:
            a.copy_(m)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
