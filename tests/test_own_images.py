"""Training on your own images: an image folder end to end (train, resume, eval, predict with its class names),
fine-tuning from a checkpoint with and without a frozen backbone, a weights-only checkpoint evaluated on a folder,
and the paper's CIFAR recipe."""

import pytest
import torch

from reslab.checkpoint import read_checkpoint
from reslab.cli import main
from reslab.config import make_config
from reslab.data import export_png_folder, synthetic_dataset
from reslab.train import fit
from reslab.weights import convert

# 4 colour classes at 16x16: the class is a pattern in each channel, so a small network learns it in seconds
SOURCE = synthetic_dataset(num_train=320, num_test=80, num_classes=4, image_size=16, in_chans=3)
FOLDER_ARGS = [
    "--dataset",
    "imagefolder",
    "--image-size",
    "16",
    "--model",
    "resnet8",
    "-b",
    "32",
    "--threads",
    "1",
    "--lr",
    "0.2",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """DIR/train and DIR/test, one sub-folder per class, PNG files (DIR/val is held out of train, seeded)."""
    root = tmp_path_factory.mktemp("photos")
    export_png_folder(SOURCE, root / "train", split="train")
    export_png_folder(SOURCE, root / "test", split="test")
    return root


def folder_config(folder, tmp_path, **overrides):
    values = dict(
        dataset="imagefolder",
        data_dir=str(folder),
        image_size=16,
        model="resnet8",
        batch_size=32,
        threads=1,
        progress=False,
        output=str(tmp_path),
        name="run",
    )
    return make_config(**{**values, **overrides})


def test_an_image_folder_trains_evaluates_and_predicts_with_its_class_names(folder, tmp_path, capsys):
    # --test-every 1: best.pt's epoch (whichever validated best) has a test accuracy that eval must reproduce
    argv = ["train", *FOLDER_ARGS, "--data-dir", str(folder), "--epochs", "2", "--hflip", "--test-every", "1"]
    assert main([*argv, "--output", str(tmp_path), "--name", "f"]) == 0
    out = capsys.readouterr().out
    assert "data: 288 train, 32 val, 80 test images at 16x16" in out  # a tenth of train/ held out for validation
    ckpt = read_checkpoint(tmp_path / "f" / "last.pt")
    assert ckpt["classes"] == ["class0", "class1", "class2", "class3"] and ckpt["input_size"] == [3, 16, 16]
    assert ckpt["model_kwargs"]["in_chans"] == 3 and ckpt["preprocess"]["style"] == "natural"
    assert ckpt["history"][-1]["test_acc"] > 0.5  # chance is 0.25

    assert main(["eval", str(tmp_path / "f")]) == 0
    out = capsys.readouterr().out
    assert f"accuracy {100 * read_checkpoint(tmp_path / 'f' / 'best.pt')['history'][-1]['test_acc']:.2f}%" in out
    assert "class3" in out

    image = next((folder / "test" / "class2").iterdir())
    assert main(["predict", str(tmp_path / "f"), str(image), "-k", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(image)) and line.split()[1] in ckpt["classes"]


def test_a_run_on_an_image_folder_resumes_bitwise(folder, tmp_path):
    straight = fit(folder_config(folder, tmp_path, name="straight", epochs=2))
    fit(folder_config(folder, tmp_path, epochs=2, max_steps=11))  # 9 steps per epoch: stops in epoch 2
    resumed = fit(folder_config(folder, tmp_path, epochs=2, resume="auto"))
    a, b = (read_checkpoint(r.run_dir / "last.pt")["model"] for r in (straight, resumed))
    assert resumed.step == straight.step == 18 and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A reslab checkpoint of resnet8 trained on 10 other colour classes: the weights to start from."""
    tmp = tmp_path_factory.mktemp("pre")
    other = synthetic_dataset(num_train=640, num_test=100, num_classes=10, image_size=16, in_chans=3, seed=1)
    config = make_config(
        model="resnet8", dataset="synthetic", epochs=2, batch_size=32, threads=1, progress=False, output=str(tmp)
    )
    return fit(config, data=other).run_dir / "last.pt"


def test_fine_tuning_from_a_checkpoint_reinitialises_the_head_and_beats_chance(folder, tmp_path, pretrained, capsys):
    result = fit(folder_config(folder, tmp_path, pretrained=str(pretrained), epochs=2, progress=True))
    out = capsys.readouterr().out
    assert "pretrained: " in out and "re-initialised" in out  # 10 classes -> 4: a new head
    assert result.best_val_acc > 0.5 and result.test_acc > 0.5


def test_a_frozen_backbone_stays_bit_for_bit_and_only_the_head_learns(folder, tmp_path, pretrained):
    result = fit(folder_config(folder, tmp_path, pretrained=str(pretrained), freeze="backbone", epochs=2, lr=0.5))
    before = read_checkpoint(pretrained)["model"]
    after = read_checkpoint(result.run_dir / "last.pt")["model"]
    backbone = [k for k in after if not k.startswith("fc.")]
    assert len(backbone) > 30 and all(torch.equal(before[k], after[k]) for k in backbone)  # BN statistics included
    assert after["fc.weight"].shape == (4, 64) and result.best_val_acc > 0.4  # a linear probe above chance (0.25)


def test_a_weights_only_checkpoint_is_evaluated_on_a_folder_as_the_run_was(folder, tmp_path, capsys):
    result = fit(folder_config(folder, tmp_path, epochs=1))
    convert(str(result.run_dir / "last.pt"), tmp_path / "weights.pt")
    assert "config" not in read_checkpoint(tmp_path / "weights.pt")
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "weights.pt"), "--dataset", "imagefolder", "--data-dir", str(folder)]) == 0
    assert f"accuracy {100 * result.test_acc:.2f}%" in capsys.readouterr().out  # the same images, crop and norm


def test_the_paper_cifar_recipe_is_section_4_2():
    c = make_config("paper-cifar")
    assert (c.dataset, c.batch_size, c.lr, c.momentum, c.nesterov, c.weight_decay) == (
        "cifar10",
        128,
        0.1,
        0.9,
        False,
        1e-4,
    )
    assert (c.sched, c.crop_padding, c.hflip, c.val_size, c.label_smoothing) == ("step", 4, True, 5000, 0.0)
    steps_per_epoch = 45_000 // c.batch_size
    assert abs(c.epochs * steps_per_epoch - 64_000) < steps_per_epoch  # 64k iterations, in whole epochs


def test_image_folder_flags_on_another_dataset_are_refused(tmp_path, capsys):
    argv = ["train", "--dataset", "synthetic", "--image-size", "16", "--output", str(tmp_path)]
    assert main(argv) == 2
    assert "--image-size: an option of --dataset imagefolder only" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------------
# one decoder: what training reads from a file is what `reslab predict` reads from it


def _natural(size: int) -> dict:
    # what an image folder's checkpoint records (Dataset.preprocess): resize the shorter side, centre crop
    return {"channel_order": "rgb", "resize": size, "crop": size, "interpolation": "bilinear", "mean": [0.5] * 3}


def test_training_and_prediction_decode_a_16bit_png_and_an_exif_rotated_jpeg_to_the_same_tensor(tmp_path):
    from PIL import Image

    from reslab.data import read_image
    from reslab.predict import load_natural_image

    # a 16-bit grayscale PNG at 1/4 and 3/4 of its range: scaled to 8 bits (64 and 191), not clipped to white
    deep = torch.zeros(40, 60, dtype=torch.int32)
    deep[:, :30], deep[:, 30:] = 16384, 49151
    Image.fromarray(deep.numpy().astype("uint16")).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    # a wide JPEG (bright left half) stored sideways, with EXIF orientation 6 saying so, as phones write them
    wide = torch.zeros(40, 80, 3, dtype=torch.uint8)
    wide[:, :40] = 250
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(wide.numpy()).transpose(Image.Transpose.ROTATE_90).save(tmp_path / "phone.jpg", exif=exif)
    # a palette PNG with a transparent colour, and a grayscale PNG with alpha
    Image.fromarray(wide.numpy()).convert("P").save(tmp_path / "palette.png", transparency=0)
    Image.fromarray(wide[..., 0].numpy()).convert("LA").save(tmp_path / "alpha.png")

    for name in ("deep.png", "phone.jpg", "palette.png", "alpha.png"):
        trained = read_image(tmp_path / name, image_size=16, in_chans=3)
        predicted = load_natural_image(tmp_path / name, _natural(16))
        assert trained.shape == predicted.shape == (3, 16, 16), name
        assert torch.equal(trained, predicted), name
    deep = read_image(tmp_path / "deep.png", image_size=16, in_chans=1)
    assert abs(int(deep[8, 2]) - 64) <= 1 and abs(int(deep[8, 13]) - 191) <= 1
    upright = read_image(tmp_path / "phone.jpg", image_size=16, in_chans=3)
    # seen upright the image is wide again: bright on the left, dark on the right (centre crop of 16 out of 32x16)
    assert upright[:, 8, 0].min() > 200 and upright[:, 8, 15].max() < 50


def test_eval_of_the_val_split_decodes_only_it_and_a_bad_training_image_does_not_stop_it(folder, tmp_path, capsys):
    import shutil

    from reslab.data.imagefolder import scan_imagefolder
    from reslab.data.loader import split_train_val

    photos = tmp_path / "photos"
    shutil.copytree(folder, photos)
    fit(folder_config(photos, tmp_path, epochs=1, name="run"))
    # break a training image that training used (not one held out for validation)
    _, found = scan_imagefolder(photos)
    paths, labels = found["train"]
    kept, _, held_out, _ = split_train_val(torch.arange(len(paths)), torch.tensor(labels), len(paths) // 10, seed=0)
    bad = paths[int(kept[0])]
    with open(bad, "wb") as f:
        f.write(b"not a PNG any more")
    val_acc = read_checkpoint(tmp_path / "run" / "last.pt")["history"][-1]["val_acc"]
    assert main(["eval", str(tmp_path / "run"), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert f"on the val split: accuracy {100 * val_acc:.2f}% (" in out and f"of {len(held_out)})" in out
    # training reads every file, and names the bad one
    code = main(["train", *FOLDER_ARGS, "--data-dir", str(photos), "--output", str(tmp_path), "--name", "again"])
    assert code == 2 and bad in capsys.readouterr().err
