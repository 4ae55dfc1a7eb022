"""The ResNet family: exact parameter counts, the seeds' shapes, torchvision's names, every variant doing its job."""

import copy
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reslab.errors import ReslabError
from reslab.models import (
    BasicBlock,
    Bottleneck,
    D2LResNet,
    PreActBasicBlock,
    PreActBottleneck,
    Residual,
    ResNet,
    ShortcutA,
    build_model,
    list_models,
    model_entry,
)
from reslab.models.whiten import whiten_stem

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


PREACT = (PreActBasicBlock, PreActBottleneck)


def meta(name, **overrides):
    """A model without memory or init cost: enough for counts, names and shapes."""
    with torch.device("meta"):
        return build_model(name, **overrides)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def shortcuts(model):
    return [m.downsample for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck)) and m.downsample]


# ----------------------------------------------------------------------------------------------------------------------
# parameter counts

TORCHVISION_COUNTS = {  # torchvision's published counts, 3 channels, 1000 classes
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336,
    "resnext101_64x4d": 83_455_272,
    "wide_resnet50_2": 68_883_240,
    "wide_resnet101_2": 126_886_696,
}
CIFAR_COUNTS = {  # He et al. 2015, sec. 4.2, option A, 3 channels, 10 classes (8 and 14: counted by hand the same way)
    "resnet8": 75_290,
    "resnet14": 172_506,
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "resnet1202": 19_421_274,
}


@pytest.mark.parametrize(("name", "count"), [*TORCHVISION_COUNTS.items(), *CIFAR_COUNTS.items()])
def test_parameter_counts_are_exact(name, count):
    assert n_params(meta(name)) == count


def test_other_counts_match_their_sources():
    assert n_params(meta("resnet50d")) == 25_576_264  # timm
    assert n_params(meta("wrn28_10")) == 36_479_194  # Zagoruyko & Komodakis' code
    # option A has no parameters, so a plain net has exactly its residual twin's
    for depth in (20, 32, 44, 56, 110):
        assert n_params(meta(f"plain{depth}")) == CIFAR_COUNTS[f"resnet{depth}"]
    # plain-18 is resnet18 less its three projection shortcuts (conv 1x1 + BN each)
    projections = sum(c * 2 * c + 2 * 2 * c for c in (64, 128, 256))
    assert n_params(meta("plain18")) == TORCHVISION_COUNTS["resnet18"] - projections


def test_registry_has_the_required_names_and_defaults():
    names = list_models()
    required = [*TORCHVISION_COUNTS, *CIFAR_COUNTS, "d2l_resnet18", "plain18", "plain34"]
    required += [f"plain{d}" for d in (20, 32, 44, 56, 110)] + ["preact_resnet18", "preact_resnet110"]
    assert set(required) <= set(names)
    assert len(names) == len(set(names))
    assert list_models("plain") == [n for n in names if "plain" in n]
    e = model_entry("d2l_resnet18")
    assert (e.default_input_size, e.default_num_classes, e.default_in_chans) == ((1, 96, 96), 10, 1)
    assert (model_entry("resnet20").default_input_size, model_entry("resnet20").default_num_classes) == (
        (3, 32, 32),
        10,
    )
    assert (model_entry("resnet50").default_input_size, model_entry("resnet50").default_num_classes) == (
        (3, 224, 224),
        1000,
    )
    assert all(model_entry(n).description for n in names)


# ----------------------------------------------------------------------------------------------------------------------
# the seeds


def test_residual_keeps_the_seeds_shapes():
    x = torch.rand(4, 3, 6, 6)
    assert Residual(3, 3)(x).shape == (4, 3, 6, 6)
    assert Residual(3, 6, use_1x1conv=True, stride=2)(x).shape == (4, 6, 3, 3)


def test_residual_is_the_seeds_block():
    torch.manual_seed(0)
    blk = Residual(3, 6, use_1x1conv=True, stride=2)
    assert [k for k in blk.state_dict() if k.endswith(("weight", "bias"))] == [
        "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "conv3.weight", "conv3.bias",
        "bn1.weight", "bn1.bias", "bn2.weight", "bn2.bias",
    ]  # fmt: skip
    assert blk.conv1.kernel_size == (3, 3) and blk.conv3.kernel_size == (1, 1)
    x = torch.rand(4, 3, 6, 6)
    y = F.relu(blk.bn1(blk.conv1(x)))
    assert torch.allclose(blk(x), F.relu(blk.bn2(blk.conv2(y)) + blk.conv3(x)))
    assert Residual(3, 3).conv3 is None


def test_d2l_resnet18_gives_the_seeds_stage_shapes_at_224():
    x = torch.rand(1, 1, 224, 224)
    shapes = []
    with torch.no_grad():
        for layer in build_model("d2l_resnet18").eval():  # the seeds print the output shape of each of their 8 layers
            x = layer(x)
            shapes.append(tuple(x.shape[1:]))
    assert shapes == [(64, 56, 56), (64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7), (512, 1, 1), (512,), (10,)]


