"""Inspection: the model list, layer tables, multiply-adds as torchvision counts them, the paper's table, and clear
errors for bad input, through the library and through `reslab.cli.main`."""

import pytest
import torch

from reslab.cli import main
from reslab.errors import ReslabError
from reslab.models import build_model, list_models, model_entry
from reslab.summary import (
    format_model_list,
    format_stages_table,
    format_summary,
    parse_input_size,
    summarize,
)


def meta(name, **overrides):
    with torch.device("meta"):
        return build_model(name, **overrides)


# torchvision's published GFLOPS (multiply-adds of convolutions and linear layers) at 3x224x224
TORCHVISION_GFLOPS = {"resnet18": 1.814, "resnet34": 3.664, "resnet50": 4.089, "resnet101": 7.801, "resnet152": 11.514}


@pytest.mark.parametrize(("name", "gflops"), TORCHVISION_GFLOPS.items())
def test_multiply_adds_are_torchvisions_to_the_last_digit_it_prints(name, gflops):
    s = summarize(meta(name), (3, 224, 224))
    assert round(s.macs / 1e9, 3) == pytest.approx(gflops, abs=1e-9)


def test_summary_counts_each_layer():
    s = summarize(meta("resnet18"), (3, 224, 224))
    rows = {r.name: r for r in s.rows}
    assert rows["conv1"].macs == 64 * 112 * 112 * 3 * 7 * 7
    assert rows["fc"].macs == 512 * 1000 and rows["fc"].output_shape == (1000,)
    assert rows["layer2.0.downsample.0"].macs == 128 * 28 * 28 * 64
    assert rows["layer1"].params == sum(p.numel() for p in meta("resnet18").layer1.parameters())
    assert rows["layer1"].macs == sum(r.macs for r in s.rows if r.name.startswith("layer1.0.") and r.depth == 3) * 2
    assert s.total_params == s.trainable_params == 11_689_512 and s.output_shape == (1000,)
    # grouped convolutions cost 1/groups
    rx = {r.name: r for r in summarize(meta("resnext50_32x4d"), (3, 224, 224)).rows}
    assert rx["layer1.0.conv2"].macs == 128 * 56 * 56 * (128 // 32) * 9


@pytest.mark.parametrize(
    ("name", "size"), [("resnet20", (3, 32, 32)), ("preact_resnet20", (3, 17, 17)), ("d2l_resnet18", (1, 64, 64))]
)
def test_summary_of_a_real_model_matches_the_meta_one_and_keeps_its_mode(name, size):
    model = build_model(name).train()
    real, fake = summarize(model, size), summarize(meta(name), size)  # the meta one takes shape-only shortcuts
    assert model.training
    assert real.macs == fake.macs and [r.output_shape for r in real.rows] == [r.output_shape for r in fake.rows]
    assert real.output_shape == fake.output_shape and real.total_params == fake.total_params


def test_d2l_summary_shows_the_seeds_stage_shapes():
    s = summarize(meta("d2l_resnet18"), (1, 224, 224))
    top = [r.output_shape for r in s.rows if r.depth == 1]
    assert top == [(64, 56, 56), (64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7), (512, 1, 1), (512,), (10,)]
    text = format_summary("d2l_resnet18", input_size=(1, 224, 224), depth=1)
    for shape in ["64x56x56", "128x28x28", "256x14x14", "512x7x7", "512x1x1"]:
        assert shape in text


def test_format_summary_depth_and_totals():
    shallow = format_summary("resnet18", depth=1)
    deep = format_summary("resnet18", depth=3)
    assert "layer1.0" not in shallow and "layer1.0.conv1" in deep and "layer1" in shallow
    for text in (shallow, deep):
        assert "11,689,512" in text and "1.814 G" in text and "trainable" in text
    default = format_summary("resnet20")
    assert "3x32x32" in default and "269,722" in default
    assert "28x28" in format_summary("resnet20", input_size=(1, 28, 28), in_chans=1)
    assert "(built with num_classes=7)" in format_summary("resnet20", num_classes=7)


def test_model_list_has_a_row_per_model_with_its_count_input_and_description():
    text = format_model_list()
    rows = {line.split()[0]: line for line in text.splitlines()[2:-2]}  # below the header, above the total
    assert list(rows) == list_models()
    for name, line in rows.items():
        entry = model_entry(name)
        assert line.split()[2] == "x".join(map(str, entry.default_input_size)) and line.endswith(entry.description)
    counts = {"resnet18": "11,689,512", "resnet20": "269,722", "resnet1202": "19,421,274"}
    assert {n: rows[n].split()[1] for n in counts} == counts
    assert text.endswith(f"\n{len(rows)} models. `reslab summary NAME` shows one layer by layer.")
    only = format_model_list("plain")
    assert "plain20" in only and "resnet50" not in only
    with pytest.raises(ReslabError, match="no model name contains 'zzz'"):
        format_model_list("zzz")


def test_stages_table_is_the_papers_table_1():
    text = format_stages_table()
    for depth in (18, 34, 50, 101, 152):
        assert f"resnet{depth}" in text
    for fragment in ["112x112", "56x56", "7x7", "[3x3, 64 ] x2", "x23", "x36", "[1x1, 2048]", "3x3 max pool"]:
        assert fragment in text.replace("[3x3, 64] x2", "[3x3, 64 ] x2")
    for gflops in TORCHVISION_GFLOPS.values():
        assert f"{gflops:.3f} G" in text
    assert "3.858 G" in text  # resnet50 v1: the paper's 3.8


def test_parse_input_size():
    assert parse_input_size("3x224x224") == (3, 224, 224)
    assert parse_input_size(" 1X28x28 ") == (1, 28, 28)
    for bad in ["224", "3x224", "0x28x28", "ax28x28", "3x-1x28"]:
        with pytest.raises(ReslabError, match="--input"):
            parse_input_size(bad)


# ----------------------------------------------------------------------------------------------------------------------
# the command line


def test_cli_models_and_summary(capsys):
    assert main(["models", "--filter", "resnet5"]) == 0
    out = capsys.readouterr().out
    assert "resnet50" in out and "25,557,032" in out
    assert main(["summary", "resnet152", "--depth", "1"]) == 0
    out = capsys.readouterr().out
    assert "60,192,808" in out and "11.514 G" in out
    assert main(["summary", "resnet20", "--input", "1x28x28", "--in-chans", "1", "--num-classes", "10"]) == 0
    assert "64x7x7" in capsys.readouterr().out
    assert main(["summary", "--stages"]) == 0
    assert "resnet152" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["summary", "resnet51"], "unknown model 'resnet51'; did you mean resnet50"),
        (["summary", "resnet50", "--input", "1x224x224"], "resnet50 expects 3-channel images (in_chans=3), found 1"),
        (["summary", "d2l_resnet18", "--input", "3x96x96"], "expects 1-channel images"),
        (["summary", "resnet50", "--input", "3x16x16"], "too small for resnet50: it needs at least 17x17"),
        (["summary", "resnet20", "--input", "3x2x2"], "it needs at least 3x3"),
        (["summary", "resnet18", "--input", "3x224"], "--input: expected CxHxW"),
        (["summary"], "NAME"),
        (["models", "--filter", "zzz"], "no model name contains"),
    ],
)
def test_cli_bad_input_is_one_clear_line(capsys, argv, expected):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and err.count("\n") == 1


def test_too_small_is_the_true_floor():
    format_summary("resnet50", input_size=(3, 17, 17))  # the minimum works; 16 fails (above)
    format_summary("resnet20", input_size=(3, 3, 3))
    assert "input: 1x28x28" in format_summary("d2l_resnet18", input_size=(1, 28, 28), depth=0)
    with pytest.raises(ReslabError, match="needs at least 17x17"):
        format_summary("resnet50", input_size=(3, 224, 16))  # either side
