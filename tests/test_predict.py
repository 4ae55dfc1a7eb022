import warnings

import numpy as np
import pytest
from PIL import Image

from reslab.errors import ReslabError
from reslab.predict import load_image


def _object_on(bg: int, fg: int, size=(60, 40)) -> np.ndarray:
    """A `fg` rectangle, 3 times wider than tall, in the middle of a `bg` image of `size` (W, H)."""
    w, h = size
    a = np.full((h, w), bg, np.uint8)
    a[h // 2 - w // 8 : h // 2 + w // 8, w // 8 : 7 * w // 8] = fg
    return a


def _center_and_corner(t):
    return int(t[14, 14]), int(t[0, 0])


def test_grayscale_png_becomes_28x28_uint8_trimmed_with_aspect_kept(tmp_path):
    Image.fromarray(_object_on(0, 200, size=(120, 120))).save(tmp_path / "wide.png")
    t = load_image(tmp_path / "wide.png")
    assert t.shape == (28, 28) and str(t.dtype) == "torch.uint8"
    assert _center_and_corner(t) == (200, 0)
    # as in Fashion-MNIST: the background is trimmed and the longest edge fills the frame (all 28 columns)...
    assert (t[14] > 100).sum() == 28
    # ...while the 3:1 object keeps its shape: about 9 rows tall, centred, not stretched to 28
    assert 8 <= (t[:, 14] > 100).sum() <= 10


def test_grey_photo_background_becomes_black(tmp_path):
    Image.fromarray(_object_on(60, 220)).save(tmp_path / "grey.png")
    # levels stretched so that the background (60) is black and white stays white: 220 -> (220 - 60) * 255 / 195
    assert _center_and_corner(load_image(tmp_path / "grey.png")) == (209, 0)


def test_rgba_transparent_background_becomes_black(tmp_path):
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere, but transparent outside the object
    rgba[15:25, 5:35, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert _center_and_corner(load_image(tmp_path / "rgba.png")) == (255, 0)


def test_rgba_dark_object_with_invert_stays_on_black(tmp_path):
    rgba = np.zeros((40, 40, 4), np.uint8)  # black everywhere, transparent outside the object
    rgba[15:25, 5:35, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert _center_and_corner(load_image(tmp_path / "rgba.png", invert=True)) == (255, 0)


def test_palette_image_with_transparency(tmp_path):
    im = Image.fromarray(_object_on(0, 1)).convert("P")
    im.putpalette([0, 0, 0, 255, 255, 255])
    im.info["transparency"] = 0
    im.save(tmp_path / "palette.png", transparency=0)
    assert Image.open(tmp_path / "palette.png").mode == "P"
    assert _center_and_corner(load_image(tmp_path / "palette.png")) == (255, 0)


def test_rgb_photo_dark_on_light_with_invert(tmp_path):
    rgb = np.stack([_object_on(250, 20)] * 3, axis=-1)
    Image.fromarray(rgb).save(tmp_path / "photo.jpg", quality=95)
    center, corner = _center_and_corner(load_image(tmp_path / "photo.jpg", invert=True))
    assert center > 220 and corner < 20


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    Image.fromarray(np.full((30, 30), 32768, np.uint16)).save(tmp_path / "deep.png")
    assert abs(int(load_image(tmp_path / "deep.png")[14, 14]) - 128) <= 1


def test_exif_rotation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: the camera was rotated 90 degrees
    Image.fromarray(_object_on(0, 255, size=(200, 100))).save(tmp_path / "phone.jpg", exif=exif)
    t = load_image(tmp_path / "phone.jpg").numpy()
    # shown upright the wide object is tall: padding left and right, not above and below
    assert t[14, 0] < 30 and t[0, 14] > 128 and (t[:, 14] > 128).sum() > (t[14, :] > 128).sum()


@pytest.mark.parametrize(("ext", "side", "decoded"), [("jpg", 10000, 1250), ("png", 6000, 6000)])
def test_very_large_image_is_decoded_small_and_shrunk_before_any_conversion(tmp_path, monkeypatch, ext, side, decoded):
    big = _object_on(0, 200, size=(side, side))
    Image.fromarray(big).save(tmp_path / f"big.{ext}", **({"quality": 80} if ext == "jpg" else {"compress_level": 1}))
    calls = []  # (method, size of the image it was called on), in order
    for method in ("reduce", "convert"):
        real = getattr(Image.Image, method)

        def spy(self, *args, _real=real, _method=method, **kwargs):
            calls.append((_method, self.size))
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(Image.Image, method, spy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = load_image(tmp_path / f"big.{ext}")
    assert t.shape == (28, 28) and _center_and_corner(t) == (200, 0)
    # the first thing done to the pixels is an integer shrink, of the JPEG as decoded at 1/8 scale (DCT scaling;
    # 10000 / 8 = 1250) or of the whole PNG (no reduced decode exists for it)
    assert calls[0] == ("reduce", (decoded, decoded)), calls
    # so every conversion (grayscale, alpha) works on at most 2 x 8 x 28 pixels a side, not 10000
    assert all(max(size) < 2 * 8 * 28 for method, size in calls if method == "convert"), calls
    # 100M pixels are over Pillow's warning limit (89M); shrunk early, they are not a decompression bomb
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_decompression_bomb_is_refused_with_a_clear_message(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10,000 pixels is over twice the limit: an error
    with pytest.raises(ReslabError, match="bomb.png.*too many pixels"):
        load_image(tmp_path / "bomb.png")


@pytest.mark.parametrize(
    "content, reason",
    [(b"hello, not an image", "not an image"), (None, "no such file"), ("truncated", "damaged")],
)
def test_unreadable_files_raise_reslab_error_naming_the_file(tmp_path, content, reason):
    path = tmp_path / "x.png"
    if content == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:200])
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ReslabError, match=f"cannot read '.*x.png': {reason}"):
        load_image(path)


# ----------------------------------------------------------------------------------------------------------------------
# predicting with a checkpoint (an untrained resnet20: these check shapes, formats and exit codes, not accuracy)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return _make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


def _make_checkpoint(path, *, resize=None):
    import torch

    from reslab import __version__
    from reslab.checkpoint import save_checkpoint
    from reslab.config import TrainConfig
    from reslab.data import CLASSES
    from reslab.models import build_model

    torch.manual_seed(0)
    kwargs = {"in_chans": 1, "num_classes": 10}
    model = build_model("resnet20", **kwargs).eval()
    size = resize or 28
    state = {
        "format_version": 1,
        "reslab_version": __version__,
        "config": TrainConfig(model="resnet20", resize=resize).to_dict(),
        "model_name": "resnet20",
        "model_kwargs": kwargs,
        "input_size": [1, size, size],
        "classes": list(CLASSES),
        "model": model.state_dict(),
        "optimizer": None,
        "scheduler": None,
        "scaler": None,
        "epoch": 1,
        "step": 1,
        "step_in_epoch": 0,
        "rng": {"torch": torch.get_rng_state(), "cuda": None},
        "history": [],
        "best_val_acc": 0.0,
    }
    return save_checkpoint(state, path)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    rgba = np.zeros((40, 30, 4), np.uint8)
    rgba[..., :3], rgba[8:32, 5:25, 3] = 230, 255
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")
    palette = Image.fromarray(_object_on(0, 1)).convert("P")
    palette.putpalette([0, 0, 0, 255, 255, 255])  # index 1 is white: a white object, index 0 transparent
    palette.save(d / "palette.png", transparency=0)
    Image.fromarray(_object_on(255, 30, size=(6000, 4000))).convert("RGB").save(d / "large.jpg", quality=85)
    (d / "notes.png").write_text("not an image")
    return {p.stem: p for p in d.iterdir()}


def test_predict_rgba_palette_and_large_images(checkpoint, images):
    from reslab.data import CLASSES
    from reslab.predict import predict

    paths = [images["rgba"], images["palette"], images["large"]]
    out = predict(checkpoint, paths, topk=3)
    assert len(out) == 3
    for pairs in out:
        assert len(pairs) == 3 and all(c in CLASSES for c, _ in pairs)
        probs = [p for _, p in pairs]
        assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)
    full = predict(checkpoint, paths, topk=100)  # more than there are classes: all 10
    assert all(len(pairs) == 10 and abs(sum(p for _, p in pairs) - 1) < 1e-4 for pairs in full)


def test_a_fashion_mnist_image_saved_as_png_predicts_as_in_evaluation(checkpoint, tmp_path):
    import torch

    from reslab.checkpoint import load_checkpoint
    from reslab.data import synthetic_dataset
    from reslab.data.transforms import prepare_batch
    from reslab.predict import predict

    image = synthetic_dataset(num_train=1, num_test=1).test_images[0]  # (28, 28) uint8, as Fashion-MNIST's
    Image.fromarray(image.numpy()).save(tmp_path / "item.png")
    assert torch.equal(load_image(tmp_path / "item.png"), image)
    trained = load_checkpoint(checkpoint)
    with torch.no_grad():
        expected = trained.model(prepare_batch(image[None])).softmax(1)[0]
    (name, p), *_ = predict(trained, [tmp_path / "item.png"], topk=1)[0]
    assert p == pytest.approx(expected.max().item(), abs=1e-5) and name == trained.classes[expected.argmax()]


def test_predict_amp_is_asked_for_and_said_to_be_approximate(checkpoint, images, capsys):
    from reslab.predict import predict

    paths = [images["rgba"], images["palette"], images["large"]]
    exact = predict(checkpoint, paths, topk=10)
    assert "approximate" not in capsys.readouterr().err  # the default is exact fp32 (channels_last, same arithmetic)
    fast = predict(checkpoint, paths, topk=10, amp="bf16")
    assert "bf16 autocast: probabilities are approximate" in capsys.readouterr().err
    for e, f in zip(exact, fast, strict=True):
        e, f = dict(e), dict(f)
        assert e != f  # bf16 did run: not bit for bit the fp32 probabilities
        assert max(abs(e[c] - f[c]) for c in e) < 0.02  # bf16 keeps about 3 significant digits of each logit


def test_predict_accepts_a_loaded_model_and_pil_images(checkpoint, images):
    from reslab.checkpoint import load_checkpoint
    from reslab.predict import predict

    trained = load_checkpoint(checkpoint)
    with Image.open(images["rgba"]) as im:
        out = predict(trained, [im, images["rgba"]], topk=2)
    assert [c for c, _ in out[0]] == [c for c, _ in out[1]]
    assert [p for _, p in out[0]] == pytest.approx([p for _, p in out[1]])


def test_a_model_trained_at_32_pixels_is_given_the_image_resized_to_32_as_in_evaluation(tmp_path, images):
    import torch

    from reslab.checkpoint import load_checkpoint
    from reslab.data.transforms import prepare_batch
    from reslab.predict import predict

    ckpt = _make_checkpoint(tmp_path / "r32.pt", resize=32)
    trained = load_checkpoint(ckpt)
    image = load_image(images["large"])[None]  # (1, 28, 28)
    with torch.no_grad():
        at_32, at_28 = (trained.model(prepare_batch(image, resize_to=r)).softmax(1)[0] for r in (32, None))
    assert not torch.allclose(at_32, at_28, atol=1e-4)  # resnet20 takes either size: only the numbers tell
    probs = dict(predict(ckpt, [images["large"]], topk=10)[0])
    got = torch.tensor([probs[c] for c in trained.classes])
    assert torch.allclose(got, at_32, atol=1e-5)


def test_predict_files_reports_the_unreadable_file_and_predicts_the_others(checkpoint, images, capsys):
    from reslab.predict import predict_files

    paths = [images["rgba"], images["notes"], images["palette"]]
    failures = predict_files(checkpoint, paths, topk=2, device="cpu")
    out, err = capsys.readouterr()
    assert [f for f, _ in failures] == [str(images["notes"])]
    assert f"reslab predict: cannot read '{images['notes']}': not an image" in err
    lines = out.strip().splitlines()
    assert len(lines) == 2 and str(images["rgba"]) in lines[0] and str(images["palette"]) in lines[1]
    assert all(line.count("%") == 2 for line in lines)
    assert "--invert" not in err  # both have dark backgrounds


def test_predict_files_suggests_invert_for_a_light_background(checkpoint, tmp_path, capsys):
    from reslab.predict import predict_files

    Image.fromarray(_object_on(250, 20)).save(tmp_path / "photo.png")
    assert predict_files(checkpoint, [tmp_path / "photo.png"], device="cpu") == []
    assert "light background; for a dark object use --invert" in capsys.readouterr().err
    predict_files(checkpoint, [tmp_path / "photo.png"], invert=True, device="cpu")
    assert "--invert" not in capsys.readouterr().err


def test_cli_exits_0_when_all_predict_1_when_a_file_is_unreadable_2_on_bad_input(checkpoint, images, capsys):
    from reslab.cli import main

    assert main(["predict", str(checkpoint), str(images["rgba"]), "--device", "cpu"]) == 0
    assert main(["predict", str(checkpoint), str(images["rgba"]), str(images["notes"]), "--device", "cpu"]) == 1
    assert main(["predict", str(images["notes"]), str(images["rgba"])]) == 2  # not a checkpoint: nothing to do
    assert main(["predict", str(checkpoint), str(images["rgba"]), "-k", "0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--topk" in err
