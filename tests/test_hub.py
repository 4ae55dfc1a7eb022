"""Weights from the Hugging Face Hub without the network: a local stand-in for the Hub (HF_ENDPOINT at a server on
127.0.0.1 that answers hf_hub_download's HEAD and GET on /{repo}/resolve/{revision}/{file} as the Hub does) and
caches filled by hand in huggingface_hub's layout (blobs/ named by ETag, snapshots/<commit>/ links, refs/main), as
timm leaves them. The files are timm's: model.safetensors with timm's key names and a config.json with timm's fields.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import math
import os
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import pytest
import torch
from torch import nn

hf_constants = pytest.importorskip("huggingface_hub.constants", reason="huggingface_hub (reslab[hub]) is not installed")
st = pytest.importorskip("safetensors.torch", reason="the safetensors package is not installed")

from reslab.checkpoint import read_checkpoint  # noqa: E402
from reslab.cli import main  # noqa: E402
from reslab.config import make_config  # noqa: E402
from reslab.data import synthetic_dataset  # noqa: E402
from reslab.errors import DataError, ReslabError  # noqa: E402
from reslab.models import build_model as build_architecture  # noqa: E402
from reslab.weights import build_model, load_pretrained  # noqa: E402
from reslab.weights.hub import parse_hub_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "a" * 40
OLD_COMMIT = "b" * 40
TINY = {"widths": (8, 16, 32, 64)}  # timm's names at 1/8 of the width


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ----------------------------------------------------------------------------------------------------------------------
# timm's files


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random values in every tensor (BatchNorm statistics included), so every tensor changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * (math.sqrt(2 / t[0].numel()) if t.ndim > 1 else 0.1))
    return model.eval()


def timm_files(arch: str, model: nn.Module, *, crop_pct: float = 0.95, size: int = 224) -> dict[str, bytes]:
    """model.safetensors and config.json as timm's push_to_hub writes them."""
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    weights = st.save(sd, metadata={"format": "pt"})
    config = {
        "architecture": arch,
        "num_classes": 1000,
        "num_features": model.num_features,
        "global_pool": "avg",
        "pretrained_cfg": {
            "tag": "a1_in1k",
            "custom_load": False,
            "input_size": [3, size, size],
            "test_input_size": [3, 288, 288],
            "fixed_input_size": False,
            "interpolation": "bicubic",
            "crop_pct": crop_pct,
            "test_crop_pct": 1.0,
            "crop_mode": "center",
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "num_classes": 1000,
            "pool_size": [7, 7],
            "first_conv": "conv1.0" if "conv1.0.weight" in sd else "conv1",
            "classifier": "fc",
        },
    }
    return {"model.safetensors": weights, "config.json": json.dumps(config, indent=2).encode()}


def etag(filename: str, data: bytes) -> str:
    """The Hub's ETag: the SHA-256 of a file in LFS (weights), the git blob id of a small file."""
    if filename.endswith((".safetensors", ".bin")):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


