"""k-reciprocal re-ranking (Zhong, Zheng, Cao and Li, "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), vectorised and memory-bounded.

What is computed, over the N = queries + gallery images of one trial: the method as the authors' Python code
computes it (``zhunzhong07/person-re-ranking``, ``python-version/re_ranking_ranklist.py``, given the Euclidean
distances of the L2-normalised features, which it squares). pfanet equals that code: on random test sets (120
queries, 300 gallery, 64-d, three draws) the re-ranked distances agree to 4e-7 (its float32) and R1 and mAP are
identical. Not every copy computes the same: layumi's ``re_ranking.py`` (``Person_reID_baseline_pytorch``), called
as its ``evaluate_rerank.py`` calls it with cosine similarities, turns them into 2 - 2 cos and squares that
again (its lines 47-48), a fourth power of the Euclidean distance: on the same sets its distances differ by up
to 0.09 and its mAP by 0.01-0.08 points.

1. d(i, j): squared Euclidean distance of the L2-normalised features (2 - 2 cos), each row divided by its
   largest value; each row's neighbours ranked by that distance (ties by index).
2. R(i): the k1-reciprocal neighbours of i, the j among i's k1 + 1 nearest whose own k1 + 1 nearest hold i.
   Each j in R(i) adds its own round(k1 / 2)-reciprocal set when more than 2/3 of that set lies in R(i).
3. V(i): a weight exp(-d(i, j)) on every j of the expanded set, normalised to sum 1; with k2 > 1, V(i) is
   replaced by the mean of V over i's k2 nearest neighbours (local query expansion).
4. Jaccard distance of query i and gallery j: 1 - m / (2 - m), m = sum over k of min(V(i, k), V(j, k));
   final distance = (1 - lambda) * Jaccard + lambda * d(i, j).

How it stays vectorised and bounded: the N x N distances are computed in blocks of rows that keep only
each row's nearest neighbours (``argpartition``) and its maximum; the reciprocal tests are array comparisons
over those short neighbour lists; V is a sparse matrix and the expansion one sparse product; the min-sums of
step 4 are a join of the queries' non-zeros with the gallery's columns, accumulated with ``bincount`` for
blocks of queries of bounded size. Nothing N x N is ever held. Computed in float64 (the authors' code uses
float32, so its distances differ by about 1e-7).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse

from pfanet_cli.errors import UsageError
from pfanet_cli.evaluation.ranking import DEFAULT_MEMORY_BUDGET, cosine_normalise

RERANK_METHODS = ("off", "kreciprocal")
DEFAULT_K1, DEFAULT_K2, DEFAULT_LAMBDA = 20, 6, 0.3
"""The standard parameters of Zhong et al. 2017."""
PAIR_BYTES = 128
"""Working bytes per (query non-zero, gallery non-zero) pair of the Jaccard join (its temporaries)."""


@dataclass(frozen=True)
class RerankConfig:
    """k-reciprocal re-ranking and its parameters (``None`` anywhere a result is computed means off)."""

    k1: int = DEFAULT_K1
    k2: int = DEFAULT_K2
    lambda_value: float = DEFAULT_LAMBDA

    def describe(self) -> dict:
        """What the protocol card states."""
        return {"method": "k-reciprocal (Zhong et al. 2017)", "k1": self.k1, "k2": self.k2,
                "lambda": self.lambda_value}


def rerank_config(method: str, k1: int | None = None, k2: int | None = None,
                  lambda_value: float | None = None) -> RerankConfig | None:
    """The re-ranking a command line asks for; :class:`UsageError` naming the parameter out of range, or
    given while re-ranking is off."""
    if method not in RERANK_METHODS:
        raise UsageError(f"unknown --rerank {method!r}: choose one of {', '.join(RERANK_METHODS)}")
    given = [name for name, value in (("--k1", k1), ("--k2", k2), ("--lambda", lambda_value)) if value is not None]
    if method == "off":
        if given:
            raise UsageError(f"{', '.join(given)} apply to --rerank kreciprocal (re-ranking is off)")
        return None
    config = RerankConfig(DEFAULT_K1 if k1 is None else int(k1), DEFAULT_K2 if k2 is None else int(k2),
                          DEFAULT_LAMBDA if lambda_value is None else float(lambda_value))
    if config.k1 < 1:
        raise UsageError(f"--k1 must be at least 1 (neighbours of the k-reciprocal sets), got {config.k1}")
    if config.k2 < 1:
        raise UsageError(f"--k2 must be at least 1 (neighbours of the query expansion), got {config.k2}")
    if not 0.0 <= config.lambda_value <= 1.0:
        raise UsageError(f"--lambda must be in [0, 1] (weight of the original distance), got {config.lambda_value}")
    return config


def kreciprocal_distances(queries: np.ndarray, gallery: np.ndarray, config: RerankConfig = RerankConfig(), *,
                          memory_budget: int = DEFAULT_MEMORY_BUDGET) -> np.ndarray:
    """Re-ranked distances (queries x gallery, float64, within [0, 1]; smaller is closer) of L2-normalised
    ``queries`` and ``gallery`` features (rows are normalised again here)."""
    feats = cosine_normalise(np.concatenate([np.asarray(queries), np.asarray(gallery)]))
    num_query = len(queries)
    width = min(len(feats), max(config.k1 + 1, config.k2))
    out = np.empty((num_query, len(feats) - num_query))                # d(query, gallery) first
    nearest, row_max = _nearest_neighbours(feats, width, memory_budget, out)
    weights = _reciprocal_weights(feats, nearest, row_max, config.k1, memory_budget)
    if config.k2 != 1:
        weights = _query_expansion(nearest[:, : config.k2], len(feats)) @ weights
    _blend_jaccard(out, weights.tocsr(), config.lambda_value, memory_budget)
    return out


def _distances(rows: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances of unit rows: 2 - 2 cos, clipped at 0."""
    out = rows @ feats.T
    out *= -2.0
    out += 2.0
    return np.maximum(out, 0.0, out=out)


