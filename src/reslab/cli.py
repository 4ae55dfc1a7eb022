"""Command line: argparse subcommands that turn flags into a config and call the library, nothing more.

Each subcommand has an `_add_<name>(subparsers)` that declares its flags and a `_cmd_<name>(args) -> int` that runs it.
Heavy imports (torch) happen inside the `_cmd_*` functions so that `reslab --help` is instant.
"""

from __future__ import annotations

import argparse
import os
import sys

from reslab import __version__
from reslab.errors import ReslabError

# ----------------------------------------------------------------------------------------------------------------------
# subcommands


def _add_models(sub):
    p = sub.add_parser("models", help="list every model with its parameter count and a one-line description")
    p.add_argument("--filter", default="", metavar="TEXT", help="only names containing TEXT")
    return p


def _cmd_models(args) -> int:
    from reslab.summary import format_model_list

    print(format_model_list(args.filter))
    return 0


def _add_summary(sub):
    p = sub.add_parser("summary", help="layer-by-layer output shapes, parameters and multiply-adds of a model")
    p.add_argument("name", nargs="?", help="a model name (see `reslab models`)")
    p.add_argument(
        "--input",
        default=None,
        metavar="CxHxW",
        help="input size, e.g. 3x224x224 (default: the model's own, e.g. 1x96x96 for d2l_resnet18)",
    )
    p.add_argument("--depth", type=int, default=2, help="how deep into the module tree to list layers (default 2)")
    p.add_argument("--num-classes", type=int, default=None, help="override the model's number of classes")
    p.add_argument("--in-chans", type=int, default=None, help="override the model's input channels (e.g. 1)")
    p.add_argument(
        "--stages",
        action="store_true",
        help="print the paper's architecture table for resnet18..resnet152 side by side",
    )
    return p


def _cmd_summary(args) -> int:
    from reslab.summary import format_stages_table, format_summary, parse_input_size

    if args.stages:
        print(format_stages_table())
        return 0
    if not args.name:
        raise ReslabError("summary needs a model NAME (see `reslab models`) or --stages")
    overrides = {k: v for k, v in [("num_classes", args.num_classes), ("in_chans", args.in_chans)] if v is not None}
    input_size = None if args.input is None else parse_input_size(args.input)
    print(format_summary(args.name, input_size=input_size, depth=args.depth, **overrides))
    return 0


def _add_data(sub):
    p = sub.add_parser(
        "data",
        help="find, verify or download Fashion-MNIST",
        description="Looks for the four IDX files in --data-dir, $RESLAB_DATA, ~/.cache/reslab/fashion-mnist and "
        "/usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist), in that order, and checks each against "
        "the official SHA-256; where none has them, downloads them into ~/.cache/reslab/fashion-mnist.",
    )
    p.add_argument("--data-dir", default=None, help="a folder with the four IDX files (.gz or not)")
    p.add_argument("--check", action="store_true", help="only check: exit 0 if verified data is found, 1 if not")
    return p


def _cmd_data(args) -> int:
    from reslab.data.fashion_mnist import find_data_dir, load_fashion_mnist

    if args.check:
        found = find_data_dir(args.data_dir)
        if found is None:
            print("Fashion-MNIST: not found")
            return 1
        load_fashion_mnist(found, download=False)  # verifies; raises DataError (exit 2) if damaged
        print(f"Fashion-MNIST: verified in {found}")
        return 0
    ds = load_fashion_mnist(args.data_dir, download=True)
    print(
        f"Fashion-MNIST: {len(ds.train_labels):,} training and {len(ds.test_labels):,} test images "
        f"verified in {ds.source}"
    )
    return 0


