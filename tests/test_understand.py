"""reslab.understand: lesions, loss landscapes, gradients through depth and Grad-CAM, on tiny models and data.

Each measurement is checked against an independent computation of the same number (a block whose branch outputs
zero, a hand-perturbed copy, the exact Hessian, .grad from a plain backward, an analytic gradient) and for leaving
the model exactly as it was.
"""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from reslab.checkpoint import TrainedModel
from reslab.cli import main
from reslab.data.transforms import MEAN, STD
from reslab.errors import ReslabError
from reslab.models import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck, ResNet, build_model
from reslab.predict import predict_files
from reslab.understand import (
    BranchRemoved,
    calibrate_bn,
    cam_overlay,
    classification_metrics,
    compatible_pairs,
    correlation_matrix,
    delete_each_block,
    delete_random_blocks,
    evaluator,
    grad_cam,
    grad_cam_parts,
    gradient_correlation,
    hessian_extreme_eigenvalues,
    hessian_vector_product,
    input_gradients_along_line,
    kendall_tau,
    layer_gradient_norms,
    lesion_study,
    lesioned,
    list_blocks,
    loss_surface,
    module_state,
    random_direction,
    reorder_blocks,
    reordered,
    rise_with_error,
    same_state,
    save_cam_overlay,
    summarize_gradient_norms,
    summarize_lesions,
    summarize_surface,
)
from reslab.understand.cam import jet

