"""Gradients through depth: the norm of each layer's weight gradient, and how input gradients decorrelate.

Two measurements, plain against residual, at initialisation and after training:

1. Layer gradient norms. ||dL/dW|| for every conv (and the linear layer), in depth order, for one minibatch of the
   cross-entropy loss, with BatchNorm as in training (batch statistics; `bn_mode="train"`). Yang et al. (2019, "A
   Mean Field Theory of Batch Normalization", ICLR) prove that a plain BN network's gradients explode towards the
   input at initialisation, by a constant factor per layer; the per-layer growth factor fitted here
   (`summarize_gradient_norms`) is the number to check that against, not assume.

2. Shattered gradients. Balduzzi, Frean, Leary, Lewis, Ma and McWilliams (2017), "The Shattered Gradients Problem:
   If resnets are the answer, then what is the question?" (ICML): the gradient of a deep plain network w.r.t. its
   input looks like white noise along a line of inputs (their fig. 1, a 1-D input swept over a grid), and the
   correlation between the gradients at nearby inputs decays exponentially with depth, whereas a residual network's
   decays sublinearly (their section 3). Here the line is x + t*u through a real image x (u Gaussian, one standard
   deviation per pixel), the output is the logit of the class predicted at t = 0 (one fixed smooth function along
   the whole line), and `gradient_correlation` gives the Pearson correlation between the input gradients at points
   `lag` steps apart and the autocorrelation of the directional derivative <grad, u> along the line (fig. 1's
   signal). BatchNorm is in eval mode there, so that each point's gradient is its own (in train mode the batch
   statistics would couple the points); for a freshly initialised network call `calibrate_bn` first, so that its
   running statistics describe its activations rather than the (0, 1) they are created with.

Every function leaves the model as it was (parameters, buffers, flags, no .grad written), except `calibrate_bn`,
whose job is to set the running statistics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reslab.errors import ReslabError
from reslab.models import Residual
from reslab.understand.common import check_images, eval_mode, preserved_state

BN_MODES = ("train", "eval")


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module, bool]]:
    """(name, module, is_shortcut) for every Conv2d and Linear of `model`, in registration (= depth) order.

    A shortcut projection (a `downsample` conv, or the d2l Residual's conv3) is flagged, so a plot of the main
    path can leave it out.
    """
    shortcut_ids = set()
    for name, m in model.named_modules():
        if name.endswith("downsample") or (isinstance(m, Residual) and m.conv3 is not None):
            sub = m if name.endswith("downsample") else m.conv3
            shortcut_ids.update(id(c) for c in sub.modules())
    return [
        (name, m, id(m) in shortcut_ids) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    ]


def layer_gradient_norms(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, bn_mode: str = "train"
) -> list[dict[str, Any]]:
    """||dL/dW|| of each conv and linear layer for the mean cross-entropy of one minibatch; one row per layer.

    bn_mode="train": BatchNorm normalises with the batch's statistics, as in the training step that gradient would
    drive (running statistics are restored after); "eval": with the running statistics. Row: index, layer (module
    name), kind ("conv" | "linear"), shortcut (a projection on the shortcut), depth (position on the main path,
    None for shortcuts), grad_norm, weight_norm, relative (grad_norm / weight_norm).
    """
    check_images(images, labels)
    if bn_mode not in BN_MODES:
        raise ReslabError(f"bn_mode: expected 'train' or 'eval', got {bn_mode!r}")
    layers = weight_layers(model)
    device = next(model.parameters()).device
    with preserved_state(model):
        model.train(bn_mode == "train")
        weights = [m.weight for _, m, _ in layers]
        for w in weights:
            w.requires_grad_(True)
        loss = F.cross_entropy(model(images.to(device)), labels.to(device))
        grads = torch.autograd.grad(loss, weights)
    rows, depth = [], 0
    for i, ((name, m, shortcut), w, g) in enumerate(zip(layers, weights, grads, strict=True)):
        grad_norm, weight_norm = g.norm().item(), w.detach().norm().item()
        rows.append(
            {
                "index": i,
                "layer": name,
                "kind": "conv" if isinstance(m, nn.Conv2d) else "linear",
                "shortcut": shortcut,
                "depth": None if shortcut else depth,
                "grad_norm": grad_norm,
                "weight_norm": weight_norm,
                "relative": grad_norm / weight_norm if weight_norm > 0 else math.inf,
            }
        )
        depth += not shortcut
    return rows


def _growth_per_layer(values: Sequence[float]) -> float:
    """exp of the least-squares slope of log(value) against depth: the mean factor from one layer to the next."""
    v = np.log(np.asarray(values, dtype=np.float64))
    if len(v) < 2 or not np.all(np.isfinite(v)):
        return float("nan")
    slope = np.polyfit(np.arange(len(v)), v, 1)[0]
    return float(np.exp(slope))


def summarize_gradient_norms(rows: Sequence[dict[str, Any]], *, key: str = "grad_norm") -> dict[str, Any]:
    """First against last conv layer of the main path, from `layer_gradient_norms` rows.

    first, last: `key` ("grad_norm" or "relative") of the first conv (the stem) and of the last conv before the
    classifier; first_over_last; growth_towards_input: the mean factor by which `key` grows per conv layer from the
    output back to the input (> 1: it grows towards the input; fitted on log values over all main-path convs, so
    one odd layer does not decide it); num_layers.
    """
    convs = [r for r in rows if r["kind"] == "conv" and not r["shortcut"]]
    if len(convs) < 2:
        raise ReslabError(f"need at least two conv layers on the main path, got {len(convs)}")
    values = [r[key] for r in convs]
    first, last = values[0], values[-1]
    return {
        "key": key,
        "first": first,
        "last": last,
        "first_over_last": first / last if last > 0 else math.inf,
        "growth_towards_input": 1.0 / _growth_per_layer(values),
        "num_layers": len(convs),
    }


def calibrate_bn(model: nn.Module, images: torch.Tensor, *, batch_size: int = 256) -> nn.Module:
    """Recompute every BatchNorm's running statistics as the plain average over `images` (in batches).

    For a freshly initialised network, whose running statistics are still (0, 1): afterwards eval mode normalises
    with what the network's activations actually are, as train mode would. Changes the buffers (that is its job);
    momenta and train/eval flags are restored. Returns the model.
    """
    check_images(images)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    flags = [(m, m.training) for m in model.modules()]
    device = next(model.parameters()).device
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: every batch weighs the same
        model.train()
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                model(images[i : i + batch_size].to(device))
    finally:
        for m, momentum in zip(bns, momenta, strict=True):
            m.momentum = momentum
        for m, training in flags:
            m.training = training
    return model


def input_gradients_along_line(
    model: nn.Module,
    x: torch.Tensor,
    ts: Sequence[float] | torch.Tensor,
    *,
    direction: torch.Tensor | None = None,
    target: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, Any]:
    """d logit_target / d input at each point x + t*u of a line through the image x (Balduzzi et al. 2017, fig. 1).

    x: one float (C, H, W) image, normalised; ts: the points along the line; direction u: (C, H, W), default a
    Gaussian with one standard deviation per pixel drawn from `seed`; target: the class whose logit is
    differentiated, default the class predicted at x. BatchNorm in eval mode (see the module docstring).
    Returns {"t": [floats], "target": int, "gradients": (T, C*H*W) float32, "outputs": (T,) logits, "direction": u}.
    """
    if x.dim() != 3 or not x.is_floating_point():
        raise ReslabError(f"x: expected one float (C, H, W) image, got {x.dtype} {tuple(x.shape)}")
    ts = torch.as_tensor(ts, dtype=torch.float32).flatten()
    if direction is None:
        direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    if direction.shape != x.shape:
        raise ReslabError(f"direction: expected shape {tuple(x.shape)}, got {tuple(direction.shape)}")
    first = next(model.parameters())
    x, u = x.detach().to(first.device, first.dtype), direction.detach().to(first.device, first.dtype)
    grads, outputs = [], []
    with eval_mode(model):
        if target is None:
            with torch.no_grad():
                target = int(model(x[None]).argmax(1).item())
        for i in range(0, len(ts), batch_size):
            step = ts[i : i + batch_size, None, None, None].to(x)
            points = (x[None] + step * u[None]).requires_grad_(True)
            logit = model(points)[:, target]  # (b,): each point's own logit, independent in eval mode
            (g,) = torch.autograd.grad(logit.sum(), points)
            grads.append(g.flatten(1).float().cpu())
            outputs.append(logit.detach().float().cpu())
    return {
        "t": ts.tolist(),
        "target": target,
        "gradients": torch.cat(grads),
        "outputs": torch.cat(outputs),
        "direction": direction,
    }


def gradient_correlation(
    gradients: torch.Tensor, *, direction: torch.Tensor | None = None, max_lag: int | None = None
) -> dict[str, Any]:
    """How alike the input gradients of neighbouring points on a line are; lists of floats, one per lag 1..max_lag.

    gradients: (T, D) from `input_gradients_along_line`, in the order of the line. correlation[lag-1]: the mean over
    i of the Pearson correlation (over the D input coordinates) between gradient i and gradient i+lag: near 1 for a
    smooth function, near 0 for shattered gradients. With `direction` u: directional (the derivative <g_i, u>/||u||
    along the line, fig. 1 of Balduzzi et al.) and directional_autocorrelation[lag-1] (its sample autocorrelation,
    mean removed: near 1 for brown noise, near 0 for white noise). max_lag defaults to T // 4.
    """
    if gradients.dim() != 2 or len(gradients) < 2:
        raise ReslabError(f"gradients: expected (T, D) with T >= 2, got {tuple(gradients.shape)}")
    t = len(gradients)
    max_lag = max_lag or max(1, t // 4)
    if not 1 <= max_lag < t:
        raise ReslabError(f"max_lag must lie in 1..{t - 1}, got {max_lag}")
    g = gradients.double()
    g = g - g.mean(1, keepdim=True)
    g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-300)
    out: dict[str, Any] = {
        "lag": list(range(1, max_lag + 1)),
        "correlation": [float((g[:-lag] * g[lag:]).sum(1).mean()) for lag in range(1, max_lag + 1)],
    }
    if direction is not None:
        u = direction.flatten().double()
        h = gradients.double() @ (u / u.norm())
        c = h - h.mean()
        var = float((c * c).sum())
        out["directional"] = h.tolist()
        out["directional_autocorrelation"] = [
            float((c[:-lag] * c[lag:]).sum()) / var if var > 0 else float("nan") for lag in range(1, max_lag + 1)
        ]
    return out


def correlation_matrix(gradients: torch.Tensor) -> torch.Tensor:
    """(T, T) Pearson correlations between every pair of input gradients (the covariance picture of their fig. 2)."""
    g = gradients.double()
    g = g - g.mean(1, keepdim=True)
    g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-300)
    return (g @ g.T).float()
