"""The export's parity check: the images it runs on (real prepared ones, or synthetic), and how the features
onnxruntime gives are compared with PyTorch's: the largest absolute difference of any entry, and whether the
images rank each other the same way (nearest neighbour and top-k overlap under cosine similarity)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pfanet_cli.data.prepared import open_prepared
from pfanet_cli.errors import DataError

TOP_K = 10
SEED = 0


@dataclass
class ParityImages:
    """uint8 N×H×W×3 images per path (``ir``, ``rgb``) and where they come from."""

    by_path: dict[str, np.ndarray]
    source: str


def parity_images(size: tuple[int, int], count: int, data: Path | None = None, split: str = "test") -> ParityImages:
    """``count`` images per path: from the prepared folder ``data`` (evenly spaced rows of the path's modality
    in ``split``), else synthetic (smooth random colour fields, the same for every run)."""
    if data is None:
        images = synthetic_images(size, count)
        return ParityImages({"ir": images, "rgb": images}, f"{count} synthetic images")
    rows = open_prepared(data).split(split)
    by_path = {}
    for path, mask in (("ir", rows.is_ir), ("rgb", ~rows.is_ir)):
        candidates = np.flatnonzero(mask)
        if candidates.size == 0:
            raise DataError(f"the {split} split of {data} holds no {path.upper()} images for the parity check")
        picked = candidates[np.linspace(0, candidates.size - 1, min(count, candidates.size)).round().astype(int)]
        by_path[path] = np.ascontiguousarray(rows.images[np.unique(picked)])
    return ParityImages(by_path, f"the {split} split of {data}")


def synthetic_images(size: tuple[int, int], count: int) -> np.ndarray:
    """Smooth random colour fields (coarse noise upsampled bicubically), so different images give distinct
    features that rank each other."""
    rng = np.random.default_rng(SEED)
    height, width = size
    out = np.empty((count, height, width, 3), np.uint8)
    for row in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 3, 3), dtype=np.uint8))
        out[row] = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC))
    return out


def parity_report(reference: np.ndarray, exported: np.ndarray, tolerance: float, source: str) -> dict:
    """How far ``exported`` features are from ``reference`` (same images, same order)."""
    difference = float(np.abs(reference.astype(np.float64) - exported).max())
    slack = similarity_slack(difference, reference.shape[1])
    rank1, overlap, k = ranking_agreement(reference, exported, slack)
    return {"images": int(len(reference)), "source": source, "max_abs_difference": difference,
            "tolerance": float(tolerance), "passed": bool(difference <= tolerance), "rank1_agreement": rank1,
            "top_k": k, "top_k_overlap": overlap, "similarity_slack": slack}


def similarity_slack(max_abs_difference: float, dim: int) -> float:
    """How much a cosine similarity of two unit features can change when every entry of each moves by at most
    ``max_abs_difference``: |a'b' - ab| <= |a' - a| |b'| + |a| |b' - b| <= 2 sqrt(D) max difference."""
    return 2.0 * float(np.sqrt(dim)) * max_abs_difference


def ranking_agreement(reference: np.ndarray, other: np.ndarray, slack: float = 0.0,
                      top_k: int = TOP_K) -> tuple[float, float, int]:
    """Each image ranks the others by cosine similarity under both feature sets. Returns the fraction of images
    whose nearest neighbour under ``other`` is a nearest neighbour under ``reference``, the mean fraction of
    ``other``'s top-k that is in ``reference``'s top-k, and k (at most N - 1). "Is", up to ``slack``: images
    whose reference similarities differ by less than what the feature differences can explain are ties."""
    k = max(1, min(top_k, len(reference) - 1))
    similarity = [_similarity(features) for features in (reference, other)]
    order = np.argsort(-similarity[1], axis=1, kind="stable")[:, :k]
    ranked = -np.sort(-similarity[0], axis=1)
    picked = np.take_along_axis(similarity[0], order, axis=1)
    rank1 = float(np.mean(picked[:, 0] >= ranked[:, 0] - slack))
    overlap = float(np.mean(picked >= ranked[:, k - 1:k] - slack))
    return rank1, overlap, k


def _similarity(features: np.ndarray) -> np.ndarray:
    unit = features.astype(np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity
