"""Grad-CAM: where in the image a class's evidence comes from.

Selvaraju, Cogswell, Das, Vedantam, Parikh and Batra (2017), "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization" (ICCV), eqs. 1-2: for the feature maps A^k (B, K, h, w) of a convolutional layer and the
score y^c of class c (the logit, before the softmax),

    alpha_k^c = mean over (i, j) of d y^c / d A^k_ij          (global-average-pooled gradients: one weight per map)
    L^c       = ReLU(sum_k alpha_k^c A^k)                      (h, w), upsampled to the input and scaled to [0, 1]

The layer is the last convolutional stage by default, as in the paper ("the last convolutional layer"), taken where
its maps are rectified: the paper's A^k are post-ReLU feature maps, which the classifier then pools and reads
linearly. For a reslab ResNet that is the output of `forward_features`: for post-activation blocks the last block ends
in a ReLU, so that is layer{N}'s output; for pre-activation blocks layer{N}'s output is an un-normalised sum, and
forward_features adds the final BN-ReLU (`bn_final`) the classifier reads, so the CAM is taken after it. Either way the
logits are forward_head(A): average pooling and the linear layer, so alpha_k^c is fc.weight[c, k] / (h*w).

Any other module can be named (`layer="layer2"`, `"layer3.1.conv2"`): its output is caught by a forward hook that is
removed before returning. The model is left as it was: its train/eval flags (eval during the pass, so BatchNorm uses
and keeps its running statistics), parameters, requires_grad, .grad (autograd.grad only) and hooks.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from reslab.atomic import write_bytes
from reslab.errors import ReslabError
from reslab.understand.common import eval_mode


def _targets(target: int | torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    b, num_classes = logits.shape
    if target is None:
        return logits.argmax(1)
    t = torch.as_tensor(target, dtype=torch.long, device=logits.device).flatten()
    if t.numel() == 1:
        t = t.expand(b)
    if t.numel() != b or t.min() < 0 or t.max() >= num_classes:
        raise ReslabError(f"target: expected a class in 0..{num_classes - 1} (or one per image, {b}), got {target!r}")
    return t


def _features_at(model: nn.Module, x: torch.Tensor, layer: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(activations at `layer`, logits) for the batch x, with the activations part of the graph to the logits."""
    if layer is None:
        if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
            raise ReslabError(
                f"{type(model).__name__} has no forward_features/forward_head; name the layer for Grad-CAM"
            )
        features = model.forward_features(x)
        return features, model.forward_head(features)
    try:
        module = model.get_submodule(layer)
    except AttributeError:
        names = [n for n, _ in model.named_children()]
        raise ReslabError(
            f"no module {layer!r} in {type(model).__name__}; its children are {', '.join(names)}"
        ) from None
    caught: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _inp, out: caught.append(out))
    try:
        logits = model(x)
    finally:
        handle.remove()
    if len(caught) != 1 or not isinstance(caught[0], torch.Tensor) or caught[0].dim() != 4:
        raise ReslabError(
            f"layer {layer!r} must run once per forward and give (B, C, h, w) maps; it ran {len(caught)} times "
            "(a shared module such as a ReLU runs several times: name its block or stage instead)"
        )
    return caught[0], logits


def grad_cam_parts(
    model: nn.Module, x: torch.Tensor, target: int | torch.Tensor | None = None, layer: str | None = None
) -> dict[str, torch.Tensor]:
    """Everything Grad-CAM computes, for inspection and tests: the maps before upsampling, and what made them.

    Returns {"activations": A (B, K, h, w), "gradients": d y^c / d A (B, K, h, w), "weights": alpha (B, K),
    "cam": ReLU(sum_k alpha_k A^k) (B, h, w), unscaled, "logits": (B, num_classes), "target": (B,) classes}.
    """
    if x.dim() != 4 or not x.is_floating_point():
        raise ReslabError(f"Grad-CAM input: expected a float (B, C, H, W) batch, got {x.dtype} {tuple(x.shape)}")
    device = next(model.parameters()).device
    # the input needs grad so that A is in the graph even for a model whose parameters are frozen
    x = x.detach().to(device).requires_grad_(True)
    with eval_mode(model), torch.enable_grad():
        activations, logits = _features_at(model, x, layer)
        target = _targets(target, logits.detach())
        score = logits.gather(1, target[:, None]).sum()  # each image's own class; images are independent in eval
        (gradients,) = torch.autograd.grad(score, activations)
    activations, logits = activations.detach(), logits.detach()
    weights = gradients.mean(dim=(2, 3))  # (B, K)
    cam = F.relu((weights[:, :, None, None] * activations).sum(1))  # (B, h, w)
    return {
        "activations": activations,
        "gradients": gradients,
        "weights": weights,
        "cam": cam,
        "logits": logits,
        "target": target,
    }


