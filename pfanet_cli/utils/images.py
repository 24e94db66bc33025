"""Image files: which suffixes count as images, decoding any of them to 3-channel RGB (optionally
resized with LANCZOS), listing the images of a folder tree, and a loader of raw-tree images for
pictures."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
"""File suffixes read as images (SYSU-MM01 ships JPEGs, RegDB bitmaps)."""
_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
MAX_PIXELS = 40_000_000
"""Larger images are refused before decoding: person images are far below it (SYSU-MM01's and RegDB's are
well under a megapixel), while a small file that claims to hold more is a decompression bomb."""

ImageLoader = Callable[[str], "np.ndarray | None"]
"""Relative path -> H x W x 3 uint8 image, or None when it cannot be found."""


class BadImage(Exception):
    """An image file that cannot be decoded (raised in workers, reported with its path)."""


def load_rgb(path: Path, size: tuple[int, int] | None = None, fast: bool = False) -> np.ndarray:
    """Decode ``path`` to an H×W×3 uint8 array, resized to ``size`` = (height, width) with LANCZOS.

    Grayscale, palette and RGBA images are converted to RGB; 16-bit and float images are scaled
    linearly from their own min..max to 0..255. ``fast`` lets the JPEG decoder produce a reduced
    image directly (draft mode) before resizing; it is not pixel-exact.
    """
    return load_rgb_and_size(path, size, fast)[0]


def load_rgb_and_size(path: Path, size: tuple[int, int] | None = None,
                      fast: bool = False) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`load_rgb` plus the file's own (width, height)."""
    try:
        if os.path.getsize(path) == 0:
            raise BadImage("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image_file = Image.open(path)
        with image_file as image:
            original = image.size
            if original[0] * original[1] > MAX_PIXELS:
                raise BadImage(f"{original[0]}x{original[1]} pixels, more than the {MAX_PIXELS:,} an image may "
                               "have (a decompression bomb?)")
            if fast and size is not None:
                image.draft("RGB", (size[1], size[0]))
            image = _to_rgb(image)
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.LANCZOS)
            return np.asarray(image, dtype=np.uint8), original
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"more pixels than an image may have (a decompression bomb?): {exc}") from exc
    except (OSError, ValueError, SyntaxError, MemoryError) as exc:
        raise BadImage(f"{exc}") from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _HIGH_DEPTH_MODES:
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        image = Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def is_image_file(path: Path) -> bool:
    """A file whose suffix is one of :data:`IMAGE_SUFFIXES` (any case)."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, hidden files ignored), sorted by relative path."""
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and is_image_file(p)
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def raw_image_loader(root: str | Path) -> ImageLoader:
    """Images read from a raw dataset tree (``root / path``), converted to RGB."""
    root = Path(root)

    def load(path: str) -> np.ndarray | None:
        file = root / path
        if not file.is_file():
            return None
        try:
            return load_rgb(file)
        except BadImage:
            return None

    return load
