"""Command line: argparse subcommands that turn flags into a config and call the library, nothing more.

Each subcommand has an `_add_<name>(subparsers)` that declares its flags and a `_cmd_<name>(args) -> int` that runs it.
Heavy imports (torch) happen inside the `_cmd_*` functions so that `reslab --help` is instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from reslab import __version__
from reslab.config import flag_name
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
    from reslab.config import RECIPES, TrainConfig

    p = sub.add_parser(
        "train",
        help="train a model: Fashion-MNIST and the default recipe unless flags say otherwise",
        description="Flags left unset take the recipe's value: each flag's help shows the default recipe's value "
        "and, where a recipe changes it, that recipe's (the recipes are in reslab/config.py and the README). "
        "A resumed run keeps its own settings except for the flags given.",
    )
    p.add_argument(
        "--recipe",
        default="default",
        choices=sorted(RECIPES),
        help="a named set of defaults; other flags override it ('default': ResNet-8, 3 epochs, minutes on a CPU; "
        "'best': ResNet-20, 27 epochs, 94%% test; 'd2l': the seeds' exact configuration; "
        "'paper-cifar': He et al. 2016's CIFAR-10 recipe; default: default)",
    )
    _add_config_flags(p, TrainConfig)
    return p


_FLAG_TYPES = {"int": int, "float": float, "str": str}


def _add_config_flags(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per field of the dataclass `cls` that has flag metadata (reslab.config.option), in its --help group:
    --field-name, default None (unset: the recipe's value), the help ending with the default and the recipes'
    values; a bool becomes --x/--no-x, choices come from the metadata, the type from the annotation."""
    import dataclasses

    from reslab.config import default_text

    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "group" not in meta:
            continue
        group = groups.get(meta["group"]) or groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        kind = str(f.type).split("|")[0].strip()  # "int | None" -> "int" (the annotations are strings)
        kwargs: dict[str, Any] = {"choices": list(meta["choices"])} if "choices" in meta else {}
        if kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind != "str" or "choices" not in kwargs:  # a str with choices needs no type
            kwargs["type"] = _FLAG_TYPES[kind]
        if "metavar" in meta:
            kwargs["metavar"] = meta["metavar"]
        names = [*([meta["short"]] if "short" in meta else []), flag_name(f.name), *meta.get("aliases", ())]
        text = meta["help"].replace("%", "%%")  # argparse formats help with %
        group.add_argument(*names, dest=f.name, default=None, help=f"{text} ({default_text(f.name)})", **kwargs)


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
    from reslab.config import DATASETS, DEVICES, TTA_MODES

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
    p.add_argument("--device", choices=list(DEVICES), default="auto", help="(default: auto)")
    p.add_argument("--output", default=None, help="where to write confusion_matrix.png (default: the run folder)")
    p.add_argument(
        "--tta",
        choices=list(TTA_MODES),
        default=None,
        help="test-time augmentation: the image and its mirror ('flip'), also shifted by a pixel ('flip-shift') "
        "(default: the run's own --tta)",
    )
    return p


def _cmd_eval(args) -> int:
    from reslab.evaluate import evaluate_checkpoint
    from reslab.report import record_eval

    evaluation = evaluate_checkpoint(
        args.checkpoint,
        split=args.split,
        dataset=args.dataset,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        device=args.device,
        output=args.output,
        tta=args.tta,
    )
    if (page := record_eval(args.checkpoint, evaluation, tta=args.tta)) is not None:
        print(f"report: {page}")
    return 0


def _add_report(sub):
    from reslab.config import DEVICES

    p = sub.add_parser(
        "report",
        help="write a run's (or an experiment's) report.html: curves, mistakes, Grad-CAM, one self-contained file",
        description="For a run folder: report.html with the learning curves, the confusion matrix and per-class "
        "accuracy, the most confident mistakes (also mistakes.png) and their Grad-CAMs (gradcam.png) on the test "
        "split (val where there is none) of its last.pt, the results of `reslab eval`, the command, configuration, "
        "machine and checkpoints. For an experiment folder (runs/experiments/NAME): the verdict, the table, the "
        "figure and every network's curves. The file inlines its images and opens from disk, without a network.",
    )
    p.add_argument("path", metavar="RUN", help="a run folder (or its last.pt), or an experiment folder")
    p.add_argument("--device", choices=list(DEVICES), default="auto", help="(default: auto)")
    p.add_argument(
        "--no-analysis",
        action="store_true",
        help="only re-render the page from the folder's files: no new pass over the data",
    )
    return p


def _cmd_report(args) -> int:
    from reslab.report import report

    print(f"report: {report(args.path, device=args.device, analysis=not args.no_analysis)}")
    return 0


def _add_predict(sub):
    from reslab.config import AMP_MODES, DEVICES

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
    p.add_argument("--device", choices=list(DEVICES), default="auto")
    p.add_argument(
        "--amp",
        choices=list(AMP_MODES),
        default="off",
        help="mixed precision of a checkpoint's forward pass ('auto': bf16 where the CPU has it, 1.9-4.4x the "
        "throughput of large batches on a CPU with AMX; probabilities then approximate). Default off: exact fp32",
    )
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
        amp=args.amp,
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
        "safetensors. onnx and safetensors need `pip install -e '.[export]'`; a .pt2 loads only with the torch "
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


def _add_experiment(sub):
    from reslab.config import EXPERIMENT_OUTPUT

    p = sub.add_parser(
        "experiment",
        help="the experiments that explain why residual networks work: " + ", ".join(_EXPERIMENTS),
        description="Each writes figure.png, table.md, results.csv, results.json and verdict.txt into "
        f"{EXPERIMENT_OUTPUT}/NAME/ (NAME-quick with --quick). lesion, landscape and gradients study the networks "
        "`reslab experiment degradation` trains, training any that are missing.",
    )
    which = p.add_subparsers(dest="which", metavar="NAME", required=True)
    for name, text in _EXPERIMENTS.items():
        e = which.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        _add_experiment_common(e, name)
        _add_study_options(e, name)
    return p


