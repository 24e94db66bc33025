"""Pictures: image grids and ranked lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pfanet_cli.utils.plots import save_image_grid, save_ranked_lists


def test_picture_helpers(tmp_path: Path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (3, 32, 16, 3), dtype=np.uint8)
    fake = rng.integers(0, 256, (3, 64, 32, 3), dtype=np.uint8)          # another size: resized
    grid = save_image_grid(tmp_path / "grid.png", [rgb, fake, rgb[..., 0]], titles=["RGB", "fake IR", "IR"])
    with Image.open(grid) as image:
        assert image.size == (3 * 16 + 2 * 4, 14 + 3 * 32 + 2 * 4)
        pixels = np.asarray(image)
    np.testing.assert_array_equal(pixels[14:46, :16], rgb[0])
    images = {"q.jpg": rgb[0], "a.jpg": rgb[1]}
    drawn = save_ranked_lists(tmp_path / "ranks.png", [("q.jpg", 1, [("a.jpg", 1), ("gone.jpg", 2)]),
                                                       ("missing.jpg", 3, [("a.jpg", 1)])], images.get)
    assert drawn == 1
    with Image.open(tmp_path / "ranks.png") as image:
        pixels = np.asarray(image.convert("RGB"))
    assert (pixels == (40, 170, 60)).all(axis=2).any() and (pixels == (210, 40, 40)).all(axis=2).any()
    assert save_ranked_lists(tmp_path / "none.png", [("missing.jpg", 1, [])], images.get) == 0
    assert not (tmp_path / "none.png").exists()


def test_image_grid_scale_enlarges_every_cell(tmp_path: Path):
    images = np.random.default_rng(1).integers(0, 256, (2, 8, 4, 3), dtype=np.uint8)
    with Image.open(save_image_grid(tmp_path / "big.png", [images, images], gap=2, scale=3)) as picture:
        assert picture.size == (2 * 12 + 2, 2 * 24 + 2)
        pixels = np.asarray(picture)
    np.testing.assert_array_equal(pixels[:24, :12], images[0].repeat(3, 0).repeat(3, 1))
