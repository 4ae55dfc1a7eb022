"""Weights from the Hugging Face Hub: `hf-hub:ORG/NAME[@REVISION]`, as timm names them (`hf-hub:timm/resnet50.a1_in1k`).

The files are fetched by huggingface_hub (the optional extra `reslab[hub]`, imported only here and only when a Hub
name is used), so its cache and its environment variables are those of every other Hugging Face library:

    HF_HOME, HF_HUB_CACHE   where the cache is (default ~/.cache/huggingface/hub): a file timm downloaded is used
                            from there as it is, never downloaded twice
    HF_HUB_OFFLINE=1        no network at all: the cached files only
    HF_ENDPOINT             another Hub (a mirror; the tests' local stand-in)
    HF_TOKEN                a token for private or gated repositories (or the one `hf auth login` saved)

Only `model.safetensors` is read by default: a pickle file (`pytorch_model.bin`) can run code when it is loaded, so
it is read (with torch.load(weights_only=True), as every local file is) only when the caller allows it
(`--allow-pickle`, `allow_pickle=True`). Every load checks the cached file against the name the cache stores it
under (its SHA-256 for large files, the git blob id for small ones), so a damaged file is found before its weights
are used. The commit the revision resolved to is returned, for the checkpoint's provenance.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from reslab.errors import DataError, ReslabError
from reslab.weights.download import sha256_file

PREFIX = "hf-hub:"
SAFE_FILE = "model.safetensors"
PICKLE_FILE = "pytorch_model.bin"  # timm's uploads before safetensors; some repositories have only this
CONFIG_FILE = "config.json"
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class HubFiles:
    """What a Hub name resolved to: the cached files and the commit they are from."""

    name: str  # as given: hf-hub:timm/resnet50.a1_in1k@main
    repo_id: str
    revision: str  # as asked ("main" when none was given)
    commit: str | None  # the commit hash the revision resolved to (None: the cache's layout does not say)
    weights: Path
    config: Path | None  # config.json, where the repository and the cache have one
    sha256: str


def is_hub_name(src: object) -> bool:
    return isinstance(src, str) and src.startswith(PREFIX)


def parse_hub_name(src: str) -> tuple[str, str]:
    """ "hf-hub:timm/resnet50.a1_in1k@v1" -> ("timm/resnet50.a1_in1k", "v1"); the revision defaults to "main"."""
    rest = src[len(PREFIX) :]
    repo_id, at, revision = rest.partition("@")
    if not _REPO.fullmatch(repo_id) or (at and not revision):
        raise ReslabError(
            f"{src!r}: expected hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION (e.g. hf-hub:timm/resnet50.a1_in1k)"
        )
    return repo_id, revision or "main"


def hub_download(src: str, *, allow_pickle: bool = False) -> HubFiles:
    """The weights file (and config.json) of a Hub name, from the Hugging Face cache or downloaded into it."""
    repo_id, revision = parse_hub_name(src)
    hub = _import_hub(src)
    try:
        weights = _fetch(hub, src, repo_id, SAFE_FILE, revision)
    except hub.utils.EntryNotFoundError:
        if not allow_pickle:
            raise ReslabError(
                f"{src}: the repository has no {SAFE_FILE}; reslab reads only safetensors from the Hub unless asked, "
                f"as a pickle file can run code when loaded: pass --allow-pickle (allow_pickle=True) to read its "
                f"{PICKLE_FILE} with torch.load(weights_only=True)"
            ) from None
        try:
            weights = _fetch(hub, src, repo_id, PICKLE_FILE, revision)
        except hub.utils.EntryNotFoundError:
            raise ReslabError(f"{src}: the repository has neither {SAFE_FILE} nor {PICKLE_FILE}") from None
    try:
        config = _fetch(hub, src, repo_id, CONFIG_FILE, revision)
    except (hub.utils.EntryNotFoundError, ReslabError):
        # timm.create_model(..., pretrained=True) caches the weights without config.json: offline, that is no error
        config = None
    sha = verify_cached(weights, repo_id)
    if config is not None:
        verify_cached(config, repo_id)
    return HubFiles(src, repo_id, revision, _commit_of(weights), weights, config, sha)


def _import_hub(src: str):
    try:
        import huggingface_hub
        import huggingface_hub.constants
        import huggingface_hub.utils
    except ImportError:
        raise ReslabError(
            f"{src}: Hub names need the huggingface_hub package: pip install -e '.[hub]' in a clone (or pip install "
            "huggingface_hub); or pass the files' folder instead"
        ) from None
    return huggingface_hub


def _fetch(hub, src: str, repo_id: str, filename: str, revision: str) -> Path:
    """One file through hf_hub_download (cache first); ReslabError with what to do for everything but a missing file."""
    errors = hub.utils
    try:
        return Path(hub.hf_hub_download(repo_id, filename, revision=revision))
    except errors.GatedRepoError:
        raise ReslabError(
            f"{src}: a gated repository; accept its terms on its Hub page, then log in (hf auth login) or set HF_TOKEN"
        ) from None
    except errors.RepositoryNotFoundError:
        raise ReslabError(
            f"{src}: no repository {repo_id} on {_endpoint(hub)} (if it is private: log in with hf auth login or set "
            "HF_TOKEN)"
        ) from None
    except errors.RevisionNotFoundError:
        raise ReslabError(f"{src}: {repo_id} has no revision {revision!r} (a branch, tag or commit hash)") from None
    except errors.EntryNotFoundError as e:
        if isinstance(e, errors.LocalEntryNotFoundError):  # not cached, and the Hub cannot be asked
            raise ReslabError(_offline_message(hub, src, repo_id, filename, revision)) from None
        raise
    except errors.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", "?")
        raise ReslabError(f"{src}: the Hub at {_endpoint(hub)} answered HTTP {status} for {filename}") from None
    except (OSError, ValueError) as e:  # a connection refused, an unwritable cache, ...
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ReslabError(f"{src}: cannot get {filename} ({first})") from None


def _endpoint(hub) -> str:
    return getattr(hub.constants, "ENDPOINT", "https://huggingface.co")


def _offline_message(hub, src: str, repo_id: str, filename: str, revision: str) -> str:
    why = "HF_HUB_OFFLINE is set" if hub.constants.HF_HUB_OFFLINE else f"{_endpoint(hub)} cannot be reached"
    rev = "" if revision == "main" else f" --revision {revision}"
    return (
        f"{src}: {filename} is not in the Hugging Face cache ({hub.constants.HF_HUB_CACHE}) and {why}; get the files "
        f"where there is a connection: hf download {repo_id}{rev} (or timm.create_model('hf-hub:{repo_id}', "
        "pretrained=True)), then copy that cache here or point HF_HUB_CACHE at it"
    )


def _commit_of(path: Path) -> str | None:
    """The commit of a cached file: the cache keeps it at .../snapshots/<commit>/<filename>."""
    parent = path.parent
    if parent.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", parent.name):
        return parent.name
    return None


def git_blob_sha1(path: Path) -> str:
    """git's object id of a file: sha1 of "blob <size>\\0" + the bytes (the Hub's ETag of a file not in LFS)."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verify_cached(path: Path, repo_id: str) -> str:
    """The file's SHA-256, after checking its bytes against its blob's name in the cache: the ETag the Hub served
    it under, which is the SHA-256 of a file in LFS (weights) and the git blob id of a small file (config.json).
    DataError naming the blob to delete when they differ. A file that is not a link into blobs/ (a cache on a
    file system without links) has nothing to be checked against."""
    real = path.resolve()
    digest = sha256_file(real)
    name = real.name
    if re.fullmatch(r"[0-9a-f]{64}", name):
        found, kind = digest, "SHA-256"
    elif re.fullmatch(r"[0-9a-f]{40}", name):
        found, kind = git_blob_sha1(real), "git blob id"
    else:
        return digest
    if found != name:
        raise DataError(
            f"{path}: its {kind} {found[:12]}... is not {name[:12]}..., the one the Hub served for {repo_id}: the "
            f"cached file is damaged; delete {real} and run again to download it anew (or: hf download {repo_id} "
            "--force-download)"
        )
    return digest


def hub_cache_dir() -> Path:
    """The Hugging Face cache as huggingface_hub finds it (HF_HUB_CACHE, else HF_HOME/hub, else
    ~/.cache/huggingface/hub), read without importing huggingface_hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def cached_file(repo_id: str, filename: str = SAFE_FILE, revision: str = "main") -> Path | None:
    """The cached file of repo_id at revision, looked up in the cache's own layout (refs/, snapshots/) without any
    network and without huggingface_hub; None where it is not cached."""
    repo = hub_cache_dir() / f"models--{repo_id.replace('/', '--')}"
    commit = revision
    ref = repo / "refs" / revision
    if ref.is_file():
        commit = ref.read_text().strip()
    path = repo / "snapshots" / commit / filename
    return path if path.is_file() else None