def test_d2l_resnet18_loads_a_state_dict_of_the_seeds_own_network():
    def resnet_block(input_channels, num_channels, num_residuals, first_block=False):  # the seeds, verbatim
        blk = []
        for i in range(num_residuals):
            if i == 0 and not first_block:
                blk.append(Residual(input_channels, num_channels, use_1x1conv=True, stride=2))
            else:
                blk.append(Residual(num_channels, num_channels))
        return blk

    b1 = nn.Sequential(
        nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3), nn.BatchNorm2d(64), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )  # fmt: skip
    b2 = nn.Sequential(*resnet_block(64, 64, 2, first_block=True))
    b3 = nn.Sequential(*resnet_block(64, 128, 2))
    b4 = nn.Sequential(*resnet_block(128, 256, 2))
    b5 = nn.Sequential(*resnet_block(256, 512, 2))
    seeds = nn.Sequential(b1, b2, b3, b4, b5, nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(512, 10)).eval()
    ours = build_model("d2l_resnet18").eval()
    ours.load_state_dict(seeds.state_dict(), strict=True)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), seeds(x))
        assert torch.equal(ours.forward_head(ours.forward_features(x)), seeds(x))


# ----------------------------------------------------------------------------------------------------------------------
# torchvision's names


def torchvision_shapes(layers, bottleneck, groups=1, width_per_group=64):
    """key -> shape of the state_dict torchvision's resnet.py gives (1000 classes), written out from its source."""
    shapes = {}

    def conv(name, out_chans, in_chans, k):
        shapes[f"{name}.weight"] = (out_chans, in_chans, k, k)

    def bn(name, chans):
        shapes.update({f"{name}.{s}": (chans,) for s in ("weight", "bias", "running_mean", "running_var")})
        shapes[f"{name}.num_batches_tracked"] = ()

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    expansion, inplanes = (4 if bottleneck else 1), 64
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True), start=1):
        for j in range(n):
            p, out_chans = f"layer{i}.{j}", planes * expansion
            if bottleneck:  # torchvision: width = int(planes * (base_width / 64.0)) * groups
                width = int(planes * width_per_group / 64) * groups
                conv(f"{p}.conv1", width, inplanes, 1), bn(f"{p}.bn1", width)
                conv(f"{p}.conv2", width, width // groups, 3), bn(f"{p}.bn2", width)
                conv(f"{p}.conv3", out_chans, width, 1), bn(f"{p}.bn3", out_chans)
            else:
                conv(f"{p}.conv1", planes, inplanes, 3), bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3), bn(f"{p}.bn2", planes)
            if j == 0 and (i > 1 or bottleneck):  # stride 2, or 64 -> 256 channels
                conv(f"{p}.downsample.0", out_chans, inplanes, 1), bn(f"{p}.downsample.1", out_chans)
            inplanes = out_chans
    shapes["fc.weight"], shapes["fc.bias"] = (1000, inplanes), (1000,)
    return shapes


TORCHVISION_LAYOUTS = {  # name: (layers, bottleneck, groups, width_per_group, number of state_dict entries)
    "resnet18": ([2, 2, 2, 2], False, 1, 64, 122),
    "resnet34": ([3, 4, 6, 3], False, 1, 64, 218),
    "resnet50": ([3, 4, 6, 3], True, 1, 64, 320),
    "resnet101": ([3, 4, 23, 3], True, 1, 64, 626),
    "resnet152": ([3, 8, 36, 3], True, 1, 64, 932),
    "resnext50_32x4d": ([3, 4, 6, 3], True, 32, 4, 320),
    "wide_resnet50_2": ([3, 4, 6, 3], True, 1, 128, 320),
}


@pytest.mark.parametrize("name", TORCHVISION_LAYOUTS)
def test_state_dict_is_torchvisions_key_for_key_and_shape_for_shape(name):
    *layout, n_entries = TORCHVISION_LAYOUTS[name]
    expected = torchvision_shapes(*layout)
    # the shapes written out above hold torchvision's published parameter count (buffers aside)
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    assert sum(math.prod(s) for k, s in expected.items() if not k.endswith(buffers)) == TORCHVISION_COUNTS[name]
    assert [(k, tuple(v.shape)) for k, v in meta(name).state_dict().items()] == list(expected.items())
    assert len(expected) == n_entries


