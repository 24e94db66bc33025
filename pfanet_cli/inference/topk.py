"""Top-k search of query features in a gallery by cosine similarity (features are L2-normalised, so the dot
product): exact (a blocked matrix product and ``torch.topk``, on the CPU or a GPU), or approximate with FAISS
(``pfanet[search]``: an inverted-file index, IVF-Flat, inner product). ``auto`` uses FAISS only when it is
installed and the search is large enough (:data:`FAISS_MIN_GALLERY`, :data:`FAISS_MIN_QUERIES`) for FAISS, its
index build included, to answer faster than exact search (measured in ``benchmarks/search.py``). Gallery
images of the query's camera can be left out (``cameras``): masked before the top-k (exact) or excluded by an ID
selector inside the index (FAISS).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from pfanet_cli.errors import UsageError
from pfanet_cli.inference.extras import import_extra, installed

BACKENDS = ("auto", "exact", "faiss")
FAISS_MIN_GALLERY = 100_000
FAISS_MIN_QUERIES = 1_000
"""``auto`` picks FAISS from this gallery size and number of queries on (``benchmarks/search.py``, README)."""
BLOCK_BYTES = 256 << 20
"""Similarity block held at once by exact search (queries x gallery x 4 bytes)."""
PROBE_FRACTION = 1 / 16
"""Inverted lists visited per query (IVF's nprobe) as a fraction of all lists: recall@10 0.95-1.0 in the
benchmark's clustered features (1e4 and 1e5 images); less clustered features need more (README)."""


@dataclass
class Matches:
    """Per query, the gallery rows of its top-k (best first) and their cosine similarities; -1 where fewer
    than k gallery images were allowed."""

    indices: np.ndarray
    scores: np.ndarray
    backend: str


def choose_backend(requested: str, gallery_size: int, query_count: int) -> str:
    """The backend ``requested`` resolves to (``auto``: FAISS when installed and the search is large enough for
    its index build to pay off, see :data:`FAISS_MIN_GALLERY`); ``faiss`` without ``pfanet[search]`` stops here."""
    if requested not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
    if requested == "faiss":
        import_extra("faiss", "search", "--backend faiss")
    if requested == "auto":
        large = gallery_size >= FAISS_MIN_GALLERY and query_count >= FAISS_MIN_QUERIES
        return "faiss" if large and installed("faiss") else "exact"
    return requested


def top_k(query: np.ndarray, gallery: np.ndarray, k: int, backend: str = "auto", device: str = "cpu",
          cameras: tuple[np.ndarray, np.ndarray] | None = None) -> Matches:
    """The ``k`` best gallery rows per query. ``cameras``: integer camera codes of the query and gallery rows;
    a gallery row with its query's code is left out."""
    if choose_backend(backend, len(gallery), len(query)) == "faiss":
        index = FaissIndex(gallery)
        indices, scores = index.search(query, k, cameras)
        return Matches(indices, scores, index.describe())
    indices, scores = exact_top_k(query, gallery, k, device, cameras)
    return Matches(indices, scores, f"exact (torch, {device})")


def exact_top_k(query: np.ndarray, gallery: np.ndarray, k: int, device: str = "cpu",
                cameras: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k, in blocks of queries of at most :data:`BLOCK_BYTES` of similarities."""
    k = min(k, len(gallery))
    g = torch.from_numpy(np.ascontiguousarray(gallery, np.float32)).to(device)
    codes = None if cameras is None else [torch.from_numpy(np.asarray(c, np.int64)).to(device) for c in cameras]
    block = max(1, BLOCK_BYTES // (4 * max(len(gallery), 1)))
    indices, scores = [], []
    for start in range(0, len(query), block):
        q = torch.from_numpy(np.ascontiguousarray(query[start:start + block], np.float32)).to(device)
        similarity = q @ g.T
        if codes is not None:
            similarity.masked_fill_(codes[0][start:start + block, None] == codes[1][None, :], -math.inf)
        best = torch.topk(similarity, k, dim=1)
        indices.append(best.indices.cpu().numpy())
        scores.append(best.values.cpu().numpy())
    return _drop_excluded(np.concatenate(indices), np.concatenate(scores))


def _drop_excluded(indices: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-1 for the places only left-out gallery rows could fill."""
    excluded = ~np.isfinite(scores)
    return np.where(excluded, -1, indices).astype(np.int64), np.where(excluded, -np.inf, scores).astype(np.float32)


class FaissIndex:
    """An IVF-Flat inner-product index of the gallery: sqrt(G) inverted lists (k-means on at most 64 points
    per list), :data:`PROBE_FRACTION` of them visited per query."""

    def __init__(self, gallery: np.ndarray, nlist: int | None = None, nprobe: int | None = None) -> None:
        self.faiss = import_extra("faiss", "search", "--backend faiss")
        gallery = np.ascontiguousarray(gallery, np.float32)
        size, dim = gallery.shape
        self.nlist = nlist or max(1, min(int(math.sqrt(size)), size // 39))
        self.nprobe = nprobe or max(1, round(self.nlist * PROBE_FRACTION))
        quantizer = self.faiss.IndexFlatIP(dim)
        self.index = self.faiss.IndexIVFFlat(quantizer, dim, self.nlist, self.faiss.METRIC_INNER_PRODUCT)
        sample = gallery[np.random.default_rng(0).permutation(size)[:64 * self.nlist]]
        self.index.train(sample)
        self.index.add(gallery)

    def describe(self) -> str:
        return f"faiss IVF-Flat (nlist {self.nlist}, nprobe {self.nprobe})"

    def search(self, query: np.ndarray, k: int,
               cameras: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of each query; with ``cameras``, the queries of each camera search with that camera's gallery
        rows excluded."""
        query = np.ascontiguousarray(query, np.float32)
        k = min(k, self.index.ntotal)
        if cameras is None:
            scores, indices = self.index.search(query, k, params=self.faiss.SearchParametersIVF(nprobe=self.nprobe))
            return _faiss_result(indices, scores)
        indices = np.full((len(query), k), -1, np.int64)
        scores = np.full((len(query), k), -np.inf, np.float32)
        query_codes, gallery_codes = (np.asarray(c, np.int64) for c in cameras)
        for code in np.unique(query_codes):
            rows = np.flatnonzero(query_codes == code)
            hidden = self.faiss.IDSelectorBatch(np.flatnonzero(gallery_codes == code).astype(np.int64))
            params = self.faiss.SearchParametersIVF(nprobe=self.nprobe, sel=self.faiss.IDSelectorNot(hidden))
            part_scores, part_indices = self.index.search(query[rows], k, params=params)
            indices[rows], scores[rows] = _faiss_result(part_indices, part_scores)
        return indices, scores


def _faiss_result(indices: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    missing = indices < 0
    return indices.astype(np.int64), np.where(missing, -np.inf, scores).astype(np.float32)
