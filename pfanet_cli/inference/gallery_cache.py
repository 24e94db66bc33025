"""The gallery's features, embedded once and kept in a cache file that later searches update.

The cache is one ``.npz`` (no pickled objects): ``features`` float32 G×D and, per row, the image's ``paths``
(relative to the gallery folder), ``sizes`` and ``mtimes`` (nanoseconds) and ``modalities``, plus ``meta``, a JSON
string naming the model (its content hash), whether RGB images went through G_I, the input size and the gallery
folder. A search re-embeds only images whose path is new or whose size, modification time or modality changed;
rows of images no longer in the folder are dropped. A cache made with another model or for another folder, or
unreadable, is rebuilt (with a note). It is written atomically, and every :data:`SAVE_EVERY` new images while a
large gallery is embedded, so an interrupted search loses at most that much work. (An image replaced by another
of the same size with its modification time set back is not noticed: the key is not a content hash.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pfanet_cli.errors import DataError
from pfanet_cli.inference.feature_model import FeatureModel
from pfanet_cli.inference.gallery import SideImage
from pfanet_cli.utils.atomic import atomic_write
from pfanet_cli.utils.images import BadImage, load_rgb

CACHE_FORMAT = "pfanet-gallery-cache"
CACHE_VERSION = 1
SAVE_EVERY = 4096
"""New features between two writes of the cache while a gallery is embedded."""
ROW_KEYS = ("paths", "sizes", "mtimes", "modalities")
Progress = Callable[[int, int], None]


@dataclass
class CacheStats:
    reused: int = 0
    embedded: int = 0
    removed: int = 0
    note: str | None = None
    """Why the cache was not used (another model, unreadable), or None."""


def cache_key(model: FeatureModel, gallery: Path) -> dict:
    """What the cached features depend on besides the images: the model and the gallery folder they are in."""
    return {"format": CACHE_FORMAT, "version": CACHE_VERSION, "model": model.fingerprint,
            "translate": bool(model.translate), "image_size": list(model.image_size),
            "gallery": Path(gallery).resolve().as_posix()}


def embed_images(model: FeatureModel, images: list[SideImage], batch_size: int = 64,
                 on_progress: Progress | None = None) -> np.ndarray:
    """Features of ``images``, decoded and embedded a batch at a time (memory bounded by the batch)."""
    chunks = []
    for start in range(0, len(images), batch_size):
        part = images[start:start + batch_size]
        pixels = np.empty((len(part), *model.image_size, 3), np.uint8)
        for row, image in enumerate(part):
            try:
                pixels[row] = load_rgb(image.file, model.image_size)
            except BadImage as exc:
                raise DataError(f"cannot decode {image.file}: {exc}; remove or replace it") from exc
        chunks.append(model.features(pixels, np.array([i.modality == "rgb" for i in part]), batch_size))
        if on_progress:
            on_progress(len(part), len(images))
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


def gallery_features(images: list[SideImage], gallery: Path, cache_file: Path, model: FeatureModel,
                     batch_size: int = 64, on_progress: Progress | None = None) -> tuple[np.ndarray, CacheStats]:
    """Features of ``images`` (those of the folder ``gallery``, in their order), from the cache where it is
    current, embedded otherwise; the cache is rewritten to hold exactly these images."""
    key = cache_key(model, gallery)
    cached, note = read_cache(cache_file, key)
    rows: dict[str, np.ndarray] = {}
    todo = []
    for image in images:
        hit = cached.get(image.path)
        if hit is not None and hit[0] == (image.size, image.mtime_ns, image.modality):
            rows[image.path] = hit[1]
        else:
            todo.append(image)
    stats = CacheStats(reused=len(rows), embedded=len(todo), removed=len(set(cached) - {i.path for i in images}),
                       note=note)
    for start in range(0, len(todo), SAVE_EVERY):
        part = todo[start:start + SAVE_EVERY]
        progress = (lambda n, _total: on_progress(n, len(todo))) if on_progress else None
        rows.update(zip((i.path for i in part), embed_images(model, part, batch_size, progress)))
        write_cache(cache_file, key, [i for i in images if i.path in rows], rows)
    if not todo and (stats.removed or note or not cache_file.is_file()):
        write_cache(cache_file, key, images, rows)
    return np.stack([rows[i.path] for i in images]).astype(np.float32), stats


def read_cache(file: Path, key: dict) -> tuple[dict[str, tuple[tuple[int, int, str], np.ndarray]], str | None]:
    """path -> ((size, mtime, modality), feature) of a cache made with ``key``'s model; with a note when a cache
    file is there but cannot be used."""
    if not Path(file).is_file():
        return {}, None
    try:
        with np.load(file, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"].item()))
            if meta != key:
                return {}, (f"the cache {file} was made with another model, input size or gallery folder; every image "
                            "is embedded again")
            features, rows = npz["features"], [npz[name] for name in ROW_KEYS]
    except (OSError, ValueError, KeyError, EOFError) as exc:
        return {}, f"the cache {file} is unreadable ({type(exc).__name__}); every image is embedded again"
    if any(len(column) != len(features) for column in rows) or features.ndim != 2:
        return {}, f"the cache {file} is inconsistent; every image is embedded again"
    paths, sizes, mtimes, modalities = rows
    return {str(p): ((int(s), int(m), str(mod)), f) for p, s, m, mod, f in zip(paths, sizes, mtimes, modalities,
                                                                            features)}, None


def write_cache(file: Path, key: dict, images: list[SideImage], rows: dict[str, np.ndarray]) -> None:
    """The cache of ``images`` (whose features are in ``rows``), written atomically."""
    features = np.stack([rows[i.path] for i in images]).astype(np.float32) if images else np.zeros((0, 0), np.float32)
    arrays = {"features": features, "paths": np.asarray([i.path for i in images], dtype=str),
              "sizes": np.asarray([i.size for i in images], np.int64),
              "mtimes": np.asarray([i.mtime_ns for i in images], np.int64),
              "modalities": np.asarray([i.modality for i in images], dtype=str),
              "meta": np.asarray(json.dumps(key, sort_keys=True))}
    with atomic_write(file, durable=True, size_hint=sum(a.nbytes for a in arrays.values())) as handle:
        np.savez(handle, **arrays)
