"""Pretrained weights: each source loads exactly (the same outputs as the source's own model), the cache and the
hash check, adaptation to other channel and class counts, and errors that say what does not fit.

Everything is made here and kept small (reduced widths, small inputs): random-weight files named with their real
hash convention, a file server on 127.0.0.1, Caffe files written with a tiny protobuf writer, and reference forwards
written from the sources' own definitions. The one real file is akamaster's ResNet-20 in ../shared/fixtures.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import reslab
from reslab.cli import main
from reslab.errors import ReslabError
from reslab.models import ShortcutA
from reslab.models import build_model as build_architecture
from reslab.predict import load_natural_image, normalize_natural, predict
from reslab.weights import IMAGENET_CLASSES, WEIGHTS, WeightsEntry, convert, load_pretrained, timm_architecture
from reslab.weights.table import CIFAR10_CLASSES, TORCHVISION_V1

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
if not SHARED.is_dir():
    SHARED = Path("/work/shared")
AKAMASTER_FILE = SHARED / "fixtures" / "resnet20-12fca82f.th"
TINY = {"widths": (8, 16, 32, 64)}  # ImageNet layouts at 1/8 of the width: the same names, a fraction of the cost


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No real cache: an empty HOME (reslab's cache) and TORCH_HOME (torch hub's)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere, BatchNorm statistics and affine included, so every tensor changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2 / fan_in))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.05)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
    return model.eval()


def save_hashed(folder: Path, stem: str, obj, ext: str = ".pth", **save_kwargs) -> Path:
    """Save `obj` as torchvision names its files: STEM-<first 8 hex digits of the file's SHA-256>.EXT."""
    buf = io.BytesIO()
    torch.save(obj, buf, **save_kwargs)
    data = buf.getvalue()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}{ext}"
    path.write_bytes(data)
    return path


@pytest.fixture
def tiny_resnet18(tmp_path):
    """(a torchvision-layout ResNet-18 at 1/8 width with random weights, its file named with its hash)."""
    model = randomise(build_architecture("resnet18", **TINY))
    return model, save_hashed(tmp_path / "files", "resnet18", model.state_dict())


def rand_images(n=4, size=32, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def same_outputs(a: nn.Module, b: nn.Module, x: torch.Tensor, atol: float = 1e-5) -> float:
    ya, yb = a.eval()(x), b.eval()(x)
    diff = (ya - yb).abs().max().item()
    assert diff <= atol, f"max abs output difference {diff:.3g} > {atol}"
    return diff


# ----------------------------------------------------------------------------------------------------------------------
# the model options the sources need


def test_shortcut_a_padding_both_sides_puts_the_identity_in_the_middle():
    x = torch.randn(2, 16, 8, 8)
    end, both = ShortcutA(16, 32, stride=2), ShortcutA(16, 32, stride=2, pad="both")
    sub = x[:, :, ::2, ::2]
    assert torch.equal(end(x)[:, :16], sub) and not end(x)[:, 16:].any()
    assert torch.equal(both(x)[:, 8:24], sub) and not both(x)[:, :8].any() and not both(x)[:, 24:].any()
    with pytest.raises(ReslabError, match="shortcut_a_pad"):
        build_architecture("resnet20", shortcut_a_pad="middle")


def test_caffe_stem_pool_has_no_padding_and_rounds_up():
    padded = build_architecture("resnet50", **TINY).maxpool
    ceil = build_architecture("resnet50", stem_pool="ceil", **TINY).maxpool
    x = torch.arange(36.0).view(1, 1, 6, 6)  # increasing along rows and columns: a window's max is its last pixel
    # Caffe: windows start at 0, 2, 4 (the last one cut at the border): maxima at 2, 4, 5 on each axis
    assert ceil(x)[0, 0].tolist() == [[14.0, 16.0, 17.0], [26.0, 28.0, 29.0], [32.0, 34.0, 35.0]]
    assert padded(x)[0, 0].tolist() == [[7.0, 9.0, 11.0], [19.0, 21.0, 23.0], [31.0, 33.0, 35.0]]
    assert ceil(torch.zeros(1, 1, 112, 112)).shape == padded(torch.zeros(1, 1, 112, 112)).shape == (1, 1, 56, 56)


# ----------------------------------------------------------------------------------------------------------------------
# akamaster/pytorch_resnet_cifar10, re-written from its resnet.py


class _AkamasterBlock(nn.Module):
    def __init__(self, in_planes, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = stride != 1 or in_planes != planes
        self.planes = planes

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # its option A: LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4)))
        q = self.planes // 4
        out = out + (F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, q, q)) if self.pad else x)
        return F.relu(out)