def _add_train(sub):
    from reslab.config import DATASETS, RECIPES, default_text

    p = sub.add_parser(
        "train",
        help="train a model: Fashion-MNIST and the default recipe unless flags say otherwise",
        description="Flags left unset take the recipe's value: each flag's help shows the default recipe's value "
        "and, where a recipe changes it, that recipe's (the recipes are in reslab/config.py and the README). "
        "A resumed run keeps its own settings except for the flags given.",
    )

    def flag(group, *names: str, help: str, none: str = "none", **kwargs):
        """A flag whose help ends with its default (and the recipes' values); `none` says what unset means."""
        field = names[-1].lstrip("-").replace("-", "_")
        if kwargs.get("action") is None and "type" not in kwargs and "choices" not in kwargs:
            kwargs["type"] = str
        if kwargs.get("action") == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        group.add_argument(*names, default=None, help=f"{help} ({default_text(field, none=none)})", **kwargs)

    p.add_argument(
        "--recipe",
        default="default",
        choices=sorted(RECIPES),
        help="a named set of defaults; other flags override it ('default': ResNet-8, 3 epochs, minutes on a CPU; "
        "'best': ResNet-20, 27 epochs, 94%% test; 'd2l': the seeds' exact configuration; "
        "'paper-cifar': He et al. 2016's CIFAR-10 recipe; default: default)",
    )
    g = p.add_argument_group("model")
    flag(g, "--model", help="model name (see `reslab models`)")
    flag(g, "--zero-init-residual", action="bool", help="start each residual branch at zero (last BN gamma = 0)")
    flag(
        g,
        "--pretrained",
        metavar="SRC",
        help="start from these weights: a file, URL or `reslab weights` id; the classifier is re-initialised "
        "for the dataset's classes and images are normalised as the weights expect",
        none="random initialisation",
    )
    flag(g, "--freeze", choices=["backbone"], help="train only the classifier (a linear probe)", none="train all")
    g = p.add_argument_group("data")
    flag(
        g,
        "--data-dir",
        help="folder with the Fashion-MNIST IDX files",
        none="$RESLAB_DATA, ~/.cache/reslab, then Debian's package",
    )
    flag(
        g,
        "--dataset",
        choices=list(DATASETS),
        help="imagefolder: --data-dir with one sub-folder per class; 'synthetic' is a tiny learnable stand-in",
    )
    flag(
        g,
        "--in-chans",
        type=int,
        choices=[1, 3],
        help="imagefolder: decode images as grayscale (1) or RGB (3)",
        none="RGB, or the pretrained weights'",
    )
    flag(
        g,
        "--image-size",
        type=int,
        help="imagefolder: store images at this square size (shorter side resized, centre cropped)",
        none="the pretrained weights' resize, else 32",
    )
    flag(
        g,
        "--crop-size",
        type=int,
        help="crop of the stored images the model sees (random in training, the centre one in evaluation)",
        none="the pretrained weights' crop on an image folder, else the whole image",
    )
    flag(g, "--random-resized-crop", action="bool", help="Inception-style random crops of 8-100%% of the image")
    flag(
        g,
        "--skip-bad-images",
        action="bool",
        help="imagefolder: leave out unreadable images (counted) instead of stopping",
    )
    flag(
        g,
        "--val-size",
        type=int,
        help="images held out of the training set for choosing hyperparameters",
        none="5000 for Fashion-MNIST, a tenth of the set otherwise",
    )
    flag(g, "--train-subset", type=int, help="train on only the first N images of the training split", none="all")
    flag(g, "--resize", type=int, help="train and evaluate at this square size", none="28, the images' own")
    flag(g, "--crop-padding", type=int, help="random-crop padding in pixels (0 turns cropping off)")
    flag(g, "--hflip", action="bool", help="random horizontal flips")
    flag(
        g,
        "--hflip-mode",
        choices=["random", "alternate"],
        help="with --hflip: 'random' flips each image with p=0.5 every epoch; 'alternate' flips it at random in "
        "the first epoch and then in every other one (airbench)",
    )
    flag(g, "--random-erasing", type=float, help="probability of erasing a random box of each training image")
    g = p.add_argument_group("optimisation")
    flag(g, "--epochs", type=int, help="passes over the training split")
    flag(g, "-b", "--batch-size", type=int, help="images per step per process (global = this x world size)")
    flag(g, "--lr", type=float, help="peak learning rate for --batch-size images (scaled with world size)")
    flag(g, "--opt", choices=["sgd", "adam", "adamw"], help="optimiser (sgd uses Nesterov momentum)")
    flag(g, "--momentum", type=float, help="SGD momentum, in [0, 1)")
    flag(g, "--nesterov", action="bool", help="Nesterov momentum for SGD")
    flag(g, "--weight-decay", type=float, help="L2 penalty on conv and linear weights (not on BN or biases)")
    flag(
        g,
        "--sched",
        choices=["onecycle", "cosine", "step", "none"],
        help="lr after warm-up: linear to 0, cosine to 0, x0.1 at 50%% and 75%%, or constant",
    )
    flag(g, "--warmup-epochs", type=float, help="linear lr warm-up from 0, in epochs")
    flag(g, "--label-smoothing", type=float, help="label smoothing of the cross-entropy, in [0, 1)")
    flag(g, "--bn-bias-lr", type=float, help="learning rate of the BatchNorm biases, as a multiple of --lr")
    flag(
        g,
        "--ema",
        type=float,
        help="decay of an exponential moving average of the weights, updated every step; evaluation, best.pt, "
        "eval and predict then use the average (0: off)",
    )
    g = p.add_argument_group("evaluation")
    flag(g, "--val-every", type=int, help="evaluate the val split every N epochs and after the last (0: last only)")
    flag(g, "--test-every", type=int, help="evaluate the test split every N epochs and after the last (0: last only)")
    flag(
        g,
        "--tta",
        choices=["none", "flip", "flip-shift"],
        help="test-time augmentation of every evaluation: average over the image and its mirror ('flip', 2 passes), "
        "and its 1-pixel shifts ('flip-shift', 6 passes)",
    )
    flag(
        g,
        "--precise-bn",
        type=int,
        metavar="N",
        help="recompute the BatchNorm statistics from N training images before each evaluation and checkpoint "
        "(0: off, the running averages of training; docs/precise-bn.md)",
    )
    g = p.add_argument_group("speed")
    flag(g, "--amp", choices=["auto", "bf16", "fp16", "off"], help="mixed precision ('auto': bf16 where it is fast)")
    flag(g, "--channels-last", action="bool", help="NHWC memory format for the model and batches")
    flag(g, "--device", choices=["auto", "cpu", "cuda", "mps"], help="where to train")
    flag(g, "--threads", type=int, help="CPU threads per process", none="torch's choice, one per core")
    flag(g, "--sync-bn", action="bool", help="synchronise BatchNorm statistics across processes (CUDA + DDP)")
    g = p.add_argument_group("run")
    flag(g, "--seed", type=int, help="seeds the weights, the data order, the augmentation and the val split")
    flag(g, "--output", help="parent folder of run folders")
    flag(g, "--name", help="run folder name", none="model and time, or model and torchrun's rendezvous id")
    flag(
        g,
        "--resume",
        help="a checkpoint (last.pt) or run folder to continue; 'auto' resumes --output/--name "
        "if it has a checkpoint (what torchrun restarts rely on)",
        none="a new run",
    )
    flag(g, "--ckpt-interval", type=int, help="also save last.pt every N steps (0: only at epoch ends)")
    flag(g, "--max-steps", type=int, help="stop after this many steps in total", none="train every epoch")
    return p


