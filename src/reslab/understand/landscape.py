"""Loss landscape: the training loss on 1-D and 2-D slices through the trained weights, along random directions
normalised filter by filter.

Li, Xu, Taylor, Studer and Goldstein (2018), "Visualizing the Loss Landscape of Neural Nets" (NeurIPS), and their code
(github.com/tomgoldstein/loss-landscape), whose choices are followed here:

- directions (net_plotter.create_random_direction, dir_type="weights"): one Gaussian tensor per parameter, in
  `model.parameters()` order; BatchNorm running statistics are not part of it, so they stay the trained ones;
- filter normalisation (normalize_direction, norm="filter"): each filter (a slice along dim 0: an output channel of a
  conv, an output unit of the linear layer) of the direction is scaled to the norm of the same filter of the
  weights, d_i <- d_i * ||w_i|| / (||d_i|| + 1e-10), so that the scale invariance that BatchNorm gives each filter
  does not distort the picture (paper, section 4);
- `--xignore biasbn`, used by all their scripts: the direction is zero on every 1-D parameter (BN weights and biases,
  the linear layer's bias), so those stay at their trained values;
- the loss at each point (evaluation.eval_loss) is taken with `net.eval()` under `torch.no_grad()`: BatchNorm uses its
  trained running statistics, as the deployed network does; no data augmentation (their README);
- the grid: np.linspace(xmin, xmax, num) per axis, [-1, 1] x [-1, 1] with 51 points in their figures.

The non-convexity measure of their section 6 (fig. 7) is the ratio |lambda_min / lambda_max| of the Hessian's extreme
eigenvalues (hess_vec_prod.min_max_hessian_eigs: Hessian-vector products on the weights with more than one dimension,
net.eval(); scipy's Lanczos there and here, see `hessian_extreme_eigenvalues`).

Weights are moved in place (w + a*d1 + b*d2, from a saved copy of the trained weights) and copied back after, so the
model ends bit for bit as it started; the centre of the grid is the trained model exactly.
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
from reslab.understand.common import _forward_batches, check_images, classification_metrics, eval_mode

NORMS = ("filter", "layer")
IGNORES = ("biasbn", "")


def random_direction(
    model: nn.Module, *, generator: torch.Generator, norm: str = "filter", ignore: str = "biasbn"
) -> list[torch.Tensor]:
    """A random direction in weight space: one tensor per parameter of `model` (its `parameters()` order).

    norm="filter": each filter scaled to the norm of the weights' filter (Li et al. 2018); "layer": each tensor to
    the norm of its weight tensor. ignore="biasbn": zero on 1-D parameters (BN weights and biases, biases); "" keeps
    them as a copy of the weights (their code's other choice). Drawn on the CPU from `generator`, so a seed gives the
    same direction on any device.
    """
    if norm not in NORMS:
        raise ReslabError(f"norm: expected 'filter' or 'layer', got {norm!r}")
    if ignore not in IGNORES:
        raise ReslabError(f"ignore: expected 'biasbn' or '', got {ignore!r}")
    direction = []
    for p in model.parameters():
        w = p.detach()
        d = torch.randn(w.shape, generator=generator, dtype=torch.float32).to(device=w.device, dtype=w.dtype)
        if w.dim() <= 1:
            d = torch.zeros_like(w) if ignore == "biasbn" else w.clone()
        elif norm == "filter":
            # (out, ...) -> one norm per filter, broadcast back over the filter's entries
            dims = tuple(range(1, w.dim()))
            d.mul_(
                torch.linalg.vector_norm(w, dim=dims, keepdim=True)
                / (torch.linalg.vector_norm(d, dim=dims, keepdim=True) + 1e-10)
            )
        else:
            d.mul_(w.norm() / (d.norm() + 1e-10))
        direction.append(d)
    return direction


def _grid(values: Sequence[float] | torch.Tensor | np.ndarray) -> list[float]:
    values = [float(v) for v in values]
    if not values or any(not math.isfinite(v) for v in values):
        raise ReslabError(f"landscape coordinates: expected finite numbers, got {values}")
    return values


def loss_surface(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    directions: Sequence[Sequence[torch.Tensor]],
    xs: Sequence[float],
    ys: Sequence[float] | None = None,
    *,
    batch_size: int = 1000,
) -> dict[str, Any]:
    """Training loss and accuracy of `model` at w + x*d1 (+ y*d2) for every x in xs (and y in ys).

    directions: [d1] for a 1-D slice, [d1, d2] for a 2-D one (from `random_direction`). images, labels: the fixed
    training subset (float (N, C, H, W), normalised; int64 (N,)). Returns {"x": xs, "y": ys or None, "loss",
    "accuracy"}: lists of floats (1-D), or lists of rows indexed [iy][ix] (2-D, as matplotlib's contour takes Z).
    The model is left bit for bit as it was.
    """
    check_images(images, labels)
    xs = _grid(xs)
    ys = _grid(ys) if ys is not None else None
    if len(directions) != (1 if ys is None else 2):
        raise ReslabError(f"loss_surface: {len(directions)} direction(s) for a {1 if ys is None else 2}-D slice")
    params = list(model.parameters())
    for d in directions:
        if len(d) != len(params) or any(t.shape != p.shape for t, p in zip(d, params, strict=False)):
            raise ReslabError("loss_surface: a direction does not match the model's parameters (other model?)")
    base = [p.detach().clone() for p in params]
    d1 = directions[0]
    d2 = directions[1] if ys is not None else [None] * len(params)

    def at(a: float, b: float) -> dict[str, float]:
        _move_to(params, base, [(d1, a), (d2, b)])
        return classification_metrics(model, images, labels, batch_size=batch_size)

    try:
        with eval_mode(model):
            if ys is None:
                points = [at(a, 0.0) for a in xs]
                loss = [m["loss"] for m in points]
                accuracy = [m["accuracy"] for m in points]
            else:
                points = [[at(a, b) for a in xs] for b in ys]
                loss = [[m["loss"] for m in row] for row in points]
                accuracy = [[m["accuracy"] for m in row] for row in points]
    finally:
        _move_to(params, base, [])
    return {"x": xs, "y": ys, "loss": loss, "accuracy": accuracy}


@torch.no_grad()
def _move_to(params: Sequence[torch.Tensor], base: Sequence[torch.Tensor], moves: Sequence[tuple[Any, float]]) -> None:
    """params <- base + a * d for each (direction d, coefficient a) in `moves`, in order (a zero a is skipped);
    with no moves, back to `base` exactly."""
    for i, (p, w) in enumerate(zip(params, base, strict=True)):
        p.copy_(w)
        for d, a in moves:
            if a:
                p.add_(d[i], alpha=a)


def rise_with_error(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    direction: Sequence[torch.Tensor],
    distance: float,
    *,
    batch_size: int = 1000,
) -> dict[str, float]:
    """The loss rise from w to w + distance*d and its sampling error over the images: per image, the cross-entropy
    there minus at w; {"rise": their mean, "se": their standard deviation / sqrt(n), "images": n}.

    The slices of `loss_surface` are means over one fixed set of images, so a rise they show carries this noise from
    the choice of images (the same images at both points: a paired difference). The model is left as it was.
    """
    check_images(images, labels)
    params = list(model.parameters())
    base = [p.detach().clone() for p in params]

    def per_image() -> torch.Tensor:
        logits = _forward_batches(model, images, batch_size)
        return F.cross_entropy(logits, labels.to(logits.device), reduction="none").double()

    try:
        with eval_mode(model):
            at_w = per_image()
            _move_to(params, base, [(direction, distance)])
            diff = per_image() - at_w
    finally:
        _move_to(params, base, [])
    n = len(diff)
    se = diff.std().item() / math.sqrt(n) if n > 1 else math.nan
    return {"rise": diff.mean().item(), "se": se, "images": n}


def _interp2(xs: np.ndarray, ys: np.ndarray, z: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of z[iy, ix] on the grid (xs, ys) at the points (px, py)."""
    ix = np.clip(np.searchsorted(xs, px) - 1, 0, len(xs) - 2)
    iy = np.clip(np.searchsorted(ys, py) - 1, 0, len(ys) - 2)
    tx = (px - xs[ix]) / (xs[ix + 1] - xs[ix])
    ty = (py - ys[iy]) / (ys[iy + 1] - ys[iy])
    return (
        z[iy, ix] * (1 - tx) * (1 - ty)
        + z[iy, ix + 1] * tx * (1 - ty)
        + z[iy + 1, ix] * (1 - tx) * ty
        + z[iy + 1, ix + 1] * tx * ty
    )


def summarize_surface(surface: dict[str, Any], *, radius: float = 0.5, rise: float = 1.0) -> dict[str, float]:
    """Numbers that tell a smooth basin from a chaotic landscape, from `loss_surface`'s result.

    loss_center: the trained model's loss (at 0, or the grid point nearest it);
    loss_rise: mean loss at distance `radius` from the centre minus loss_center (1-D: at -radius and +radius;
      2-D: on a circle of 64 points, bilinearly interpolated), in the filter-normalised units of the axes;
    loss_rise_max: the largest rise at that distance;
    basin_fraction: the fraction of grid points whose loss is within `rise` of loss_center;
    nonconvex_fraction (2-D only): the fraction of interior grid points where the surface's 2x2 finite-difference
      Hessian has a negative eigenvalue below -1% of its largest magnitude: a cheap local stand-in for the
      Hessian-eigenvalue map of Li et al. (2018, fig. 7), on the slice rather than the whole weight space.
    Infinite losses (overflow far from the minimum) count as rises of +inf.
    """
    xs = np.asarray(surface["x"], dtype=np.float64)
    loss = np.asarray(surface["loss"], dtype=np.float64)
    if radius <= 0:
        raise ReslabError(f"radius must be positive, got {radius}")
    if surface["y"] is None:
        if not (xs[0] <= -radius and xs[-1] >= radius):
            raise ReslabError(f"radius {radius} lies outside the slice [{xs[0]}, {xs[-1]}]")
        center = float(np.interp(0.0, xs, loss)) if xs[0] <= 0 <= xs[-1] else float(loss[np.abs(xs).argmin()])
        ring = np.interp([-radius, radius], xs, loss)
        out = {"loss_center": center}
    else:
        ys = np.asarray(surface["y"], dtype=np.float64)
        if not (xs[0] <= -radius and xs[-1] >= radius and ys[0] <= -radius and ys[-1] >= radius):
            raise ReslabError(f"radius {radius} lies outside the grid [{xs[0]}, {xs[-1]}] x [{ys[0]}, {ys[-1]}]")
        center = float(_interp2(xs, ys, loss, np.array([0.0]), np.array([0.0]))[0])
        angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        ring = _interp2(xs, ys, loss, radius * np.cos(angles), radius * np.sin(angles))
        out = {"loss_center": center, "nonconvex_fraction": _nonconvex_fraction(xs, ys, loss)}
    with np.errstate(invalid="ignore"):
        rises = ring - center
    out["loss_rise"] = float(np.mean(rises))
    out["loss_rise_max"] = float(np.max(rises))
    out["basin_fraction"] = float(np.mean(loss <= center + rise))
    out["radius"] = radius
    return out


def _nonconvex_fraction(xs: np.ndarray, ys: np.ndarray, z: np.ndarray) -> float:
    if len(xs) < 3 or len(ys) < 3:
        return float("nan")
    z = np.where(np.isfinite(z), z, np.nan)
    hx, hy = np.diff(xs).mean(), np.diff(ys).mean()
    zxx = (z[1:-1, 2:] - 2 * z[1:-1, 1:-1] + z[1:-1, :-2]) / hx**2
    zyy = (z[2:, 1:-1] - 2 * z[1:-1, 1:-1] + z[:-2, 1:-1]) / hy**2
    zxy = (z[2:, 2:] - z[2:, :-2] - z[:-2, 2:] + z[:-2, :-2]) / (4 * hx * hy)
    # eigenvalues of [[zxx, zxy], [zxy, zyy]]
    mean, half_gap = (zxx + zyy) / 2, np.sqrt(((zxx - zyy) / 2) ** 2 + zxy**2)
    lo, hi = mean - half_gap, mean + half_gap
    ok = np.isfinite(lo) & np.isfinite(hi)
    if not ok.any():
        return float("nan")
    scale = np.maximum(np.abs(lo), np.abs(hi))
    return float(np.mean(lo[ok] < -0.01 * scale[ok]))


def hessian_vector_product(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    params: Sequence[nn.Parameter],
    vector: Sequence[torch.Tensor],
    *,
    batch_size: int = 256,
) -> list[torch.Tensor]:
    """H v for the mean cross-entropy on (images, labels) w.r.t. `params`, by double backprop (Pearlmutter 1994).

    The model must be in the mode the loss is meant in (eval: BatchNorm on running stats, as Li et al. 2018);
    no `.grad` is written. Batches are weighted by their size, so the result is that of the whole set.
    """
    device = params[0].device
    out = [torch.zeros_like(p) for p in params]
    n = len(images)
    for i in range(0, n, batch_size):
        x, y = images[i : i + batch_size].to(device), labels[i : i + batch_size].to(device)
        loss = F.cross_entropy(model(x), y) * (len(x) / n)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * v).sum() for g, v in zip(grads, vector, strict=True))
        for acc, h in zip(out, torch.autograd.grad(dot, params), strict=True):
            acc.add_(h)
    return out


