"""Image helpers: header size, decode checks, RGB conversion of any mode."""
from __future__ import annotations

import numpy as np
import pytest
from datatest_helpers import make_image
from PIL import Image, UnidentifiedImageError

from medloc_lightning.data.images import image_size, load_rgb, verify_image


@pytest.mark.parametrize("mode,name", [("RGB", "a.jpg"), ("L", "a.png"), ("I;16", "a.png"), ("RGBA", "a.png"),
                                       ("P", "a.png"), ("1", "a.bmp")])
def test_load_rgb_gives_8bit_rgb_of_the_right_size(tmp_path, mode, name):
    path = make_image(tmp_path / name, (33, 21), mode=mode)
    im = load_rgb(path)
    assert im.mode == "RGB" and im.size == (33, 21)
    np.asarray(im)  # the pixels are usable after the file was closed
    assert image_size(path) == verify_image(path) == (33, 21)


def test_16bit_images_are_rescaled_not_clipped(tmp_path):
    a = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    path = tmp_path / "x.png"
    Image.fromarray(a).save(path)
    grey = np.asarray(load_rgb(path))[..., 0]
    assert grey.tolist() == [[0, 64], [128, 255]]


def test_verify_image_rejects_garbage(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"not an image at all")
    with pytest.raises(UnidentifiedImageError, match="cannot identify image file"):
        verify_image(path)