def fill_cache(cache: Path, repo_id: str, files: dict[str, bytes], commit: str = COMMIT, ref: str = "main") -> Path:
    """A Hugging Face cache as huggingface_hub (and so timm) writes it: blobs named by ETag, relative links."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for filename, data in files.items():
        blob = repo / "blobs" / etag(filename, data)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / filename
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return repo


# ----------------------------------------------------------------------------------------------------------------------
# the stand-in Hub


class StandInHub:
    """HEAD/GET /{org}/{name}/resolve/{revision}/{file} with the Hub's headers (X-Repo-Commit, ETag,
    Content-Length) and its 404s (X-Error-Code: RepoNotFound, RevisionNotFound, EntryNotFound). Loopback only,
    at most `max_requests` requests, each socket with a timeout; every request is logged."""

    def __init__(self, max_requests: int = 200) -> None:
        self.repos: dict[str, dict] = {}  # repo_id -> {"refs": {name: commit}, "commits": {commit: {file: bytes}}}
        self.private: dict[str, str] = {}  # repo_id -> the token it needs
        self.log: list[tuple[str, str]] = []
        self.max_requests = max_requests
        hub_ = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 10

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub_.answer(self, body=False)

            def do_GET(self):
                hub_.answer(self, body=True)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add(self, repo_id: str, files: dict[str, bytes], commit: str = COMMIT, ref: str | None = "main") -> None:
        repo = self.repos.setdefault(repo_id, {"refs": {}, "commits": {}})
        repo["commits"][commit] = files
        if ref:
            repo["refs"][ref] = commit

    def gets(self, filename: str) -> int:
        return sum(1 for method, path in self.log if method == "GET" and path.endswith("/" + filename))

    def answer(self, req, *, body: bool) -> None:
        self.log.append((req.command, req.path))
        if len(self.log) > self.max_requests:
            return self.send(req, 503, {}, b"")
        parts = urllib.parse.unquote(urllib.parse.urlparse(req.path).path).strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return self.send(req, 404, {"X-Error-Code": "RepoNotFound"}, b"")
        repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        repo = self.repos.get(repo_id)
        token = self.private.get(repo_id)
        if repo is None or (token and req.headers.get("authorization") != f"Bearer {token}"):
            return self.send(req, 401 if token else 404, {"X-Error-Code": "RepoNotFound"}, b"")
        commit = repo["refs"].get(revision, revision)
        if commit not in repo["commits"]:
            return self.send(req, 404, {"X-Error-Code": "RevisionNotFound"}, b"")
        data = repo["commits"][commit].get(filename)
        if data is None:
            return self.send(req, 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}, b"")
        headers = {"X-Repo-Commit": commit, "ETag": f'"{etag(filename, data)}"'}
        self.send(req, 200, headers, data, body=body)

    @staticmethod
    def send(req, status: int, headers: dict[str, str], data: bytes, body: bool = True) -> None:
        req.send_response(status)
        for k, v in {**headers, "Content-Length": str(len(data))}.items():
            req.send_header(k, v)
        req.end_headers()
        if body and data:
            req.wfile.write(data)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def standin():
    server = StandInHub()
    yield server
    server.close()


@pytest.fixture
def use_hub(monkeypatch, tmp_path):
    """Point huggingface_hub (in this process) at a cache under tmp_path, an endpoint, online or offline: what
    HF_HUB_CACHE, HF_ENDPOINT and HF_HUB_OFFLINE set when it is imported."""
    c = hf_constants
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(c, "HF_TOKEN_PATH", str(tmp_path / "no-token"))

    def configure(*, endpoint: str = "http://127.0.0.1:9", offline: bool = False) -> Path:
        cache = tmp_path / "hf-cache"
        monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
        monkeypatch.setattr(c, "ENDPOINT", endpoint)
        monkeypatch.setattr(c, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(c, "HF_HUB_OFFLINE", offline)
        monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # what `reslab weights` reads, without huggingface_hub
        return cache

    return configure


@pytest.fixture(scope="module")
def tiny_resnet26d():
    """timm/resnet26d at 1/8 width: its names, random weights, its files."""
    model = randomise(build_architecture("resnet26d", **TINY))
    return model, timm_files("resnet26d", model)


@pytest.fixture(scope="module")
def resnet50_files():
    """A full-size resnet50 with random weights, as timm/resnet50.a1_in1k's model.safetensors and config.json."""
    torch.manual_seed(0)
    model = build_architecture("resnet50").eval()
    return model, timm_files("resnet50", model)


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`python -m reslab ARGS` in a fresh process, with only the Hugging Face variables given here."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    full.update({"PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", **env})
    return subprocess.run(
        [sys.executable, "-m", "reslab", *args], env=full, capture_output=True, text=True, timeout=240, cwd=ROOT
    )


# ----------------------------------------------------------------------------------------------------------------------
# the done-when: convert through the stand-in, then offline from the cache it filled; fine-tune from it