def random_torchvision_state_dict(shapes, seed=0):
    """Values of a plausible trained network: Kaiming-scaled convs, BN statistics near (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(0)
        elif k.endswith("running_var") or (len(shape) == 1 and k.endswith("weight")):
            sd[k] = 0.5 + torch.rand(shape, generator=g)
        elif len(shape) == 1:  # biases, running means
            sd[k] = 0.1 * torch.randn(shape, generator=g)
        else:
            sd[k] = torch.randn(shape, generator=g) * (2 / math.prod(shape[1:])) ** 0.5
    return sd


def torchvision_forward(sd, x, layers, bottleneck):
    """torchvision's ResNet.forward in eval mode, written from its source with torch.nn.functional on the state dict."""

    def conv(x, p, stride=1):
        w = sd[f"{p}.weight"]
        return F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2, groups=x.shape[1] // w.shape[1])

    def bn(x, p):
        return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"])

    x = F.max_pool2d(F.relu(bn(conv(x, "conv1", stride=2), "bn1")), kernel_size=3, stride=2, padding=1)
    for i, n in enumerate(layers, start=1):
        for j in range(n):
            p, stride = f"layer{i}.{j}", 2 if i > 1 and j == 0 else 1
            if bottleneck:  # v1.5: the stride on the 3x3 conv
                out = F.relu(bn(conv(x, f"{p}.conv1"), f"{p}.bn1"))
                out = F.relu(bn(conv(out, f"{p}.conv2", stride), f"{p}.bn2"))
                out = bn(conv(out, f"{p}.conv3"), f"{p}.bn3")
            else:
                out = F.relu(bn(conv(x, f"{p}.conv1", stride), f"{p}.bn1"))
                out = bn(conv(out, f"{p}.conv2"), f"{p}.bn2")
            if f"{p}.downsample.0.weight" in sd:
                x = bn(conv(x, f"{p}.downsample.0", stride), f"{p}.downsample.1")
            x = F.relu(out + x)
    return F.linear(x.mean((2, 3)), sd["fc.weight"], sd["fc.bias"])


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d"])
def test_a_torchvision_checkpoint_loads_strictly_and_computes_what_torchvision_would(name):
    layers, bottleneck, *_ = TORCHVISION_LAYOUTS[name]
    sd = random_torchvision_state_dict(torchvision_shapes(*TORCHVISION_LAYOUTS[name][:4]))
    with torch.device("meta"):
        model = build_model(name)
    model.load_state_dict(sd, strict=True, assign=True)  # assign: the file's tensors, no init of throwaway weights
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = torchvision_forward(sd, x, layers, bottleneck)
        assert torch.allclose(model.eval()(x), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_resnet_keeps_torchvisions_attributes_and_timms_methods():
    m = build_model("resnet18", num_classes=7).eval()
    for attr in ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"]:
        assert hasattr(m, attr)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        feats = m.forward_features(x)
        assert feats.shape == (2, 512, 2, 2)
        assert torch.equal(m.forward_head(feats, pre_logits=True), feats.mean((2, 3)))
        assert m(x).shape == (2, 7)
    cifar = meta("resnet20")
    assert hasattr(cifar, "layer3") and not hasattr(cifar, "layer4") and cifar.num_features == 64


def test_kaiming_init_like_torchvision():
    torch.manual_seed(0)
    m = build_model("resnet18")
    w = m.layer4[1].conv2.weight  # kaiming normal, fan_out = 512 * 3 * 3
    assert w.std().item() == pytest.approx((2 / (512 * 9)) ** 0.5, rel=0.02)
    assert all(torch.equal(b.weight, torch.ones_like(b.weight)) for b in m.modules() if isinstance(b, nn.BatchNorm2d))
    assert all(not b.bias.any() for b in m.modules() if isinstance(b, nn.BatchNorm2d))


# ----------------------------------------------------------------------------------------------------------------------
# every model: forward, backward, pickling, deep copies


# Real tensors at full width would mean 60M-130M parameters (wide_resnet101_2) and seconds per model; the same
# depth, blocks and shortcuts at a quarter of the width or less run the same code. The meta-device tests above
# cover the full-size shapes and counts.
SMALL_WIDTHS = {"imagenet": (16, 32, 64, 128), "cifar": (8, 16, 32)}  # 16: ResNeXt's 32x4d needs planes >= 16


def small_model(name, **overrides):
    """`name` with 5 classes, at SMALL_WIDTHS where it takes `widths` (d2l_resnet18, 11M parameters, does not)."""
    entry = model_entry(name)
    if "widths" in entry.accepted_kwargs():
        overrides = {"widths": SMALL_WIDTHS[entry.family], **overrides}
    return build_model(name, num_classes=5, **overrides)


def small_input(name):
    c, _, _ = model_entry(name).default_input_size
    size = 16 if model_entry(name).family == "cifar" else 32  # above each family's floor (3 and 17 pixels)
    return torch.rand(2, c, size, size)


# timm's deeper or wider twins: the same block, stem and shortcuts as the model named, only more blocks or wider
# groups; their counts, names and shapes are checked on the meta device (test_timm_architectures_...), and the code
# they run is run by their twin here
TWINS = {
    "resnet26d": "resnet50d",
    "resnet34d": "resnet18d",
    "resnet101d": "resnet50d",
    "resnet152d": "resnet50d",
    "resnet200d": "resnet50d",
    "resnet26t": "resnet14t",
    "resnet50t": "resnet14t",
    "resnet101c": "resnet50c",
    "resnet152c": "resnet50c",
    "resnet101s": "resnet50s",
    "resnet152s": "resnet50s",
    "resnet200": "resnet152",
    "resnext101_32x16d": "resnext101_32x8d",
    "resnext101_32x32d": "resnext101_32x8d",
}


def test_twins_differ_only_in_depth_or_group_width():
    for name, twin in TWINS.items():
        a, b = model_entry(name), model_entry(twin)
        assert a.builder.args[0] is b.builder.args[0]  # the block
        strip = {"width_per_group"}
        assert {k: v for k, v in a.kwargs.items() if k not in strip} == {
            k: v for k, v in b.kwargs.items() if k not in strip
        }


@pytest.mark.parametrize("name", [n for n in list_models() if n not in TWINS])
def test_every_model_gives_finite_logits_and_a_gradient_to_every_parameter(name):
    torch.manual_seed(0)
    model = small_model(name)
    y = model(small_input(name))
    assert y.shape == (2, 5) and torch.isfinite(y).all()
    y.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters that got no gradient: {missing[:5]}"


# 3,600 and 2,700 modules take seconds to pickle; their builders and block classes are those of resnet110 and
# preact_resnet164, pickled here
DEEPEST = ("resnet1202", "preact_resnet1001")


@pytest.mark.parametrize("name", [n for n in list_models() if n not in DEEPEST and n not in TWINS])
def test_every_model_pickles_and_deep_copies_into_an_equal_independent_model(name):
    torch.manual_seed(0)
    model = small_model(name).eval()
    x = small_input(name)
    with torch.no_grad():
        y = model(x)
        last = list(model.parameters())[-1].clone()  # the classifier's bias
        for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
            assert torch.equal(clone(x), y)
            list(clone.parameters())[-1].add_(1)
            assert torch.equal(list(model.parameters())[-1], last)  # the clone shares no tensor with the model


@pytest.mark.parametrize("name", ["resnet20", "plain20", "preact_resnet20", "d2l_resnet18"])
def test_fashion_mnist_sized_inputs_work_with_one_channel(name):
    model = build_model(name, in_chans=1, num_classes=10)
    y = model(torch.rand(2, 1, 28, 28))
    assert y.shape == (2, 10)
    y.sum().backward()


@pytest.mark.parametrize("shortcut", ["A", "B", "C"])
def test_cifar_stages_at_28_pixels_are_28_14_7(shortcut):
    model = meta("resnet20", in_chans=1, shortcut=shortcut)
    x = torch.zeros(1, 1, 28, 28, device="meta")
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    sizes = []
    for layer in (model.layer1, model.layer2, model.layer3):
        x = layer(x)
        sizes.append(tuple(x.shape[1:]))
    assert sizes == [(16, 28, 28), (32, 14, 14), (64, 7, 7)]


# ----------------------------------------------------------------------------------------------------------------------
# variants, each changing what it should


def test_stride_placement_moves_the_stride_of_a_bottleneck():
    v15, v1 = meta("resnet50"), meta("resnet50", stride_placement="v1")
    assert (v15.layer2[0].conv1.stride, v15.layer2[0].conv2.stride) == ((1, 1), (2, 2))
    assert (v1.layer2[0].conv1.stride, v1.layer2[0].conv2.stride) == ((2, 2), (1, 1))
    assert v1.layer2[0].downsample[0].stride == (2, 2)
    assert n_params(v1) == n_params(v15)
    torch.manual_seed(0)
    a, b = small_model("resnet50").eval(), small_model("resnet50", stride_placement="v1")
    b.load_state_dict(a.state_dict())  # same weights, different computation
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert a(x).shape == b.eval()(x).shape and not torch.allclose(a(x), b(x))
    with pytest.raises(ReslabError, match="stride_placement"):
        build_model("resnet50", stride_placement="v2")


def _nchw_gradients(model: nn.Module, x: torch.Tensor) -> list[str]:
    """The backward ops of model(x).sum() that take a 4-D tensor laid out NCHW (and not also channels_last)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    def nchw_only(t):
        return (
            isinstance(t, torch.Tensor)
            and t.dim() == 4
            and t.is_contiguous()
            and not t.is_contiguous(memory_format=torch.channels_last)
        )

    found = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if any(nchw_only(a) for a in args):
                found.append(f"{func.__name__} {[tuple(a.shape) for a in args if nchw_only(a)]}")
            return func(*args, **(kwargs or {}))

    loss = model(x).sum()
    with Spy():
        loss.backward()
    return found


@pytest.mark.parametrize("name", ["resnet8", "resnet18", "preact_resnet20"])
def test_a_channels_last_network_gets_channels_last_gradients(name):
    # an NCHW gradient meeting channels_last activations sends the ReLU backward and the residual adds down a
    # strided path 10-20x slower on a CPU (option A's slice and the global mean's backward did this)
    torch.manual_seed(0)
    model = build_model(name, in_chans=1, num_classes=10).to(memory_format=torch.channels_last)
    x = torch.rand(4, 1, 64, 64).to(memory_format=torch.channels_last)
    assert _nchw_gradients(model, x) == []


def test_the_channels_last_head_pools_like_the_nchw_one():
    m = build_model("resnet18", num_classes=7).eval()
    feats = torch.rand(2, 512, 3, 3)
    with torch.no_grad():
        cl = m.forward_head(feats.to(memory_format=torch.channels_last), pre_logits=True)
        assert torch.allclose(cl, m.forward_head(feats, pre_logits=True), rtol=0, atol=1e-6)


def test_shortcut_a_subsamples_and_pads_zeros_without_parameters():
    sc = ShortcutA(16, 32, stride=2)
    x = torch.rand(2, 16, 7, 7)
    y = sc(x)
    assert y.shape == (2, 32, 4, 4) and n_params(sc) == 0
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2]) and not y[:, 16:].any()
    model = meta("resnet20")
    assert [type(s) for s in shortcuts(model)] == [ShortcutA, ShortcutA]
    with pytest.raises(ReslabError, match="only add channels"):
        ShortcutA(32, 16)


def test_shortcut_b_projects_only_where_the_shape_changes_and_c_everywhere():
    a, b, c = (meta("resnet20", shortcut=s) for s in "ABC")
    assert len(shortcuts(b)) == 2 and all(isinstance(s[0], nn.Conv2d) for s in shortcuts(b))
    assert n_params(b) == n_params(a) + (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert len(shortcuts(c)) == 9  # every block
    assert n_params(c) > n_params(b)
    assert len(shortcuts(meta("resnet18"))) == 3 and len(shortcuts(meta("resnet50"))) == 4


def test_plain_blocks_have_the_same_layers_and_no_shortcut():
    res, plain = meta("resnet20"), meta("plain20")
    assert {k: v.shape for k, v in res.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    assert not shortcuts(plain) and all(not b.residual for b in plain.modules() if isinstance(b, BasicBlock))
    # with the residual branch at zero, a residual block passes its (non-negative) input on; a plain block outputs 0
    x = torch.rand(2, 8, 5, 5)
    for residual, expected in [(True, x), (False, torch.zeros_like(x))]:
        blk = BasicBlock(8, 8, residual=residual).eval()
        blk.zero_init_last()
        with torch.no_grad():
            assert torch.allclose(blk(x), expected)
    assert build_model("resnet20", shortcut="none").layer1[0].residual is False
    with pytest.raises(ReslabError, match="plain"):
        build_model("plain20", zero_init_residual=True)


def test_zero_init_residual_zeroes_the_last_bn_of_every_block():
    for name, last in [
        ("resnet18", "bn2"),
        ("resnet50", "bn3"),
        ("preact_resnet18", "bn2"),
        ("preact_resnet50", "bn3"),
    ]:
        model = small_model(name, zero_init_residual=True)
        blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck, *PREACT))]
        assert blocks and all(not getattr(b, last).weight.any() for b in blocks)
        assert small_model(name).layer1[0].get_submodule(last).weight.all()
    d2l = build_model("d2l_resnet18", zero_init_residual=True)
    assert all(not b.bn2.weight.any() for b in d2l.modules() if isinstance(b, Residual))
    # a pre-activation block with identity shortcut then is exactly the identity
    blk = PreActBottleneck(32, 8).eval()
    blk.zero_init_last()
    x = torch.randn(2, 32, 5, 5)
    with torch.no_grad():
        assert torch.equal(blk(x), x)


def test_preactivation_blocks_and_final_bn_relu():
    m = meta("preact_resnet18")
    assert isinstance(m.layer1[0], PreActBasicBlock) and hasattr(m, "bn_final")
    sd = m.state_dict()
    assert "bn_final.weight" in sd and "layer1.0.bn1.weight" not in sd and "layer1.1.bn1.weight" in sd
    assert len(m.layer2[0].downsample) == 1  # a bare 1x1 conv: the sum it joins is not normalised
    assert isinstance(meta("preact_resnet50").layer1[0], PreActBottleneck)
    assert not hasattr(meta("resnet18"), "bn_final")
    # BN-ReLU-conv order: the block's first op normalises its input
    blk = PreActBasicBlock(4, 4).eval()
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        blk.bn1.bias.fill_(-100.0)  # relu(bn1(x)) == 0, so the residual branch is conv2(relu(bn2(0)))
        branch = blk.conv2(F.relu(blk.bn2(blk.conv1(torch.zeros_like(x)))))
        assert torch.allclose(blk(x), x + branch)


def test_each_stem_has_its_layers_and_output_stride():
    imagenet, cifar, deep = (meta("resnet18", stem=s) for s in ("imagenet", "cifar", "deep"))
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2)
    assert isinstance(imagenet.maxpool, nn.MaxPool2d)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1) and isinstance(cifar.maxpool, nn.Identity)
    convs = [c for c in deep.conv1 if isinstance(c, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 3)] * 3 and [c.out_channels for c in convs] == [32, 32, 64]
    x = torch.zeros(1, 3, 64, 64, device="meta")
    assert [m.forward_features(x).shape[-1] for m in (imagenet, cifar, deep)] == [2, 8, 2]
    with pytest.raises(ReslabError, match="stem"):
        build_model("resnet18", stem="tiny")


def test_resnet_d_average_pool_shortcut_and_timm_names():
    m = meta("resnet50d")
    ds = m.layer2[0].downsample
    assert isinstance(ds[0], nn.AvgPool2d) and ds[1].stride == (1, 1) and isinstance(ds[2], nn.BatchNorm2d)
    assert isinstance(m.layer1[0].downsample[0], nn.Identity)  # stride 1: nothing to pool
    sd = m.state_dict()
    assert {"conv1.0.weight", "conv1.1.weight", "conv1.6.weight", "bn1.weight", "layer2.0.downsample.1.weight"} <= set(
        sd
    )
    assert n_params(meta("resnet50", avg_down=True)) == TORCHVISION_COUNTS["resnet50"]
    with pytest.raises(ReslabError, match="avg_down"):
        build_model("resnet20", avg_down=True)  # option A has no projection to pool for


def test_groups_width_in_chans_and_num_classes_change_the_layers_they_name():
    rx = meta("resnext50_32x4d")
    assert rx.layer1[0].conv2.groups == 32 and rx.layer1[0].conv2.out_channels == 128
    assert meta("wide_resnet50_2").layer1[0].conv2.out_channels == 128
    assert meta("resnet50").layer1[0].conv2.out_channels == 64
    m = meta("resnet50", in_chans=1, num_classes=10)
    assert m.conv1.in_channels == 1 and m.fc.out_features == 10
    d = meta("d2l_resnet18", in_chans=3, num_classes=100)
    assert d[0][0].in_channels == 3 and d[-1].out_features == 100
    with pytest.raises(ReslabError, match="BasicBlock"):
        build_model("resnet18", groups=32, width_per_group=4)


def test_generic_resnet_is_usable_directly():
    m = ResNet(Bottleneck, [1, 1], widths=(8, 16), stem="cifar", num_classes=3, in_chans=2)
    assert m(torch.rand(2, 2, 8, 8)).shape == (2, 3)
    assert [m.layer1[0].conv3.out_channels, m.layer2[0].conv3.out_channels, m.num_features] == [32, 64, 64]
    assert D2LResNet(in_chans=2, num_classes=3)(torch.rand(2, 2, 32, 32)).shape == (2, 3)


def test_bad_names_and_options_are_clear_errors():
    with pytest.raises(ReslabError, match=r"unknown model 'resnet51'; did you mean resnet50"):
        build_model("resnet51")
    with pytest.raises(ReslabError, match="resnet50"):
        build_model("resnt50")
    with pytest.raises(ReslabError, match="d2l_resnet18 does not take 'shortcut'"):
        build_model("d2l_resnet18", shortcut="B")
    with pytest.raises(ReslabError, match="shortcut"):
        build_model("resnet20", shortcut="D")
    with pytest.raises(ReslabError, match="layers and widths"):
        ResNet(BasicBlock, [2, 2], widths=(16, 32, 64))


# ----------------------------------------------------------------------------------------------------------------------
# timm's ResNet family: the counts timm's definition implies, the counts timm publishes, timm's key names
#
# Definitions: huggingface/pytorch-image-models, timm/models/resnet.py (@register_model: block, layers, stem_type,
# stem_width, avg_down, cardinality, base_width). Published counts: the same repository's results/results-imagenet.csv
# (param_count, millions to 2 decimals), one row per pretrained tag, in reslab.weights.timm_hub.

TIMM_DEFS = {  # name -> (BasicBlock?, layers, stem_type, stem_width, avg_down, cardinality, base_width)
    "resnet10t": (True, (1, 1, 1, 1), "deep_tiered", 32, True, 1, 64),
    "resnet14t": (False, (1, 1, 1, 1), "deep_tiered", 32, True, 1, 64),
    "resnet18": (True, (2, 2, 2, 2), "", 64, False, 1, 64),
    "resnet18d": (True, (2, 2, 2, 2), "deep", 32, True, 1, 64),
    "resnet26": (False, (2, 2, 2, 2), "", 64, False, 1, 64),
    "resnet26d": (False, (2, 2, 2, 2), "deep", 32, True, 1, 64),
    "resnet26t": (False, (2, 2, 2, 2), "deep_tiered", 32, True, 1, 64),
    "resnet34": (True, (3, 4, 6, 3), "", 64, False, 1, 64),
    "resnet34d": (True, (3, 4, 6, 3), "deep", 32, True, 1, 64),
    "resnet50": (False, (3, 4, 6, 3), "", 64, False, 1, 64),
    "resnet50c": (False, (3, 4, 6, 3), "deep", 32, False, 1, 64),
    "resnet50d": (False, (3, 4, 6, 3), "deep", 32, True, 1, 64),
    "resnet50s": (False, (3, 4, 6, 3), "deep", 64, False, 1, 64),
    "resnet50t": (False, (3, 4, 6, 3), "deep_tiered", 32, True, 1, 64),
    "resnet101": (False, (3, 4, 23, 3), "", 64, False, 1, 64),
    "resnet101c": (False, (3, 4, 23, 3), "deep", 32, False, 1, 64),
    "resnet101d": (False, (3, 4, 23, 3), "deep", 32, True, 1, 64),
    "resnet101s": (False, (3, 4, 23, 3), "deep", 64, False, 1, 64),
    "resnet152": (False, (3, 8, 36, 3), "", 64, False, 1, 64),
    "resnet152c": (False, (3, 8, 36, 3), "deep", 32, False, 1, 64),
    "resnet152d": (False, (3, 8, 36, 3), "deep", 32, True, 1, 64),
    "resnet152s": (False, (3, 8, 36, 3), "deep", 64, False, 1, 64),
    "resnet200": (False, (3, 24, 36, 3), "", 64, False, 1, 64),
    "resnet200d": (False, (3, 24, 36, 3), "deep", 32, True, 1, 64),
    "resnext50_32x4d": (False, (3, 4, 6, 3), "", 64, False, 32, 4),
    "resnext50d_32x4d": (False, (3, 4, 6, 3), "deep", 32, True, 32, 4),
    "resnext101_32x4d": (False, (3, 4, 23, 3), "", 64, False, 32, 4),
    "resnext101_32x8d": (False, (3, 4, 23, 3), "", 64, False, 32, 8),
    "resnext101_32x16d": (False, (3, 4, 23, 3), "", 64, False, 32, 16),
    "resnext101_32x32d": (False, (3, 4, 23, 3), "", 64, False, 32, 32),
    "resnext101_64x4d": (False, (3, 4, 23, 3), "", 64, False, 64, 4),
    "wide_resnet50_2": (False, (3, 4, 6, 3), "", 64, False, 1, 128),
    "wide_resnet101_2": (False, (3, 4, 23, 3), "", 64, False, 1, 128),
}


def timm_param_count(basic, layers, stem_type, stem_width, avg_down, cardinality, base_width, num_classes=1000):
    """Parameters of timm's ResNet(...) counted from its definition, without building anything: conv weights
    (no bias), BatchNorm weight + bias, the classifier. avg_down's pool has none, so it does not change the count."""
    bn = 2
    if stem_type:  # three 3x3 convs: (c0, stem_width, 2 * stem_width), c0 = 3 * (stem_width // 4) when tiered
        inplanes = 2 * stem_width
        c0 = 3 * (stem_width // 4) if stem_type == "deep_tiered" else stem_width
        n = 3 * c0 * 9 + bn * c0 + c0 * stem_width * 9 + bn * stem_width + stem_width * inplanes * 9
    else:
        inplanes = 64
        n = 3 * 64 * 49
    n += bn * inplanes  # bn1
    expansion = 1 if basic else 4
    for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
        out = planes * expansion
        for j in range(blocks):
            stride = 2 if i > 0 and j == 0 else 1
            if basic:
                n += inplanes * planes * 9 + bn * planes + planes * planes * 9 + bn * planes
            else:
                width = math.floor(planes * base_width / 64) * cardinality
                n += inplanes * width + bn * width + width * (width // cardinality) * 9 + bn * width
                n += width * out + bn * out
            if j == 0 and (stride != 1 or inplanes != out):
                n += inplanes * out + bn * out  # the projection: 1x1 conv + BN (behind a 2x2 average pool if avg_down)
            inplanes = out
    return n + inplanes * num_classes + num_classes


@pytest.mark.parametrize("name", sorted(TIMM_DEFS))
def test_timm_architectures_have_timms_parameter_count_and_names(name):
    basic, layers, stem_type, stem_width, avg_down, cardinality, base_width = TIMM_DEFS[name]
    m = meta(name)
    assert n_params(m) == timm_param_count(*TIMM_DEFS[name])
    assert [len(getattr(m, f"layer{i}")) for i in (1, 2, 3, 4)] == list(layers)
    assert isinstance(m.layer1[0], BasicBlock if basic else Bottleneck)
    sd = m.state_dict()
    inplanes = 2 * stem_width if stem_type else 64
    if stem_type:  # timm's deep stem: conv1.0 (/2), conv1.1 BN, conv1.3, conv1.4 BN, conv1.6; bn1 after it
        c0 = 3 * (stem_width // 4) if stem_type == "deep_tiered" else stem_width
        assert sd["conv1.0.weight"].shape == (c0, 3, 3, 3) and sd["conv1.1.running_mean"].shape == (c0,)
        assert sd["conv1.3.weight"].shape == (stem_width, c0, 3, 3) and sd["conv1.4.weight"].shape == (stem_width,)
        assert sd["conv1.6.weight"].shape == (inplanes, stem_width, 3, 3)
    else:
        assert sd["conv1.weight"].shape == (64, 3, 7, 7)
    assert sd["bn1.weight"].shape == (inplanes,)
    # the stage-2 shortcut: conv at downsample.0 and BN at .1, or behind the average pool (.1 and .2) with avg_down
    conv, norm = (
        ("layer2.0.downsample.1", "layer2.0.downsample.2")
        if avg_down
        else ("layer2.0.downsample.0", "layer2.0.downsample.1")
    )
    assert sd[f"{conv}.weight"].shape[2:] == (1, 1) and f"{norm}.running_var" in sd
    assert sd["fc.weight"].shape == (1000, 512 * (1 if basic else 4))
    if cardinality > 1:
        assert m.layer1[0].conv2.groups == cardinality


def timm_state_dict_shapes(basic, layers, stem_type, stem_width, avg_down, cardinality, base_width):
    """Every key of timm's ResNet(...).state_dict() and its shape, written from timm's definition (its module
    names: conv1 or conv1.0/.1/.3/.4/.6, bn1, layerN.i.convK/bnK, downsample.0/.1 or .1/.2 behind the pool, fc)."""
    shapes = {}

    def conv(name, out, inp, k):
        shapes[f"{name}.weight"] = (out, inp, k, k)

    def bn(name, c):
        shapes.update({f"{name}.{t}": (c,) for t in ("weight", "bias", "running_mean", "running_var")})
        shapes[f"{name}.num_batches_tracked"] = ()

    if stem_type:
        inplanes = 2 * stem_width
        c0 = 3 * (stem_width // 4) if stem_type == "deep_tiered" else stem_width
        conv("conv1.0", c0, 3, 3), bn("conv1.1", c0), conv("conv1.3", stem_width, c0, 3)
        bn("conv1.4", stem_width), conv("conv1.6", inplanes, stem_width, 3)
    else:
        inplanes = 64
        conv("conv1", 64, 3, 7)
    bn("bn1", inplanes)
    for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
        out = planes * (1 if basic else 4)
        for j in range(blocks):
            b = f"layer{i + 1}.{j}"
            if basic:
                conv(f"{b}.conv1", planes, inplanes, 3), bn(f"{b}.bn1", planes)
                conv(f"{b}.conv2", planes, planes, 3), bn(f"{b}.bn2", planes)
            else:
                width = math.floor(planes * base_width / 64) * cardinality
                conv(f"{b}.conv1", width, inplanes, 1), bn(f"{b}.bn1", width)
                conv(f"{b}.conv2", width, width // cardinality, 3), bn(f"{b}.bn2", width)
                conv(f"{b}.conv3", out, width, 1), bn(f"{b}.bn3", out)
            if j == 0 and (i > 0 or inplanes != out):
                first = 1 if avg_down else 0  # avg_down: the AvgPool2d (no state) at .0
                conv(f"{b}.downsample.{first}", out, inplanes, 1), bn(f"{b}.downsample.{first + 1}", out)
            inplanes = out
    shapes["fc.weight"], shapes["fc.bias"] = (1000, inplanes), (1000,)
    return shapes


@pytest.mark.parametrize(
    "name",
    [
        "resnet10t",
        "resnet14t",
        "resnet18d",
        "resnet26d",
        "resnet50s",
        "resnet101d",
        "resnext50d_32x4d",
        "resnext101_32x4d",
        "wide_resnet50_2",
    ],
)
def test_timm_state_dicts_have_exactly_timms_keys_and_shapes(name):
    # what load_state_dict(strict=True) needs: the same keys, in timm's order, and the same shapes
    expected = timm_state_dict_shapes(*TIMM_DEFS[name])
    actual = {k: tuple(v.shape) for k, v in meta(name).state_dict().items()}
    assert list(actual) == list(expected) and actual == expected


def test_timm_published_parameter_counts():
    # timm_param_count is reslab's count (the test above): here it meets the counts timm publishes with its weights
    from reslab.weights.timm_hub import TIMM_HUB_WEIGHTS

    for entry in TIMM_HUB_WEIGHTS.values():
        assert round(timm_param_count(*TIMM_DEFS[entry.model]) / 1e6, 2) == entry.param_count_m, entry.name
    published = {e.model for e in TIMM_HUB_WEIGHTS.values()}
    assert set(TIMM_DEFS) - published == {"resnet50t", "resnet200"}  # the two without weights in timm's table


def test_timm_tiered_stem_is_24_32_64_and_s_stem_starts_layer1_at_128():
    t = meta("resnet26t")
    assert [c.out_channels for c in t.conv1 if isinstance(c, nn.Conv2d)] == [24, 32, 64]
    s = meta("resnet50s")
    assert [c.out_channels for c in s.conv1 if isinstance(c, nn.Conv2d)] == [64, 64, 128]
    assert s.layer1[0].conv1.in_channels == 128 and s.layer1[0].downsample is not None
    small = build_model("resnet26t", widths=(8, 16, 32, 64), num_classes=3)  # 6-8-16 stem: the same code, small
    assert small.forward_features(torch.rand(1, 3, 64, 64)).shape == (1, 256, 2, 2)
    with pytest.raises(ReslabError, match="stem_chans must be at least 8"):
        build_model("resnet26t", widths=(4, 8, 16, 32))


@pytest.mark.parametrize(
    "name, kwargs, size, left",
    [
        ("resnet20", {"in_chans": 1}, 28, 0),  # option A: every BN follows a conv of its block or the stem
        ("resnet20", {"in_chans": 1, "shortcut": "B"}, 28, 0),  # and the projections' Sequential(conv, BN)
        ("plain20", {"in_chans": 1}, 28, 0),
        ("d2l_resnet18", {}, 32, 0),
        ("resnet18", {}, 64, 0),
        ("resnet50", {}, 64, 0),
        ("resnet10t", {}, 64, 1),  # the deep stem's last conv is inside conv1 (a Sequential), its BN is bn1: kept
        ("preact_resnet20", {"in_chans": 1}, 28, 18),  # BN before the conv: only the stem's can fold
    ],
)
def test_fuse_batchnorm_folds_each_bn_into_its_conv_and_computes_the_same(name, kwargs, size, left):
    from reslab.models import fuse_batchnorm

    torch.manual_seed(0)
    model = build_model(name, **kwargs)
    for m in model.modules():  # statistics and affine parameters far from the identity, so that folding shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse_batchnorm(model)
    count = lambda m: sum(isinstance(q, torch.nn.BatchNorm2d) for q in m.modules())  # noqa: E731
    assert count(fused) == left < count(model)
    stem = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    x = torch.randn(3, stem.in_channels, size, size)
    with torch.no_grad():
        expected, got = model(x), fused(x)
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the original is untouched


def smooth_images(n: int, size: int = 16) -> torch.Tensor:
    """Noise averaged over 3x3 neighbourhoods: images whose neighbouring pixels are correlated, as a photo's are."""
    g = torch.Generator().manual_seed(0)
    return F.avg_pool2d(torch.randn(n, 1, size + 2, size + 2, generator=g), 3, stride=1)


def test_a_whitened_stem_decorrelates_the_patches_and_pairs_each_filter_with_its_negative():
    x = smooth_images(64)
    model = build_model("resnet8", in_chans=1, num_classes=10)
    used = whiten_stem(model, [x[:32], x[32:]])
    conv = model.conv1
    assert used == 64 * 14 * 14 and not conv.weight.requires_grad
    w = conv.weight.flatten(1).double()
    assert torch.equal(w[8:], -w[:8])
    patches = x.unfold(2, 3, 1).unfold(3, 3, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 9).double()
    top = torch.linalg.eigvalsh(patches.T @ patches / len(patches)).flip(0)[:8]
    out = patches @ w[:8].T  # the first 8 filters' responses: uncorrelated, each of variance top/(top + eps)
    torch.testing.assert_close(out.T @ out / len(out), torch.diag(top / (top + 5e-4)), atol=2e-5, rtol=1e-4)
    # at most 5,000 images (airbench's): the second batch is not read
    assert whiten_stem(model, [smooth_images(6000, 4), x]) == 5000 * 2 * 2


@pytest.mark.parametrize("filters", [15, 20])
def test_a_stem_that_cannot_be_whitened_is_refused_with_the_flag_and_what_it_has(filters):
    with pytest.raises(ReslabError, match=rf"--whiten-stem: .* at most twice its 9 patch values.* has {filters}"):
        whiten_stem(nn.Sequential(nn.Conv2d(1, filters, 3)), [smooth_images(4)])
