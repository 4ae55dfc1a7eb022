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
LOGGERS = ("none", "tensorboard")
DATASETS = ("fashion-mnist", "mnist", "kmnist", "cifar10", "cifar100", "imagefolder", "synthetic")
FREEZE_MODES = ("backbone",)
IN_CHANS = (1, 3)  # an image folder decoded as grayscale or RGB
PRECISE_BN_DEFAULT = 2048  # images; see TrainConfig.precise_bn
FLOAT32_MAX = 3.4028234663852886e38  # a learning rate beyond it is inf once it meets the float32 weights


def option(default: Any, *, help: str, group: str, none: str = "none", **metadata: Any) -> Any:
    """A TrainConfig field that is also a `reslab train` flag: its help, its --help group, and optionally
    `choices`, `none` (what a None default means, for --help), `short` ("-b"), `aliases` (further long names) and
    `metavar`."""
    return field(default=default, metadata={"help": help, "group": group, "none": none, **metadata})


@dataclass(frozen=True)
class TrainConfig:
    # the flags of `reslab train` are these fields (reslab.cli generates them); a field without `option` has none
    model: str = option("resnet8", group="model", help="model name (see `reslab models`)")
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # build_model overrides; fit sets in_chans, num_classes
    zero_init_residual: bool = option(
        False, group="model", help="start each residual branch at zero (last BN gamma = 0)"
    )
    whiten_stem: bool | None = option(
        None,
        group="model",
        none="on for Fashion-MNIST from scratch with the default recipe's ResNet-8 and no --resize, else off",
        help="set the first convolution to whiten the training images' patches (their covariance's eigenvectors, "
        "airbench's first layer) and keep it frozen",
    )
    pretrained: str | None = option(
        None,
        group="model",
        metavar="SRC",
        none="random initialisation",
        help="start from these weights: a file, URL or `reslab weights` id; the classifier is re-initialised "
        "for the dataset's classes and images are normalised as the weights expect",
    )
    freeze: str | None = option(
        None, group="model", choices=FREEZE_MODES, none="train all", help="train only the classifier (a linear probe)"
    )
    dataset: str = option(
        "fashion-mnist",
        group="data",
        choices=DATASETS,
        help="imagefolder: --data-dir with one sub-folder per class; 'synthetic' is a tiny learnable stand-in",
    )
    data_dir: str | None = option(
        None,
        group="data",
        none="$RESLAB_DATA, ~/.cache/reslab, then Debian's package",
        help="folder with the Fashion-MNIST IDX files",
    )
    in_chans: int | None = option(
        None,
        group="data",
        choices=IN_CHANS,
        none="RGB, or the pretrained weights'",
        help="imagefolder: decode images as grayscale (1) or RGB (3)",
    )
    image_size: int | None = option(
        None,
        group="data",
        none="the pretrained weights' resize, else 32",
        help="imagefolder: store images at this square size (shorter side resized, centre cropped)",
    )
    crop_size: int | None = option(
        None,
        group="data",
        none="the pretrained weights' crop on an image folder, else the whole image",
        help="crop of the stored images the model sees (random in training, the centre one in evaluation)",
    )
    random_resized_crop: bool = option(False, group="data", help="Inception-style random crops of 8-100% of the image")
    skip_bad_images: bool = option(
        False, group="data", help="imagefolder: leave out unreadable images (counted) instead of stopping"
    )
    # held out of the training images, fixed by `seed`; the test set only reports
    val_size: int | None = option(
        None,
        group="data",
        none="5000 for Fashion-MNIST, a tenth of the set otherwise",
        help="images held out of the training set for choosing hyperparameters",
    )
    train_subset: int | None = option(
        None, group="data", none="all", help="train on only the first N images of the training split"
    )
    resize: int | None = option(
        None,
        group="data",
        none="24 for Fashion-MNIST from scratch with the default recipe, else the images' own",
        help="train and evaluate at this square size",
    )
    # progressive resizing (fast.ai's DAWNBench entries, 2018): early epochs learn coarse features as well from fewer
    # pixels, which cost less per image; the last epoch trains at --resize, the size evaluation uses
    progressive_resize: int | None = option(
        None,
        group="data",
        none="16 for Fashion-MNIST from scratch with the default recipe's ResNet-8 and no --resize, else off",
        help="train the first --progressive-epochs epochs at this square size, then at --resize (the last epoch "
        "always at --resize; 0: off)",
    )
    progressive_epochs: int = option(1, group="data", help="epochs trained at --progressive-resize")
    crop_padding: int = option(0, group="data", help="random-crop padding in pixels (0 turns cropping off)")
    hflip: bool = option(False, group="data", help="random horizontal flips")
    hflip_mode: str = option(
        "random",
        group="data",
        choices=HFLIP_MODES,
        help="with --hflip: 'random' flips each image with p=0.5 every epoch; 'alternate' flips it at random in "
        "the first epoch and then in every other one (airbench)",
    )
    # Zhong et al. 2017
    random_erasing: float = option(0.0, group="data", help="probability of erasing a random box of each training image")
    # the default recipe's optimisation (and its 24x24: DEFAULT_RESIZE) was chosen on the validation split (see the
    # docs, Training)
    epochs: int = option(3, group="optimisation", help="passes over the training split")
    batch_size: int = option(
        128, group="optimisation", short="-b", help="images per step per process (global = this x world size)"
    )
    lr: float = option(
        0.8, group="optimisation", help="peak learning rate for --batch-size images (scaled with world size)"
    )
    opt: str = option("sgd", group="optimisation", choices=OPTIMIZERS, help="optimiser (sgd uses Nesterov momentum)")
    momentum: float = option(0.9, group="optimisation", help="SGD momentum, in [0, 1)")
    nesterov: bool = option(True, group="optimisation", help="Nesterov momentum for SGD")
    weight_decay: float = option(
        5e-4, group="optimisation", help="L2 penalty on conv and linear weights (not on BN or biases)"
    )
    sched: str = option(
        "onecycle",
        group="optimisation",
        choices=SCHEDULES,
        help="lr after warm-up: linear to 0, cosine to 0, x0.1 at 50% and 75%, or constant",
    )
    warmup_epochs: float = option(0.5, group="optimisation", help="linear lr warm-up from 0, in epochs")
    label_smoothing: float = option(0.1, group="optimisation", help="label smoothing of the cross-entropy, in [0, 1)")
    # airbench trains the BatchNorm biases 64x faster
    bn_bias_lr: float = option(
        1.0, group="optimisation", help="learning rate of the BatchNorm biases, as a multiple of --lr"
    )
    ema: float = option(
        0.0,
        group="optimisation",
        help="decay of an exponential moving average of the weights, updated every step; evaluation, best.pt, "
        "eval and predict then use the average (0: off)",
    )
    val_every: int = option(
        1, group="evaluation", help="evaluate the val split every N epochs and after the last (0: last only)"
    )
    # the test set only reports: once, after training, unless a curve of it is wanted (d2l's, the experiments')
    test_every: int = option(
        0, group="evaluation", help="evaluate the test split every N epochs and after the last (0: last only)"
    )
    tta: str = option(
        "none",
        group="evaluation",
        choices=TTA_MODES,
        help="test-time augmentation of every evaluation: average over the image and its mirror ('flip', 2 passes), "
        "and its 1-pixel shifts ('flip-shift', 6 passes)",
    )
    # BatchNorm statistics recomputed for the weights as they are (pycls; Wu & Johnson 2021, section 3); training
    # itself is untouched. The default was chosen on the validation split: docs/precise-bn.md
    precise_bn: int = option(
        PRECISE_BN_DEFAULT,
        group="evaluation",
        metavar="N",
        help="recompute the BatchNorm statistics from N training images before each evaluation and checkpoint "
        "(0: off, the running averages of training; docs/precise-bn.md)",
    )
    amp: str = option("auto", group="speed", choices=AMP_MODES, help="mixed precision ('auto': bf16 where it is fast)")
    channels_last: bool = option(True, group="speed", help="NHWC memory format for the model and batches")
    device: str = option("auto", group="speed", choices=DEVICES, help="where to train")
    # opt-in: on a CPU compiling costs more than it saves in the default recipe's 30 s, and a --recipe best run
    # compiled was no faster (docs/benchmarks.md, "torch.compile of the training step")
    compile: bool = option(
        False,
        group="speed",
        help="train through torch.compile (inductor; one graph per image size, compiled on its first step and "
        "cached for later runs); evaluation stays eager",
    )
    threads: int | None = option(
        None, group="speed", none="torch's choice, one per core", help="CPU threads per process"
    )
    sync_bn: bool = option(False, group="speed", help="synchronise BatchNorm statistics across processes (CUDA + DDP)")
    seed: int = option(0, group="run", help="seeds the weights, the data order, the augmentation and the val split")
    output: str = option("runs", group="run", help="parent folder of run folders")
    name: str | None = option(
        None, group="run", none="model and time, or model and torchrun's rendezvous id", help="run folder name"
    )
    resume: str | None = option(
        None,
        group="run",
        none="a new run",
        help="a checkpoint (last.pt) or run folder to continue; 'auto' resumes --output/--name "
        "if it has a checkpoint (what torchrun restarts rely on)",
    )
    ckpt_interval: int = option(0, group="run", help="also save last.pt every N steps (0: only at epoch ends)")
    max_steps: int | None = option(
        None, group="run", none="train every epoch", help="stop after this many steps in total"
    )
    progress: bool = True  # a tqdm bar on a terminal, one line per epoch elsewhere
    # "tensorboard": events in the run folder (reslab.tblog; the optional extra reslab[tensorboard]). --logger too:
    # under torchrun, torchrun's own parser takes --log for an ambiguous abbreviation of its --log-dir
    log: str = option(
        "none",
        group="run",
        choices=LOGGERS,
        aliases=("--logger",),
        help="also log to TensorBoard, in the run folder (`tensorboard --logdir runs`): per-step loss and lr, "
        "per-epoch accuracies and images/s, the hyperparameters, a batch of images (needs "
        "`pip install -e '.[tensorboard]'`; under torchrun write --logger)",
    )

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """A config from to_dict()'s output; keys this version does not know are ignored, missing ones default."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def flag_name(field_name: str) -> str:
    """The command-line flag of a TrainConfig field: batch_size -> --batch-size."""
    return "--" + field_name.replace("_", "-")


def _validate(c: TrainConfig) -> None:
    def bad(name: str, expected: str) -> ReslabError:
        return ReslabError(f"{flag_name(name)}: expected {expected}, got {getattr(c, name)!r}")

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
        (
            "progressive_resize",
            c.progressive_resize is None
            or (is_int(c.progressive_resize) and (c.progressive_resize == 0 or c.progressive_resize >= 8)),
            "0 (off) or a size of at least 8 pixels",
        ),
        (
            "progressive_epochs",
            is_int(c.progressive_epochs) and c.progressive_epochs >= 1,
            "a positive number of epochs",
        ),
        ("in_chans", c.in_chans in (None, *IN_CHANS), "1 (grayscale) or 3 (RGB)"),
        (
            "image_size",
            c.image_size is None or (is_int(c.image_size) and c.image_size >= 8),
            "a size of at least 8 pixels",
        ),
        ("crop_size", c.crop_size is None or (is_int(c.crop_size) and c.crop_size >= 8), "a size of at least 8 pixels"),
        ("freeze", c.freeze in (None, *FREEZE_MODES), ", ".join(FREEZE_MODES)),
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
        ("log", c.log in LOGGERS, "one of " + ", ".join(LOGGERS)),
    ]
    for name, ok, expected in checks:
        if not ok:
            raise bad(name, expected)
    if c.whiten_stem and c.pretrained:
        raise ReslabError("--whiten-stem and --pretrained: both set the first convolution; choose one")
    if c.random_resized_crop and c.crop_padding:
        raise ReslabError(
            f"--random-resized-crop and --crop-padding {c.crop_padding}: two crops of one image; choose one"
        )


# The default recipe trains Fashion-MNIST at 24x24: as accurate on the validation split as 28x28 and 1.3x faster;
# its first epoch at 16x16: 0.19 points lower on validation (92.10% over 6 seeds), 1.1x faster to 91.4% test; and a
# whitened, frozen stem at lr 0.8: 0.28 points higher (92.38%), and no slower (docs/training.md, "The default
# recipe"). Other data, and pretrained weights, keep their own size and a trained stem.
DEFAULT_RESIZE = {"fashion-mnist": 24}
DEFAULT_PROGRESSIVE_RESIZE = {"fashion-mnist": 16}

# Named recipes: defaults that flags override. "default" was chosen on the validation split (see README, Training);
# "d2l" is the seeds' exact configuration (Dive into Deep Learning, ResNet chapter).
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    # the most accurate recipe measured (its figures: the docs, Training): ResNet-20 for 27 epochs with 2-pixel random
    # crops, alternating flips and an EMA of the weights; evaluated with flip-and-shift TTA, chosen on the validation
    # split. TTA makes an evaluation 6 passes, so the validation split is evaluated every 3 epochs (27 evaluations
    # took 136 s of a 19.6-min run on the Xeon); the test split, as always, once after the last
    "best": dict(
        model="resnet20",
        epochs=27,
        lr=0.2,
        crop_padding=2,
        hflip=True,
        hflip_mode="alternate",
        ema=0.999,
        val_every=3,
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
        test_every=1,  # after every epoch, as the seeds print it
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
    """A recipe's config (RECIPES, or an experiment's: EXPERIMENT_RECIPES) with `overrides` applied (None values
    are ignored, like unset flags)."""
    recipes = RECIPES | EXPERIMENT_RECIPES
    if recipe not in recipes:
        raise ReslabError(f"--recipe: expected one of {', '.join(sorted(RECIPES))}, got {recipe!r}")
    values = {**recipes[recipe], **{k: v for k, v in overrides.items() if v is not None}}
    if recipe == "default" and values.get("resize") is None and not values.get("pretrained"):
        dataset = values.get("dataset", TrainConfig.dataset)
        values["resize"] = DEFAULT_RESIZE.get(dataset)
        # the 16x16 epoch and the whitened stem were chosen for the recipe's ResNet-8; at 16x16 an ImageNet-style
        # network's last stage sees 1x1 maps, where bf16 is refused (models.probe) and the whole run would train in fp32
        if values.get("model", TrainConfig.model) == TrainConfig.model and dataset in DEFAULT_RESIZE:
            values.setdefault("progressive_resize", DEFAULT_PROGRESSIVE_RESIZE[dataset])
            values.setdefault("whiten_stem", True)
    return TrainConfig(**values)


def default_text(name: str, *, none: str | None = None) -> str:
    """'default: X' for a TrainConfig field, plus each recipe's value where the recipe changes it (for --help).
    `none` says what a None default means (default: the field's own "none" metadata)."""
    f = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
    none = none if none is not None else f.metadata.get("none", "none")
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


# ----------------------------------------------------------------------------------------------------------------------
# experiments (reslab.experiments): their recipes and their own options, here without torch so that
# `reslab experiment --help` shows these very values

# He et al. 2016, section 4.2 (the CIFAR recipe), shortened: SGD with momentum 0.9 at lr 0.1 for 128 images, weight
# decay 1e-4, lr x0.1 at 50% and 75% of training, no augmentation: the question is how well each network
# *optimises*, so nothing should hold the training error up. The whole training set (no validation split): the test
# set only reports, nothing is chosen on it. A linear warmup over half an epoch, as the paper does for ResNet-110:
# without it ResNet-56 lost its first epoch (README, Experiments). `shortcuts` is the same recipe one epoch longer.
# Recipes like RECIPES' (make_config takes their names), kept apart so that `reslab train --help` lists the
# training recipes only.
EXPERIMENT_RECIPES: dict[str, dict[str, Any]] = {}
EXPERIMENT_RECIPES["degradation"] = dict(
    epochs=3,
    batch_size=128,
    lr=0.1,
    opt="sgd",
    momentum=0.9,
    weight_decay=1e-4,
    sched="step",
    warmup_epochs=0.5,
    label_smoothing=0.0,
    crop_padding=0,
    hflip=False,
    val_size=0,
    test_every=1,  # the test error curves
    amp="auto",
    channels_last=True,
)
EXPERIMENT_RECIPES["shortcuts"] = {**EXPERIMENT_RECIPES["degradation"], "epochs": 4}
EXPERIMENT_DEPTHS = {"degradation": (20, 56), "shortcuts": (20,)}
EXPERIMENT_OUTPUT = "runs/experiments"  # each experiment writes into EXPERIMENT_OUTPUT/NAME (NAME-quick for --quick)
# --quick: 4 steps per network on 256 training images, the first 256 test images. One thread: batches this small
# gain little from a second one, and on a busy machine OpenMP's spin-waiting made 2 threads far slower than 1
EXPERIMENT_QUICK = dict(train_subset=256, test_size=256, epochs=1, batch_size=64, threads=1)


def _option(default: Any, quick: Any, help: str, *, least: int | float = 1, flag: bool = True) -> Any:
    """A study option: its default, its --quick value, its --help text and its smallest allowed value; `flag`:
    whether the CLI has a flag for it."""
    return field(default=default, metadata={"quick": quick, "help": help, "least": least, "flag": flag})


@dataclass(frozen=True)
class LesionOptions:
    """`reslab experiment lesion`'s own options (reslab.experiments.lesion)."""

    depths: tuple[int, ...] = _option((56,), (20,), "depths of the plain/ResNet pairs")
    # each network needs 88 evaluations: on 2,000 images plain-56 took 5.4 min on one core of the Xeon (beside
    # another job), so the whole test set would take about 27 min per network and seed. The binomial standard error
    # at 2,000 images (0.6-0.7 points at a 9-10% error) is stated in the verdict; --test-size 10000 is the test set
    test_size: int = _option(2000, 64, "test images scored (at most the test set's)")
    max_k: int = _option(10, 3, "k = 1..MAX_K blocks deleted or swapped")
    draws: int = _option(3, 2, "random draws for each k")


@dataclass(frozen=True)
class LandscapeOptions:
    """`reslab experiment landscape`'s own options (reslab.experiments.landscape)."""

    depths: tuple[int, ...] = _option((20, 56), (20,), "depths of the plain/ResNet pairs")
    train_size: int = _option(500, 64, "training images the loss is taken on")
    grid: int = _option(13, 5, "points per axis of the 2-D slice", least=3)
    line_points: int = _option(21, 7, "points of the 1-D slice", least=3)
    span: float = _option(1.0, 1.0, "the slices cover [-SPAN, SPAN]", least=0)
    hessian: bool = _option(False, False, "also the Hessian's |lambda_min/lambda_max| at the trained weights (Lanczos)")


@dataclass(frozen=True)
class GradientsOptions:
    """`reslab experiment gradients`'s own options (reslab.experiments.gradients)."""

    depths: tuple[int, ...] = _option((20, 56, 110), (20, 32), "depths of the plain/ResNet pairs")
    # 110 is not among the networks degradation trains, and it takes about an hour per network on a 2-core CPU
    trained_depths: tuple[int, ...] = _option((20, 56), (20,), "depths also measured after training")
    batch: int = _option(128, 32, "training images for the gradient norms", least=2)
    lines: int = _option(4, 2, "test images a line is drawn through")
    points: int = _option(65, 17, "points per line (at least 2 * the largest lag + 1)", least=3)
    span: float = _option(0.25, 0.25, "lines cover t in [-SPAN, SPAN]", flag=False)
    max_lag: int = _option(8, 4, "the largest distance between points whose gradients are compared", flag=False)


STUDY_OPTIONS = {"lesion": LesionOptions, "landscape": LandscapeOptions, "gradients": GradientsOptions}


def study_options(name: str, *, quick: bool = False, **given: Any) -> Any:
    """A study's options: each one `given` (not None), else its --quick value under `quick`, else its default;
    each checked against its smallest allowed value (a one-line ReslabError naming the flag)."""
    cls = STUDY_OPTIONS[name]
    values = {}
    for f in dataclasses.fields(cls):
        v = given.pop(f.name, None)
        if v is None:
            v = f.metadata["quick"] if quick else f.default
        elif not isinstance(v, (bool, tuple)) and v < f.metadata["least"]:
            raise ReslabError(f"{flag_name(f.name)}: expected at least {f.metadata['least']:g}, got {v:g}")
        values[f.name] = v
    if given:
        raise TypeError(f"{name}: unknown options {sorted(given)}")
    return cls(**values)
