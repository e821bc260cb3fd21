"""Image loading: every PIL mode becomes RGB, EXIF orientation is applied, bad input is text-only."""

import io

import numpy as np
import pytest
from PIL import Image

from mmkp_edge import images


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "1", "RGB"])
def test_every_mode_becomes_rgb(mode):
    img = Image.new(mode, (5, 3))
    out = images.load_image(img)
    assert out.mode == "RGB" and out.size == (5, 3)


def test_transparent_pixels_are_composited_on_white():
    img = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert np.asarray(images.load_image(img)).min() == 255


def test_16_bit_grey_is_scaled_not_clipped():
    img = Image.fromarray(np.full((2, 2), 65535, dtype=np.uint16))
    assert np.asarray(images.load_image(img)).min() == 255


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (4, 2))
    exif = Image.Exif()
    exif[0x0112] = 6                                   # rotate 90° clockwise on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    assert images.load_image(buf.getvalue()).size == (2, 4)


def test_missing_corrupt_and_huge_images_give_text_only(tmp_path, monkeypatch):
    assert images.load_image(None) is None
    missing = images.open_image(tmp_path / "nope.png")
    assert missing.image is None and "unreadable" in missing.problem
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    assert images.load_image(tmp_path / "bad.png") is None
    monkeypatch.setattr(images, "MAX_PIXELS", 10)
    big = images.open_image(Image.new("RGB", (4, 4)))
    assert big.image is None and "too large" in big.problem