def _nearest_neighbours(feats: np.ndarray, width: int, memory_budget: int,
                        query_gallery: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``width`` nearest rows (by distance, ties by index) and its largest distance; the
    normalised distances of the query rows to the gallery rows are kept in ``query_gallery``."""
    n, num_query = len(feats), len(query_gallery)
    block = max(1, memory_budget // (24 * n))
    nearest = np.empty((n, width), dtype=np.int64)
    row_max = np.empty(n)
    for start in range(0, n, block):
        dist = _distances(feats[start:start + block], feats)
        row_max[start:start + block] = dist.max(axis=1)
        if start < num_query:
            stop = min(num_query, start + block)
            np.divide(dist[: stop - start, num_query:], np.maximum(row_max[start:stop, None], 1e-12),
                      out=query_gallery[start:stop])
        part = np.sort(np.argpartition(dist, width - 1, axis=1)[:, :width], axis=1)  # index order
        values = np.take_along_axis(dist, part, axis=1)
        order = np.argsort(values, axis=1, kind="stable")
        nearest[start:start + block] = np.take_along_axis(part, order, axis=1)
        # a tie across the cut would make the partition's choice arbitrary: those rows are sorted in full
        cut = np.take_along_axis(values, order[:, -1:], axis=1)
        crossing = np.flatnonzero((dist <= cut).sum(axis=1) > width)
        if crossing.size:
            nearest[start + crossing] = np.argsort(dist[crossing], axis=1, kind="stable")[:, :width]
    return nearest, row_max


def _reciprocal(nearest: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k + 1 nearest and, for each, whether the row is among that neighbour's k + 1 nearest."""
    forward = nearest[:, : k + 1]
    backward = forward[forward]                                        # (N, k + 1, k + 1)
    return forward, (backward == np.arange(len(nearest))[:, None, None]).any(axis=2)


def _reciprocal_weights(feats: np.ndarray, nearest: np.ndarray, row_max: np.ndarray, k1: int,
                        memory_budget: int) -> scipy.sparse.csr_matrix:
    """V: the exp(-d) weights of each row's expanded k-reciprocal set, normalised per row (sparse N x N)."""
    n = len(feats)
    forward, mutual = _reciprocal(nearest, k1)
    half_forward, half_mutual = _reciprocal(nearest, int(np.around(k1 / 2.0)))
    rows, cols = [np.repeat(np.arange(n), mutual.sum(axis=1))], [forward[mutual]]
    step = max(1, 2**24 // (forward.shape[1] ** 2 * half_forward.shape[1]))
    for start in range(0, n, step):
        stop = min(n, start + step)
        block_forward, block_mutual = forward[start:stop], mutual[start:stop]
        candidates = half_forward[block_forward]                       # (B, k1 + 1, k1/2 + 1)
        valid = half_mutual[block_forward]
        in_set = ((candidates[..., None] == block_forward[:, None, None, :]) & block_mutual[:, None, None, :]).any(3)
        accept = block_mutual & ((in_set & valid).sum(axis=2) > 2.0 / 3.0 * valid.sum(axis=2))
        taken = accept[..., None] & valid
        rows.append(np.nonzero(taken)[0] + start)
        cols.append(candidates[taken])
    keys = np.unique(np.concatenate(rows) * n + np.concatenate(cols))
    row, col = keys // n, keys % n
    chunk = max(1, memory_budget // (64 * feats.shape[1]))             # gathered feature rows: a quarter
    weight = np.exp(-_pair_distances(feats, row, col, chunk) / np.maximum(row_max[row], 1e-12))
    totals = np.bincount(row, weights=weight, minlength=n)
    return scipy.sparse.csr_matrix((weight / totals[row], (row, col)), shape=(n, n))


def _pair_distances(feats: np.ndarray, row: np.ndarray, col: np.ndarray, chunk: int) -> np.ndarray:
    out = np.empty(len(row))
    for start in range(0, len(row), chunk):
        a, b = feats[row[start:start + chunk]], feats[col[start:start + chunk]]
        out[start:start + chunk] = np.maximum(2.0 - 2.0 * np.einsum("ij,ij->i", a, b), 0.0)
    return out


def _query_expansion(nearest: np.ndarray, n: int) -> scipy.sparse.csr_matrix:
    """The averaging matrix of local query expansion: row i holds 1/k2 at i's k2 nearest neighbours."""
    k = nearest.shape[1]
    return scipy.sparse.csr_matrix((np.full(n * k, 1.0 / k), (np.repeat(np.arange(n), k), nearest.ravel())),
                                   shape=(n, n))


def _blend_jaccard(out: np.ndarray, weights: scipy.sparse.csr_matrix, lambda_value: float,
                   memory_budget: int) -> None:
    """``out`` (d of every query x gallery pair) becomes (1 - lambda) Jaccard + lambda d, in blocks of queries
    whose join of non-zeros and whose query x gallery arrays fit the memory budget."""
    num_query, num_gallery = out.shape
    gallery = weights[num_query:].tocsc()                              # (G, N): the rows holding column k
    column_counts = np.diff(gallery.indptr)
    query_nonzeros = np.diff(weights.indptr[: num_query + 1])
    pairs = np.bincount(np.repeat(np.arange(num_query), query_nonzeros),
                        weights=column_counts[weights.indices[: weights.indptr[num_query]]], minlength=num_query)
    bounds = np.concatenate([[0.0], np.cumsum(pairs)])
    pair_limit = max(1, memory_budget // PAIR_BYTES)
    row_limit = max(1, memory_budget // (24 * max(num_gallery, 1)))   # three B x G float64 arrays
    start = 0
    while start < num_query:
        stop = int(np.searchsorted(bounds, bounds[start] + pair_limit, side="right")) - 1
        stop = min(num_query, start + row_limit, max(stop, start + 1))
        overlap = _min_sums(weights[start:stop], gallery, column_counts)
        jaccard = 1.0 - overlap / (2.0 - overlap)
        block = out[start:stop]
        block *= lambda_value
        block += (1.0 - lambda_value) * jaccard
        start = stop


def _min_sums(queries: scipy.sparse.csr_matrix, gallery: scipy.sparse.csc_matrix,
              column_counts: np.ndarray) -> np.ndarray:
    """sum over k of min(V(i, k), V(j, k)) for every query row i and gallery row j: each query non-zero
    (i, k) meets the gallery non-zeros of column k."""
    coo = queries.tocoo()
    counts = column_counts[coo.col]
    total = int(counts.sum())
    num_gallery = gallery.shape[0]
    if total == 0:
        return np.zeros((queries.shape[0], num_gallery))
    offsets = np.repeat(gallery.indptr[coo.col] - (np.cumsum(counts) - counts), counts) + np.arange(total)
    keys = np.repeat(coo.row.astype(np.int64), counts) * num_gallery + gallery.indices[offsets]
    mins = np.minimum(np.repeat(coo.data, counts), gallery.data[offsets])
    return np.bincount(keys, weights=mins, minlength=queries.shape[0] * num_gallery).reshape(-1, num_gallery)