def _lanczos(hvp, params: Sequence[torch.Tensor], steps: int, tol: float, generator: torch.Generator):
    """Extreme eigenvalues of the symmetric operator `hvp` by Lanczos with full reorthogonalisation.

    Returns (lambda_min, lambda_max, steps taken, converged). The extreme Ritz values of the tridiagonal matrix
    approach the spectrum's ends from inside; a Ritz pair has converged when its residual |beta_m * s_m| is below
    tol * max |Ritz value| (Golub & Van Loan, Matrix Computations, section 10.1).
    """
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def unflat(v: torch.Tensor) -> list[torch.Tensor]:
        return [t.view(shape).to(p.dtype) for t, shape, p in zip(v.split(sizes), shapes, params, strict=True)]

    v = torch.randn(sum(sizes), generator=generator, dtype=torch.float64).to(params[0].device)
    v /= v.norm()
    basis, alphas, betas = [], [], []
    evals, converged = np.zeros(1), False
    for _ in range(steps):
        basis.append(v)
        w = torch.cat([h.flatten() for h in hvp(unflat(v))]).double()
        alphas.append(float(w @ v))
        for _ in range(2):  # twice is enough (Kahan): keeps the basis orthogonal in floating point
            for u in basis:
                w -= (w @ u) * u
        beta = float(w.norm())
        t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        evals, evecs = np.linalg.eigh(t)
        residual = beta * np.abs(evecs[-1, [0, -1]])
        if len(alphas) > 1 and residual.max() <= tol * np.abs(evals).max():
            converged = True
            break
        if beta <= 1e-12 * max(1.0, np.abs(evals).max()):  # an invariant subspace: the Ritz values are exact
            converged = True
            break
        betas.append(beta)
        v = w / beta
    return float(evals[0]), float(evals[-1]), len(alphas), converged