def _cmd_train(args) -> int:
    import dataclasses

    from reslab.config import TrainConfig, make_config

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    # the flags given now: a resumed run keeps its checkpoint's settings except for these
    explicit = {k for k, v in vars(args).items() if v is not None and k in fields}
    config = make_config(args.recipe, **{k: getattr(args, k) for k in explicit})  # validates before torch loads
    from reslab.train import fit

    fit(config, explicit=explicit)
    # stopping at --max-steps is a requested end, not a failure: a non-zero exit would make torchrun restart it;
    # a diverged loss raises (exit 2) and Ctrl-C exits 130 after saving last.pt
    return 0


def _add_eval(sub):
    from reslab.config import DATASETS

    p = sub.add_parser("eval", help="accuracy, per-class accuracy and confusion matrix of a checkpoint")
    p.add_argument(
        "checkpoint",
        help="a .pt file written by `reslab train` (or its run folder) or `reslab convert`, or an .onnx exported "
        "from one",
    )
    p.add_argument(
        "--split",
        choices=["val", "test"],
        default=None,
        help="the split to evaluate (default: test, or val for data without a test split)",
    )
    p.add_argument(
        "--dataset",
        choices=list(DATASETS),
        default=None,
        help="the data to evaluate a weights-only checkpoint on (`reslab convert`'s); a trained run uses its own",
    )
    p.add_argument("--data-dir", default=None, help="where that data is (default: the run's own, or the search order)")
    p.add_argument("--batch-size", type=int, default=512, help="images per batch (default: 512)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto", help="(default: auto)")
    p.add_argument("--output", default=None, help="where to write confusion_matrix.png (default: the run folder)")
    p.add_argument(
        "--tta",
        choices=["none", "flip", "flip-shift"],
        default=None,
        help="test-time augmentation: the image and its mirror ('flip'), also shifted by a pixel ('flip-shift') "
        "(default: the run's own --tta)",
    )
    return p


