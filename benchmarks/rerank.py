"""Benchmark: k-reciprocal re-ranking (``pfanet evaluate --rerank kreciprocal``) against the authors' code, at
SYSU-MM01 size.

Inputs: every SYSU-MM01 test image with the real per-camera counts (``benchmarks/evaluate.py``'s index), 2048-d
random features with identity structure; the 3,803 IR queries and the ten galleries of the all-search
multi-shot setting (3,010 images each, drawn with the official permutation file: ``--perm-file`` when it
exists, else the copy shipped with pfanet).

The baseline is the authors' Python implementation (``zhunzhong07/person-re-ranking``,
``python-version/re_ranking_ranklist.py``), *restated here in our own code*: the same algorithm with the same
computational structure (float32 N x N matrices, a full argsort of every row, a Python loop over the N rows for
the k-reciprocal sets, the query expansion and the inverted index, one over the queries for the Jaccard sums).
Their file is not copied into pfanet. Its inputs are the Euclidean distance matrices of the L2-normalised
features (float32, computed before the timed call, as its callers do).

Prints one JSON line:
* pfanet (``rerank.KReciprocal``), the setting's trials sharing one neighbour search as ``pfanet evaluate`` does:
  seconds in all and per trial; one trial on its own; the torch path on the CPU (one trial);
* the restated authors' code: seconds per trial (median of ``--baseline-trials`` trials) and the ratios, without
  and with the three distance matrices its caller computes first (pfanet's time includes its own products);
* wall-clock and CPU seconds of each (CPU seconds move less when other jobs share the cores);
* memory: pfanet's peak traced by ``tracemalloc`` (NumPy's allocations) over the setting, in a separate run
  so tracing does not slow the timed ones, and the process's peak resident set after pfanet's runs and after
  the authors' code's (whose N x N float32 and float64 matrices take several GiB);
* exactness on trial 0: the largest distance difference and metric difference (R1, mAP, mINP with SYSU-MM01's
  camera rule) against the restated code computed in float64 (the exact reference), and against it in
  float32 (the authors' precision, whose rounding changes some neighbour sets).

    python benchmarks/rerank.py [--trials 10] [--baseline-trials 2] [--repeats 3] [--dim 2048] [--seed 0]
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
from pathlib import Path

import numpy as np

from pfanet_cli.evaluation.galleries import sample_sysu_galleries
from pfanet_cli.evaluation.ranking import cosine_normalise
from pfanet_cli.evaluation.rerank import KReciprocal, RerankConfig
from pfanet_cli.evaluation.scoring import scored_outcome

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from evaluate import SHARED_PERM, benchmark_perm, random_features, sysu_test_index  # noqa: E402 - shared index


def restated_authors_rerank(q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray, k1: int = 20, k2: int = 6,
                            lam: float = 0.3, dtype=np.float32) -> np.ndarray:
    """The authors' re_ranking(q_g_dist, q_q_dist, g_g_dist) restated (see the module): Euclidean distance
    matrices in, re-ranked query x gallery distances out; ``dtype`` float32 as theirs, float64 as reference."""
    num_query = len(q_g)
    squared = np.power(np.block([[q_q, q_g], [q_g.T, g_g]]), 2).astype(dtype)
    dist = np.transpose(squared / np.max(squared, axis=0))             # each column by its largest, transposed
    n = len(dist)
    rank = np.argsort(dist).astype(np.int32)
    weights = np.zeros_like(dist).astype(dtype)
    half = int(np.around(k1 / 2.0))
    for i in range(n):
        members = _reciprocal_set(rank, i, k1)
        expanded = members
        for candidate in members:
            extra = _reciprocal_set(rank, candidate, half)
            if len(np.intersect1d(extra, members)) > 2.0 / 3.0 * len(extra):
                expanded = np.append(expanded, extra)
        expanded = np.unique(expanded)
        w = np.exp(-dist[i, expanded])
        weights[i, expanded] = w / np.sum(w)
    if k2 != 1:
        expanded_weights = np.zeros_like(weights, dtype=dtype)
        for i in range(n):
            expanded_weights[i, :] = np.mean(weights[rank[i, :k2], :], axis=0)
        weights = expanded_weights
    holders = [np.where(weights[:, k] != 0)[0] for k in range(n)]
    jaccard = np.zeros((num_query, n), dtype=dtype)
    for i in range(num_query):
        overlap = np.zeros((1, n), dtype=dtype)
        columns = np.where(weights[i, :] != 0)[0]
        rows = [holders[k] for k in columns]
        for k, held in zip(columns, rows):
            overlap[0, held] = overlap[0, held] + np.minimum(weights[i, k], weights[held, k])
        jaccard[i] = 1 - overlap / (2.0 - overlap)
    return (jaccard * (1 - lam) + dist[:num_query] * lam)[:, num_query:]


def _reciprocal_set(rank: np.ndarray, i: int, k: int) -> np.ndarray:
    """The j among i's k + 1 nearest that hold i among their own k + 1 nearest."""
    forward = rank[i, : k + 1]
    return forward[np.where(rank[forward, : k + 1] == i)[0]]