class AkamasterResNet(nn.Module):
    def __init__(self, n=3, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes, stages = 16, []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            stages.append(
                nn.Sequential(
                    *[
                        _AkamasterBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1)
                        for i in range(n)
                    ]
                )
            )
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3]).view(out.size(0), -1)
        return self.linear(out)


def _akamaster_reference(state: dict) -> nn.Module:
    ref = AkamasterResNet()
    ref.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=False)
    return ref.eval()


def cifar_like(n=64, seed=3):
    """Images in [0, 1] with CIFAR-like smooth structure, normalised as akamaster's trainer does (ImageNet mean/std)."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=32, mode="bilinear", align_corners=False)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


@pytest.mark.skipif(not AKAMASTER_FILE.is_file(), reason=f"akamaster's published file is not at {AKAMASTER_FILE}")
def test_akamaster_published_resnet20_gives_its_own_models_outputs(capsys):
    ckpt = torch.load(AKAMASTER_FILE, map_location="cpu", weights_only=True)  # the legacy format loads safely
    ref = _akamaster_reference(ckpt["state_dict"])
    model = reslab.build_model("resnet20", weights=str(AKAMASTER_FILE))
    report = capsys.readouterr().out
    assert "akamaster" in report and "SHA-256 verified" in report
    x = cifar_like()
    same_outputs(model, ref, x)
    with torch.no_grad():
        assert torch.equal(model(x).argmax(1), ref(x).argmax(1))
        # the same keys in reslab's default option-A padding load "fine" and compute something else
        naive = build_architecture("resnet20").eval()
        naive.load_state_dict(model.state_dict())
        assert (naive(x) - ref(x)).abs().max() > 0.1
    assert model.pretrained_cfg["classes"] == list(CIFAR10_CLASSES)
    assert model.pretrained_cfg["source"]["published_top1"] == 91.73


def test_akamaster_format_is_recognised_from_a_legacy_th_file(tmp_path):
    ref = randomise(AkamasterResNet())
    state = {"module." + k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = save_hashed(
        tmp_path, "resnet20", {"best_prec1": 90.0, "state_dict": state}, ".th", _use_new_zipfile_serialization=False
    )
    pre = load_pretrained(path, "resnet20")  # no --from: the module./linear keys say akamaster
    assert pre.source["format"] == "akamaster" and pre.model_kwargs["shortcut_a_pad"] == "both"
    same_outputs(pre.model, ref, cifar_like(8))
    assert any("num_batches_tracked" in line for line in pre.report)


# ----------------------------------------------------------------------------------------------------------------------
# torchvision-style files: download, the caches, the hash on every load


@pytest.fixture
def server(tiny_resnet18, serve):
    return serve(tiny_resnet18[1].parent)


def test_url_is_downloaded_once_and_its_hash_checked_on_every_load(tiny_resnet18, server):
    model, file = tiny_resnet18
    url = server.url + file.name
    pre = load_pretrained(url, "resnet18", model_kwargs=TINY)
    cached = Path.home() / ".cache" / "reslab" / "weights" / file.name
    assert cached.is_file() and pre.source["sha256"].startswith(file.name.split("-")[1][:8])
    same_outputs(pre.model, model, rand_images())
    n = len(server.requests)
    load_pretrained(url, "resnet18", model_kwargs=TINY)
    assert len(server.requests) == n  # from the cache
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit flipped in the cache
    cached.write_bytes(bytes(data))
    with pytest.raises(ReslabError, match="SHA-256") as e:
        load_pretrained(url, "resnet18", model_kwargs=TINY)
    assert str(cached) in str(e.value) and "download it anew" in str(e.value)


def test_download_that_fails_its_hash_is_not_kept(tiny_resnet18, server):
    wrong = tiny_resnet18[1].with_name("resnet18-00000000.pth")
    wrong.write_bytes(tiny_resnet18[1].read_bytes())
    with pytest.raises(ReslabError, match="does not match the 00000000"):
        load_pretrained(server.url + wrong.name, "resnet18", model_kwargs=TINY)
    cache = Path.home() / ".cache" / "reslab" / "weights"
    assert not list(cache.iterdir())


def _entry(file: Path, url: str, **kw) -> WeightsEntry:
    fields = dict(
        id="resnet18.test_in1k",
        model="resnet18",
        source="torchvision",
        filename=file.name,
        url=url,
        top1=70.0,
        dataset="ImageNet-1k",
        preprocess=TORCHVISION_V1,
        classes="imagenet",
        num_params=0,
    )
    return WeightsEntry(**{**fields, **kw})


def test_named_entry_found_in_torch_hub_cache_is_used_without_network(tiny_resnet18, monkeypatch, unused_port):
    model, file = tiny_resnet18
    hub = Path.home().parent / "torch" / "hub" / "checkpoints"  # $TORCH_HOME/hub/checkpoints
    hub.mkdir(parents=True)
    (hub / file.name).write_bytes(file.read_bytes())
    monkeypatch.setitem(WEIGHTS, "resnet18.test_in1k", _entry(file, f"http://127.0.0.1:{unused_port}/{file.name}"))
    pre = load_pretrained("resnet18.test_in1k", model_kwargs=TINY)  # the entry names the architecture
    assert pre.model_name == "resnet18" and pre.source["id"] == "resnet18.test_in1k"
    assert pre.classes == list(IMAGENET_CLASSES) and pre.preprocess == TORCHVISION_V1
    same_outputs(pre.model, model, rand_images())


def test_offline_says_how_to_get_the_file_and_where_to_put_it(tiny_resnet18, monkeypatch, unused_port):
    file = tiny_resnet18[1]
    url = f"http://127.0.0.1:{unused_port}/{file.name}"
    monkeypatch.setitem(WEIGHTS, "resnet18.test_in1k", _entry(file, url))
    with pytest.raises(ReslabError) as e:
        load_pretrained("resnet18.test_in1k", model_kwargs=TINY)
    msg = str(e.value)
    assert f"curl -L -o {file.name} {url}" in msg and str(Path.home() / ".cache" / "reslab" / "weights") in msg
    assert "hub/checkpoints" in msg and "\n" not in msg
    with pytest.raises(ReslabError, match="models.zip"):  # Caffe models cannot be downloaded at all
        load_pretrained("resnet50.caffe_in1k")


def test_prefixes_of_data_parallel_and_compile_are_dropped(tiny_resnet18, tmp_path):
    model, _ = tiny_resnet18
    wrapped = {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}
    pre = load_pretrained(save_hashed(tmp_path, "wrapped", {"state_dict": wrapped}), "resnet18", model_kwargs=TINY)
    same_outputs(pre.model, model, rand_images())


def test_a_file_that_needs_full_unpickling_is_refused(tmp_path, tiny_resnet18):
    # training scripts (timm's among them) save their argparse.Namespace beside the weights: loading it would run
    # arbitrary pickled code in general, so such a file is refused rather than unpickled
    args = argparse.Namespace(lr=0.1)
    torch.save({"state_dict": tiny_resnet18[0].state_dict(), "args": args}, tmp_path / "x.pth")
    with pytest.raises(ReslabError, match="weights_only=True"):
        load_pretrained(tmp_path / "x.pth", "resnet18", model_kwargs=TINY)


# ----------------------------------------------------------------------------------------------------------------------
# adaptation, and everything else an error


def test_in_chans_1_sums_the_rgb_filters_so_gray_matches_rgb_copies(tiny_resnet18, capsys):
    model, file = tiny_resnet18
    gray = reslab.build_model("resnet18", weights=file, in_chans=1, **TINY)
    assert "summed the 3 input channels' filters" in capsys.readouterr().out
    x = rand_images()[:, :1]
    with torch.no_grad():
        diff = (gray.eval()(x) - model(x.expand(-1, 3, -1, -1))).abs().max().item()
    assert diff < 1e-5
    pre = load_pretrained(file, "resnet18", in_chans=4, model_kwargs=TINY)
    w = model.conv1.weight
    assert torch.allclose(pre.model.conv1.weight, torch.cat([w, w[:, :1]], 1) * 0.75)
    assert pre.preprocess is None and any("4 input channels" in line for line in pre.report)


def test_num_classes_reinitialises_only_the_classifier(tiny_resnet18):
    model, file = tiny_resnet18
    pre = load_pretrained(file, "resnet18", num_classes=7, model_kwargs=TINY)
    sd, src = pre.model.state_dict(), model.state_dict()
    assert sd["fc.weight"].shape == (7, 64)
    assert all(torch.equal(sd[k], src[k]) for k in src if not k.startswith("fc."))
    assert "re-initialised fc.weight, fc.bias for 7 classes (the weights have 1000)" in pre.report
    assert pre.classes == [f"class_{i}" for i in range(7)]


def test_anything_else_that_does_not_fit_is_an_error_listing_the_keys(tiny_resnet18, tmp_path):
    model, _ = tiny_resnet18
    sd = dict(model.state_dict())
    del sd["layer4.1.bn2.bias"]
    sd["extra.weight"] = torch.zeros(3)
    with pytest.raises(ReslabError) as e:
        load_pretrained(save_hashed(tmp_path, "bad", sd), "resnet18", model_kwargs=TINY)
    assert "missing 1: layer4.1.bn2.bias" in str(e.value) and "unexpected 1: extra.weight" in str(e.value)
    with pytest.raises(ReslabError) as e:  # the wrong widths: every conv and BN differs, summarised
        load_pretrained(save_hashed(tmp_path, "bad2", model.state_dict()), "resnet18")
    assert "shape differs for" in str(e.value) and "more" in str(e.value) and "nothing was loaded" in str(e.value)
    state = {"module." + k: v for k, v in AkamasterResNet().state_dict().items()}
    akamaster = save_hashed(tmp_path, "resnet20", {"state_dict": state}, ".th")
    with pytest.raises(ReslabError, match="shortcut_a_pad='end' does not fit akamaster weights"):
        load_pretrained(akamaster, "resnet20", model_kwargs={"shortcut_a_pad": "end"})


# ----------------------------------------------------------------------------------------------------------------------
# timm: .safetensors or .pth with config.json; the "d" variants' names


TIMM_D_KEYS = [
    "conv1.0.weight",
    "conv1.1.running_mean",
    "conv1.3.weight",
    "conv1.4.weight",
    "conv1.6.weight",
    "bn1.weight",
    "layer1.0.downsample.1.weight",
    "layer2.0.downsample.2.running_var",
]


@pytest.mark.parametrize("ext", [".safetensors", ".pth"])
def test_timm_resnet50d_with_its_config(tmp_path, ext):
    source = randomise(build_architecture("resnet50d", **TINY))
    sd = source.state_dict()
    assert set(TIMM_D_KEYS) <= set(sd)  # timm's names for the deep stem and the average-pool shortcut
    folder = tmp_path / "timm-resnet50d"
    folder.mkdir()
    if ext == ".safetensors":
        st = pytest.importorskip("safetensors.torch", reason="the safetensors package is not installed")
        st.save_file({k: v.contiguous() for k, v in sd.items()}, folder / "model.safetensors")
    else:
        torch.save(sd, folder / "pytorch_model.bin")
    cfg = {
        "architecture": "resnet50d",
        "num_classes": 1000,
        "pretrained_cfg": {
            "input_size": [3, 224, 224],
            "crop_pct": 0.95,
            "interpolation": "bicubic",
            "crop_mode": "center",
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "num_classes": 1000,
        },
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    pre = load_pretrained(folder, model_kwargs=TINY)  # the folder, as timm / Hugging Face snapshots are laid out
    assert pre.source["format"] == "timm" and pre.model_name == "resnet50d"
    assert (pre.preprocess["resize"], pre.preprocess["crop"], pre.preprocess["interpolation"]) == (235, 224, "bicubic")
    assert pre.classes[0] == "tench"
    same_outputs(pre.model, source, rand_images(2, 64))


def test_timm_architecture_names():
    assert timm_architecture("resnet50.a1_in1k") == ("resnet50", {})
    assert timm_architecture("resnet101d") == ("resnet101d", {})  # timm's names are registered as they are
    assert timm_architecture("resnet26t.ra2_in1k") == ("resnet26t", {})
    # the others name what reslab lacks for them
    for arch, lacks in [
        ("seresnet50.a1_in1k", "squeeze-and-excitation"),
        ("ecaresnet50d", "efficient channel attention"),
        ("resnetblur50", "blur-pool"),
        ("resnetaa50d", "anti-aliased"),
        ("resnetrs101", "ResNet-RS"),
        ("gcresnet50t", "global-context"),
        ("resnet50_gn", "GroupNorm"),
        ("resnetv2_50", "ResNetV2"),
        ("resnet20", "does not define"),  # a CIFAR name of reslab's, not a timm architecture
    ]:
        with pytest.raises(ReslabError, match=f"{arch!r}: reslab does not build it yet.*{lacks}"):
            timm_architecture(arch)


# ----------------------------------------------------------------------------------------------------------------------
# Kaiming He's Caffe models: a tiny protobuf writer, and Caffe's forward written from the prototxt


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _blob(a: np.ndarray, legacy: bool = False) -> bytes:
    if legacy:  # num, channels, height, width (fields 1..4): how older Caffe stored a blob's shape
        dims = (1,) * (4 - a.ndim) + a.shape
        shape = b"".join(_int_field(i + 1, d) for i, d in enumerate(dims))
    else:
        shape = _len_field(7, _len_field(1, b"".join(_varint(d) for d in a.shape)))
    return shape + _len_field(5, a.astype("<f4").tobytes())


def _layer(name: str, kind: str, blobs=(), legacy=False) -> bytes:
    out = _len_field(1, name.encode()) + _len_field(2, kind.encode()) + _len_field(3, b"data") + _len_field(4, b"x")
    out += _len_field(106, _int_field(1, 64))  # a convolution_param {num_output: 64}: skipped by the reader
    return out + b"".join(_len_field(7, _blob(b, legacy)) for b in blobs)


def caffe_blobs(layers_per_stage, widths, letters: bool, conv1_bias: bool, seed=0) -> dict[str, list[np.ndarray]]:
    """Random blobs with the names and shapes of ResNet-50/101/152-deploy.prototxt at the given widths."""
    rng = np.random.default_rng(seed)
    blobs: dict[str, list[np.ndarray]] = {}

    def conv_bn(name, suffix, cin, cout, k, bias=False):
        blobs[name] = [rng.normal(0, math.sqrt(2 / (cin * k * k)), (cout, cin, k, k)).astype("f4")]
        if bias:
            blobs[name].append(rng.normal(0, 0.1, cout).astype("f4"))
        f = np.array([3.0], "f4")  # Caffe's moving-average normaliser: the statistics are stored times it
        mean, var = rng.normal(0, 0.1, cout).astype("f4"), rng.uniform(0.5, 1.5, cout).astype("f4")
        blobs[f"bn{suffix}"] = [mean * f, var * f, f]
        # a residual branch's last scale small, as in trained networks, so that 33 blocks do not grow the output 1e5x
        g = rng.uniform(0.1, 0.3, cout) if suffix.endswith("2c") else rng.uniform(0.5, 1.5, cout)
        blobs[f"scale{suffix}"] = [g.astype("f4"), rng.normal(0, 0.1, cout).astype("f4")]

    conv_bn("conv1", "_conv1", 3, widths[0], 7, bias=conv1_bias)
    inplanes = widths[0]
    for stage, (n, planes) in enumerate(zip(layers_per_stage, widths, strict=True), start=2):
        for i, b in enumerate(block_names(stage, n, letters)):
            if i == 0:
                conv_bn(f"res{b}_branch1", f"{b}_branch1", inplanes, planes * 4, 1)
            conv_bn(f"res{b}_branch2a", f"{b}_branch2a", inplanes if i == 0 else planes * 4, planes, 1)
            conv_bn(f"res{b}_branch2b", f"{b}_branch2b", planes, planes, 3)
            conv_bn(f"res{b}_branch2c", f"{b}_branch2c", planes, planes * 4, 1)
        inplanes = planes * 4
    blobs["fc1000"] = [rng.normal(0, 0.05, (1000, inplanes)).astype("f4"), rng.normal(0, 0.05, 1000).astype("f4")]
    return blobs


def block_names(stage, n, letters):
    return [
        f"{stage}{'abcdefghijklmnopqrstuvwxyz'[i]}" if letters else (f"{stage}a" if i == 0 else f"{stage}b{i}")
        for i in range(n)
    ]


def write_caffemodel(path: Path, blobs: dict[str, list[np.ndarray]]) -> Path:
    net = _len_field(1, b"ResNet-tiny") + _len_field(3, b"data") + b"".join(_int_field(4, d) for d in (1, 3, 64, 64))
    for name, bl in blobs.items():
        kind = (
            "Convolution"
            if name.startswith(("conv", "res"))
            else "BatchNorm"
            if name.startswith("bn")
            else ("Scale" if name.startswith("scale") else "InnerProduct")
        )
        net += _len_field(100, _layer(name, kind, bl, legacy=name == "fc1000"))
        if kind == "Scale":
            net += _len_field(100, _layer(name.replace("scale", "relu"), "ReLU"))  # a layer without blobs
    path.write_bytes(net)
    return path


def caffe_forward(blobs, x, layers_per_stage, letters):
    """Caffe's forward of ResNet-N-deploy.prototxt: stride on branch2a, BatchNorm (stats / factor, eps 1e-5), Scale,
    Caffe's pooling (no padding, ceil((H - 3) / 2) + 1 windows), 7x7 average pool (global at 224), fc1000."""
    t = torch.from_numpy

    def conv(name, x, stride, pad):
        b = blobs[name]
        return F.conv2d(x, t(b[0]), t(b[1]) if len(b) > 1 else None, stride, pad)

    def bn_scale(suffix, x):
        mean, var, f = blobs[f"bn{suffix}"]
        s = 0.0 if f[0] == 0 else 1.0 / f[0]
        x = (x - t(mean * s).view(1, -1, 1, 1)) / torch.sqrt(t(var * s).view(1, -1, 1, 1) + 1e-5)
        gamma, beta = blobs[f"scale{suffix}"]
        return x * t(gamma).view(1, -1, 1, 1) + t(beta).view(1, -1, 1, 1)

    x = F.relu(bn_scale("_conv1", conv("conv1", x, 2, 3)))
    out = math.ceil((x.shape[-1] - 3) / 2) + 1  # Caffe's pooled size
    extra = (out - 1) * 2 + 3 - x.shape[-1]
    x = F.max_pool2d(F.pad(x, (0, extra, 0, extra), value=-math.inf), 3, 2)
    for stage, n in enumerate(layers_per_stage, start=2):
        for i, b in enumerate(block_names(stage, n, letters)):
            stride = 2 if i == 0 and stage > 2 else 1
            shortcut = bn_scale(f"{b}_branch1", conv(f"res{b}_branch1", x, stride, 0)) if i == 0 else x
            y = F.relu(bn_scale(f"{b}_branch2a", conv(f"res{b}_branch2a", x, stride, 0)))
            y = F.relu(bn_scale(f"{b}_branch2b", conv(f"res{b}_branch2b", y, 1, 1)))
            y = bn_scale(f"{b}_branch2c", conv(f"res{b}_branch2c", y, 1, 0))
            x = F.relu(y + shortcut)
    x = x.mean(dim=(2, 3))
    return F.linear(x, t(blobs["fc1000"][0]), t(blobs["fc1000"][1]))


