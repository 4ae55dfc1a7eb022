"""Weights files: the caches they are looked for in, their download, and the SHA-256 check on every load.

A named entry or a URL is looked for by its file name in reslab's cache (~/.cache/reslab/weights), then in torch
hub's ($TORCH_HOME/hub/checkpoints, where torchvision and timm put what they download), and only then downloaded,
into reslab's cache (never into torch's). A file name that ends in "-<hex digits>.<ext>" carries the start of the
file's SHA-256 (torchvision's and akamaster's convention, which torch.hub checks once, at download): reslab checks
it every time the file is loaded, so a file damaged in the cache is found before its weights are used.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import urllib.error
import urllib.parse
from pathlib import Path

import torch.hub

from reslab.data.download import cache_root, fetch, make_folder
from reslab.errors import DataError, ReslabError

# NAME-<at least 8 hex digits of the SHA-256>.EXT; torch.hub's HASH_REGEX is r"-([a-f0-9]*)\." (any length), which
# would take "-a." or "-2024." in a user's own file name for a hash
HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.")


def hash_prefix(filename: str | Path) -> str | None:
    """The SHA-256 prefix a file name carries ("resnet50-11ad3fa6.pth" -> "11ad3fa6"), or None."""
    m = HASH_IN_NAME.search(Path(filename).name)
    return m.group(1) if m else None


def weights_cache() -> Path:
    """~/.cache/reslab/weights: where reslab downloads weights files."""
    return cache_root() / "weights"


def hub_checkpoints() -> Path:
    """torch hub's cache of downloaded checkpoints ($TORCH_HOME/hub/checkpoints, ~/.cache/torch/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_cached(filename: str) -> Path | None:
    """The file in reslab's cache, else in torch hub's; None where neither has it."""
    for folder in (weights_cache(), hub_checkpoints()):
        if (folder / filename).is_file():
            return folder / filename
    return None


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: str | Path, prefix: str, *, name: str | None = None, url: str | None = None) -> str:
    """The file's SHA-256, checked to start with `prefix` (from its published name); DataError if it does not."""
    digest = sha256_file(path)
    if not digest.startswith(prefix):
        again = f"delete it and run again to download it anew from {url}" if url else "get the published file again"
        raise DataError(
            f"{path}: SHA-256 {digest[: len(prefix)]}... does not match the {prefix} in the name "
            f"{name or Path(path).name}: the file is damaged or is not the published one; {again}"
        )
    return digest


def url_filename(url: str) -> str:
    name = Path(urllib.parse.urlparse(url).path).name
    if not name:
        raise ReslabError(f"{url}: the URL names no file (expected it to end in a file name, e.g. .../resnet50.pth)")
    return name


def fetch_weights(url: str, filename: str | None = None) -> Path:
    """The file `url` names: from a cache if there, else downloaded into reslab's cache (verified before it is kept).

    Offline (or on any download failure) a ReslabError says how to get the file by hand and where to put it.
    """
    name = filename or url_filename(url)
    cached = find_cached(name)
    if cached is not None:
        return cached
    dest = make_folder(weights_cache()) / name
    prefix = hash_prefix(name)

    def verify(tmp: Path, _url: str) -> None:
        if prefix:
            verify_file(tmp, prefix, name=name, url=url)

    try:
        fetch(url, dest, verify)
    except (OSError, http.client.HTTPException) as e:  # URLError and socket timeouts are OSErrors
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        raise ReslabError(
            f"cannot download {url} ({reason}); to get it without reslab: download it where there is a connection "
            f"(e.g. curl -L -o {name} {url}), then put it in {weights_cache()} (or torch's cache "
            f"{hub_checkpoints()}), or pass the file's path instead"
        ) from None
    return dest
