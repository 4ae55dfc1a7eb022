"""The networks the lesion, landscape and gradients experiments study: those `reslab experiment degradation` trained.

A user who ran `reslab experiment degradation` waits only for the new measurements: each experiment loads
runs/experiments/degradation/runs/<network>/last.pt (plain-56/, resnet-56/, ...). A network that is missing is
trained there by the degradation harness with the degradation recipe (`experiment_setup("degradation")`), so that a
later `reslab experiment degradation` reuses it in turn. A finished network trained with other settings (say
`degradation --epochs 10`) is used as it is, and the experiment says so; an unfinished one with other settings is
left alone (an error says how to finish it), never deleted.

A network "at initialisation" is built exactly as `fit` builds it before its first step (torch.manual_seed(seed),
then build_model), so that it is the starting point of the trained network of the same seed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reslab.checkpoint import read_checkpoint, trained_model
from reslab.config import TrainConfig
from reslab.data import Dataset, make_splits, prepare_batch
from reslab.device import usable_threads
from reslab.errors import ReslabError
from reslab.experiments.harness import Run, run_config, same_settings, train_runs
from reslab.models import build_model


@dataclass
class Network:
    """A network to measure: trained (from its last.pt) or at initialisation, in eval mode on the CPU."""

    run: Run  # label ("plain-56", "ResNet-56"), model name, family, depth
    model: nn.Module
    state: str  # "trained" or "init"
    config: TrainConfig  # what it was trained with (for "init": what it would be)
    checkpoint: str | None = None  # its last.pt; None at initialisation
    history: list[dict[str, Any]] | None = None  # fit's per-epoch rows, from the checkpoint
    mean: tuple[float, ...] = ()  # the normalisation of its inputs
    std: tuple[float, ...] = ()

    @property
    def label(self) -> str:
        return self.run.label

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, [C,] H, W) -> float (N, C, H', W') as its evaluation loader made them (channels_last)."""
        return prepare_batch(images, resize_to=self.config.resize, channels_last=True, mean=self.mean, std=self.std)

    def describe(self) -> dict[str, Any]:
        """What results.json says about the network."""
        out = {
            "label": self.label,
            "model": self.run.model,
            "family": self.run.family,
            "depth": self.run.depth,
            "state": self.state,
            "seed": self.config.seed,
            "params": sum(p.numel() for p in self.model.parameters()),
        }
        if self.state == "trained":
            last = (self.history or [{}])[-1]
            out |= {
                "checkpoint": self.checkpoint,
                "epochs": self.config.epochs,
                "train_subset": self.config.train_subset,
                "dataset": self.config.dataset,
                "final_train_error": None if last.get("train_acc") is None else 1 - last["train_acc"],
                "final_test_error": None if last.get("test_acc") is None else 1 - last["test_acc"],
            }
        return out


def _normalisation(preprocess: dict[str, Any] | None, data: Dataset) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if preprocess and preprocess.get("mean") and preprocess.get("std"):
        return tuple(preprocess["mean"]), tuple(preprocess["std"])
    return tuple(data.mean), tuple(data.std)


def _finished(ckpt: dict[str, Any]) -> bool:
    return ckpt.get("epoch", 0) >= ckpt["config"]["epochs"] and not ckpt.get("step_in_epoch")


def _as_network(run: Run, ckpt: dict[str, Any], data: Dataset) -> Network:
    trained = trained_model(ckpt)
    mean, std = _normalisation(trained.preprocess, data)
    model = trained.model.eval().to(memory_format=torch.channels_last)  # 1.6-1.8x faster on this CPU (measured)
    return Network(run, model, "trained", trained.config, ckpt["path"], list(ckpt.get("history") or []), mean, std)


def trained_networks(runs: Sequence[Run], *, config: TrainConfig, data: Dataset, networks: str | Path) -> list[Network]:
    """Each run's trained network from the degradation folder `networks` (its runs/<slug>/last.pt), training the
    missing ones there with `config` (the degradation recipe, `experiment_setup("degradation", ...)`)."""
    out = []
    for run in runs:
        cfg = run_config(run, config, networks)
        last = Path(cfg.output) / cfg.name / "last.pt"
        ckpt = read_checkpoint(last) if last.is_file() else None
        if ckpt is not None and "config" not in ckpt:
            raise ReslabError(f"{last}: a weights-only checkpoint; expected one written by `reslab experiment`")
        if ckpt is not None and _finished(ckpt):
            if same_settings(ckpt["config"], cfg):
                print(f"{run.label}: reusing the network `reslab experiment degradation` trained: {last}")
            else:
                saved = TrainConfig.from_dict(ckpt["config"])
                print(
                    f"{run.label}: using the network in {last} as it was trained ({saved.epochs} epochs, seed "
                    f"{saved.seed}, train_subset {saved.train_subset}), not with the default recipe"
                )
        elif ckpt is not None and not same_settings(ckpt["config"], cfg):
            raise ReslabError(
                f"{last}: an unfinished run made with other settings than the degradation recipe; finish it with "
                f"`reslab train --resume {last}` or move it away, and run this again"
            )
        else:
            print(f"{run.label}: not trained yet; training it with the degradation recipe into {last.parent}")
            train_runs([run], config, Path(networks), data)
            ckpt = read_checkpoint(last)
        out.append(_as_network(run, ckpt, data))
    return out


def initial_network(run: Run, *, config: TrainConfig, data: Dataset) -> Network:
    """`run`'s network at initialisation: the weights `fit(config)` starts from (same seed), BN statistics (0, 1)."""
    torch.manual_seed(config.seed)  # as fit: the seed, then the model is the first thing drawn
    model = build_model(run.model, **{**run.model_kwargs, "in_chans": data.in_chans, "num_classes": data.num_classes})
    mean, std = _normalisation(None, data)
    cfg = run_config(run, config, ".")
    return Network(run, model.eval().to(memory_format=torch.channels_last), "init", cfg, mean=mean, std=std)


def training_images(config: TrainConfig, data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The training split the networks were trained on (make_splits: validation held out, train_subset applied)."""
    return make_splits(data, config).train


def fixed_subset(
    images: torch.Tensor, labels: torch.Tensor, n: int | None, *, seed: int
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """n images drawn without replacement by `seed` (all of them if n is None or too large), in index order."""
    if n is None or n >= len(images):
        index = torch.arange(len(images))
    else:
        index = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return images[index], labels[index], index.tolist()


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """--threads for the duration of an experiment, restored after (as fit does)."""
    before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ReslabError(f"--threads: expected a positive number of threads, got {threads}")
        threads, note = usable_threads(threads)
        if note is not None:
            print(f"note: {note}")
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