@pytest.mark.parametrize(
    "name, layers, letters, conv1_bias",
    [("resnet50", [3, 4, 6, 3], True, True), ("resnet101", [3, 4, 23, 3], False, False)],
    ids=["resnet50-letters-conv1-bias", "resnet101-numbered"],
)
def test_caffe_model_gives_caffes_outputs(tmp_path, name, layers, letters, conv1_bias):
    widths = (4, 8, 8, 16)
    blobs = caffe_blobs(layers, widths, letters, conv1_bias)
    path = write_caffemodel(tmp_path / "tiny.caffemodel", blobs)
    pre = load_pretrained(path, name, model_kwargs={"widths": widths})  # the .caffemodel extension says caffe
    assert pre.model_kwargs["stride_placement"] == "v1" and pre.model_kwargs["stem_pool"] == "ceil"
    assert pre.preprocess["channel_order"] == "bgr" and pre.preprocess["value_scale"] == 255.0
    assert any("folded the bias of Caffe's conv1" in line for line in pre.report) == conv1_bias
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = caffe_forward(blobs, x, layers, letters)
        diff = (pre.model.eval()(x) - ref).abs().max().item()
    assert diff < 1e-5 * ref.abs().max().item(), f"max abs difference from Caffe's forward {diff:.3g}"


