"""Benchmark: the full SYSU-MM01 protocol, pfanet's evaluator against AGW's ``eval_sysu`` and a per-query loop
(SPEC §6).

Index: every test image of both modalities with the real per-camera counts of SYSU-MM01
(``pfanet_cli/resources/sysu_counts.json``: 96 test ids, 3,803 IR queries, 6,775 RGB gallery
candidates), paths ``cam?/<pid>/<n>.jpg``; 2048-d float32 random features with identity structure.
Gallery sampler: the official permutation file ``/work/shared/sysu-mm01/rand_perm_cam.mat`` (or
``--perm-file``) when it exists, else the copy shipped with pfanet.

Runs the four settings (all/indoor x single/multi) x 10 trials with
* ``pfanet evaluate --features F --all-settings`` as a whole process (start-up, reading the features file,
  the protocol, the table), median of ``--repeats`` runs;
* the toolkit in this process: ``evaluate_sysu_settings`` (one matrix product and one sort shared by the four
  settings; median of ``--repeats``) and four separate ``evaluate_sysu`` calls;
* AGW's evaluation (``mangye16/Cross-Modal-Re-ID-baseline``: ``test.py`` takes, per trial, the float64 product of
  the query and gallery features and calls ``eval_sysu`` of ``eval_metrics.py``), *restated here in our own
  code* with the same computational structure (a full argsort, then a Python loop over the queries with a
  per-rank Python list for the precision); their file is not copied into pfanet. ``--agw-trials`` times
  fewer trials per setting and scales the total (the JSON says so);
* the loop oracle of ``pfanet_cli/evaluation/reference.py`` (one query at a time: cosine similarities to
  the trial gallery, stable argsort, junk filter, de-duplication, AP, INP);
and prints one JSON line: times (wall-clock, and CPU seconds, which move less when other jobs share the
cores), speed-ups, the largest difference of any metric of any trial from the
oracle and from AGW's (whose CMC is summed in float32, so it differs in the 6th digit), and memory: the peak
``tracemalloc`` sees during one untimed ``evaluate_sysu_settings`` call and the ``pfanet evaluate`` processes'
peak resident set.

    python benchmarks/evaluate.py [--trials 10] [--agw-trials 10] [--repeats 3] [--dim 2048] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from importlib import resources
from pathlib import Path

import numpy as np

from pfanet_cli.data.sysu import ALL_CAMERAS, bundled_perm_bytes, load_rand_perm_cam
from pfanet_cli.evaluation.features import save_features
from pfanet_cli.evaluation.galleries import sample_sysu_galleries
from pfanet_cli.evaluation.protocols import ALL_SYSU_SETTINGS, evaluate_sysu, evaluate_sysu_settings
from pfanet_cli.evaluation.ranking import cosine_normalise
from pfanet_cli.evaluation.reference import reference_sysu

SHARED_PERM = Path(__file__).resolve().parents[2] / "shared" / "sysu-mm01" / "rand_perm_cam.mat"


def sysu_test_index() -> tuple[np.ndarray, np.ndarray, list[str], dict]:
    """pids, camids, paths of every SYSU-MM01 test image (real counts) and the counts used."""
    counts_file = resources.files("pfanet_cli").joinpath("resources/sysu_counts.json")
    info = json.loads(counts_file.read_text(encoding="utf-8"))
    pids, camids, paths = [], [], []
    for pid in sorted(info["splits"]["test"]):
        for cam in ALL_CAMERAS:
            n = int(info["counts"][f"cam{cam}"].get(str(pid), 0))
            for k in range(1, n + 1):
                pids.append(pid)
                camids.append(cam)
                paths.append(f"cam{cam}/{pid:04d}/{k:04d}.jpg")
    return np.array(pids, np.int64), np.array(camids, np.int64), paths, info["counts"]


def random_features(pids: np.ndarray, camids: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """Identity vector + modality offset + camera offset + noise, float32 (R1 well below 100%)."""
    rng = np.random.default_rng(seed)
    ids = {int(p): rng.standard_normal(dim) for p in np.unique(pids)}
    cams = {c: 0.6 * rng.standard_normal(dim) for c in ALL_CAMERAS}
    modality = {False: 0.8 * rng.standard_normal(dim), True: 0.8 * rng.standard_normal(dim)}
    feats = np.empty((len(pids), dim), dtype=np.float32)
    for row, (pid, cam) in enumerate(zip(pids.tolist(), camids.tolist())):
        feats[row] = ids[pid] + cams[cam] + modality[cam in (3, 6)] + 4.5 * rng.standard_normal(dim)
    return feats


def benchmark_perm(perm_file: Path) -> tuple[dict, str]:
    """The official permutation: ``perm_file`` when it exists, else the copy shipped with pfanet (the real
    SYSU-MM01's, which fits the real counts)."""
    if perm_file.is_file():
        return load_rand_perm_cam(perm_file), f"official rand_perm_cam.mat ({perm_file})"
    return load_rand_perm_cam(bundled_perm_bytes()), "official rand_perm_cam.mat (the copy shipped with pfanet)"


def restated_agw_eval_sysu(distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray, q_camids: np.ndarray,
                           g_camids: np.ndarray, max_rank: int = 20) -> tuple[np.ndarray, float, float, np.ndarray]:
    """AGW's eval_sysu restated (see the module): de-duplicated CMC, mAP, mINP of a distance matrix, and the
    standard CMC, which theirs computes too but does not return (kept so the work timed is theirs)."""
    num_g = distmat.shape[1]
    max_rank = min(max_rank, num_g)
    indices = np.argsort(distmat, axis=1)
    ranked_ids = g_pids[indices]
    matches = (ranked_ids == q_pids[:, np.newaxis]).astype(np.int32)
    dedup_cmc, standard_cmc, aps, inps = [], [], [], []
    valid = 0.0
    for q in range(len(distmat)):
        keep = np.invert((q_camids[q] == 3) & (g_camids[indices[q]] == 2))
        kept_ids = ranked_ids[q][keep]
        firsts = np.unique(kept_ids, return_index=True)[1]
        first_ids = [kept_ids[i] for i in sorted(firsts)]
        dedup_cmc.append((first_ids == q_pids[q]).astype(np.int32).cumsum()[:max_rank])
        hits = matches[q][keep]
        if not np.any(hits):
            continue
        cumulative = hits.cumsum()
        last = np.max(np.where(hits == 1))
        inps.append(cumulative[last] / (last + 1.0))
        cumulative[cumulative > 1] = 1
        standard_cmc.append(cumulative[:max_rank])
        valid += 1.0
        precision = [x / (i + 1.0) for i, x in enumerate(hits.cumsum())]
        aps.append((np.asarray(precision) * hits).sum() / hits.sum())
    standard = np.asarray(standard_cmc).astype(np.float32).sum(0) / valid
    cmc = np.asarray(dedup_cmc).astype(np.float32).sum(0) / valid
    return cmc, float(np.mean(aps)), float(np.mean(inps)), standard


def agw_protocol(unit: np.ndarray, pids: np.ndarray, camids: np.ndarray, galleries: list[np.ndarray],
                 timed: int) -> tuple[list[dict], float, float]:
    """AGW's test.py loop for one setting: per trial the float64 product of the (L2-normalised) query and
    gallery features, then eval_sysu; the metrics of each trial (percent) and the wall-clock and CPU seconds of
    the first ``timed`` trials."""
    queries = np.flatnonzero(np.isin(camids, (3, 6)))
    per_trial, seconds, cpu = [], 0.0, 0.0
    for gallery in galleries[:timed]:
        start, cpu_start = time.perf_counter(), time.process_time()
        distmat = np.matmul(unit[queries], np.transpose(unit[gallery]))
        cmc, m_ap, m_inp, _ = restated_agw_eval_sysu(-distmat, pids[queries], pids[gallery], camids[queries],
                                                  camids[gallery])
        seconds += time.perf_counter() - start
        cpu += time.process_time() - cpu_start
        per_trial.append({**{f"r{rank}": float(cmc[rank - 1]) * 100 for rank in (1, 5, 10, 20)},
                          "mAP": m_ap * 100, "mINP": m_inp * 100})
    return per_trial, seconds, cpu


def agw_all_settings(features: np.ndarray, pids: np.ndarray, camids: np.ndarray, paths: list[str], kwargs: dict,
                     shared: list, timed: int) -> tuple[float, float, float, float]:
    """AGW's evaluation of the four settings (``timed`` trials each; wall-clock and CPU seconds scaled to all),
    and the largest differences of pfanet's trials (``shared``) from its mAP and mINP, and from its
    float32-summed CMC."""
    unit = cosine_normalise(features)
    agw_s, agw_cpu, agw_diff, agw_cmc_diff = 0.0, 0.0, 0.0, 0.0
    for (mode, shot), mine in zip(ALL_SYSU_SETTINGS, shared):
        galleries = sample_sysu_galleries(pids, camids, paths, mode=mode, shot=shot, **kwargs)[1]
        per_trial, seconds, cpu = agw_protocol(unit, pids, camids, galleries, timed)
        agw_s += seconds * kwargs["trials"] / timed
        agw_cpu += cpu * kwargs["trials"] / timed
        for a, b in zip(mine.per_trial, per_trial):
            agw_diff = max(agw_diff, abs(a["mAP"] - b["mAP"]), abs(a["mINP"] - b["mINP"]))
            agw_cmc_diff = max(agw_cmc_diff, max(abs(a[k] - b[k]) for k in ("r1", "r5", "r10", "r20")))
    return agw_s, agw_cpu, agw_diff, agw_cmc_diff


def traced_peak_bytes(function, *args, **kwargs) -> int:
    """The largest total of NumPy's (and Python's) allocations that ``tracemalloc`` sees during one call."""
    tracemalloc.start()
    try:
        function(*args, **kwargs)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def whole_process_seconds(features: np.ndarray, pids: np.ndarray, camids: np.ndarray, paths: list[str],
                          perm_file: Path, trials: int, repeats: int) -> tuple[list[float], list[float]]:
    """``pfanet evaluate --features F --all-settings`` in a new process: wall-clock and CPU seconds of each run."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "features.npz"
        save_features(path, features, pids, camids, paths, dataset="sysu")
        command = [sys.executable, "-m", "pfanet_cli", "evaluate", "--features", str(path), "--all-settings",
                   "--trials", str(trials), "--sampler", "official"]
        command += ["--perm-file", str(perm_file)] if perm_file.is_file() else []
        runs, cpu = [], []
        for _ in range(repeats):
            start, cpu_start = time.perf_counter(), children_cpu_seconds()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            runs.append(time.perf_counter() - start)
            cpu.append(children_cpu_seconds() - cpu_start)
    return runs, cpu


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--agw-trials", type=int, default=None,
                        help="trials per setting AGW's evaluation is timed on (default: all); the total is scaled")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of pfanet (process and in-process); the medians are compared")
    parser.add_argument("--perm-file", type=Path, default=SHARED_PERM)
    args = parser.parse_args(argv)

    pids, camids, paths, _ = sysu_test_index()
    features = random_features(pids, camids, args.dim, args.seed)
    perm, perm_source = benchmark_perm(args.perm_file)
    kwargs = dict(trials=args.trials, sampler="official", perm=perm)

    process_runs, process_cpu = whole_process_seconds(features, pids, camids, paths, args.perm_file, args.trials,
                                                      args.repeats)
    process_s = float(np.median(process_runs))
    runs, runs_cpu = [], []
    for _ in range(args.repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        shared = evaluate_sysu_settings(features, pids, camids, paths, ALL_SYSU_SETTINGS, **kwargs)
        runs.append(time.perf_counter() - start)
        runs_cpu.append(time.process_time() - cpu_start)
    vectorised_s = float(np.median(runs))

    start = time.perf_counter()
    separate = [evaluate_sysu(features, pids, camids, paths, mode=m, shot=s, **kwargs) for m, s in ALL_SYSU_SETTINGS]
    separate_s = time.perf_counter() - start

    traced_peak = traced_peak_bytes(evaluate_sysu_settings, features, pids, camids, paths, ALL_SYSU_SETTINGS,
                                    **kwargs)
    timed = min(args.agw_trials or args.trials, args.trials)
    agw_s, agw_cpu, agw_diff, agw_cmc_diff = agw_all_settings(features, pids, camids, paths, kwargs, shared, timed)

    start = time.perf_counter()
    oracle = [reference_sysu(features, pids, camids, paths, mode=m, shot=s, **kwargs) for m, s in ALL_SYSU_SETTINGS]
    oracle_s = time.perf_counter() - start

    diff = 0.0
    settings = {}
    for (mode, shot), fast, alone, ref in zip(ALL_SYSU_SETTINGS, shared, separate, oracle):
        for mine in (fast, alone):
            for a, b in zip(mine.per_trial, ref["per_trial"]):
                diff = max(diff, max(abs(a[k] - b[k]) for k in a))
            diff = max(diff, float(np.abs(mine.cmc - ref["cmc"]).max()))
        settings[f"{mode}/{shot}"] = {
            "r1": round(fast.metrics["r1"], 4), "mAP": round(fast.metrics["mAP"], 4),
            "mINP": round(fast.metrics["mINP"], 4), "num_gallery": fast.num_gallery,
            "num_valid_query": fast.num_valid_query,
        }
    line = {
        "benchmark": "evaluate",
        "protocol": f"SYSU-MM01, 4 settings x {args.trials} trials, sampler official ({perm_source})",
        "num_query": shared[0].num_query,
        "num_candidates": int(np.isin(camids, (1, 2, 4, 5)).sum()),
        "dim": args.dim,
        "process_s": round(process_s, 3),
        "process_runs_s": [round(r, 2) for r in process_runs],
        "process_cpu_s": round(float(np.median(process_cpu)), 3),
        "vectorised_s": round(vectorised_s, 3),
        "vectorised_first_run_s": round(runs[0], 3),
        "vectorised_cpu_s": round(float(np.median(runs_cpu)), 3),
        "vectorised_separate_s": round(separate_s, 3),
        "agw_eval_sysu_s": round(agw_s, 2),
        "agw_eval_sysu_cpu_s": round(agw_cpu, 2),
        "agw_trials_timed_per_setting": timed,
        "oracle_s": round(oracle_s, 3),
        "pfanet_peak_traced_mib": round(traced_peak / 2**20, 1),
        "process_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "speedup_vs_agw_process": round(agw_s / process_s, 1),
        "speedup_vs_agw_in_process": round(agw_s / vectorised_s, 1),
        "speedup_vs_agw_process_cpu": round(agw_cpu / float(np.median(process_cpu)), 1),
        "speedup_vs_agw_in_process_cpu": round(agw_cpu / float(np.median(runs_cpu)), 1),
        "speedup": round(oracle_s / vectorised_s, 1),
        "speedup_first_run": round(oracle_s / runs[0], 1),
        "speedup_separate": round(oracle_s / separate_s, 1),
        "max_abs_metric_diff": diff,
        "max_map_minp_diff_vs_agw": agw_diff,
        "max_cmc_diff_vs_agw_float32": agw_cmc_diff,
        "settings": settings,
        "cpu_cores": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "machine": platform.processor() or platform.machine(),
        "numpy": np.__version__,
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