def scale_maps(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) -> (B, H, W): bilinear upsampling, then each map scaled to [0, 1] by its own max (Selvaraju et
    al.'s code: subtract the min, divide by the max). A map that is zero everywhere stays zero."""
    up = F.interpolate(cam[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    up = up - up.amin(dim=(1, 2), keepdim=True)
    peak = up.amax(dim=(1, 2), keepdim=True)
    return torch.where(peak > 0, up / peak.clamp_min(1e-12), torch.zeros_like(up))


def grad_cam(
    model: nn.Module, x: torch.Tensor, target: int | torch.Tensor | None = None, layer: str | None = None
) -> torch.Tensor:
    """Grad-CAM heat maps (B, H, W) in [0, 1] for the batch x (B, C, H, W), at the input's size.

    target: None for each image's predicted class, an int for one class for all, or (B,) classes. layer: None for
    the output of forward_features (see the module docstring), or a module name. The model is left as it was.
    """
    parts = grad_cam_parts(model, x, target, layer)
    return scale_maps(parts["cam"], tuple(x.shape[-2:])).cpu()


# ----------------------------------------------------------------------------------------------------------------------
# the overlay image


def jet(values: np.ndarray) -> np.ndarray:
    """The 'jet' colour map (blue -> cyan -> yellow -> red) for values in [0, 1]: (...,) -> (..., 3) in [0, 1]."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25])  # where red, green and blue peak
    return np.clip(1.5 - np.abs(4.0 * (v - centres)), 0.0, 1.0)


def _as_rgb(image: Any) -> np.ndarray:
    """A PIL image, a (H, W) / (C, H, W) tensor or array (uint8, or float in [0, 1]) -> (H, W, 3) floats in [0, 1]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if a.ndim == 3 and a.shape[0] in (1, 3):
        a = a.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3):
        raise ReslabError(f"overlay image: expected (H, W), (1|3, H, W) or (H, W, 1|3), got shape {a.shape}")
    a = a.astype(np.float64) / 255.0 if a.dtype == np.uint8 else np.clip(a.astype(np.float64), 0.0, 1.0)
    return np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a


def cam_overlay(image: Any, cam: torch.Tensor | np.ndarray, *, alpha: float = 0.5, min_size: int = 224) -> Image.Image:
    """The heat map over the image, side by side with the image itself, as one RGB PIL image.

    image: what the model saw, for display (uint8, or floats in [0, 1], gray or RGB); cam: (H, W) in [0, 1],
    resized bilinearly to the image if its size differs. Small images (Fashion-MNIST's 28x28) are enlarged by a
    whole factor (nearest neighbour, so pixels stay pixels) until the shorter side reaches `min_size`.
    """
    rgb = _as_rgb(image)
    heat = cam.detach().float().cpu() if isinstance(cam, torch.Tensor) else torch.as_tensor(np.asarray(cam)).float()
    if heat.dim() != 2:
        raise ReslabError(f"heat map: expected one (H, W) map, got shape {tuple(heat.shape)}")
    if tuple(heat.shape) != rgb.shape[:2]:
        # e.g. a model trained at 96x96 shown over the 28x28 image: bilinear, as the CAM itself was upsampled
        heat = F.interpolate(heat[None, None], size=rgb.shape[:2], mode="bilinear", align_corners=False)[0, 0]
    heat = heat.clamp(0, 1).numpy()
    if not 0.0 <= alpha <= 1.0:
        raise ReslabError(f"alpha must lie in [0, 1], got {alpha}")
    blend = (1 - alpha) * rgb + alpha * jet(heat)
    both = np.concatenate([rgb, np.ones((rgb.shape[0], 2, 3)), blend], axis=1)  # a 2-pixel white gap
    out = Image.fromarray((both * 255).round().astype(np.uint8), mode="RGB")
    factor = max(1, math.ceil(min_size / min(rgb.shape[:2])))
    return out.resize((out.width * factor, out.height * factor), Image.Resampling.NEAREST) if factor > 1 else out


def save_cam_overlay(path: str | Path, image: Any, cam: torch.Tensor | np.ndarray, **kwargs: Any) -> Path:
    """Write `cam_overlay(image, cam, **kwargs)` to `path` (PNG unless the suffix says otherwise); returns the path."""
    path = Path(path)
    buffer = io.BytesIO()
    cam_overlay(image, cam, **kwargs).save(buffer, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
    return write_bytes(path, buffer.getbuffer())  # atomic: a full disk leaves no 0-byte or truncated image