def _cmd_eval(args) -> int:
    from reslab.evaluate import evaluate_checkpoint

    evaluate_checkpoint(
        args.checkpoint,
        split=args.split,
        dataset=args.dataset,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        device=args.device,
        output=args.output,
        tta=args.tta,
    )
    return 0


def _add_predict(sub):
    p = sub.add_parser("predict", help="top-k classes for image files (PNG, JPEG; any size or mode)")
    p.add_argument(
        "checkpoint",
        help="a .pt file written by `reslab train` or `reslab convert` (or a run folder), or a .safetensors or "
        ".onnx file from `reslab export`",
    )
    p.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="image files; each is made what the model expects (28x28 grayscale for Fashion-MNIST models; resized "
        "and centre-cropped as the checkpoint's preprocessing says for ImageNet, CIFAR and pretrained ones)",
    )
    p.add_argument("-k", "--topk", type=int, default=3, help="how many classes to show per image (default 3)")
    p.add_argument("--invert", action="store_true", help="invert images first (dark objects on a light background)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    p.add_argument(
        "--cam",
        default=None,
        metavar="DIR",
        help="also write a Grad-CAM heat map per image into DIR (IMAGE's name, .png): where the class comes from",
    )
    p.add_argument(
        "--cam-class", default=None, metavar="NAME", help="the class of the heat maps (default: each image's top one)"
    )
    return p


def _cmd_predict(args) -> int:
    from reslab.predict import predict_files

    failures = predict_files(
        args.checkpoint,
        args.images,
        topk=args.topk,
        invert=args.invert,
        device=args.device,
        cam_dir=args.cam,
        cam_class=args.cam_class,
    )
    return 1 if failures else 0


