"""Experiments that explain why residual networks work, each a `reslab experiment NAME` command.

  degradation, shortcuts  He et al. (2016): plain vs residual networks trained side by side (harness, degradation)
  lesion                  Veit et al. (2016): delete and reorder blocks of the trained networks at test time
  landscape               Li et al. (2018): the training loss around the trained weights, filter-normalised slices
  gradients               Balduzzi et al. (2017) and per-layer gradient norms: at initialisation and after training

The last three study the networks `degradation` trains (reslab.experiments.networks), training any that are missing
with its recipe, so that a user who ran it waits only for the new measurements; each is a `Study` (its measurement,
rows, verdict and figure) run by one harness, reslab.experiments.study. Each writes figure.png, table.md,
results.csv, results.json and verdict.txt into runs/experiments/NAME/ (NAME-quick for --quick). Their recipes
(RECIPES["degradation"], RECIPES["shortcuts"]) and their options (LesionOptions, ...) are in reslab.config.
"""

from reslab.experiments.degradation import (
    Verdict,
    default_output,
    degradation_runs,
    degradation_verdict,
    experiment_setup,
    parse_depths,
    run_experiment,
    shortcut_runs,
    shortcuts_verdict,
)
from reslab.experiments.gradients import GradientsStudy, GradientsVerdict, gradients_verdict, run_gradients
from reslab.experiments.harness import (
    Run,
    RunResult,
    compare,
    format_table,
    plot_comparison,
    run_config,
    same_settings,
    train_runs,
    write_results,
)
from reslab.experiments.landscape import LandscapeStudy, LandscapeVerdict, landscape_verdict, run_landscape
from reslab.experiments.lesion import LesionStudy, LesionVerdict, lesion_verdict, run_lesion
from reslab.experiments.networks import Network, initial_network, trained_networks
from reslab.experiments.spread import Difference, Spread
from reslab.experiments.study import Measured, Study, StudyRun, run_study

STUDIES = {"lesion": run_lesion, "landscape": run_landscape, "gradients": run_gradients}  # name -> run_NAME

__all__ = [
    "STUDIES",
    "GradientsStudy",
    "GradientsVerdict",
    "LandscapeStudy",
    "LandscapeVerdict",
    "LesionStudy",
    "LesionVerdict",
    "Difference",
    "Measured",
    "Network",
    "Run",
    "RunResult",
    "Spread",
    "Study",
    "StudyRun",
    "Verdict",
    "compare",
    "default_output",
    "degradation_runs",
    "degradation_verdict",
    "experiment_setup",
    "format_table",
    "gradients_verdict",
    "initial_network",
    "landscape_verdict",
    "lesion_verdict",
    "parse_depths",
    "plot_comparison",
    "run_config",
    "run_experiment",
    "run_gradients",
    "run_landscape",
    "run_lesion",
    "run_study",
    "same_settings",
    "shortcut_runs",
    "shortcuts_verdict",
    "train_runs",
    "trained_networks",
    "write_results",
]
