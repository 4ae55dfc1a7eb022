import re
import subprocess
import sys

import pytest

import reslab
from reslab.cli import main


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"reslab {reslab.__version__}"


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    # the command list's rows ("    train    train a ResNet ..."), not words anywhere in the text: the description
    # itself says "train"
    listed = set(re.findall(r"^    ([a-z]+)\s", out, re.MULTILINE))
    assert {"train", "eval", "predict", "export", "models", "summary", "experiment", "data", "weights"} <= listed


def test_python_dash_m_works_like_the_console_script():
    out = subprocess.run([sys.executable, "-m", "reslab", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"reslab {reslab.__version__}"


def test_bad_flag_value_is_a_clear_error_without_traceback(capsys):
    assert main(["train", "--epochs", "0", "--dataset", "synthetic"]) == 2
    err = capsys.readouterr().err
    assert "--epochs" in err and "Traceback" not in err


def test_d2l_recipe_is_the_seeds_configuration():
    from reslab.config import RECIPES, TrainConfig, make_config
    from reslab.models.registry import model_entry

    # TrainConfig(): the default recipe without its Fashion-MNIST sizes (make_config's, for that recipe alone)
    c, default = make_config("d2l"), TrainConfig()
    entry = model_entry(c.model)
    # the seeds' network, fed the input it was built for (Fashion-MNIST at 96x96), on all 60,000 training images
    assert entry.family == "d2l" and (1, c.resize, c.resize) == entry.default_input_size and c.val_size == 0
    # the recipe is applied whole and changes nothing else
    changed = {k for k, v in c.to_dict().items() if v != default.to_dict()[k]}
    assert changed == {k for k, v in RECIPES["d2l"].items() if v != default.to_dict()[k]}
    assert make_config("d2l", epochs=1).epochs == 1  # flags override the recipe


def test_a_closed_pipe_is_not_a_traceback():
    # `reslab weights | head -1` where head has already gone: every write meets a closed pipe
    p = subprocess.Popen([sys.executable, "-m", "reslab", "weights"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    assert p.wait(timeout=120) == 0
    assert b"Error" not in p.stderr.read()


def test_every_train_flag_is_a_config_field_with_its_default_and_the_recipes_values(capsys):
    # the flags are generated from TrainConfig's field metadata: each field with a group is a flag, unset by default
    # (the recipe decides), whose --help shows the default and every recipe's own value
    import argparse
    import dataclasses

    from reslab.cli import build_parser
    from reslab.config import RECIPES, TrainConfig, default_text

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    actions = {a.dest: a for a in sub.choices["train"]._actions if a.dest not in ("help", "recipe")}
    fields = {f.name: f for f in dataclasses.fields(TrainConfig) if "group" in f.metadata}
    assert set(actions) == set(fields)
    assert {"model_kwargs", "progress"} == {f.name for f in dataclasses.fields(TrainConfig)} - set(fields)
    for name, action in actions.items():
        meta = fields[name].metadata
        assert action.default is None, name
        assert "--" + name.replace("_", "-") in action.option_strings
        assert action.choices == (list(meta["choices"]) if "choices" in meta else None), name
        assert action.help.endswith(f"({default_text(name)})"), name
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for recipe, values in RECIPES.items():
        for name, value in values.items():
            if value != fields[name].default:
                assert f"{recipe}: " in default_text(name) and default_text(name) in shown, (recipe, name)