def _add_export(sub):
    p = sub.add_parser(
        "export",
        help="write a checkpoint as ONNX, torch.export (.pt2) or safetensors, verified against eager PyTorch",
        description="Writes the model of CHECKPOINT for use outside reslab, then loads the file back (ONNX Runtime "
        "on the CPU, torch.export.load, or the reloaded weights), runs it beside eager PyTorch on random batches of "
        "two sizes and on --images, prints the largest logit difference and the top-1 agreement, and fails (removing "
        "the file) beyond the format's tolerance: 1e-4 of the largest logit for onnx and pt2, bit-exact for "
        "safetensors. onnx and safetensors need `pip install 'reslab[export]'`; a .pt2 loads only with the torch "
        "version that wrote it.",
    )
    p.add_argument("checkpoint", help="a .pt file (or run folder) or .safetensors; training state is not exported")
    p.add_argument(
        "--format",
        choices=["onnx", "pt2", "safetensors"],
        default=None,
        help="what to write (default: from -o's suffix, else onnx)",
    )
    p.add_argument("-o", "--output", default=None, help="the file to write (default: CHECKPOINT with the suffix)")
    p.add_argument("--images", nargs="+", default=(), metavar="IMAGE", help="image files to verify on as well")
    p.add_argument("--invert", action="store_true", help="invert --images first (as `reslab predict --invert`)")
    p.add_argument("--no-verify", action="store_true", help="write the file without loading it back to compare")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset version (default: the exporter's)")
    return p


def _cmd_export(args) -> int:
    from reslab.export import export_checkpoint

    export_checkpoint(
        args.checkpoint,
        format=args.format,
        output=args.output,
        images=args.images,
        invert=args.invert,
        verify=not args.no_verify,
        opset=args.opset,
    )
    return 0


_EXPERIMENTS = {  # name -> what it shows
    "degradation": "plain vs residual networks of two depths trained side by side (He et al. 2016, Figure 6)",
    "shortcuts": "one ResNet with the shortcut options A, B and C (He et al. 2016, Table 3)",
    "lesion": "delete and reorder blocks of the trained ResNet-56 and plain-56 at test time (Veit et al. 2016)",
    "landscape": "the training loss around the trained weights along filter-normalised directions (Li et al. 2018)",
    "gradients": "per-layer gradient norms and shattered input gradients, at init and trained (Balduzzi et al. 2017)",
}
_STUDIES = ("lesion", "landscape", "gradients")  # the experiments on the networks `degradation` trains


def _add_experiment(sub):
    p = sub.add_parser(
        "experiment",
        help="the experiments that explain why residual networks work: " + ", ".join(_EXPERIMENTS),
        description="Each writes figure.png, table.md, results.csv, results.json and verdict.txt into "
        "runs/experiments/NAME/ (NAME-quick with --quick). lesion, landscape and gradients study the networks "
        "`reslab experiment degradation` trains, training any that are missing.",
    )
    which = p.add_subparsers(dest="which", metavar="NAME", required=True)
    for name, text in _EXPERIMENTS.items():
        e = which.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        e.add_argument("--depths", default=None, help=_DEPTHS_HELP[name])
        if name in _STUDIES:
            e.add_argument(
                "--networks",
                default=None,
                metavar="DIR",
                help="the degradation experiment's folder, whose runs/<network>/last.pt are studied (default: "
                "runs/experiments/degradation, or degradation-quick); missing networks are trained there",
            )
        else:
            e.add_argument(
                "--epochs",
                type=int,
                default=None,
                help="epochs per network (default: degradation 3, shortcuts 4; --quick 1)",
            )
        e.add_argument(
            "--output",
            default=None,
            help=f"folder for the figure, table and raw numbers (default: runs/experiments/{name}, or {name}-quick)",
        )
        e.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files")
        e.add_argument("--seed", type=int, default=0, help="the seed of the networks and the draws (default 0)")
        e.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice; --quick 1)")
        e.add_argument("--quick", action="store_true", help=_QUICK_HELP[name])
        if name == "lesion":
            e.add_argument("--test-size", type=int, default=None, help="test images scored (default 500; --quick 64)")
            e.add_argument(
                "--max-k", type=int, default=None, help="k = 1..MAX_K blocks deleted or swapped (default 10)"
            )
            e.add_argument("--draws", type=int, default=None, help="random draws for each k (default 3)")
        elif name == "landscape":
            e.add_argument(
                "--train-size", type=int, default=None, help="training images the loss is taken on (default 500)"
            )
            e.add_argument("--grid", type=int, default=None, help="points per axis of the 2-D slice (default 13)")
            e.add_argument("--line-points", type=int, default=None, help="points of the 1-D slice (default 21)")
            e.add_argument("--span", type=float, default=None, help="the slices cover [-SPAN, SPAN] (default 1)")
            e.add_argument(
                "--hessian",
                action="store_true",
                help="also the Hessian's |lambda_min/lambda_max| (20 Hessian-vector products on 256 images)",
            )
        elif name == "gradients":
            e.add_argument(
                "--trained-depths",
                default=None,
                help="depths also measured after training (default 20,56, what degradation trains; 110 takes about "
                "an hour per network on a 2-core CPU)",
            )
            e.add_argument("--batch", type=int, default=None, help="training images for the gradient norms (128)")
            e.add_argument("--lines", type=int, default=None, help="test images a line is drawn through (default 4)")
            e.add_argument("--points", type=int, default=None, help="points per line (default 65)")
    return p


_DEPTHS_HELP = {
    "degradation": "comma-separated depths (default 20,56)",
    "shortcuts": "the depth (default 20)",
    "lesion": "depths of the plain/ResNet pairs (default 56; --quick 20)",
    "landscape": "depths of the plain/ResNet pairs (default 20,56; --quick 20)",
    "gradients": "depths of the plain/ResNet pairs (default 20,56,110; --quick 20,32)",
}
_QUICK_HELP = {
    name: "a pipeline check in seconds, not the finding: "
    + ("256 images, one epoch" if name in ("degradation", "shortcuts") else "networks trained for 4 steps, tiny sizes")
    + " (synthetic data if Fashion-MNIST is absent)"
    for name in _EXPERIMENTS
}


