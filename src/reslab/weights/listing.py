"""`reslab weights`: the table of named weights as text."""

from __future__ import annotations

from reslab.errors import ReslabError
from reslab.weights.download import find_cached, hub_checkpoints, weights_cache
from reslab.weights.hub import cached_file, hub_cache_dir
from reslab.weights.table import describe_preprocess, list_weights
from reslab.weights.timm_hub import list_timm_hub


def _size(entry) -> str:
    if entry.size_mb is not None:
        return f"{entry.size_mb:.1f}"
    return f"~{entry.num_params * 4 / 2**20:.0f}"  # float32 parameters: the file is that and a little more


def _where(entry) -> str:
    found = find_cached(entry.filename)
    if found is None:
        return "" if entry.url else "by hand"
    return "reslab" if found.parent == weights_cache() else "torch" if found.parent == hub_checkpoints() else "yes"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def format_weights_table(filter: str = "") -> str:
    entries = list_weights(filter)
    hub = list_timm_hub(filter)
    if not entries and not hub:
        raise ReslabError(f"--filter {filter!r}: no weights match; `reslab weights` lists them all")
    lines = []
    if entries:
        rows = [("name", "model", "top-1", "preprocessing", "MB", "cached")]
        for e in entries:
            top1 = "?" if e.top1 is None else f"{e.top1:g}"  # as published: torchvision gives 3 decimals
            rows.append((e.id, e.model, f"{top1} {e.dataset}", describe_preprocess(e.preprocess), _size(e), _where(e)))
        lines += _table(rows)
        lines.append("")
        lines.append(
            "top-1: the publisher's accuracy (%, their own evaluation); MB: the file's size, ~ estimated from the "
            "parameters; cached: found in reslab's cache, torch's, or to be downloaded by hand (Caffe models)"
        )
    if hub:
        if lines:
            lines.append("")
        rows = [("name", "model", "top-1", "at", "params", "cached")]
        for e in hub:
            cached = "yes" if cached_file(f"timm/{e.name}") else ""
            rows.append((e.id, e.model, f"{e.top1:.3f}", f"{e.img_size}px", f"{e.param_count_m:.2f}M", cached))
        lines += _table(rows)
        lines.append("")
        lines.append(
            "timm's weights on the Hugging Face Hub: top-1 (%, ImageNet-1k validation at that size) from timm's "
            "results/results-imagenet.csv; cached: model.safetensors is in the Hugging Face cache "
            f"({hub_cache_dir()}), so it loads with HF_HUB_OFFLINE=1; a name can take @REVISION (docs/hub.md)"
        )
    return "\n".join(lines)
