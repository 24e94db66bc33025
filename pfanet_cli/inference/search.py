"""``pfanet search``: rank the images of a gallery folder for each query image with a trained model.

The gallery is embedded once into a cache (``gallery_cache.py``: later searches embed only new or changed
images, and removed ones drop out); RGB images go through G_I as at test time, IR images through F alone. Each
query's top-k by cosine similarity (``topk.py``: exact by default) is written to ``results.json`` and shown as
thumbnails on ``index.html`` (``search_report.py``). With ``same_camera="skip"``, gallery images from the
query's camera (the first folder below each root, ``gallery.py``) are left out, as the benchmarks' camera rules
leave out same-camera matches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pfanet_cli.errors import UsageError
from pfanet_cli.inference.feature_model import FeatureModel, Progress
from pfanet_cli.inference.gallery import SideImage, scan_side
from pfanet_cli.inference.gallery_cache import CacheStats, embed_images, gallery_features
from pfanet_cli.inference.search_report import write_search_report
from pfanet_cli.inference.topk import Matches, choose_backend, top_k
from pfanet_cli.utils.atomic import check_writable_folder

SAME_CAMERA = ("keep", "skip")
CACHE_NAME = "gallery_features.npz"


@dataclass
class SearchOptions:
    gallery: Path
    query: Path
    out: Path = Path("search-results")
    top_k: int = 10
    gallery_modality: str = "auto"
    query_modality: str = "auto"
    same_camera: str = "keep"
    backend: str = "auto"
    batch_size: int = 64
    cache: Path | None = None
    """The gallery cache file (default: ``gallery_features.npz`` in ``out``)."""
    device: str = "cpu"

    @property
    def cache_file(self) -> Path:
        return Path(self.cache) if self.cache is not None else Path(self.out) / CACHE_NAME


@dataclass
class SearchSummary:
    results: Path
    page: Path
    queries: int
    gallery: int
    cache: Path
    stats: CacheStats
    backend: str
    seconds: float


def run_search(open_model: Callable[[], FeatureModel], options: SearchOptions,
               progress: Callable[[str], Progress | None] = lambda description: None) -> SearchSummary:
    """Search (see the module docstring) with the model ``open_model()`` returns (opened once the folders and
    options are checked); ``progress(description)`` gives a progress callback per stage."""
    started = time.perf_counter()
    _check_options(options)
    gallery = scan_side(options.gallery, options.gallery_modality, "--gallery-modality", "gallery")
    queries = scan_side(options.query, options.query_modality, "--query-modality", "query")
    cameras = camera_codes(queries, gallery) if options.same_camera == "skip" else None
    choose_backend(options.backend, len(gallery), len(queries))  # an unusable backend stops before any embedding
    check_writable_folder(options.out)
    model = open_model()
    _check_rgb_path(model, gallery + queries)
    gallery_feats, stats = gallery_features(gallery, options.gallery, options.cache_file, model, options.batch_size,
                                            progress("embed gallery"))
    query_feats = embed_images(model, queries, options.batch_size, progress("embed queries"))
    matches = top_k(query_feats, gallery_feats, options.top_k, options.backend, options.device, cameras)
    results, page = write_search_report(options.out, model.description, _settings(options, stats, matches),
                                        queries, gallery, matches)
    return SearchSummary(results, page, len(queries), len(gallery), options.cache_file, stats, matches.backend,
                         time.perf_counter() - started)


def _check_options(options: SearchOptions) -> None:
    if options.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {options.top_k}")
    if options.same_camera not in SAME_CAMERA:
        raise UsageError(f"--same-camera must be keep or skip, got {options.same_camera!r}")
    out, gallery = Path(options.out).resolve(), Path(options.gallery).resolve()
    if gallery.is_dir() and (out == gallery or out.is_relative_to(gallery)):
        raise UsageError(f"--out {options.out} is inside the gallery {options.gallery} (its pictures would join the "
                         "gallery); choose another folder")


def _check_rgb_path(model: FeatureModel, images: list[SideImage]) -> None:
    rgb = next((image for image in images if image.modality == "rgb"), None)
    if rgb is not None and model.translate and not model.has_rgb_path:
        raise UsageError(f"RGB images ({rgb.file}, ...) go through G_I, and {model.description} has none; use a "
                         "train-joint checkpoint or an export with --path both, or pass --no-translate")


def camera_codes(queries: list[SideImage], gallery: list[SideImage]) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes of the images' cameras (equal names, equal codes) for the same-camera rule."""
    unknown = next((image for image in queries + gallery if image.camera is None), None)
    if unknown is not None:
        raise UsageError(f"--same-camera skip needs every image in a camera folder (the first folder below the "
                         f"root); {unknown.file} is not")
    names = {name: code for code, name in enumerate(sorted({i.camera for i in queries + gallery}))}
    return (np.array([names[i.camera] for i in queries], np.int64),
            np.array([names[i.camera] for i in gallery], np.int64))


def _settings(options: SearchOptions, stats: CacheStats, matches: Matches) -> dict:
    return {"top_k": options.top_k, "backend": matches.backend, "same_camera": options.same_camera,
            "gallery": str(options.gallery), "query": str(options.query), "cache": str(options.cache_file),
            "cache_use": {"reused": stats.reused, "embedded": stats.embedded, "removed": stats.removed,
                          "note": stats.note}}