WIDTHS = (4, 8, 16)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A registered network at widths 4/8/16, 1 channel in, 4 classes, with BN statistics measured on noise."""
    torch.manual_seed(seed)
    model = build_model(name, in_chans=1, num_classes=4, widths=WIDTHS, **overrides)
    calibrate_bn(model, torch.randn(64, 1, 16, 16, generator=torch.Generator().manual_seed(seed)))
    return model.eval()


def batch(n: int = 32, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 16, 16, generator=g), torch.randint(4, (n,), generator=g)


# ----------------------------------------------------------------------------------------------------------------------
# lesion


@pytest.mark.parametrize(
    "block, shortcut",
    [
        (BasicBlock, "A"),
        (BasicBlock, "B"),
        (BasicBlock, "C"),
        (Bottleneck, "B"),
        (PreActBasicBlock, "A"),
        (PreActBasicBlock, "B"),
        (PreActBottleneck, "B"),
    ],
)
def test_deleting_a_block_equals_the_block_with_a_zero_branch(block, shortcut):
    # independent of BranchRemoved's code: zeroing the branch's last layer makes the block compute shortcut-only
    torch.manual_seed(0)
    model = ResNet(block, [2, 2], in_chans=1, num_classes=4, widths=(4, 8), stem="cifar", shortcut=shortcut).eval()
    calibrate_bn(model, torch.randn(32, 1, 8, 8))
    x = torch.relu(torch.randn(8, 4 * block.expansion, 8, 8))  # a post-ReLU input, as a block receives
    for name in ("layer1.1", "layer2.0"):  # one that keeps the shape, one that changes it
        original = model.get_submodule(name)
        zeroed = copy.deepcopy(original)
        last = {BasicBlock: "bn2", Bottleneck: "bn3", PreActBasicBlock: "conv2", PreActBottleneck: "conv3"}[block]
        with torch.no_grad():
            for p in getattr(zeroed, last).parameters():
                p.zero_()
        expected = zeroed(x.clone())
        assert torch.allclose(BranchRemoved(original)(x), expected, atol=1e-6), name
        assert not torch.allclose(original(x.clone()), expected, atol=1e-3), name  # the branch did matter


def test_lesioned_restores_the_model_exactly_even_after_an_error():
    model = tiny("resnet20")
    x, _ = batch()
    before, out = module_state(model), model(x)
    with lesioned(model, ["layer1.1", "layer2.0"]):
        assert not torch.allclose(model(x), out)
        assert isinstance(model.layer2[0], BranchRemoved)
    assert same_state(before, module_state(model))
    assert torch.equal(model(x), out)
    with pytest.raises(RuntimeError), lesioned(model, ["layer3.2"]):
        raise RuntimeError("an evaluation that fails")
    assert same_state(before, module_state(model))


def test_zero_branches_make_every_lesion_harmless_in_a_residual_net_but_not_in_a_plain_one():
    # zero_init_residual: each branch outputs 0, so deleting or reordering blocks must change no prediction at all
    torch.manual_seed(0)
    model = build_model("resnet20", in_chans=1, num_classes=4, widths=WIDTHS, zero_init_residual=True).eval()
    x, y = batch()
    evaluate = evaluator(x, y)
    study = lesion_study(model, evaluate, ks=(1, 3), draws=2)
    base = study["baseline"]
    for row in study["single"] + study["random"] + study["reorder"]:
        assert row["loss"] == pytest.approx(base["loss"], abs=1e-6), row
    # the plain net with the same weights minus shortcuts: removing a layer changes what it computes
    plain = tiny("plain20")
    rows = delete_each_block(plain, evaluator(x, y))
    base = classification_metrics(plain, x, y)["loss"]
    assert all(abs(r["loss"] - base) > 1e-4 for r in rows if r["loss"] is not None)


def test_plain_blocks_that_change_shape_are_not_removed_unless_zero_padded():
    model = tiny("plain20")
    blocks = {b.name: b for b in list_blocks(model)}
    assert [n for n, b in blocks.items() if not b.removable] == ["layer2.0", "layer3.0"]
    with pytest.raises(ReslabError, match="layer2.0.*cannot be removed"), lesioned(model, ["layer2.0"]):
        pass
    x, y = batch()
    rows = {r["block"]: r for r in delete_each_block(model, evaluator(x, y))}
    assert rows["layer2.0"]["error"] is None and rows["layer2.0"]["substitute"] == ""
    assert rows["layer1.1"]["substitute"] == "identity" and rows["layer1.1"]["error"] is not None
    # identity in place of a plain block: the stage is the other blocks composed
    with lesioned(model, ["layer1.1"]):
        got = model.layer1(x.new_ones(2, 4, 16, 16))
    expected = model.layer1[2](model.layer1[0](x.new_ones(2, 4, 16, 16)))
    assert torch.allclose(got, expected)
    with lesioned(model, ["layer2.0"], plain_downsampling="zero-pad"):
        assert model(x).shape == (32, 4)


def test_random_deletions_are_reproducible_and_distinct():
    model = tiny("resnet20")
    x, y = batch()
    evaluate = evaluator(x, y)
    a = delete_random_blocks(model, evaluate, ks=(2, 4, 12), draws=3, seed=5)
    b = delete_random_blocks(model, evaluate, ks=(2, 4, 12), draws=3, seed=5)
    assert a == b
    assert [r["k"] for r in a] == [2] * 3 + [4] * 3  # 12 > the 9 blocks of resnet20: no rows
    for r in a:
        names = r["blocks"].split()
        assert len(set(names)) == r["k"]
    assert len({r["blocks"] for r in a}) > 1
    only = delete_random_blocks(model, evaluate, ks=(2,), draws=4, candidates=["layer1.0", "layer1.1"])
    assert {r["blocks"] for r in only} == {"layer1.0 layer1.1"}


def test_reordering_swaps_blocks_of_the_same_shape_only():
    model = tiny("resnet20")
    x, y = batch()
    pairs = compatible_pairs(model)
    assert ("layer1.0", "layer1.2") in pairs and ("layer2.0", "layer2.1") not in pairs
    feats = torch.relu(torch.randn(2, 4, 16, 16))
    with reordered(model, [("layer1.0", "layer1.2")]):
        swapped = model.layer1(feats)
    b0, b1, b2 = model.layer1
    assert torch.allclose(swapped, b0(b1(b2(feats))))
    with pytest.raises(ReslabError, match="cannot trade places"), reordered(model, [("layer1.1", "layer2.0")]):
        pass
    rows = reorder_blocks(model, evaluator(x, y), ks=(1, 2), draws=3, seed=0)
    assert [r["k"] for r in rows] == [1, 1, 1, 2, 2, 2]
    position = {b.name: b.position for b in list_blocks(model)}
    for r in rows[:3]:  # one swap of blocks i < j: 2(j - i) - 1 of the 36 pairs are out of order
        a, b = r["swaps"].split("<->")
        gap = abs(position[a] - position[b])
        assert r["kendall_tau"] == pytest.approx(1 - 2 * (2 * gap - 1) / 36)


def test_kendall_tau():
    assert kendall_tau([0, 1, 2, 3]) == 1.0
    assert kendall_tau([3, 2, 1, 0]) == -1.0
    assert kendall_tau([1, 0, 2, 3]) == pytest.approx(1 - 2 / 6)  # one discordant pair of six


def test_summarize_lesions_separates_downsampling_blocks():
    model = tiny("resnet20")
    x, y = batch()
    study = lesion_study(model, evaluator(x, y), ks=(1, 2), draws=2)
    s = summarize_lesions(study)
    single = {r["block"]: r["error"] for r in study["single"]}
    same_shape = [single[b] for b in single if b not in ("layer2.0", "layer3.0")]
    assert s["single_median"] == pytest.approx(float(np.median(same_shape)))
    assert s["downsampling_mean"] == pytest.approx((single["layer2.0"] + single["layer3.0"]) / 2)
    assert set(s["random_mean"]) == {1, 2} and s["not_removed"] == []


# ----------------------------------------------------------------------------------------------------------------------
# landscape


def test_random_direction_is_filter_normalised_and_ignores_bias_and_bn():
    model = tiny("resnet20")
    d = random_direction(model, generator=torch.Generator().manual_seed(3))
    again = random_direction(model, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(d, again, strict=True))
    for p, t in zip(model.parameters(), d, strict=True):
        if p.dim() <= 1:
            assert not t.any()  # BN weights and biases, the fc bias: --xignore biasbn
        else:
            for wf, df in zip(p.detach(), t, strict=True):  # one filter at a time
                assert df.norm().item() == pytest.approx(wf.norm().item(), rel=1e-5)
            assert not torch.allclose(t, p.detach())


def test_loss_surface_centre_is_the_model_and_points_match_a_moved_copy():
    model = tiny("resnet20")
    x, y = batch()
    g = torch.Generator().manual_seed(0)
    d1, d2 = random_direction(model, generator=g), random_direction(model, generator=g)
    before = module_state(model)
    surface = loss_surface(model, x, y, [d1, d2], [-0.5, 0.0, 0.5], [-0.25, 0.0, 0.25])
    assert same_state(before, module_state(model))
    assert surface["loss"][1][1] == classification_metrics(model, x, y)["loss"]  # exactly the trained weights
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for p, a, b in zip(moved.parameters(), d1, d2, strict=True):
            p.add_(0.5 * a - 0.25 * b)
    assert surface["loss"][0][2] == pytest.approx(classification_metrics(moved, x, y)["loss"], rel=1e-5)  # [iy][ix]
    line = loss_surface(model, x, y, [d1], [0.0, 0.5])
    assert line["y"] is None and line["loss"][0] == surface["loss"][1][1]
    assert line["loss"][1] == pytest.approx(surface["loss"][1][2], rel=1e-6)


def test_rise_with_error_is_the_surface_rise_with_the_paired_standard_error():
    model = tiny("resnet20")
    x, y = batch()
    d = random_direction(model, generator=torch.Generator().manual_seed(1))
    before = module_state(model)
    r = rise_with_error(model, x, y, d, 0.5)
    assert same_state(before, module_state(model))
    line = loss_surface(model, x, y, [d], [0.0, 0.5])
    assert r["rise"] == pytest.approx(line["loss"][1] - line["loss"][0], rel=1e-4)
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for p, u in zip(moved.parameters(), d, strict=True):
            p.add_(0.5 * u)
    with torch.no_grad():
        diff = F.cross_entropy(moved.eval()(x), y, reduction="none") - F.cross_entropy(
            model.eval()(x), y, reduction="none"
        )
    assert r["images"] == len(y) and r["se"] == pytest.approx(diff.std().item() / len(y) ** 0.5, rel=1e-3)


def test_summarize_surface_on_known_surfaces():
    xs = np.linspace(-1, 1, 21)
    bowl = {"x": xs.tolist(), "y": xs.tolist(), "loss": (xs[None] ** 2 + xs[:, None] ** 2 + 0.1).tolist()}
    saddle = {"x": xs.tolist(), "y": xs.tolist(), "loss": (xs[None] ** 2 - xs[:, None] ** 2 + 2).tolist()}
    s = summarize_surface(bowl, radius=0.5)
    assert s["loss_center"] == pytest.approx(0.1)
    assert s["loss_rise"] == pytest.approx(0.25, abs=0.01)
    assert s["nonconvex_fraction"] == 0.0
    assert summarize_surface(saddle, radius=0.5)["nonconvex_fraction"] == 1.0
    curve = summarize_surface({"x": xs.tolist(), "y": None, "loss": (3 * xs**2).tolist()}, radius=0.5)
    assert curve["loss_rise"] == pytest.approx(0.75, abs=0.01)
    with pytest.raises(ReslabError, match="outside"):
        summarize_surface(bowl, radius=2.0)


def test_hessian_extremes_match_the_exact_hessian():
    torch.manual_seed(0)
    model = ResNet(BasicBlock, [1], in_chans=1, num_classes=3, widths=(2,), stem="cifar", shortcut="A").eval()
    calibrate_bn(model, torch.randn(16, 1, 6, 6))
    x, y = torch.randn(16, 1, 6, 6), torch.randint(3, (16,))
    params = [p for p in model.parameters() if p.dim() > 1]
    n = sum(p.numel() for p in params)  # 18 + 36 + 36 + 6 weights
    columns = []
    for i in range(n):  # H e_i, one column at a time
        e = torch.zeros(n)
        e[i] = 1
        v = [t.view_as(p) for t, p in zip(e.split([p.numel() for p in params]), params, strict=True)]
        columns.append(torch.cat([h.flatten() for h in hessian_vector_product(model, x, y, params, v)]))
    exact = torch.linalg.eigvalsh(torch.stack(columns, 1).double())
    before = module_state(model)
    got = hessian_extreme_eigenvalues(model, x, y, steps=n, tol=1e-6)
    assert same_state(before, module_state(model))
    assert got["lambda_max"] == pytest.approx(exact[-1].item(), rel=1e-3)
    assert got["lambda_min"] == pytest.approx(exact[0].item(), rel=1e-3, abs=1e-4)
    assert got["ratio"] == pytest.approx(abs(exact[0] / exact[-1]).item(), rel=1e-2, abs=1e-4)


# ----------------------------------------------------------------------------------------------------------------------
# gradients


def test_layer_gradient_norms_match_backward_and_leave_the_model_alone():
    model = tiny("resnet20")
    x, y = batch()
    before = module_state(model)
    rows = layer_gradient_norms(model, x, y)
    assert same_state(before, module_state(model))  # BN running stats too, although BN ran in train mode
    reference = copy.deepcopy(model).train()
    F.cross_entropy(reference(x), y).backward()
    expected = {n: m.weight.grad.norm().item() for n, m in reference.named_modules() if hasattr(m, "weight")}
    assert [r["layer"] for r in rows][:2] == ["conv1", "layer1.0.conv1"] and rows[-1]["layer"] == "fc"
    for r in rows:
        assert r["grad_norm"] == pytest.approx(expected[r["layer"]], rel=1e-5)
    assert sum(r["shortcut"] for r in rows) == 0  # option A: no projection convs
    assert [r["depth"] for r in rows] == list(range(len(rows)))


def test_summarize_gradient_norms_reads_growth_towards_the_input():
    rows = [{"kind": "conv", "shortcut": False, "grad_norm": 2.0 ** (10 - i), "relative": 1.0} for i in range(10)] + [
        {"kind": "linear", "shortcut": False, "grad_norm": 5.0, "relative": 1.0}
    ]
    s = summarize_gradient_norms(rows)
    assert s["first_over_last"] == pytest.approx(2.0**9)
    assert s["growth_towards_input"] == pytest.approx(2.0)
    assert s["num_layers"] == 10


def test_at_init_a_plain_bn_net_explodes_towards_the_input_and_shatters_a_resnet_does_not():
    # the measurement must reproduce Yang et al. (2019) and Balduzzi et al. (2017) at init, not assume them
    x, y = batch(64)
    found = {}
    for name in ("plain56", "resnet56"):
        model = tiny(name)
        norms = summarize_gradient_norms(layer_gradient_norms(model, x, y))
        line = input_gradients_along_line(model, x[0], torch.linspace(-0.25, 0.25, 33))
        found[name] = (norms, gradient_correlation(line["gradients"], max_lag=2)["correlation"][0])
    (plain, plain_corr), (res, res_corr) = found["plain56"], found["resnet56"]
    assert plain["first_over_last"] > 100 * res["first_over_last"]
    assert plain["growth_towards_input"] > 1.1 > res["growth_towards_input"]
    assert plain_corr < 0.3 < 0.6 < res_corr


def test_input_gradients_along_a_line_are_each_points_own():
    model = tiny("resnet20").double()  # double precision, for the finite difference below
    x, _ = batch(1)
    x, ts = x.double(), torch.linspace(-1, 1, 5)
    before = module_state(model)
    line = input_gradients_along_line(model, x[0], ts, batch_size=2)
    assert same_state(before, module_state(model))
    u, c = line["direction"].double(), line["target"]
    assert c == model(x).argmax(1).item()
    point = (x[0] + ts[3] * u)[None].requires_grad_(True)
    (g,) = torch.autograd.grad(model(point)[0, c], point)
    assert torch.allclose(line["gradients"][3].double(), g.flatten(), rtol=1e-5, atol=1e-7)
    # the directional derivative is the slope of the logit along the line (central finite difference)
    t, eps = float(ts[3]), 1e-6  # python floats: 0.5 + 1e-6 in float32 would be off by 1%
    with torch.no_grad():
        up, down = model((x[0] + (t + eps) * u)[None]), model((x[0] + (t - eps) * u)[None])
    slope = (up - down)[0, c] / (2 * eps)
    assert (line["gradients"][3].double() @ u.flatten()).item() == pytest.approx(slope.item(), rel=1e-4)


def test_gradient_correlation_on_known_signals():
    g = torch.Generator().manual_seed(0)
    constant = torch.randn(1, 50, generator=g).expand(20, 50)
    assert gradient_correlation(constant, max_lag=3)["correlation"] == pytest.approx([1.0, 1.0, 1.0])
    white = torch.randn(400, 2000, generator=g)
    assert max(abs(c) for c in gradient_correlation(white, max_lag=3)["correlation"]) < 0.01
    # a random walk: neighbours alike, more so at lag 1 than at lag 10
    walk = torch.randn(200, 300, generator=g).cumsum(0)
    corr = gradient_correlation(walk, max_lag=10)["correlation"]
    assert corr[0] > 0.9 and corr[0] > corr[9]
    u = torch.randn(300, generator=g)
    auto = gradient_correlation(walk, direction=u, max_lag=5)
    assert len(auto["directional"]) == 200 and auto["directional_autocorrelation"][0] > 0.8
    m = correlation_matrix(walk[:10])
    assert m.shape == (10, 10) and torch.allclose(m.diagonal(), torch.ones(10))
    lag1 = gradient_correlation(walk[:10], max_lag=1)["correlation"][0]
    assert m.diagonal(1).mean().item() == pytest.approx(lag1, rel=1e-5)


def test_calibrate_bn_makes_eval_mode_match_train_mode():
    torch.manual_seed(0)
    model = build_model("resnet20", in_chans=1, num_classes=4, widths=WIDTHS)
    x = torch.randn(256, 1, 16, 16) * 3 + 1  # far from the (0, 1) BN starts with
    with torch.no_grad():
        train_out = model.train()(x)
        before = model.eval()(x)
        calibrate_bn(model, x, batch_size=256)
        assert not model.training
        after = model(x)
    # one batch: the same statistics as train mode, up to the unbiased variance BN keeps (n / (n - 1))
    assert (after - train_out).abs().max() < 0.05 * (before - train_out).abs().max()


# ----------------------------------------------------------------------------------------------------------------------
# Grad-CAM
#
# The task where the answer is known: 4 classes, each a 5x5 bright shape (plus, square, horizontal bar, vertical bar)
# at a random place on noise. The evidence for the class is the shape, wherever it is, so Grad-CAM must light up
# there. Why not "the class is where a bright patch is" (a quadrant task)? A network that ends in global average
# pooling is translation-equivariant up to its pooling, so the only thing that tells it where the patch is are the
# zero-padded borders: it learns the position from how the patch's features meet the edges, and Grad-CAM then
# (rightly) does not point at the patch: measured in phase 1, its peak fell on the patch at chance rate. A task
# whose class is *what* is at a random place is the one where "the CAM should be on the object" is the truth.
_SHAPES = torch.zeros(4, 5, 5)
_SHAPES[0, 2, :] = _SHAPES[0, :, 2] = 1
_SHAPES[1, 1:4, 1:4] = 1
_SHAPES[2, 2, :] = 1
_SHAPES[3, :, 2] = 1


def shapes_data(n: int, g: torch.Generator, size: int = 16):
    labels = torch.randint(4, (n,), generator=g)
    centres = torch.randint(2, size - 2, (n, 2), generator=g)
    x = 0.3 * torch.randn(n, 1, size, size, generator=g)
    for i, (r, c) in enumerate(centres.tolist()):
        x[i, 0, r - 2 : r + 3, c - 2 : c + 3] += 2.0 * _SHAPES[labels[i]]
    return x, labels, centres


@pytest.fixture(scope="module", params=[BasicBlock, PreActBasicBlock], ids=["post-activation", "pre-activation"])
def shapes_model(request):
    """A ResNet-8 (widths 4/8/16) trained for 150 Adam steps on the shapes task: a few seconds."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = ResNet(request.param, [1, 1, 1], in_chans=1, num_classes=4, widths=WIDTHS, stem="cifar", shortcut="A")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        x, y, _ = shapes_data(64, g)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_grad_cam_lights_up_the_shape_that_sets_the_class(shapes_model):
    x, y, centres = shapes_data(200, torch.Generator().manual_seed(1))
    assert (shapes_model(x).argmax(1) == y).float().mean() > 0.95  # it learned the task
    cam = grad_cam(shapes_model, x)
    assert cam.shape == (200, 16, 16) and cam.min() >= 0 and cam.max() <= 1
    inside = torch.zeros_like(cam, dtype=torch.bool)
    for i, (r, c) in enumerate(centres.tolist()):
        inside[i, r - 2 : r + 3, c - 2 : c + 3] = True
    mean_in = (cam * inside).sum((1, 2)) / inside.sum((1, 2))
    mean_out = (cam * ~inside).sum((1, 2)) / (~inside).sum((1, 2))
    assert (mean_in > mean_out).float().mean() >= 0.9
    peak = cam.flatten(1).argmax(1)
    off = torch.maximum((peak // 16 - centres[:, 0]).abs(), (peak % 16 - centres[:, 1]).abs())
    assert (off <= 3).float().mean() >= 0.7  # a 7x7 window around the centre: about 20% by chance


def test_grad_cam_gradient_is_autograds_and_the_default_layer_is_post_relu(shapes_model):
    x, _, _ = shapes_data(6, torch.Generator().manual_seed(2))
    parts = grad_cam_parts(shapes_model, x, target=2)
    feats = shapes_model.forward_features(x).detach().requires_grad_(True)
    (expected,) = torch.autograd.grad(shapes_model.forward_head(feats)[:, 2].sum(), feats)
    assert torch.allclose(parts["gradients"], expected)
    h, w = feats.shape[-2:]  # pooled then linear: d logit_c / dA_k = fc.weight[c, k] / (h*w) everywhere
    analytic = (shapes_model.fc.weight[2] / (h * w))[None, :, None, None].expand_as(expected)
    assert torch.allclose(parts["gradients"], analytic, atol=1e-7)
    assert parts["activations"].min() >= 0  # rectified maps, for pre-activation models too (after bn_final)
    if not shapes_model.preact:  # post-activation: the last stage's output is the same tensor
        hooked = grad_cam_parts(shapes_model, x, target=2, layer="layer3")
        assert torch.allclose(hooked["gradients"], parts["gradients"])
        assert torch.allclose(hooked["cam"], parts["cam"])
    mid = grad_cam_parts(shapes_model, x.clone(), target=2, layer="layer2")  # a hooked layer inside the network
    feats2 = None

    def catch(_m, _i, out):
        nonlocal feats2
        feats2 = out

    handle = shapes_model.layer2.register_forward_hook(catch)
    (g2,) = torch.autograd.grad(shapes_model(x.clone().requires_grad_(True))[:, 2].sum(), feats2)
    handle.remove()
    assert torch.allclose(mid["gradients"], g2)
    with pytest.raises(ReslabError, match="runs several times|ran 2 times"):
        # a post-activation block applies its ReLU twice; a pre-activation net its stem ReLU also after bn_final
        grad_cam(shapes_model, x, layer="relu" if shapes_model.preact else "layer1.0.relu")


def test_grad_cam_leaves_the_model_as_it_was():
    model = tiny("preact_resnet20").train()  # even a model left in train mode
    for p in model.layer1.parameters():
        p.requires_grad_(False)
    x, _ = batch(4)
    before = module_state(model)
    grad_cam(model, x, target=torch.tensor([0, 1, 2, 3]))
    grad_cam(model, x, layer="layer2")
    assert same_state(before, module_state(model))  # train flags, BN statistics, requires_grad, no .grad, no hooks
    assert model.training and all(p.grad is None for p in model.parameters())
    with pytest.raises(ReslabError, match="target"):
        grad_cam(model, x, target=7)
    with pytest.raises(ReslabError, match="no module"):
        grad_cam(model, x, layer="layer9")


def test_overlay_puts_the_hot_colour_where_the_map_peaks(tmp_path):
    image = torch.zeros(28, 28, dtype=torch.uint8)
    cam = torch.zeros(28, 28)
    cam[20:24, 4:8] = 1.0
    path = save_cam_overlay(tmp_path / "cams" / "0.png", image, cam)
    im = Image.open(path)
    factor = 8  # 28 -> 224
    assert im.size == ((28 * 2 + 2) * factor, 28 * factor)  # image | 2-pixel gap | overlay
    a = np.asarray(im)
    overlay = a[:, (28 + 2) * factor :]
    hot, cold = overlay[22 * factor, 6 * factor], overlay[5 * factor, 20 * factor]
    assert hot[0] > hot[2] + 30  # red where the map is 1 (over a black image)
    assert cold[2] > cold[0] + 30  # blue where it is 0
    small = cam_overlay(torch.rand(3, 28, 28), torch.rand(7, 7), min_size=28)  # a CAM at another size is resized
    assert small.size == (28 * 2 + 2, 28)


# ----------------------------------------------------------------------------------------------------------------------
# reslab predict --cam: the shapes task as image files, through the predict path (28x28 uint8, normalised there)

SHAPE_CLASSES = ("plus", "square", "hbar", "vbar")


def shape_files(folder, n: int, seed: int):
    """n 28x28 grayscale PNGs of the shapes task (the trained model is fully convolutional, so 16 -> 28 is fine),
    as uint8 whose normalisation by predict gives back the float task; returns (paths, labels, centres)."""
    x, labels, centres = shapes_data(n, torch.Generator().manual_seed(seed), size=28)
    pixels = (255 * (STD * x + MEAN)).round().clamp(0, 255).to(torch.uint8)[:, 0]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(pixels):
        paths.append(folder / f"shape{i:02d}.png")
        Image.fromarray(image.numpy(), mode="L").save(paths[-1])
    return paths, labels, centres


def overlay_heat(path) -> np.ndarray:
    """(28, 28) heat map read back from an overlay PNG: its right half is (image + jet(heat)) / 2 and its left half
    the image, so jet(heat) = 2 * right - left, inverted by the nearest colour of the jet table."""
    a = np.asarray(Image.open(path).convert("RGB")).astype(np.float64) / 255
    factor = a.shape[0] // 28
    a = a[factor // 2 :: factor, factor // 2 :: factor]  # one sample per pixel
    colour = 2 * a[:, 28 + 2 :] - a[:, :28]
    table = jet(np.linspace(0, 1, 256))  # (256, 3)
    return np.linalg.norm(colour[:, :, None, :] - table, axis=-1).argmin(-1) / 255


def peak_near_centre(heat: np.ndarray, centre) -> bool:
    r, c = np.unravel_index(heat.argmax(), heat.shape)
    return max(abs(r - centre[0]), abs(c - centre[1])) <= 3  # a 7x7 window around the shape: 6% of 28x28


def test_predict_cam_writes_one_overlay_per_image_hot_on_the_shape(shapes_model, tmp_path, capsys):
    trained = TrainedModel(shapes_model, "resnet8", {}, SHAPE_CLASSES, (1, 28, 28))
    paths, labels, centres = shape_files(tmp_path / "images", 40, seed=3)
    before = module_state(shapes_model)
    assert predict_files(trained, paths, topk=1, device="cpu", cam_dir=tmp_path / "cams") == []
    assert same_state(before, module_state(shapes_model))  # eval mode, BN statistics bit for bit, no hooks, no .grad
    out = capsys.readouterr().out
    predicted = [line.split()[1] for line in out.splitlines() if line.startswith(str(tmp_path))]
    assert np.mean([p == SHAPE_CLASSES[y] for p, y in zip(predicted, labels.tolist(), strict=True)]) >= 0.85
    written = sorted((tmp_path / "cams").glob("*.png"))
    assert [p.name for p in written] == [p.name for p in paths] and "40 overlays" in out
    hits = [peak_near_centre(overlay_heat(p), c) for p, c in zip(written, centres.tolist(), strict=True)]
    assert np.mean(hits) >= 0.6, hits


@pytest.mark.parametrize("shapes_model", [BasicBlock], ids=["post-activation"], indirect=True)
def test_predict_cam_from_the_cli_for_a_chosen_class(shapes_model, tmp_path, capsys):
    # a weights-only checkpoint of the registered resnet8 (the same architecture as the fixture's)
    ckpt = {
        "format_version": 2,
        "model_name": "resnet8",
        "model_kwargs": {"in_chans": 1, "num_classes": 4, "widths": list(WIDTHS)},
        "input_size": [1, 28, 28],
        "classes": list(SHAPE_CLASSES),
        "model": shapes_model.state_dict(),
    }
    torch.save(ckpt, tmp_path / "shapes.pt")
    paths, labels, _ = shape_files(tmp_path / "images", 4, seed=4)
    args = ["predict", str(tmp_path / "shapes.pt"), *map(str, paths), "--device", "cpu"]
    assert main([*args, "--cam", str(tmp_path / "top")]) == 0
    other = SHAPE_CLASSES[(labels[0].item() + 1) % 4]
    assert main([*args, "--cam", str(tmp_path / "other"), "--cam-class", other.upper()]) == 0  # case ignored
    assert f"class {other!r}: 4 overlays" in capsys.readouterr().out
    top, chosen = overlay_heat(tmp_path / "top" / "shape00.png"), overlay_heat(tmp_path / "other" / "shape00.png")
    assert np.abs(top - chosen).max() > 0.5  # another class's evidence is another map
    assert main([*args, "--cam", str(tmp_path / "x"), "--cam-class", "boot"]) == 2
    assert main([*args, "--cam-class", "plus"]) == 2
    err = capsys.readouterr().err
    assert "--cam-class: expected one of the model's classes (plus, square, hbar, vbar), got 'boot'" in err
    assert "needs --cam DIR" in err and "Traceback" not in err
    (tmp_path / "a-file").write_text("")
    assert main([*args, "--cam", str(tmp_path / "a-file")]) == 2  # before predicting anything
    captured = capsys.readouterr()
    assert "--cam: " in captured.err and "is a file, not a folder" in captured.err and "Traceback" not in captured.err
    assert captured.out == ""  # nothing was predicted
