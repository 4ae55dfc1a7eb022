"""Fitting a source's state_dict to the model asked for, as timm does it, and nothing silently.

- A different number of input channels adapts the first convolution (timm's `adapt_input_conv`): in_chans=1 sums
  its filters over the 3 RGB channels, so a grayscale image x gives exactly what the RGB image (x, x, x) gave;
  other counts repeat the RGB filters cyclically and scale them by 3 / in_chans, so the response to a constant image
  keeps its size.
- A different number of classes re-initialises the classifier (the model's own fresh initialisation).
- A BatchNorm counter (`num_batches_tracked`) that the file lacks (files saved before PyTorch 0.4.1) is set to 0:
  it plays no part in evaluation, nor in training with a set momentum.
- Anything else that does not match, a missing or unexpected key or a shape, is a ReslabError listing the keys.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from reslab.errors import ReslabError
from reslab.models.probe import first_conv


def summarise(names: Iterable[str], limit: int = 8) -> str:
    """'a, b, c' or, past `limit` names, 'a, b, ..., h and 12 more'."""
    names = list(names)
    head = ", ".join(names[:limit])
    return head if len(names) <= limit else f"{head} and {len(names) - limit} more"


def classifier(model: nn.Module) -> str:
    """The name of the model's last linear layer: its classifier (fc)."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)][-1]


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> tuple[torch.Tensor, str]:
    """A first-convolution weight (O, 3, kH, kW) made (O, in_chans, kH, kW), and how it was done."""
    out_planes, channels = weight.shape[:2]
    if channels != 3:
        raise ReslabError(
            f"the first convolution of these weights takes {channels} channels; reslab adapts only 3-channel "
            f"(RGB or BGR) weights to another in_chans, here {in_chans}"
        )
    w = weight.float()
    if in_chans == 1:
        return w.sum(dim=1, keepdim=True), "summed the 3 input channels' filters (in_chans=1)"
    repeat = math.ceil(in_chans / 3)
    w = w.repeat(1, repeat, 1, 1)[:, :in_chans] * (3 / in_chans)
    return w, f"repeated the 3 input channels' filters over {in_chans} channels and scaled them by 3/{in_chans}"


def fit_state_dict(model: nn.Module, sd: dict[str, torch.Tensor]) -> list[str]:
    """Load `sd` (reslab's names, the source's shapes) into `model`, adapting only the first convolution and the
    classifier; the report lines say what was loaded, adapted and re-initialised. ReslabError on anything else."""
    expected = model.state_dict()
    conv_key = f"{first_conv(model)}.weight"
    head = classifier(model)
    head_keys = (f"{head}.weight", f"{head}.bias")
    unexpected = [k for k in sd if k not in expected]
    src_head = sd.get(head_keys[0])
    new_head = src_head is not None and src_head.shape[0] != expected[head_keys[0]].shape[0]

    final: dict[str, torch.Tensor] = {}
    missing, mismatched, counters, converted = [], [], [], set()
    report = []
    for key, target in expected.items():
        t = sd.get(key)
        if t is None:
            if key.endswith("num_batches_tracked"):
                final[key] = torch.zeros_like(target)
                counters.append(key)
            else:
                missing.append(key)
            continue
        if key in head_keys and new_head:
            if t.shape[1:] != target.shape[1:]:
                mismatched.append(f"{key} {tuple(t.shape)} (model {tuple(target.shape)})")
            final[key] = target  # the freshly built model's own initialisation
            continue
        same_but_channels = t.ndim == 4 and t.shape[0] == target.shape[0] and t.shape[2:] == target.shape[2:]
        if key == conv_key and same_but_channels and t.shape[1] != target.shape[1]:
            t, how = adapt_input_conv(t, target.shape[1])
            report.append(f"adapted {key}: {tuple(sd[key].shape)} -> {tuple(t.shape)}, {how}")
        if t.shape != target.shape:
            mismatched.append(f"{key} {tuple(t.shape)} (model {tuple(target.shape)})")
            continue
        if t.dtype != target.dtype:
            converted.add(str(t.dtype).removeprefix("torch."))
        final[key] = t.to(target.dtype)

    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing {len(missing)}: {summarise(missing)}")
        if unexpected:
            problems.append(f"unexpected {len(unexpected)}: {summarise(unexpected)}")
        if mismatched:
            problems.append(f"shape differs for {len(mismatched)}: {summarise(mismatched, 4)}")
        raise ReslabError(
            "the weights do not fit the model (" + "; ".join(problems) + "); check --model and its options, "
            "or --from (nothing was loaded)"
        )
    model.load_state_dict(final, strict=True)
    loaded = len(expected) - len(counters) - (len(head_keys) if new_head else 0)
    lines = [f"loaded {loaded} of the model's {len(expected)} tensors from the weights"]
    if converted:
        lines.append(f"converted the stored {', '.join(sorted(converted))} values to {expected[conv_key].dtype}")
    lines += report
    if new_head:
        lines.append(
            f"re-initialised {', '.join(head_keys)} for {expected[head_keys[0]].shape[0]} classes "
            f"(the weights have {src_head.shape[0]})"
        )
    if counters:
        lines.append(f"set {len(counters)} BatchNorm counters (num_batches_tracked), absent from the file, to 0")
    return lines
