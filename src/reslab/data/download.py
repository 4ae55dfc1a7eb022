"""Downloading dataset files into the cache: atomic, verified before they are kept, with a progress bar.

Every download goes to a temporary file beside its target, is verified by the caller's check, and only then is
renamed into place; so a cut connection, a full disk or a mirror serving other data never leaves a file that a later
run would take for the real one, and several processes may download the same file at once.
"""

from __future__ import annotations

import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from reslab.errors import DataError

ENV_VAR = "RESLAB_DATA"  # a folder the user names for the data, as --data-dir does
DOWNLOAD_TIMEOUT_S = 30


class DownloadFailed(Exception):
    """Every URL failed; the message lists each URL with its reason."""


def cache_root() -> Path:
    """~/.cache/reslab: each dataset downloads into its own folder here, e.g. ~/.cache/reslab/cifar10."""
    return Path.home() / ".cache" / "reslab"


def make_folder(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{folder}: cannot create the download folder ({e.strerror or e})") from None
    return folder


def fetch(url: str, dest: Path, verify: Callable[[Path, str], object]) -> None:
    """Download `url` to `dest`: into a temporary file beside it, `verify(tmp, url)` (raises DataError), renamed."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name, file=sys.stderr
            ) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
        verify(Path(tmp), url)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fetch_first(urls: Sequence[str], dest: Path, verify: Callable[[Path, str], object]) -> None:
    """`fetch` from the first URL that works; a download that fails verification tries the next one.

    Raises DownloadFailed listing every URL and its reason when none works.
    """
    failures = []
    for url in urls:
        try:
            fetch(url, dest, verify)
            return
        except (OSError, http.client.HTTPException, DataError) as e:
            # URLError and socket timeouts are OSErrors
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            failures.append(f"{url}: {reason}")
    raise DownloadFailed("; ".join(failures))


def explicit_folder(data_dir: str | Path | None) -> tuple[str, Path] | None:
    """The folder the user named (`--data-dir`, else $RESLAB_DATA) with how it was named; None if neither is set.

    What the user names is used or is an error: the loaders never fall back to another copy when it lacks the data.
    """
    if data_dir:
        return "--data-dir", Path(data_dir).expanduser()
    if os.environ.get(ENV_VAR):
        return f"${ENV_VAR}", Path(os.environ[ENV_VAR]).expanduser()
    return None


def folder_problem(how: str, folder: Path, what: str) -> str | None:
    """Why `folder` (named by `how`) cannot hold `what` at all: missing, or not a folder; None if it is a folder."""
    if not folder.exists():
        return f"{how} {folder}: no such folder (expected {what} there)"
    if not folder.is_dir():
        return f"{how} {folder}: is a file, not a folder (expected a folder holding {what})"
    return None
