"""`reslab export`: ONNX, torch.export (.pt2) and safetensors files of a CIFAR ResNet (option-A shortcuts, 1x28x28)
and of an ImageNet-stem ResNet-18 at reduced width (3x64x64), each loaded back and compared with eager PyTorch; ONNX
files in `reslab predict` and `reslab eval`; the benchmark's smoke run.

The models have their BN statistics and affine parameters moved away from their initial values (and
num_batches_tracked set), so a format that dropped or mixed up a buffer would change the logits. Exporting to ONNX
takes seconds per model, so each model is exported once per module and the ONNX tests share the files.
"""

import json
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import reslab
from reslab import __version__
from reslab.checkpoint import read_checkpoint, save_checkpoint
from reslab.cli import main
from reslab.config import TrainConfig
from reslab.data import load_dataset
from reslab.errors import ReslabError
from reslab.models import build_model

ROOT = Path(__file__).resolve().parents[1]
HAS_ONNX = all(find_spec(m) is not None for m in ("onnx", "onnxscript", "onnxruntime"))
HAS_SAFETENSORS = find_spec("safetensors") is not None
needs_onnx = pytest.mark.skipif(
    not HAS_ONNX, reason="needs the export extra (onnx, onnxscript, onnxruntime): pip install -e '.[export]'"
)
needs_safetensors = pytest.mark.skipif(
    not HAS_SAFETENSORS, reason="needs the export extra (safetensors): pip install -e '.[export]'"
)

# name -> (build_model kwargs, input size, trained on: a TrainConfig, or None for a weights-only checkpoint)
MODELS = {
    "cifar": ("resnet8", {"in_chans": 1, "num_classes": 10}, (1, 28, 28), "synthetic"),
    "imagenet": ("resnet18", {"widths": (8, 16, 32, 64), "num_classes": 5}, (3, 64, 64), None),
}


def _perturb_bn(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
                m.num_batches_tracked.fill_(37)


def make_checkpoint(path: Path, which: str) -> Path:
    name, kwargs, input_size, dataset = MODELS[which]
    torch.manual_seed(0)
    model = build_model(name, **kwargs).eval()
    _perturb_bn(model, seed=1)
    ckpt = {
        "format_version": 2,
        "reslab_version": __version__,
        "model_name": name,
        "model_kwargs": kwargs,
        "input_size": list(input_size),
        "classes": [f"class{i}" for i in range(kwargs["num_classes"])],
        "model": model.state_dict(),
    }
    if dataset is not None:  # as `reslab train` writes it (the fields eval and predict read)
        ckpt |= {"config": TrainConfig(model=name, dataset=dataset).to_dict(), "epoch": 3}
    return save_checkpoint(ckpt, path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {which: make_checkpoint(tmp_path_factory.mktemp(which) / "model.pt", which) for which in MODELS}


@pytest.fixture(scope="module")
def onnx_files(checkpoints):
    """Each checkpoint exported to ONNX (verified by export_checkpoint itself)."""
    if not HAS_ONNX:
        pytest.skip("needs the export extra (onnx, onnxscript, onnxruntime): pip install -e '.[export]'")
    from reslab.export import export_checkpoint

    return {which: export_checkpoint(p, format="onnx", quiet=True) for which, p in checkpoints.items()}


def eager(checkpoint):
    return reslab.load_checkpoint(checkpoint).model


def batches(input_size, sizes=(1, 7), seed=5):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, *input_size, generator=g) for b in sizes]


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        a = np.zeros((40, 30), np.uint8)
        a[5 + 3 * i : 35, 4 : 26 - 2 * i] = rng.integers(80, 255, size=(30 - 3 * i, 22 - 2 * i), dtype=np.uint8)
        Image.fromarray(a).save(d / f"item{i}.png")
        paths.append(d / f"item{i}.png")
    return paths


# ----------------------------------------------------------------------------------------------------------------------
# ONNX


@needs_onnx
@pytest.mark.parametrize("which", MODELS)
def test_onnx_file_is_self_contained_with_symbolic_batch_and_described(onnx_files, which, checkpoints):
    import onnx

    result = onnx_files[which]
    assert result.verified and result.path.suffix == ".onnx"
    assert sorted(p.name for p in result.path.parent.iterdir()) == ["model.onnx", "model.pt"]  # no external data
    proto = onnx.load(str(result.path))
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in proto.graph.initializer)
    (inp,), (out,) = proto.graph.input, proto.graph.output
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    _, kwargs, input_size, _ = MODELS[which]
    assert inp.name == "input" and out.name == "logits"
    assert isinstance(dims[0], str) and dims[0] and dims[1:] == list(input_size)  # [batch, C, H, W]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == [dims[0], kwargs["num_classes"]]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == [f"class{i}" for i in range(kwargs["num_classes"])]
    preprocess = json.loads(meta["preprocess"])  # the normalisation, for whoever feeds it outside reslab
    assert len(preprocess["mean"]) == len(preprocess["std"]) == input_size[0]
    assert json.loads(meta["model_name"]) == MODELS[which][0]