def test_caffe_file_missing_a_layer_is_an_error_naming_it(tmp_path):
    blobs = caffe_blobs([3, 4, 6, 3], (4, 8, 8, 16), True, True)
    del blobs["bn3b_branch2b"]
    path = write_caffemodel(tmp_path / "tiny.caffemodel", blobs)
    with pytest.raises(ReslabError, match="bn3b_branch2b"):
        load_pretrained(path, "resnet50", model_kwargs={"widths": (4, 8, 8, 16)})
    with pytest.raises(ReslabError, match="not a Caffe .caffemodel"):
        (tmp_path / "junk.caffemodel").write_bytes(b"\x0a\xff\xff\xff")
        load_pretrained(tmp_path / "junk.caffemodel", "resnet50")


# ----------------------------------------------------------------------------------------------------------------------
# the checkpoint `reslab convert` writes, and predict on it


def _photo(path: Path, size=(300, 200), color=(200, 30, 30)) -> Path:
    a = np.zeros((size[1], size[0], 3), np.uint8)
    a[...] = color
    Image.fromarray(a).save(path)
    return path


def test_convert_writes_a_checkpoint_that_load_checkpoint_and_predict_read(tmp_path, capsys):
    ref = randomise(AkamasterResNet())
    state = {"module." + k: v for k, v in ref.state_dict().items()}
    src = save_hashed(tmp_path, "resnet20", {"best_prec1": 90.0, "state_dict": state}, ".th")
    out = tmp_path / "resnet20-cifar.pt"
    assert main(["convert", str(src), "--model", "resnet20", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "akamaster weights" in printed and f"wrote {out}: resnet20, 3x32x32 input, 10 classes" in printed
    trained = reslab.load_checkpoint(out)
    assert trained.config is None and trained.classes == CIFAR10_CLASSES
    assert trained.preprocess["style"] == "natural" and trained.model_kwargs["shortcut_a_pad"] == "both"
    same_outputs(trained.model, ref, cifar_like(8))
    photo = _photo(tmp_path / "red.png")
    assert main(["predict", str(out), str(photo), "-k", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(photo)) and sum(c in line for c in CIFAR10_CLASSES) == 2
    # the same as the reference model on the photo prepared as akamaster's trainer does: resize to 32, normalise
    x = normalize_natural(load_natural_image(photo, trained.preprocess).unsqueeze(0), trained.preprocess)
    top = CIFAR10_CLASSES[ref(x).argmax().item()]
    assert line.split()[1] == top


def test_reslab_checkpoints_and_plain_state_dicts_convert_too(tmp_path):
    ref = randomise(AkamasterResNet())
    akamaster = save_hashed(
        tmp_path, "resnet20", {"state_dict": {"module." + k: v for k, v in ref.state_dict().items()}}, ".th"
    )
    first = convert(akamaster, tmp_path / "r20.pt", "resnet20")
    # a reslab checkpoint names its architecture, its options and its classes: a new head for 5 classes
    again = load_pretrained(tmp_path / "r20.pt", num_classes=5)
    assert again.source["format"] == "reslab" and again.model_kwargs["shortcut_a_pad"] == "both"
    assert again.classes == [f"class_{i}" for i in range(5)] and again.preprocess == first.preprocess
    sd = {k: v for k, v in again.model.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(v, first.model.state_dict()[k]) for k, v in sd.items())
    # a plain state_dict of a CIFAR model: reslab's names, no classes or preprocessing to carry
    torch.save(build_architecture("resnet8").state_dict(), tmp_path / "plain.pt")
    plain = load_pretrained(tmp_path / "plain.pt", "resnet8")
    assert plain.source["format"] == "reslab" and plain.preprocess is None and plain.classes[0] == "class_0"


def test_imagenet_model_predicts_imagenet_class_names(tiny_resnet18, tmp_path):
    out = tmp_path / "r18.pt"
    convert(tiny_resnet18[1], out, "resnet18", model_kwargs=TINY)
    results = predict(out, [_photo(tmp_path / "p.jpg", (320, 240))], topk=3)
    assert len(results[0]) == 3 and all(name in IMAGENET_CLASSES for name, _ in results[0])
    assert (IMAGENET_CLASSES[0], IMAGENET_CLASSES[207], IMAGENET_CLASSES[999]) == (
        "tench",
        "golden retriever",
        "toilet tissue",
    )


def test_natural_preprocessing_resizes_the_shorter_side_and_crops_the_centre(tmp_path):
    a = np.zeros((200, 400, 3), np.uint8)  # a 400x200 image: blue at the sides, red in the middle 240 columns
    a[:, :80] = a[:, 320:] = (0, 0, 255)
    a[:, 80:320] = (255, 0, 0)
    Image.fromarray(a).save(tmp_path / "wide.png")
    p = {**TORCHVISION_V1, "resize": 100, "crop": 100}  # 400x200 -> 200x100 (red 40..160), the centre 50..150
    t = load_natural_image(tmp_path / "wide.png", p)
    assert t.shape == (3, 100, 100) and (t[0] == 255).all() and (t[2] == 0).all()
    wider = {**p, "crop": 180}  # reaches the blue sides
    assert load_natural_image(tmp_path / "wide.png", wider)[2, 50, :5].min() > 200
    bgr = load_natural_image(tmp_path / "wide.png", {**p, "channel_order": "bgr"})
    assert (bgr[2] == 255).all() and (bgr[0] == 0).all()
    caffe = normalize_natural(bgr.unsqueeze(0), WEIGHTS["resnet50.caffe_in1k"].preprocess)
    assert torch.allclose(caffe[0, :, 0, 0], torch.tensor([-103.062623801, -115.902882574, 255 - 123.151630838]))


def test_cli_weights_lists_the_table_and_convert_errors_cleanly(capsys, tmp_path):
    assert main(["weights", "--filter", "resnet50."]) == 0
    out = capsys.readouterr().out
    for text in ("resnet50.tv_in1k", "76.13", "resnet50.tv2_in1k", "80.858", "resize 232", "resnet50.caffe_in1k"):
        assert text in out
    assert main(["convert", "resnet50.tv3_in1k", "-o", str(tmp_path / "x.pt")]) == 2
    assert "did you mean" in capsys.readouterr().err