def _cmd_experiment(args) -> int:
    from reslab.experiments import parse_depths, run_experiment, run_gradients, run_landscape, run_lesion

    common = dict(data_dir=args.data_dir, seed=args.seed, quick=args.quick, threads=args.threads, output=args.output)
    if args.which not in _STUDIES:
        run_experiment(args.which, depths=parse_depths(args.depths, args.which), epochs=args.epochs, **common)
        return 0
    depths = None if args.depths is None else parse_depths(args.depths, args.which)
    common.update(depths=depths, networks=args.networks)
    if args.which == "lesion":
        run_lesion(test_size=args.test_size, max_k=args.max_k, draws=args.draws, **common)
    elif args.which == "landscape":
        run_landscape(
            train_size=args.train_size,
            grid=args.grid,
            line_points=args.line_points,
            span=args.span,
            hessian=args.hessian,
            **common,
        )
    else:
        trained = (
            None
            if args.trained_depths is None
            else parse_depths(args.trained_depths, "gradients", flag="--trained-depths")
        )
        run_gradients(trained_depths=trained, batch=args.batch, lines=args.lines, points=args.points, **common)
    return 0


def _add_weights(sub):
    p = sub.add_parser(
        "weights",
        help="list the pretrained weights reslab knows by name (torchvision, akamaster's CIFAR, Kaiming He's Caffe)",
        description="Each name can be given to `reslab convert` or reslab.build_model(name, weights=...). Files are "
        "downloaded once into ~/.cache/reslab/weights (one already in torch's cache, $TORCH_HOME/hub/checkpoints, "
        "is used from there); 'cached' says where a file is found now.",
    )
    p.add_argument("--filter", default="", metavar="TEXT", help="only names (or sources) containing TEXT")
    return p


def _cmd_weights(args) -> int:
    from reslab.weights.listing import format_weights_table

    print(format_weights_table(args.filter))
    return 0


def _add_convert(sub):
    p = sub.add_parser(
        "convert",
        help="turn weights from torchvision, timm, akamaster, Caffe (or a reslab checkpoint) into a reslab checkpoint",
        description="Writes a weights-only reslab checkpoint (the architecture, its options, the classes and the "
        "preprocessing the weights expect) that `reslab eval`, `reslab predict`, `reslab train --pretrained` and "
        "export read. A different --in-chans adapts the first convolution (in_chans=1 sums its RGB filters); a "
        "different --num-classes re-initialises the classifier; anything else that does not fit is an error.",
    )
    p.add_argument("source", metavar="SRC", help="a name from `reslab weights`, a URL, a file or a timm folder")
    p.add_argument("--model", default=None, help="the reslab architecture (default: the one the weights name)")
    p.add_argument(
        "--from",
        dest="source_format",
        choices=["torchvision", "timm", "akamaster", "caffe", "reslab"],
        default=None,
        help="the weights' format (default: detected from the name, the file's extension and its keys)",
    )
    p.add_argument("--in-chans", type=int, default=None, help="input channels (default: the weights'; 1: grayscale)")
    p.add_argument("--num-classes", type=int, default=None, help="classes (default: the weights')")
    p.add_argument("-o", "--output", required=True, metavar="OUT.pt", help="the checkpoint to write")
    return p


def _cmd_convert(args) -> int:
    for flag, value in (("--in-chans", args.in_chans), ("--num-classes", args.num_classes)):
        if value is not None and value < 1:
            raise ReslabError(f"{flag}: expected a positive number, got {value}")
    from reslab.weights import convert

    pre = convert(
        args.source,
        args.output,
        args.model,
        in_chans=args.in_chans,
        num_classes=args.num_classes,
        source_format=args.source_format,
    )
    for line in pre.report:
        print(line)
    c, h, w = pre.input_size
    print(f"wrote {args.output}: {pre.model_name}, {c}x{h}x{w} input, {len(pre.classes)} classes")
    return 0


_SUBCOMMANDS = [  # (declare the flags, run the command)
    (_add_train, _cmd_train),
    (_add_eval, _cmd_eval),
    (_add_predict, _cmd_predict),
    (_add_export, _cmd_export),
    (_add_models, _cmd_models),
    (_add_summary, _cmd_summary),
    (_add_experiment, _cmd_experiment),
    (_add_data, _cmd_data),
    (_add_weights, _cmd_weights),
    (_add_convert, _cmd_convert),
]

# ----------------------------------------------------------------------------------------------------------------------
# entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reslab",
        description="Deep residual networks (ResNet): build, inspect, train and understand them.",
    )
    parser.add_argument("--version", action="version", version=f"reslab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add, cmd in _SUBCOMMANDS:
        add(sub).set_defaults(func=cmd)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe surfaces here rather than in the interpreter's exit
        return code
    except ReslabError as e:
        print(f"reslab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"reslab {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`reslab models | head`): not an error; silence the flush at interpreter exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