@needs_onnx
@pytest.mark.parametrize("which", MODELS)
def test_onnx_runtime_matches_eager_at_two_batch_sizes(onnx_files, checkpoints, which):
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_files[which].path), providers=["CPUExecutionProvider"])
    model = eager(checkpoints[which])
    for x in batches(MODELS[which][2]):
        (got,) = session.run(None, {"input": x.numpy()})
        with torch.no_grad():
            want = model(x)
        assert got.shape == tuple(want.shape)
        assert np.abs(got - want.numpy()).max() <= 1e-4 * max(1.0, float(want.abs().max()))
        assert (got.argmax(1) == want.argmax(1).numpy()).all()


@needs_onnx
def test_a_wrong_input_size_is_a_clear_error(onnx_files):
    from reslab.backends import load_onnx

    model = load_onnx(onnx_files["cifar"].path)
    assert model.runner(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ReslabError, match=r"\(batch, 1, 28, 28\).*got \(2, 3, 32, 32\)"):
        model.runner(torch.randn(2, 3, 32, 32))


@needs_onnx
def test_predict_and_eval_accept_the_onnx_file(onnx_files, checkpoints, image_files, tmp_path, capsys):
    from reslab.evaluate import evaluate_checkpoint
    from reslab.predict import predict

    onnx_path, pt = onnx_files["cifar"].path, checkpoints["cifar"]
    from_onnx, from_pt = predict(onnx_path, image_files, topk=3), predict(pt, image_files, topk=3)
    assert [[c for c, _ in row] for row in from_onnx] == [[c for c, _ in row] for row in from_pt]
    assert np.allclose([[p for _, p in row] for row in from_onnx], [[p for _, p in row] for row in from_pt], atol=1e-5)

    data = load_dataset("synthetic")
    a = evaluate_checkpoint(onnx_path, data=data, output=tmp_path / "onnx", quiet=True)
    b = evaluate_checkpoint(pt, data=data, output=tmp_path / "pt", quiet=True)
    assert a.result.total == 500 and torch.equal(a.result.confusion, b.result.confusion)
    assert (tmp_path / "onnx" / "confusion_matrix.png").is_file()

    capsys.readouterr()
    assert main(["predict", str(onnx_path), *map(str, image_files)]) == 0
    out_onnx = capsys.readouterr().out
    assert main(["predict", str(pt), *map(str, image_files)]) == 0
    assert out_onnx == capsys.readouterr().out  # the same classes and percentages, to the printed digit
    assert main(["predict", str(onnx_path), str(image_files[0]), "--device", "cuda"]) == 2
    assert main(["predict", str(onnx_path), str(image_files[0]), "--amp", "bf16"]) == 2  # runs as exported
    err = capsys.readouterr().err
    assert "runs on the CPU" in err and "--amp bf16: an ONNX file runs as it was exported" in err


@needs_onnx
def test_eval_of_an_onnx_file_exported_from_weights_only_says_so(onnx_files):
    from reslab.evaluate import evaluate_checkpoint

    with pytest.raises(ReslabError, match="holds weights only.*give --dataset"):
        evaluate_checkpoint(onnx_files["imagenet"].path, quiet=True)


# ----------------------------------------------------------------------------------------------------------------------
# torch.export


@pytest.mark.parametrize("which", MODELS)
def test_pt2_program_reloads_and_matches_eager(checkpoints, which, tmp_path):
    from reslab.export import Pt2Runner, export_checkpoint, load_pt2

    result = export_checkpoint(checkpoints[which], format="pt2", output=tmp_path / "m.pt2", quiet=True)
    assert result.verified and [c.total for c in result.checks] == [1, 5]
    program, desc = load_pt2(tmp_path / "m.pt2")  # what a user without reslab gets from torch.export.load
    assert desc["torch_version"] == torch.__version__ and desc["input_size"] == list(MODELS[which][2])
    model, module = eager(checkpoints[which]), program.module()
    for x in batches(MODELS[which][2], sizes=(1, 3)):
        with torch.no_grad():
            assert torch.allclose(module(x), model(x), rtol=0, atol=1e-5)
    with pytest.raises(ReslabError, match="expects input batches"):
        Pt2Runner(tmp_path / "m.pt2")(torch.randn(1, 3, 16, 16))


