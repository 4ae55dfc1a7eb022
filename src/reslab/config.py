"""The typed training configuration: CLI flags -> TrainConfig -> fit().

Every field is validated here, once, whoever builds the config (the CLI, the Python API, an experiment): a bad value
is a one-line ReslabError naming the flag, what was expected and what was found. No torch import, so that building
the CLI parser stays instant.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from reslab.errors import ReslabError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("onecycle", "cosine", "step", "none")
AMP_MODES = ("auto", "bf16", "fp16", "off")
DEVICES = ("auto", "cpu", "cuda", "mps")
HFLIP_MODES = ("random", "alternate")
TTA_MODES = ("none", "flip", "flip-shift")
DATASETS = ("fashion-mnist", "mnist", "kmnist", "cifar10", "cifar100", "imagefolder", "synthetic")
PRECISE_BN_DEFAULT = 2048  # images; see TrainConfig.precise_bn
FLOAT32_MAX = 3.4028234663852886e38  # a learning rate beyond it is inf once it meets the float32 weights


@dataclass(frozen=True)
class TrainConfig:
    # model
    # the default recipe's model: ResNet-8 (one BasicBlock per stage); on a 2-core AVX2 CPU it trains about 1,040
    # images/s against ResNet-20's 280 (fp32)
    model: str = "resnet8"
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # build_model overrides; fit sets in_chans, num_classes
    zero_init_residual: bool = False
    pretrained: str | None = None  # weights to start from (reslab.weights: a file, URL or table id)
    freeze: str | None = None  # "backbone": train the classifier only (a linear probe)
    # data
    dataset: str = "fashion-mnist"  # one of DATASETS; "synthetic" is a tiny learnable stand-in for tests
    data_dir: str | None = None
    in_chans: int | None = None  # imagefolder: decode as 1 (grayscale) or 3 (RGB) channels; None: RGB
    image_size: int | None = None  # imagefolder: stored square size; None: the pretrained weights' resize, or 32
    crop_size: int | None = None  # crop of the stored images fed to the model; None: the weights' crop, or none
    random_resized_crop: bool = False  # Inception-style crop of 8-100% of the image (natural images)
    skip_bad_images: bool = False  # imagefolder: leave out (and count) unreadable images instead of stopping
    # held out of the training images, fixed by `seed`; the test set only reports. None: 5000 of Fashion-MNIST's
    # 60k, a tenth of a synthetic training set
    val_size: int | None = None
    train_subset: int | None = None  # use only the first N images of the training split
    resize: int | None = None  # square size; None keeps 28x28
    crop_padding: int = 0  # random crop with this much zero padding; 0 = off
    hflip: bool = False
    # "random": each image flipped with p=0.5 every epoch; "alternate": at random in the first epoch, then each image
    # flipped in every other epoch, so two consecutive epochs see both sides of every image (airbench, Jordan 2024)
    hflip_mode: str = "random"
    # probability of erasing a random rectangle of each training image (Zhong et al. 2017); 0 = off
    random_erasing: float = 0.0
    # optimisation
    # the default recipe (README, Training), chosen on the validation split among the candidates that reach 91.4%
    # in under 300 s on a 2-core CPU without bf16: ResNet-8 for three epochs at batch 128 and peak lr 0.4
    epochs: int = 3
    batch_size: int = 128  # per process; the global batch is batch_size * world_size
    lr: float = 0.4  # peak lr for `batch_size` images; multiplied by world_size under DDP (linear scaling rule)
    opt: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    sched: str = "onecycle"
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.1
    bn_bias_lr: float = 1.0  # the BatchNorm biases' lr as a multiple of --lr (airbench trains them 64x faster)
    # exponential moving average of the weights, updated every step with this decay; what evaluation and the
    # checkpoint's users see; 0 = off
    ema: float = 0.0
    # evaluation: after every N epochs and always after the last; 0 = after the last epoch only
    val_every: int = 1
    test_every: int = 1
    tta: str = "none"  # test-time augmentation of every evaluation: none | flip | flip-shift (airbench's)
    # BatchNorm statistics recomputed from this many training images before each evaluation and checkpoint, for the
    # weights as they are (pycls, Wu & Johnson 2021); the training itself is untouched. 0 = off. Chosen on the
    # validation split: docs/precise-bn.md
    precise_bn: int = field(
        default=PRECISE_BN_DEFAULT,
        metadata={
            "help": "recompute the BatchNorm statistics from N training images before each evaluation and "
            "checkpoint (0: off; the running averages of training)",
            "group": "evaluation",
        },
    )
    # speed
    amp: str = "auto"  # auto | bf16 | fp16 | off
    channels_last: bool = True
    device: str = "auto"
    threads: int | None = None
    sync_bn: bool = False
    # run
    seed: int = 0
    output: str = "runs"
    name: str | None = None
    resume: str | None = None
    ckpt_interval: int = 0  # steps; 0 = save only at the end of each epoch
    max_steps: int | None = None
    progress: bool = True  # a tqdm bar on a terminal, one line per epoch elsewhere

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """A config from to_dict()'s output; keys this version does not know are ignored, missing ones default."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _validate(c: TrainConfig) -> None:
    def bad(name: str, expected: str) -> ReslabError:
        return ReslabError(f"{_flag(name)}: expected {expected}, got {getattr(c, name)!r}")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    # (field, allowed, what was expected): one table, so every flag is checked the same way
    checks = [
        ("epochs", is_int(c.epochs) and c.epochs >= 1, "a positive number of epochs"),
        ("batch_size", is_int(c.batch_size) and c.batch_size >= 1, "a positive batch size"),
        ("lr", is_number(c.lr) and 0 < c.lr <= FLOAT32_MAX, "a positive, finite learning rate"),
        ("momentum", is_number(c.momentum) and 0 <= c.momentum < 1, "a momentum in [0, 1)"),
        ("weight_decay", is_number(c.weight_decay) and c.weight_decay >= 0, "a finite number >= 0"),
        ("warmup_epochs", is_number(c.warmup_epochs) and c.warmup_epochs >= 0, "a finite number of epochs >= 0"),
        ("label_smoothing", is_number(c.label_smoothing) and 0 <= c.label_smoothing < 1, "a number in [0, 1)"),
        ("random_erasing", is_number(c.random_erasing) and 0 <= c.random_erasing <= 1, "a probability in [0, 1]"),
        ("bn_bias_lr", is_number(c.bn_bias_lr) and 0 < c.bn_bias_lr <= 1e4, "a multiplier in (0, 10000]"),
        ("ema", is_number(c.ema) and 0 <= c.ema < 1, "a decay in [0, 1) (0 = off)"),
        ("precise_bn", is_int(c.precise_bn) and c.precise_bn >= 0, "0 (off) or a number of training images"),
        ("val_every", is_int(c.val_every) and c.val_every >= 0, "0 (the last epoch only) or more epochs"),
        ("test_every", is_int(c.test_every) and c.test_every >= 0, "0 (the last epoch only) or more epochs"),
        ("resize", c.resize is None or (is_int(c.resize) and c.resize >= 8), "a size of at least 8 pixels"),
        ("in_chans", c.in_chans in (None, 1, 3), "1 (grayscale) or 3 (RGB)"),
        (
            "image_size",
            c.image_size is None or (is_int(c.image_size) and c.image_size >= 8),
            "a size of at least 8 pixels",
        ),
        ("crop_size", c.crop_size is None or (is_int(c.crop_size) and c.crop_size >= 8), "a size of at least 8 pixels"),
        ("freeze", c.freeze in (None, "backbone"), "backbone"),
        ("crop_padding", is_int(c.crop_padding) and c.crop_padding >= 0, "0 or more pixels"),
        ("val_size", c.val_size is None or (is_int(c.val_size) and c.val_size >= 0), "0 or more images"),
        (
            "train_subset",
            c.train_subset is None or (is_int(c.train_subset) and c.train_subset >= 1),
            "a positive number of images",
        ),
        ("threads", c.threads is None or (is_int(c.threads) and c.threads >= 1), "a positive number of threads"),
        ("seed", is_int(c.seed) and 0 <= c.seed < 2**63, "a whole number in [0, 2**63)"),
        ("ckpt_interval", is_int(c.ckpt_interval) and c.ckpt_interval >= 0, "0 (epoch ends only) or more steps"),
        ("max_steps", c.max_steps is None or (is_int(c.max_steps) and c.max_steps >= 1), "a positive number of steps"),
        (
            "name",
            c.name is None or (c.name not in ("", ".", "..") and "/" not in c.name and "\\" not in c.name),
            "a folder name (no '/')",
        ),
        ("output", isinstance(c.output, str) and c.output != "", "a folder path"),
        ("hflip_mode", c.hflip_mode in HFLIP_MODES, "one of " + ", ".join(HFLIP_MODES)),
        ("tta", c.tta in TTA_MODES, "one of " + ", ".join(TTA_MODES)),
        ("opt", c.opt in OPTIMIZERS, "one of " + ", ".join(OPTIMIZERS)),
        ("sched", c.sched in SCHEDULES, "one of " + ", ".join(SCHEDULES)),
        ("amp", c.amp in AMP_MODES, "one of " + ", ".join(AMP_MODES)),
        ("device", c.device in DEVICES, "one of " + ", ".join(DEVICES)),
        ("dataset", c.dataset in DATASETS, "one of " + ", ".join(DATASETS)),
    ]
    for name, ok, expected in checks:
        if not ok:
            raise bad(name, expected)
    if c.random_resized_crop and c.crop_padding:
        raise ReslabError(
            f"--random-resized-crop and --crop-padding {c.crop_padding}: two crops of one image; choose one"
        )