def euclidean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(2.0 - 2.0 * a @ b.T, 0.0))


def metrics(dist: np.ndarray, pids: np.ndarray, camids: np.ndarray, queries: np.ndarray,
            gallery: np.ndarray) -> dict[str, float]:
    """R1, mAP, mINP (percent) of one trial ranked by ``dist``, with SYSU-MM01's camera rule."""
    out = scored_outcome(-np.asarray(dist, dtype=np.float64), pids, camids, queries, gallery, dedup=True,
                         junk="sysu", memory_budget=256 * 2**20)
    valid = out.valid
    return {"r1": float(np.mean(out.cmc_rank[valid] == 1) * 100), "mAP": float(out.ap[valid].mean() * 100),
            "mINP": float(out.inp[valid].mean() * 100)}


def largest_metric_difference(a: dict, b: dict) -> float:
    return max(abs(a[key] - b[key]) for key in a)


def run_setting(queries: np.ndarray, pool: np.ndarray, trials: list[np.ndarray],
                config: RerankConfig) -> tuple[np.ndarray, float, float]:
    """pfanet's re-ranking of every trial (gallery rows numbered within ``pool``), sharing one search, each
    trial's distances dropped once computed (as ``pfanet evaluate`` drops them once scored) but the first's;
    wall-clock and CPU seconds."""
    started, cpu = time.perf_counter(), time.process_time()
    reranker = KReciprocal(queries, pool, config)
    first = reranker.distances(None, trials[0])
    for gallery in trials[1:]:
        reranker.distances(None, gallery)
    return first, time.perf_counter() - started, time.process_time() - cpu


def timed_call(function, *args) -> tuple[np.ndarray, float, float]:
    """``function(*args)``, its wall-clock and its CPU seconds."""
    started, cpu = time.perf_counter(), time.process_time()
    out = function(*args)
    return out, time.perf_counter() - started, time.process_time() - cpu


def time_pfanet(feats: np.ndarray, query_rows: np.ndarray, pool: np.ndarray, galleries: list[np.ndarray],
                repeats: int) -> dict:
    """pfanet's setting (``repeats`` runs), one trial on its own, and the torch path on the CPU; the outputs of
    trial 0 and the peak ``tracemalloc`` sees over the setting (a separate, untimed run)."""
    config = RerankConfig()
    queries, pool_feats = feats[query_rows], feats[pool]
    trials = [np.searchsorted(pool, g) for g in galleries]
    out = {"setting": [], "setting_cpu": [], "single": [], "single_cpu": []}
    for _ in range(repeats):
        first, seconds, cpu = run_setting(queries, pool_feats, trials, config)
        out["setting"].append(seconds)
        out["setting_cpu"].append(cpu)
        single, seconds, cpu = timed_call(lambda: KReciprocal(queries, feats[galleries[0]], config).distances())
        out["single"].append(seconds)
        out["single_cpu"].append(cpu)
    on_torch, out["torch"], _ = timed_call(
        lambda: KReciprocal(queries, feats[galleries[0]], config.on("cpu")).distances())
    tracemalloc.start()
    run_setting(queries, pool_feats, trials, config)
    out["traced_peak"] = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    out["trial0"], out["single_out"], out["torch_out"] = first, single, on_torch
    return out