def test_an_export_that_differs_from_eager_fails_and_is_removed(checkpoints, tmp_path, monkeypatch):
    import reslab.export as E

    real = E.export_pt2

    def export_a_wrong_model(model, desc, path):  # one BN's statistics off: the artefact no longer matches
        model = build_model(desc["model_name"], **desc["model_kwargs"]).eval()
        model.load_state_dict(reslab.load_checkpoint(checkpoints["cifar"]).model.state_dict())
        model.bn1.running_var.mul_(1.5)
        return real(model, desc, path)

    monkeypatch.setattr(E, "export_pt2", export_a_wrong_model)
    with pytest.raises(ReslabError, match="verification failed.*removed"):
        E.export_checkpoint(checkpoints["cifar"], format="pt2", output=tmp_path / "bad.pt2", quiet=True)
    assert not (tmp_path / "bad.pt2").exists()


# ----------------------------------------------------------------------------------------------------------------------
# safetensors


@needs_safetensors
@pytest.mark.parametrize("which", MODELS)
def test_safetensors_round_trip_is_bit_exact_buffers_included(checkpoints, which, tmp_path):
    from safetensors import safe_open

    from reslab.export import export_checkpoint

    path = tmp_path / "m.safetensors"
    export_checkpoint(checkpoints[which], format="safetensors", output=path, quiet=True)
    original = read_checkpoint(checkpoints[which])["model"]
    with safe_open(str(path), framework="pt") as f:  # as any safetensors reader sees it, without reslab
        stored = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        meta = f.metadata()
    assert stored.keys() == original.keys()
    assert any(k.endswith("num_batches_tracked") for k in stored) and any(k.endswith("running_var") for k in stored)
    for k, v in original.items():
        assert stored[k].dtype == v.dtype and stored[k].shape == v.shape
        assert torch.equal(stored[k].view(-1).view(torch.uint8), v.contiguous().view(-1).view(torch.uint8)), k
    assert json.loads(meta["model_kwargs"]) == json.loads(json.dumps(MODELS[which][1]))

    trained = reslab.load_checkpoint(path)  # a weights-only checkpoint: architecture from the header
    assert trained.model_name == MODELS[which][0] and trained.config is None
    assert trained.classes == tuple(f"class{i}" for i in range(MODELS[which][1]["num_classes"]))
    x = batches(MODELS[which][2], sizes=(4,))[0]
    with torch.no_grad():
        assert torch.equal(trained.model(x), eager(checkpoints[which])(x))


@needs_safetensors
def test_safetensors_verification_catches_a_changed_buffer(checkpoints, tmp_path, monkeypatch):
    import reslab.export as E

    real = E.write_safetensors

    def write_with_a_changed_counter(ckpt, path):
        state = dict(ckpt["model"])
        state["bn1.num_batches_tracked"] = state["bn1.num_batches_tracked"] + 1
        return real({**ckpt, "model": state}, path)

    monkeypatch.setattr(E, "write_safetensors", write_with_a_changed_counter)
    with pytest.raises(ReslabError, match="bn1.num_batches_tracked"):
        E.export_checkpoint(checkpoints["cifar"], format="safetensors", output=tmp_path / "x.safetensors", quiet=True)
    assert not (tmp_path / "x.safetensors").exists()


@needs_safetensors
def test_a_damaged_safetensors_file_is_a_clear_error(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{nonsense")
    with pytest.raises(ReslabError, match="not a safetensors file"):
        reslab.load_checkpoint(tmp_path / "bad.safetensors")


# ----------------------------------------------------------------------------------------------------------------------
# the command line, and the optional extra


@needs_safetensors
def test_cli_export_verifies_on_images_and_reports(checkpoints, image_files, tmp_path, capsys):
    out = tmp_path / "model.safetensors"
    assert main(["export", str(checkpoints["cifar"]), "-o", str(out), "--images", *map(str, image_files)]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "3 images" in text and "top-1 agreement 3/3" in text and "bit-exact: passed" in text
    assert main(["export", str(checkpoints["cifar"]), "-o", str(tmp_path / "model.bin")]) == 2
    assert "--format" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert main(["export", str(tmp_path / "junk.pt"), "--format", "pt2"]) == 2
    assert "not a reslab checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["onnxruntime", "safetensors"])
def test_without_the_extra_the_error_says_how_to_install_it(checkpoints, tmp_path, monkeypatch, module):
    from reslab.backends import load_onnx
    from reslab.export import export_checkpoint

    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    if module == "safetensors":
        monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ReslabError, match=r"pip install -e '\.\[export\]'"):
        if module == "onnxruntime":
            load_onnx(tmp_path / "any.onnx")
        else:
            export_checkpoint(checkpoints["cifar"], format="safetensors", output=tmp_path / "m.safetensors")


def test_inference_benchmark_smoke():
    cmd = [sys.executable, "benchmarks/inference.py", "--smoke", "--paths", "eager fp32,eager channels_last"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("machine: ") and "load average" in lines[0]
    base = next(line for line in lines if line.startswith("eager fp32"))
    assert base.split()[3] == "1.00" and base.split()[5] == "1.00"  # the baseline's speed-ups over itself
    assert any(line.startswith("eager channels_last") for line in lines)
