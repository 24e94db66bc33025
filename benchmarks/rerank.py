"""Benchmark: k-reciprocal re-ranking (``pfanet evaluate --rerank kreciprocal``) on SYSU-MM01-sized features.

Inputs: every SYSU-MM01 test image with the real per-camera counts (``benchmarks/evaluate.py``'s index):
3,803 IR queries against all 6,775 RGB gallery candidates, 2048-d random features with identity structure.

Measures, as one JSON line:
* the vectorised re-ranking (``pfanet_cli/evaluation/rerank.py``) at full size: seconds, and peak memory as
  the largest NumPy/SciPy allocation total seen by ``tracemalloc`` during the call and the process's peak
  resident set (which also holds the features and the interpreter);
* against a straightforward per-row implementation of the same method (dense N x N distance and weight
  matrices, a loop over rows for the k-reciprocal sets and over queries for the Jaccard sums, an inverted
  index of the non-zeros: the structure of the authors' Python code), on a subset of ``--subset-queries``
  queries and ``--subset-gallery`` gallery images so the dense baseline fits comfortably: both times, the
  ratio, and the largest difference of their distances.

    python benchmarks/rerank.py [--dim 2048] [--seed 0] [--subset-queries 1000] [--subset-gallery 1500]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
import tracemalloc

import numpy as np

from pfanet_cli.evaluation.rerank import RerankConfig, kreciprocal_distances

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from evaluate import random_features, sysu_test_index  # noqa: E402 - the benchmark folder's shared index


def per_row_rerank(queries: np.ndarray, gallery: np.ndarray, k1: int = 20, k2: int = 6, lam: float = 0.3):
    """The method one row at a time with dense matrices (float64)."""
    feats = np.concatenate([queries, gallery]).astype(np.float64)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    n, num_query = len(feats), len(queries)
    dist = np.maximum(2.0 - 2.0 * feats @ feats.T, 0.0)
    dist /= dist.max(axis=1, keepdims=True)
    rank = np.argsort(dist, axis=1, kind="stable")
    weights = np.zeros((n, n))
    half = int(np.around(k1 / 2.0))
    for i in range(n):
        forward = rank[i, : k1 + 1]
        members = forward[(rank[forward, : k1 + 1] == i).any(axis=1)]
        expanded = members
        for candidate in members:
            cand_forward = rank[candidate, : half + 1]
            extra = cand_forward[(rank[cand_forward, : half + 1] == candidate).any(axis=1)]
            if len(np.intersect1d(extra, members)) > 2.0 / 3.0 * len(extra):
                expanded = np.append(expanded, extra)
        expanded = np.unique(expanded)
        w = np.exp(-dist[i, expanded])
        weights[i, expanded] = w / w.sum()
    if k2 != 1:
        weights = np.stack([weights[rank[i, :k2]].mean(axis=0) for i in range(n)])
    holders = [np.flatnonzero(weights[:, k]) for k in range(n)]
    final = np.empty((num_query, n - num_query))
    for i in range(num_query):
        overlap = np.zeros(n)
        for k in np.flatnonzero(weights[i]):
            overlap[holders[k]] += np.minimum(weights[i, k], weights[holders[k], k])
        overlap = overlap[num_query:]
        final[i] = (1 - lam) * (1 - overlap / (2 - overlap)) + lam * dist[i, num_query:]
    return final


def timed(function, *args):
    tracemalloc.start()
    started = time.perf_counter()
    result = function(*args)
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, seconds, peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subset-queries", type=int, default=1000)
    parser.add_argument("--subset-gallery", type=int, default=1500)
    args = parser.parse_args(argv)
    pids, camids, _, _ = sysu_test_index()
    feats = random_features(pids, camids, args.dim, args.seed)
    queries, gallery = feats[np.isin(camids, (3, 6))], feats[~np.isin(camids, (3, 6))]
    config = RerankConfig()
    full, full_seconds, full_peak = timed(kreciprocal_distances, queries, gallery, config)
    rng = np.random.default_rng(args.seed)
    sub_q = queries[np.sort(rng.choice(len(queries), args.subset_queries, replace=False))]
    sub_g = gallery[np.sort(rng.choice(len(gallery), args.subset_gallery, replace=False))]
    vectorised, vec_seconds, vec_peak = timed(kreciprocal_distances, sub_q, sub_g, config)
    baseline, base_seconds, base_peak = timed(per_row_rerank, sub_q, sub_g)
    print(json.dumps({
        "benchmark": "rerank", "machine": platform.machine(), "cpus": len(os.sched_getaffinity(0)),
        "queries": len(queries), "gallery": len(gallery), "dim": args.dim, "k1": config.k1, "k2": config.k2,
        "lambda": config.lambda_value,
        "full_seconds": round(full_seconds, 2), "full_peak_traced_mib": round(full_peak / 2**20, 1),
        "output_mib": round(full.nbytes / 2**20, 1),
        "process_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "subset": [args.subset_queries, args.subset_gallery],
        "subset_vectorised_seconds": round(vec_seconds, 2), "subset_per_row_seconds": round(base_seconds, 2),
        "subset_speedup": round(base_seconds / vec_seconds, 1),
        "subset_vectorised_peak_traced_mib": round(vec_peak / 2**20, 1),
        "subset_per_row_peak_traced_mib": round(base_peak / 2**20, 1),
        "subset_max_abs_difference": float(np.abs(vectorised - baseline).max()),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
