import numpy as np
import pytest
import torch
from PIL import Image

from reslab.plots import plot_confusion_matrix, plot_curves

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def _is_png(path):
    with Image.open(path) as im:
        return im.format == "PNG" and im.width > 200 and im.height > 200


def test_plot_curves_writes_a_png(tmp_path):
    history = [
        {"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5 + 0.1 * e, "val_acc": 0.5 + 0.09 * e, "test_acc": 0.6}
        for e in range(1, 4)
    ]
    path = plot_curves(history, tmp_path / "sub" / "curves.png")
    assert path.exists() and _is_png(path)


def test_plot_curves_without_validation_split(tmp_path):
    history = [{"epoch": 1, "train_loss": 0.9, "train_acc": 0.7, "val_acc": None, "test_acc": 0.72}]
    assert _is_png(plot_curves(history, tmp_path / "curves.png"))


def _pixels(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


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