def _shown(value) -> str:
    """A default as --help shows it: (20, 56) -> 20,56; 1.0 -> 1."""
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _add_experiment_common(e, name: str) -> None:
    """The flags every experiment has; the defaults shown are the code's (reslab.config)."""
    from reslab.config import EXPERIMENT_DEPTHS, EXPERIMENT_OUTPUT, EXPERIMENT_QUICK, EXPERIMENT_RECIPES, STUDY_OPTIONS

    q = EXPERIMENT_QUICK
    if name in STUDY_OPTIONS:
        e.add_argument(
            "--networks",
            default=None,
            metavar="DIR",
            help="the degradation experiment's folder, whose runs/<network>/last.pt are studied (default: "
            f"{EXPERIMENT_OUTPUT}/degradation, or degradation-quick); missing networks are trained there",
        )
        quick = f"networks trained for {q['train_subset'] // q['batch_size']} steps, tiny sizes"
    else:
        what = "comma-separated depths" if name == "degradation" else "the depth"
        e.add_argument("--depths", default=None, help=f"{what} (default {_shown(EXPERIMENT_DEPTHS[name])})")
        e.add_argument(
            "--epochs",
            type=int,
            default=None,
            help=f"epochs per network (default {EXPERIMENT_RECIPES[name]['epochs']}; --quick {q['epochs']})",
        )
        quick = f"{q['train_subset']} images, {q['epochs']} epoch{'s' if q['epochs'] != 1 else ''}"

    e.add_argument(
        "--output",
        default=None,
        help=f"folder for the figure, table and raw numbers (default: {EXPERIMENT_OUTPUT}/{name}, or {name}-quick)",
    )
    e.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files")
    e.add_argument("--seed", type=int, default=0, help="the seed of the networks and the draws (default %(default)s)")
    e.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="networks of this many seeds (SEED, SEED+1, ...), each trained once and measured; outputs give each "
        "seed's value and the mean ± SEM, and the verdict calls only what the seeds resolve (default %(default)s)",
    )
    e.add_argument(
        "--threads", type=int, default=None, help=f"CPU threads (default: torch's choice; --quick {q['threads']})"
    )
    e.add_argument(
        "--quick",
        action="store_true",
        help=f"a pipeline check in seconds, not the finding: {quick} (synthetic data if Fashion-MNIST is absent)",
    )


def _study_flags(name: str) -> list:
    """The fields of a study's options (reslab.config.STUDY_OPTIONS) that have a flag."""
    import dataclasses

    from reslab.config import STUDY_OPTIONS

    return [f for f in dataclasses.fields(STUDY_OPTIONS[name]) if f.metadata["flag"]]


def _add_study_options(e, name: str) -> None:
    """One flag per option of a study, its help and shown defaults read from the options' dataclass."""
    from reslab.config import STUDY_OPTIONS

    for f in _study_flags(name) if name in STUDY_OPTIONS else []:
        flag, text = "--" + f.name.replace("_", "-"), f.metadata["help"]
        if isinstance(f.default, bool):
            e.add_argument(flag, action="store_true", default=None, help=text)
            continue
        shown = f"default {_shown(f.default)}"
        if f.metadata["quick"] != f.default:
            shown += f"; --quick {_shown(f.metadata['quick'])}"
        kind = str if isinstance(f.default, tuple) else type(f.default)  # depths: "20,56", parsed by parse_depths
        e.add_argument(flag, type=kind, default=None, help=f"{text} ({shown})")


def _cmd_experiment(args) -> int:
    from reslab.experiments import STUDIES, StudyRun, parse_depths, run_experiment

    common = dict(data_dir=args.data_dir, seed=args.seed, quick=args.quick, threads=args.threads, output=args.output)
    if args.which not in STUDIES:
        depths = parse_depths(args.depths, args.which)
        run_experiment(args.which, depths=depths, epochs=args.epochs, seeds=args.seeds, **common)
        return 0
    options = {f.name: getattr(args, f.name) for f in _study_flags(args.which)}
    for key in ("depths", "trained_depths"):
        if options.get(key) is not None:
            options[key] = parse_depths(options[key], args.which, flag="--" + key.replace("_", "-"))
    STUDIES[args.which](StudyRun(networks=args.networks, seeds=args.seeds, **common), **options)
    return 0


def _add_weights(sub):
    p = sub.add_parser(
        "weights",
        help="list the pretrained weights reslab knows by name (torchvision, akamaster's CIFAR, Kaiming He's Caffe, "
        "timm's on the Hugging Face Hub)",
        description="Each name can be given to `reslab convert` or reslab.build_model(name, weights=...). Files are "
        "downloaded once into ~/.cache/reslab/weights (one already in torch's cache, $TORCH_HOME/hub/checkpoints, "
        "is used from there); 'cached' says where a file is found now. timm's weights are hf-hub:timm/NAME names, "
        "read through the Hugging Face cache (HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE: docs/hub.md).",
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
    p.add_argument(
        "source",
        metavar="SRC",
        help="a name from `reslab weights`, hf-hub:ORG/NAME[@REVISION] (the Hugging Face Hub), a URL, a file or a "
        "timm folder",
    )
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
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="let an hf-hub: repository without model.safetensors give its pytorch_model.bin (a pickle file, read "
        "with torch.load(weights_only=True)); default: safetensors only from the Hub",
    )
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
        allow_pickle=args.allow_pickle,
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
    (_add_report, _cmd_report),
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
