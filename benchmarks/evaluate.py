"""Benchmark: the full SYSU-MM01 protocol, vectorised evaluator vs a per-query loop (SPEC §6).

Index: every test image of both modalities with the real per-camera counts of SYSU-MM01
(``pfanet_cli/resources/sysu_counts.json``: 96 test ids, 3,803 IR queries, 6,775 RGB gallery
candidates), paths ``cam?/<pid>/<n>.jpg``; 2048-d float32 random features with identity structure.
Gallery sampler: the official permutation file when ``/work/shared/sysu-mm01/rand_perm_cam.mat``
(or ``--perm-file``) exists, else a permutation generated in the official format.

Runs the four settings (all/indoor x single/multi) x 10 trials with
* the toolkit: ``evaluate_sysu_settings`` (what ``pfanet evaluate --all-settings`` runs: one matrix
  product and one sort shared by the four settings), and four separate ``evaluate_sysu`` calls;
* the loop oracle of ``pfanet_cli/evaluation/reference.py`` (one query at a time: cosine similarities to
  the trial gallery, stable argsort, junk filter, de-duplication, AP, INP);
and prints one JSON line: times (the evaluator's median of ``--repeats`` runs, and its first run, which
also pays for fresh memory), speed-ups and the largest difference of any metric of any trial.

    python benchmarks/evaluate.py [--trials 10] [--dim 2048] [--seed 0] [--perm-file PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from importlib import resources
from pathlib import Path

import numpy as np

from pfanet_cli.data.sysu import ALL_CAMERAS, load_rand_perm_cam
from pfanet_cli.evaluation.protocols import ALL_SYSU_SETTINGS, evaluate_sysu, evaluate_sysu_settings
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


def synthetic_perm(counts: dict, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        cam: {int(pid): np.stack([rng.permutation(n) + 1 for _ in range(10)]) for pid, n in counts[f"cam{cam}"].items()}
        for cam in ALL_CAMERAS
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of the vectorised evaluator; the median is compared, the first is reported too")
    parser.add_argument("--perm-file", type=Path, default=SHARED_PERM)
    args = parser.parse_args(argv)

    pids, camids, paths, counts = sysu_test_index()
    features = random_features(pids, camids, args.dim, args.seed)
    if args.perm_file.is_file():
        perm, perm_source = load_rand_perm_cam(args.perm_file), "official rand_perm_cam.mat"
    else:
        perm, perm_source = synthetic_perm(counts, args.seed), "generated (official format)"
    kwargs = dict(trials=args.trials, sampler="official", perm=perm)

    runs = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        shared = evaluate_sysu_settings(features, pids, camids, paths, ALL_SYSU_SETTINGS, **kwargs)
        runs.append(time.perf_counter() - start)
    vectorised_s = float(np.median(runs))

    start = time.perf_counter()
    separate = [evaluate_sysu(features, pids, camids, paths, mode=m, shot=s, **kwargs) for m, s in ALL_SYSU_SETTINGS]
    separate_s = time.perf_counter() - start

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
        "vectorised_s": round(vectorised_s, 3),
        "vectorised_first_run_s": round(runs[0], 3),
        "vectorised_separate_s": round(separate_s, 3),
        "oracle_s": round(oracle_s, 3),
        "speedup": round(oracle_s / vectorised_s, 1),
        "speedup_first_run": round(oracle_s / runs[0], 1),
        "speedup_separate": round(oracle_s / separate_s, 1),
        "max_abs_metric_diff": diff,
        "settings": settings,
        "cpu_cores": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "numpy": np.__version__,
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