def hessian_extreme_eigenvalues(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int = 30,
    tol: float = 1e-2,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, Any]:
    """lambda_max, lambda_min of the loss Hessian at the trained weights, and Li et al.'s |lambda_min / lambda_max|.

    As their hess_vec_prod.py: the Hessian w.r.t. the weights with more than one dimension (convs, linear; not BN or
    biases), BatchNorm in eval mode, on a fixed subset. They call scipy's eigsh (Lanczos) twice, the second time on
    a shifted operator; Lanczos gives both ends of the spectrum from one Krylov space, so one run of at most `steps`
    Hessian-vector products does here (tol as eigsh's, relative). Ritz values lie inside the spectrum, so an
    unconverged run under-reports both |lambda| (`converged` says which it is; `hvps` how many products it took).
    The model is left as it was (no .grad written; requires_grad restored).
    """
    check_images(images, labels)
    params = [p for p in model.parameters() if p.dim() > 1]
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        with eval_mode(model):

            def hvp(v):
                return hessian_vector_product(model, images, labels, params, v, batch_size=batch_size)

            lambda_min, lambda_max, hvps, converged = _lanczos(
                hvp, params, steps, tol, torch.Generator().manual_seed(seed)
            )
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
    return {
        "lambda_max": lambda_max,
        "lambda_min": lambda_min,
        "ratio": abs(lambda_min / lambda_max) if lambda_max != 0 else float("inf"),
        "hvps": hvps,
        "converged": converged,
    }
