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

How it stays fast and bounded: trials drawn from one pool (SYSU-MM01's ten galleries of a setting, the four
settings' galleries, LLCM's drawn images) share one neighbour search (:class:`KReciprocal`,
``neighbours.py``): every node's nearest and farthest nodes of the pool, found once with each pair's product
computed once, and the query x pool similarities; a trial reads its neighbours and normalisations off those
lists. The reciprocal tests are array operations over the short neighbour lists; V is a sparse matrix and
the expansion one sparse product; the min-sums of step 4 are a join of the queries' non-zeros with the
gallery's columns, accumulated with ``bincount`` for blocks of queries of bounded size, and only the pairs
that share a non-zero (a few percent) are blended one by one. Nothing N x N is ever held. Computed in float64,
exactly the numbers of one trial on its own (the authors' code uses float32: where its rounding leaves the
neighbour sets unchanged its distances differ by about 1e-7, elsewhere by more, see ``benchmarks/rerank.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import scipy.sparse

from pfanet_cli.errors import UsageError
from pfanet_cli.evaluation.neighbours import Trial, build_index
from pfanet_cli.evaluation.ranking import DEFAULT_MEMORY_BUDGET

RERANK_METHODS = ("off", "kreciprocal")
DEFAULT_K1, DEFAULT_K2, DEFAULT_LAMBDA = 20, 6, 0.3
"""The standard parameters of Zhong et al. 2017."""
PAIR_BYTES = 128
"""Working bytes per (query non-zero, gallery non-zero) pair of the Jaccard join (its temporaries)."""
MIN_DEPTH, DEPTH_FACTOR = 64, 3
"""Each node's nearest-neighbour list over the pool holds max(64, 3 x (k1 + 1)) nodes: enough trial members for
most nodes of a SYSU-MM01 multi-shot trial (44 % of the pool); the others are computed over the trial."""


@dataclass(frozen=True)
class RerankConfig:
    """k-reciprocal re-ranking and its parameters (``None`` anywhere a result is computed means off), and
    where its neighbour search runs: ``device`` None is numpy on the CPU, else a torch device such as
    ``cuda`` (the same numbers; not a parameter of the method, so not on the protocol card)."""

    k1: int = DEFAULT_K1
    k2: int = DEFAULT_K2
    lambda_value: float = DEFAULT_LAMBDA
    device: str | None = field(default=None, compare=False)

    def on(self, device: str | None) -> "RerankConfig":
        """The same re-ranking with its neighbour search on ``device``."""
        return replace(self, device=device)

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


def rerank_device(requested: str | None) -> str | None:
    """Where re-ranking's neighbour search runs for ``--device`` (None: auto): the CUDA device it resolves
    to, or None for numpy on the CPU. ``cpu`` is answered without importing torch (only ``auto`` and CUDA
    devices need it, to see what is there)."""
    if requested == "cpu":
        return None
    from pfanet_cli.engine.runtime import resolve_device  # heavy: torch, only when re-ranking off the CPU

    device = resolve_device(requested or "auto")
    return None if device.type == "cpu" else str(device)


def command_rerank(method: str, k1: int | None, k2: int | None, lambda_value: float | None,
                   device: str | None) -> RerankConfig | None:
    """:func:`rerank_config` with its neighbour search on the device ``--device`` resolves to (see
    :func:`rerank_device`); None when re-ranking is off."""
    config = rerank_config(method, k1, k2, lambda_value)
    return None if config is None else config.on(rerank_device(device))


class KReciprocal:
    """k-reciprocal re-ranking of any number of trials drawn from one pool: ``queries`` (feature rows) and
    ``pool`` (the gallery rows every trial draws from). The neighbour lists are computed once, with numpy or
    with torch on ``config.device`` (``neighbours.py``); each trial then costs its sparse steps only."""

    def __init__(self, queries: np.ndarray, pool: np.ndarray, config: RerankConfig = RerankConfig(), *,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET) -> None:
        self.config, self.memory_budget = config, memory_budget
        self.num_queries, self.pool_size = len(queries), len(pool)
        self.width = max(config.k1 + 1, config.k2)
        self.index = build_index(queries, pool, max(MIN_DEPTH, DEPTH_FACTOR * self.width),
                                 memory_budget=memory_budget, device=config.device)

    def distances(self, query_rows: np.ndarray | None = None, gallery_rows: np.ndarray | None = None) -> np.ndarray:
        """Re-ranked distances (float64, within [0, 1]; smaller is closer) of one trial: ``query_rows`` of the
        queries x ``gallery_rows`` of the pool (ascending; all when None)."""
        query_rows = np.arange(self.num_queries) if query_rows is None else np.asarray(query_rows, dtype=np.int64)
        gallery_rows = np.arange(self.pool_size) if gallery_rows is None else np.asarray(gallery_rows, dtype=np.int64)
        trial = Trial(self.index, query_rows, gallery_rows, self.width)
        weights = _reciprocal_weights(trial, self.config.k1)
        if self.config.k2 != 1:
            weights = _query_expansion(trial.nearest[:, : self.config.k2], len(trial.nodes)) @ weights
        out = trial.query_gallery                                       # d(query, gallery), normalised below
        out /= np.maximum(trial.row_max[: len(query_rows), None], 1e-12)
        _blend_jaccard(out, weights.tocsr(), self.config.lambda_value, self.memory_budget)
        return out


def kreciprocal_distances(queries: np.ndarray, gallery: np.ndarray, config: RerankConfig = RerankConfig(), *,
                          memory_budget: int = DEFAULT_MEMORY_BUDGET) -> np.ndarray:
    """Re-ranked distances (queries x gallery, float64, within [0, 1]; smaller is closer) of L2-normalised
    ``queries`` and ``gallery`` features (rows are normalised again here): one trial."""
    return KReciprocal(queries, gallery, config, memory_budget=memory_budget).distances()


def _reciprocal(nearest: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k + 1 nearest and, for each, whether the row is among that neighbour's k + 1 nearest."""
    forward = nearest[:, : k + 1]
    backward = forward[forward]                                        # (N, k + 1, k + 1)
    return forward, (backward == np.arange(len(nearest))[:, None, None]).any(axis=2)


def _reciprocal_weights(trial: Trial, k1: int) -> scipy.sparse.csr_matrix:
    """V: the exp(-d) weights of each node's expanded k-reciprocal set, normalised per row (sparse N x N)."""
    nearest = trial.nearest
    n = len(nearest)
    forward, mutual = _reciprocal(nearest, k1)
    half_forward, half_mutual = _reciprocal(nearest, int(np.around(k1 / 2.0)))
    rows, cols = [], []
    step = max(1, min(2**24 // n, 2**24 // (forward.shape[1] * half_forward.shape[1] * 8)))
    for start in range(0, n, step):
        stop = min(n, start + step)
        block = np.arange(stop - start)
        in_set = np.zeros((stop - start, n), dtype=bool)               # the block's k1-reciprocal sets R(i)
        in_set[np.repeat(block, mutual[start:stop].sum(axis=1)), forward[start:stop][mutual[start:stop]]] = True
        candidates = half_forward[forward[start:stop]]                 # (B, k1 + 1, k1/2 + 1)
        valid = half_mutual[forward[start:stop]]
        shared = (in_set[block[:, None, None], candidates] & valid).sum(axis=2)
        accept = mutual[start:stop] & (shared > 2.0 / 3.0 * valid.sum(axis=2))
        taken = accept[..., None] & valid
        in_set[np.nonzero(taken)[0], candidates[taken]] = True          # R(i) expanded
        row, col = np.divmod(np.flatnonzero(in_set), n)                 # row-major: the CSR order
        rows.append(row + start)
        cols.append(col)
    row, col = np.concatenate(rows), np.concatenate(cols)
    weight = np.exp(-trial.pair_distances(row, col) / np.maximum(trial.row_max[row], 1e-12))
    totals = np.bincount(row, weights=weight, minlength=n)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=n))])
    return scipy.sparse.csr_matrix((weight / totals[row], col, indptr), shape=(n, n))