# Named recipes: defaults that flags override. "default" was chosen on the validation split (see README, Training);
# "d2l" is the seeds' exact configuration (Dive into Deep Learning, ResNet chapter).
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    # the most accurate recipe measured; about 30 minutes on a 2-core CPU with bf16 by that CPU's ResNet-20 throughput
    # (an estimate: it was timed only without bf16, README, Training):
    # ResNet-20 for 27 epochs with 2-pixel random crops, alternating flips and an EMA of the weights; evaluated with
    # flip-and-shift TTA, which raised its validation accuracy from 94.72% to 95.08% (flip alone: 94.96%)
    "best": dict(
        model="resnet20",
        epochs=27,
        lr=0.2,
        crop_padding=2,
        hflip=True,
        hflip_mode="alternate",
        ema=0.999,
        test_every=0,
        tta="flip-shift",
    ),
    "d2l": dict(
        model="d2l_resnet18",
        resize=96,
        batch_size=256,
        opt="adam",
        lr=1e-3,
        weight_decay=0.0,
        sched="none",
        warmup_epochs=0.0,
        epochs=5,
        crop_padding=0,
        hflip=False,
        label_smoothing=0.0,
        val_size=0,  # the seeds train on all 60k images and report the test set
    ),
    # He et al. 2016, section 4.2 (the CIFAR-10 networks): batch 128, SGD momentum 0.9 (not Nesterov), lr 0.1,
    # weight decay 1e-4, 64k iterations with lr / 10 at 32k and 48k, 4-pixel padded crops and flips, 45k/5k split.
    # In whole epochs: 45,000 // 128 = 351 steps per epoch, 182 epochs = 63,882 steps, lr / 10 at 31,941 and 47,911.
    "paper-cifar": dict(
        dataset="cifar10",
        model="resnet20",
        batch_size=128,
        opt="sgd",
        lr=0.1,
        momentum=0.9,
        nesterov=False,
        weight_decay=1e-4,
        sched="step",
        warmup_epochs=0.0,
        epochs=182,
        crop_padding=4,
        hflip=True,
        label_smoothing=0.0,
        val_size=5000,
    ),
}


def make_config(recipe: str = "default", **overrides: Any) -> TrainConfig:
    """A recipe's config with `overrides` applied (None values are ignored, like unset flags)."""
    if recipe not in RECIPES:
        raise ReslabError(f"--recipe: expected one of {', '.join(sorted(RECIPES))}, got {recipe!r}")
    values = {**RECIPES[recipe], **{k: v for k, v in overrides.items() if v is not None}}
    return TrainConfig(**values)


def default_text(name: str, *, none: str = "none") -> str:
    """'default: X' for a TrainConfig field, plus each recipe's value where the recipe changes it (for --help).
    `none` says what a None default means."""
    f = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    parts = [f"default: {_show(value, none)}"]
    parts += [f"{r}: {_show(v[name], none)}" for r, v in RECIPES.items() if name in v and v[name] != value]
    return "; ".join(parts)


def _show(value: Any, none: str) -> str:
    if value is None:
        return none
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)
