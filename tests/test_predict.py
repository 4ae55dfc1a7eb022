import time

import numpy as np
import pytest
from PIL import Image

from reslab.errors import ReslabError
from reslab.predict import load_image


def _object_on(bg: int, fg: int, size=(60, 40)) -> np.ndarray:
    """A `fg` rectangle in the middle of a `bg` image of `size` (W, H)."""
    w, h = size
    a = np.full((h, w), bg, np.uint8)
    a[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = fg
    return a


def _center_and_corner(t):
    return int(t[14, 14]), int(t[0, 0])


def test_grayscale_png_becomes_28x28_uint8_with_aspect_kept(tmp_path):
    Image.fromarray(_object_on(0, 200, size=(120, 60))).save(tmp_path / "wide.png")
    t = load_image(tmp_path / "wide.png")
    assert t.shape == (28, 28) and str(t.dtype) == "torch.uint8"
    assert _center_and_corner(t) == (200, 0)
    # a 2:1 image fills 14 rows: the object spans about the middle 7, not the middle 14 (no stretching)
    column = t[:, 14].numpy()
    assert 5 <= (column > 100).sum() <= 9


def test_rgba_transparent_background_becomes_black(tmp_path):
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere, but transparent outside the object
    rgba[10:30, 10:30, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert _center_and_corner(load_image(tmp_path / "rgba.png")) == (255, 0)


def test_rgba_dark_object_with_invert_stays_on_black(tmp_path):
    rgba = np.zeros((40, 40, 4), np.uint8)  # black everywhere, transparent outside the object
    rgba[10:30, 10:30, 3] = 255
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
    # shown upright the 200x100 image is 100 wide and 200 tall: padding left and right, not above and below
    assert t[14, 0] < 30 and t[0, 14] < 30 and (t[:, 14] > 128).sum() > (t[14, :] > 128).sum()


@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_very_large_image_is_fast(tmp_path, ext):
    big = _object_on(0, 200, size=(10000, 10000) if ext == "jpg" else (6000, 6000))
    Image.fromarray(big).save(tmp_path / f"big.{ext}", **({"quality": 80} if ext == "jpg" else {"compress_level": 1}))
    t0 = time.perf_counter()
    t = load_image(tmp_path / f"big.{ext}")
    assert time.perf_counter() - t0 < 5
    assert t.shape == (28, 28) and _center_and_corner(t) == (200, 0)


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