def _query_expansion(nearest: np.ndarray, n: int) -> scipy.sparse.csr_matrix:
    """The averaging matrix of local query expansion: row i holds 1/k2 at i's k2 nearest neighbours."""
    k = nearest.shape[1]
    return scipy.sparse.csr_matrix((np.full(n * k, 1.0 / k), (np.repeat(np.arange(n), k), nearest.ravel())),
                                   shape=(n, n))


def _blend_jaccard(out: np.ndarray, weights: scipy.sparse.csr_matrix, lambda_value: float,
                   memory_budget: int) -> None:
    """``out`` (d of every query x gallery pair) becomes (1 - lambda) Jaccard + lambda d, in blocks of queries
    whose join of non-zeros and whose query x gallery sums fit the memory budget. Most pairs share no non-zero
    (Jaccard distance 1): only the others are computed one by one."""
    num_query, num_gallery = out.shape
    gallery = weights[num_query:].tocsc()                              # (G, N): the rows holding column k
    column_counts = np.diff(gallery.indptr)
    query_nonzeros = np.diff(weights.indptr[: num_query + 1])
    pairs = np.bincount(np.repeat(np.arange(num_query), query_nonzeros),
                        weights=column_counts[weights.indices[: weights.indptr[num_query]]], minlength=num_query)
    bounds = np.concatenate([[0.0], np.cumsum(pairs)])
    pair_limit = max(1, memory_budget // PAIR_BYTES)
    row_limit = max(1, memory_budget // (16 * max(num_gallery, 1)))   # the B x G sums and their positions
    start = 0
    while start < num_query:
        stop = int(np.searchsorted(bounds, bounds[start] + pair_limit, side="right")) - 1
        stop = min(num_query, start + row_limit, max(stop, start + 1))
        overlap = _min_sums(weights[start:stop], gallery, column_counts).ravel()
        shared = np.flatnonzero(overlap)
        block = out[start:stop].reshape(-1)
        near = block[shared] * lambda_value
        block *= lambda_value
        block += 1.0 - lambda_value
        overlap = overlap[shared]
        block[shared] = near + (1.0 - lambda_value) * (1.0 - overlap / (2.0 - overlap))
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
