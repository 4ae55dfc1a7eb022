import numpy as np
import pytest
import torch
from PIL import Image

from reslab.plots import plot_confusion_matrix, plot_curves

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def _is_png(path):
    with Image.open(path) as im:
        return im.format == "PNG" and im.width > 200 and im.height > 200


def _pixels(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _colour(pixels, name, *, half):
    """(rows, columns) of the pixels of matplotlib colour `name` ("C0") in the left or right half of the figure."""
    from matplotlib.colors import to_rgb

    width = pixels.shape[1]
    part = pixels[:, : width // 2] if half == "left" else pixels[:, width // 2 :]
    near = np.abs(part.astype(float) - 255 * np.array(to_rgb(name))).sum(-1) < 40
    return np.nonzero(near)


def _trend(rows_cols) -> float:
    """The slope of a colour's pixels, row against column: < 0 where the curve rises to the right (rows count down)."""
    rows, cols = rows_cols
    return np.polyfit(cols, rows, 1)[0]


def _history(val):
    return [
        {"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5 + 0.1 * e, "val_acc": v, "test_acc": 0.6}
        for e, v in zip(range(1, 6), val, strict=True)
    ]


def test_plot_curves_draws_each_curve_where_its_numbers_go(tmp_path):
    path = plot_curves(_history([0.5, 0.6, 0.7, 0.8, 0.9]), tmp_path / "sub" / "curves.png")
    assert path.exists() and _is_png(path)
    pixels = _pixels(path)
    # left panel: the loss (C0), falling; right panel: train (C0), val (C1) and test (C2) accuracy
    assert len(_colour(pixels, "C0", half="left")[0]) > 50 and _trend(_colour(pixels, "C0", half="left")) > 0
    assert len(_colour(pixels, "C1", half="left")[0]) == len(_colour(pixels, "C2", half="left")[0]) == 0
    val = _colour(pixels, "C1", half="right")
    assert len(val[0]) > 50 and _trend(val) < 0  # rising accuracy
    assert len(_colour(pixels, "C2", half="right")[0]) > 50
    # the same run with a falling validation accuracy: that curve, and only it, goes the other way
    falling = _pixels(plot_curves(_history([0.9, 0.8, 0.7, 0.6, 0.5]), tmp_path / "falling.png"))
    assert _trend(_colour(falling, "C1", half="right")) > 0
    assert _trend(_colour(falling, "C0", half="left")) > 0


def test_plot_curves_without_validation_split(tmp_path):
    history = [{"epoch": 1, "train_loss": 0.9, "train_acc": 0.7, "val_acc": None, "test_acc": 0.72}]
    pixels = _pixels(plot_curves(history, tmp_path / "curves.png"))
    assert len(_colour(pixels, "C1", half="right")[0]) == 0  # no validation curve, nor its legend entry
    assert len(_colour(pixels, "C0", half="right")[0]) > 20 and len(_colour(pixels, "C2", half="right")[0]) > 20


def test_plot_confusion_matrix_draws_the_same_picture_from_a_tensor_an_array_or_a_list(tmp_path):
    classes = CLASSES[:4]  # a 10x10 picture takes a second to draw; what matters here is the same at 4x4
    cm = np.random.default_rng(0).integers(0, 50, size=(4, 4)) + np.eye(4, dtype=np.int64) * 900
    paths = [
        plot_confusion_matrix(m, classes, tmp_path / f"{kind}.png")
        for kind, m in [("tensor", torch.from_numpy(cm)), ("array", cm), ("list", cm.tolist())]
    ]
    assert all(_is_png(path) for path in paths)
    tensor, array, nested = (_pixels(path) for path in paths)
    assert np.array_equal(tensor, array) and np.array_equal(nested, array)
    # and the picture depends on the counts: another matrix draws another one
    assert not np.array_equal(_pixels(plot_confusion_matrix(cm.T, classes, tmp_path / "other.png")), array)


def test_plot_confusion_matrix_with_an_empty_class_row(tmp_path):
    cm = np.array([[5, 1, 0], [0, 0, 0], [2, 0, 7]])
    assert _is_png(plot_confusion_matrix(cm, ["a", "b", "c"], tmp_path / "cm.png"))


def test_plot_confusion_matrix_rejects_mismatched_classes(tmp_path):
    with pytest.raises(ValueError, match="3 classes"):
        plot_confusion_matrix(np.zeros((10, 10)), ["a", "b", "c"], tmp_path / "cm.png")