def time_authors(unit: np.ndarray, query_rows: np.ndarray, galleries: list[np.ndarray]) -> dict:
    """The restated authors' code on each of ``galleries`` (float32 as theirs), and the three distance matrices
    its caller computes first (float32 products, timed apart); its output on the first."""
    out = {"runs": [], "cpu": [], "inputs": [], "inputs_cpu": [], "first": None}
    for gallery in galleries:
        q, g = unit[query_rows], unit[gallery]
        inputs, seconds, cpu = timed_call(lambda: (euclidean(q, g), euclidean(q, q), euclidean(g, g)))
        out["inputs"].append(seconds)
        out["inputs_cpu"].append(cpu)
        result, seconds, cpu = timed_call(restated_authors_rerank, *inputs)
        out["runs"].append(seconds)
        out["cpu"].append(cpu)
        out["first"] = result if out["first"] is None else out["first"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--baseline-trials", type=int, default=2, help="trials the restated authors' code runs")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of pfanet; the median is reported")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--perm-file", type=Path, default=SHARED_PERM)
    args = parser.parse_args(argv)

    pids, camids, paths, _ = sysu_test_index()
    feats = random_features(pids, camids, args.dim, args.seed)
    perm, _ = benchmark_perm(args.perm_file)
    _, galleries = sample_sysu_galleries(pids, camids, paths, mode="all", shot="multi", trials=args.trials,
                                         sampler="official", perm=perm)
    galleries = [np.sort(g) for g in galleries]
    query_rows = np.flatnonzero(np.isin(camids, (3, 6)))
    pool = np.unique(np.concatenate(galleries))
    mine = time_pfanet(feats, query_rows, pool, galleries, args.repeats)
    pfanet_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    authors = time_authors(cosine_normalise(feats).astype(np.float32), query_rows, galleries[: args.baseline_trials])
    q64, g64 = cosine_normalise(feats[query_rows]), cosine_normalise(feats[galleries[0]])
    reference = restated_authors_rerank(euclidean(q64, g64), euclidean(q64, q64), euclidean(g64, g64),
                                        dtype=np.float64)

    scores = metrics(mine["trial0"], pids, camids, query_rows, galleries[0])
    setting_s, setting_cpu, single_s, single_cpu = (float(np.median(mine[key]))
                                                    for key in ("setting", "setting_cpu", "single", "single_cpu"))
    baseline_s, baseline_cpu = float(np.median(authors["runs"])), float(np.median(authors["cpu"]))
    inputs_s, inputs_cpu = float(np.median(authors["inputs"])), float(np.median(authors["inputs_cpu"]))
    print(json.dumps({
        "benchmark": "rerank", "cpu": platform.processor() or platform.machine(),
        "cpus": len(os.sched_getaffinity(0)), "load_average_1min": round(os.getloadavg()[0], 2),
        "queries": len(query_rows), "gallery": len(galleries[0]), "pool": len(pool), "trials": args.trials,
        "dim": args.dim, "k1": 20, "k2": 6, "lambda": 0.3,
        "pfanet_setting_seconds": round(setting_s, 2), "pfanet_per_trial_seconds": round(setting_s / args.trials, 3),
        "pfanet_setting_cpu_seconds": round(setting_cpu, 2),
        "pfanet_single_trial_seconds": round(single_s, 2), "pfanet_single_trial_cpu_seconds": round(single_cpu, 2),
        "pfanet_runs": [round(s, 2) for s in mine["setting"]],
        "pfanet_torch_cpu_single_trial_seconds": round(mine["torch"], 2),
        "authors_restated_per_trial_seconds": round(baseline_s, 2),
        "authors_restated_per_trial_cpu_seconds": round(baseline_cpu, 2),
        "authors_runs": [round(s, 2) for s in authors["runs"]],
        "authors_inputs_per_trial_seconds": round(inputs_s, 2),
        "authors_inputs_per_trial_cpu_seconds": round(inputs_cpu, 2),
        "speedup_per_trial_in_setting": round(baseline_s / (setting_s / args.trials), 1),
        "speedup_per_trial_in_setting_cpu": round(baseline_cpu / (setting_cpu / args.trials), 1),
        "speedup_per_trial_in_setting_with_inputs": round((baseline_s + inputs_s) / (setting_s / args.trials), 1),
        "speedup_per_trial_in_setting_with_inputs_cpu": round((baseline_cpu + inputs_cpu) / (setting_cpu / args.trials),
                                                              1),
        "speedup_single_trial": round(baseline_s / single_s, 1),
        "speedup_single_trial_cpu": round(baseline_cpu / single_cpu, 1),
        "pfanet_setting_peak_traced_mib": round(mine["traced_peak"] / 2**20, 1),
        "pfanet_process_peak_rss_mib": round(pfanet_rss, 1),
        "process_peak_rss_mib_with_authors": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "metrics_trial0": scores,
        "vs_float64_reference": {"max_abs_distance": float(np.abs(mine["trial0"] - reference).max()),
                                 "max_metric_pp": largest_metric_difference(
                                     scores, metrics(reference, pids, camids, query_rows, galleries[0]))},
        "vs_authors_float32": {"max_abs_distance": float(np.abs(mine["trial0"] - authors["first"]).max()),
                               "max_metric_pp": largest_metric_difference(
                                   scores, metrics(authors["first"], pids, camids, query_rows, galleries[0]))},
        "single_and_torch_vs_setting_max_abs": float(max(np.abs(mine["single_out"] - mine["trial0"]).max(),
                                                         np.abs(mine["torch_out"] - mine["trial0"]).max())),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