def test_convert_through_the_standin_then_offline_from_the_filled_cache(standin, resnet50_files, tmp_path):
    model, files = resnet50_files
    standin.add("timm/resnet50.a1_in1k", files)
    env = {"HF_ENDPOINT": standin.url, "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "home")}

    first = run_cli("convert", "hf-hub:timm/resnet50.a1_in1k", "-o", str(tmp_path / "r50.pt"), env=env)
    assert first.returncode == 0, first.stderr
    assert f"hf-hub:timm/resnet50.a1_in1k (commit {COMMIT[:12]}" in first.stdout
    ckpt = read_checkpoint(tmp_path / "r50.pt")
    assert ckpt["model_name"] == "resnet50" and same(ckpt["model"], model.state_dict())
    assert ckpt["source"]["hub"] == {"repo_id": "timm/resnet50.a1_in1k", "revision": "main", "commit": COMMIT}
    assert ckpt["source"]["revision"] == COMMIT and ckpt["source"]["published_top1"] == 81.214
    p = ckpt["preprocess"]
    assert (p["resize"], p["crop"], p["interpolation"]) == (235, 224, "bicubic")  # floor(224 / 0.95), from config.json
    assert standin.gets("model.safetensors") == 1 and standin.gets("config.json") == 1

    # offline, with the Hub still there to notice any request: the cache alone, nothing asked, the same checkpoint
    asked = len(standin.log)
    second = run_cli(
        "convert", "hf-hub:timm/resnet50.a1_in1k", "-o", str(tmp_path / "again.pt"), env={**env, "HF_HUB_OFFLINE": "1"}
    )
    assert second.returncode == 0, second.stderr
    assert len(standin.log) == asked
    again = read_checkpoint(tmp_path / "again.pt")
    assert same(again["model"], ckpt["model"]) and again["source"]["hub"]["commit"] == COMMIT


def test_offline_without_the_files_is_one_line_naming_the_repository(use_hub, tmp_path, capsys):
    use_hub(offline=True)
    assert main(["convert", "hf-hub:timm/resnet50.a1_in1k", "-o", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "HF_HUB_OFFLINE is set" in err
    assert "not in the Hugging Face cache" in err and "hf download timm/resnet50.a1_in1k" in err
    assert not (tmp_path / "x.pt").exists()


def test_pretrained_from_the_hub_fine_tunes(use_hub, resnet50_files, tmp_path):
    from reslab.train import fit

    model, files = resnet50_files
    fill_cache(use_hub(offline=True), "timm/resnet50.a1_in1k", files)
    data = synthetic_dataset(num_train=64, num_test=16, num_classes=3, image_size=16, in_chans=3)
    config = make_config(
        model="resnet50",
        pretrained="hf-hub:timm/resnet50.a1_in1k",
        freeze="backbone",  # a linear probe: the backbone stays what the Hub gave, so the test can see it
        dataset="synthetic",
        epochs=1,
        max_steps=2,
        batch_size=16,
        lr=0.01,
        threads=1,
        progress=False,
        output=str(tmp_path),
        name="ft",
    )
    result = fit(config, data=data)
    tuned = read_checkpoint(result.run_dir / "last.pt")["model"]
    start = model.state_dict()
    assert tuned["fc.weight"].shape == (3, 2048)  # a new head for the 3 classes, trained ...
    backbone = [k for k in start if not k.startswith("fc.")]
    assert all(torch.equal(tuned[k], start[k]) for k in backbone)  # ... on the Hub's backbone, bit for bit


# ----------------------------------------------------------------------------------------------------------------------
# the cache timm leaves, integrity, revisions, pickle files, errors


def test_a_cache_filled_as_timm_does_is_used_offline_as_it_is(use_hub, tiny_resnet26d):
    model, files = tiny_resnet26d
    repo = fill_cache(use_hub(offline=True), "timm/resnet26d.bt_in1k", files)
    loaded = build_model("resnet26d", weights="hf-hub:timm/resnet26d.bt_in1k", verbose=False, **TINY)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model(x))
    assert loaded.pretrained_cfg["source"]["hub"]["commit"] == COMMIT
    assert sorted(p.name for p in (repo / "blobs").iterdir()) == sorted(etag(f, d) for f, d in files.items())
    use_hub(offline=False)  # online, but nothing answers at the endpoint: the cache is used all the same
    pre = load_pretrained("hf-hub:timm/resnet26d.bt_in1k", model_kwargs=TINY)
    assert same(pre.model.state_dict(), model.state_dict())


def test_weights_without_config_json_as_timm_create_model_caches_them(use_hub, tiny_resnet26d):
    # timm.create_model("resnet26d.bt_in1k", pretrained=True) downloads model.safetensors alone
    model, files = tiny_resnet26d
    fill_cache(use_hub(offline=True), "timm/resnet26d.bt_in1k", {"model.safetensors": files["model.safetensors"]})
    pre = load_pretrained("hf-hub:timm/resnet26d.bt_in1k", model_kwargs=TINY)
    assert pre.model_name == "resnet26d" and same(pre.model.state_dict(), model.state_dict())
    p = pre.preprocess  # timm's table: measured at 288, crop_pct 0.95, bicubic
    assert (p["resize"], p["crop"], p["interpolation"]) == (303, 288, "bicubic")
    assert any("no config.json in the cache" in line for line in pre.report)


def test_a_flipped_byte_in_a_cached_file_is_caught(use_hub, tiny_resnet26d, tmp_path, capsys):
    _, files = tiny_resnet26d
    repo = fill_cache(use_hub(offline=True), "timm/resnet26d.bt_in1k", files)
    blob = repo / "blobs" / etag("model.safetensors", files["model.safetensors"])
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight: safetensors would read it without complaint
    blob.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"damaged; delete {blob}"):
        load_pretrained("hf-hub:timm/resnet26d.bt_in1k", model_kwargs=TINY)
    assert main(["convert", "hf-hub:timm/resnet26d.bt_in1k", "-o", str(tmp_path / "x.pt")]) == 2
    assert "SHA-256" in capsys.readouterr().err

    config = repo / "blobs" / etag("config.json", files["config.json"])  # a small file: its git blob id
    blob.write_bytes(files["model.safetensors"])
    config.write_text(config.read_text().replace('"bicubic"', '"bilinear"'))
    with pytest.raises(DataError, match="git blob id"):
        load_pretrained("hf-hub:timm/resnet26d.bt_in1k", model_kwargs=TINY)


def test_a_revision_is_pinned_and_recorded(use_hub, standin, tiny_resnet26d):
    model, files = tiny_resnet26d
    older = randomise(build_architecture("resnet26d", **TINY), seed=1)
    standin.add("timm/resnet26d.bt_in1k", timm_files("resnet26d", older), commit=OLD_COMMIT, ref="v1")
    standin.add("timm/resnet26d.bt_in1k", files, commit=COMMIT)
    use_hub(endpoint=standin.url)
    main_ = load_pretrained("hf-hub:timm/resnet26d.bt_in1k", model_kwargs=TINY)
    v1 = load_pretrained("hf-hub:timm/resnet26d.bt_in1k@v1", model_kwargs=TINY)
    pinned = load_pretrained(f"hf-hub:timm/resnet26d.bt_in1k@{OLD_COMMIT}", model_kwargs=TINY)
    assert same(main_.model.state_dict(), model.state_dict()) and same(v1.model.state_dict(), older.state_dict())
    assert (main_.source["revision"], v1.source["revision"], pinned.source["revision"]) == (
        COMMIT,
        OLD_COMMIT,
        OLD_COMMIT,
    )
    assert v1.source["hub"]["revision"] == "v1"
    assert standin.gets("model.safetensors") == 2  # the pinned commit came from the cache v1 had filled
    heads = sum(1 for method, _ in standin.log if method == "HEAD")
    load_pretrained("hf-hub:timm/resnet26d.bt_in1k", model_kwargs=TINY)  # online again: asks what main is, no more
    assert standin.gets("model.safetensors") == 2 and sum(1 for m, _ in standin.log if m == "HEAD") > heads
    with pytest.raises(ReslabError, match="has no revision 'v2'"):
        load_pretrained("hf-hub:timm/resnet26d.bt_in1k@v2", model_kwargs=TINY)


def test_pickle_files_only_when_asked(use_hub, standin, tiny_resnet26d):
    import io

    model, files = tiny_resnet26d
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    standin.add("someone/resnet26d-bin", {"pytorch_model.bin": buf.getvalue(), "config.json": files["config.json"]})
    use_hub(endpoint=standin.url)
    with pytest.raises(ReslabError, match="has no model.safetensors.*--allow-pickle"):
        load_pretrained("hf-hub:someone/resnet26d-bin", model_kwargs=TINY)
    assert standin.gets("pytorch_model.bin") == 0  # refused before anything was downloaded
    pre = load_pretrained("hf-hub:someone/resnet26d-bin", model_kwargs=TINY, allow_pickle=True)
    assert pre.source["file"] == "pytorch_model.bin" and same(pre.model.state_dict(), model.state_dict())


def test_unknown_and_private_repositories(use_hub, standin, tiny_resnet26d, monkeypatch):
    _, files = tiny_resnet26d
    standin.add("me/private-resnet26d", files)
    standin.private["me/private-resnet26d"] = "secret"
    use_hub(endpoint=standin.url)
    with pytest.raises(ReslabError, match=f"no repository timm/resnet99 on {standin.url}"):
        load_pretrained("hf-hub:timm/resnet99")
    with pytest.raises(ReslabError, match="if it is private: log in"):
        load_pretrained("hf-hub:me/private-resnet26d", model_kwargs=TINY)
    monkeypatch.setenv("HF_TOKEN", "secret")  # huggingface_hub sends it
    assert load_pretrained("hf-hub:me/private-resnet26d", model_kwargs=TINY).model_name == "resnet26d"


def test_an_architecture_reslab_lacks_is_one_line_naming_what(use_hub, tiny_resnet26d):
    _, files = tiny_resnet26d
    config = json.loads(files["config.json"])
    config["architecture"] = "seresnet50"
    fill_cache(use_hub(offline=True), "timm/seresnet50.a1_in1k", {**files, "config.json": json.dumps(config).encode()})
    with pytest.raises(ReslabError, match="'seresnet50': reslab does not build it yet.*squeeze-and-excitation"):
        load_pretrained("hf-hub:timm/seresnet50.a1_in1k")


def test_hub_names_are_checked():
    assert parse_hub_name("hf-hub:timm/resnet50.a1_in1k") == ("timm/resnet50.a1_in1k", "main")
    assert parse_hub_name("hf-hub:timm/resnet50.a1_in1k@" + COMMIT) == ("timm/resnet50.a1_in1k", COMMIT)
    for bad in ("hf-hub:resnet50", "hf-hub:timm/resnet50@", "hf-hub:timm/a/b", "hf-hub:"):
        with pytest.raises(ReslabError, match="expected hf-hub:ORG/NAME"):
            parse_hub_name(bad)
    with pytest.raises(ReslabError, match="hf-hub:timm/resnet50.a1_in1k"):  # the bare timm name points at the Hub
        load_pretrained("resnet50.a1_in1k")


def test_weights_lists_timms_hub_weights_and_what_is_cached(use_hub, tiny_resnet26d, capsys):
    _, files = tiny_resnet26d
    fill_cache(use_hub(offline=True), "timm/resnet26d.bt_in1k", files)
    assert main(["weights", "--filter", "resnet26"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if "hf-hub:" in line[:8]}
    assert rows["hf-hub:timm/resnet26d.bt_in1k"][1:] == ["resnet26d", "77.408", "288px", "16.01M", "yes"]
    assert rows["hf-hub:timm/resnet26.bt_in1k"][1:] == ["resnet26", "76.366", "288px", "16.00M"]  # not cached


def test_without_huggingface_hub_the_error_says_what_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # `import huggingface_hub` fails, as when absent
    assert main(["convert", "hf-hub:timm/resnet50.a1_in1k", "-o", str(tmp_path / "x.pt")]) == 2
    assert "need the huggingface_hub package: pip install -e '.[hub]'" in capsys.readouterr().err
