"""A plain, per-query loop implementation of the SYSU-MM01, RegDB and LLCM protocols (SPEC §5).

It is the oracle for :mod:`pfanet_cli.evaluation.protocols`: written straight from the rules, one
query at a time, with its own gallery samplers, and shares no code with the toolkit's vectorised
version. The tests and ``benchmarks/evaluate.py`` both import it from here (no copy).

Rules restated:
* SYSU queries: every image of cameras 3 and 6. Gallery per trial from cameras 1, 2, 4, 5 (all)
  or 1, 2 (indoor), 1 or 10 images per (camera, person) folder. A cam3 query never sees a cam2
  gallery image.
* Similarity: cosine of L2-normalised features (float64), sorted decreasing; ties keep the gallery
  order, the order of the rows in the features file.
* CMC (SYSU): junk removed, each identity kept at its first occurrence, then the rank of the first
  match. RegDB: rank of the first match in the plain list.
* AP on the junk-filtered list (no de-duplication); INP = positives / rank of the last positive.
* Queries with no positive are skipped; metrics in percent, averaged over the valid queries.
* LLCM (docs/protocols.md): visible camids 1..9, NIR 11..19. Per trial, random.seed(trial), ids
  ascending, cameras in order, one random.choice per folder of sorted files: from the visible cameras
  1..9 (ir2vis: the gallery; queries are every NIR image of cameras 1, 2, 4..9) or the NIR cameras 1, 2,
  4..9 (vis2ir: the drawn images are the queries; the gallery is every visible image). A gallery image of
  the query's person from the query's camera number is junk. CMC as SYSU's.
* Same-modality diagnostic (``same_modality.py``): queries are every image of one modality's cameras (IR: 3, 6;
  RGB: 1, 2, 4, 5); the gallery per trial is drawn from the same cameras as AGW draws SYSU's; a gallery image of
  the query's person from the query's camera is junk. CMC as SYSU's.
"""

from __future__ import annotations

import random
from pathlib import PurePosixPath

import numpy as np

RANKS = {"r1": 1, "r5": 5, "r10": 10, "r20": 20}
KEYS = ("r1", "r5", "r10", "r20", "mAP", "mINP")


def unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64)
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def _folders(pids, camids, paths, cameras):
    folders = {}
    for row in range(len(pids)):
        if int(camids[row]) in cameras:
            folders.setdefault((int(camids[row]), int(pids[row])), []).append(row)
    for rows in folders.values():
        rows.sort(key=lambda r: PurePosixPath(paths[r]).name)
    return folders


def reference_agw_galleries(pids, camids, paths, mode, shot, trials, cameras=None):
    """AGW's process_gallery_sysu: seed the trial, ids ascending, cameras in order, sorted files."""
    if cameras is None:
        cameras = [1, 2, 4, 5] if mode == "all" else [1, 2]
    folders = _folders(pids, camids, paths, cameras)
    galleries = []
    for trial in range(trials):
        random.seed(trial)
        chosen = []
        for pid in sorted({p for (_, p) in folders}):
            for cam in cameras:
                if (cam, pid) not in folders:
                    continue
                files = folders[(cam, pid)]
                if shot == "single":
                    chosen.append(random.choice(files))
                else:
                    chosen.extend(random.sample(files, min(10, len(files))))
        galleries.append(chosen)
    return galleries


def reference_official_galleries(pids, camids, paths, perm, mode, shot, trials):
    """get_testing_set.m: camera by camera, persons ascending, the first 1/10 of row `trial`."""
    cameras = [1, 2, 4, 5] if mode == "all" else [1, 2]
    number = 1 if shot == "single" else 10
    folders = _folders(pids, camids, paths, cameras)
    galleries = []
    for trial in range(trials):
        chosen = []
        for cam in cameras:
            for pid in sorted(p for (c, p) in folders if c == cam):
                files = folders[(cam, pid)]
                for image_number in perm[cam][pid][trial][:number]:
                    chosen.append(files[int(image_number) - 1])
        galleries.append(chosen)
    return galleries


def query_outcome(query_vector, query_pid, query_cam, gallery, gallery_vectors, pids, camids, *, rule):
    """(CMC rank, AP, INP) of one query, or None when the gallery holds none of its images."""
    sims = gallery_vectors @ query_vector
    ranked = gallery[np.argsort(-sims, kind="stable")]
    if rule == "sysu" and query_cam == 3:
        ranked = ranked[camids[ranked] != 2]
    if rule in ("llcm", "same_camera"):  # LLCM's camera numbers are camid % 10 (SYSU's: camid)
        junk = (pids[ranked] == query_pid) & (camids[ranked] % 10 == query_cam % 10)
        ranked = ranked[~junk]
    ranked_pids = pids[ranked]
    matches = ranked_pids == query_pid
    if not matches.any():
        return None
    first = int(np.argmax(matches))
    if rule in ("sysu", "llcm", "same_camera"):
        cmc_rank = len(set(ranked_pids[:first].tolist())) + 1  # identities before the first match, once each
    else:
        cmc_rank = first + 1
    positions = np.flatnonzero(matches) + 1
    precisions = np.arange(1, len(positions) + 1) / positions
    return cmc_rank, float(precisions.mean()), len(positions) / positions[-1]


def reference_trial(features, pids, camids, query_rows, gallery, *, rule, max_rank=20):
    gallery = np.array(sorted(gallery))
    gallery_vectors = np.stack([unit(features[row]) for row in gallery])
    pids = np.asarray(pids)
    camids = np.asarray(camids)
    outcomes = []
    for q in query_rows:
        outcome = query_outcome(unit(features[q]), pids[q], camids[q], gallery, gallery_vectors, pids, camids,
                                rule=rule)
        if outcome is not None:
            outcomes.append(outcome)
    n = len(outcomes)
    metrics = {key: 100.0 * sum(1 for o in outcomes if o[0] <= r) / n for key, r in RANKS.items()}
    metrics["mAP"] = 100.0 * sum(o[1] for o in outcomes) / n
    metrics["mINP"] = 100.0 * sum(o[2] for o in outcomes) / n
    cmc = [100.0 * sum(1 for o in outcomes if o[0] <= r) / n for r in range(1, max_rank + 1)]
    return metrics, np.array(cmc), n


def _summary(trial_results, galleries, num_query):
    per_trial = [m for m, _, _ in trial_results]
    return {
        "per_trial": per_trial,
        "metrics": {k: sum(t[k] for t in per_trial) / len(per_trial) for k in KEYS},
        "cmc": np.mean([c for _, c, _ in trial_results], axis=0),
        "num_valid_query": [n for _, _, n in trial_results],
        "num_gallery": [len(g) for g in galleries],
        "num_query": num_query,
        "galleries": galleries,
    }


def reference_sysu(features, pids, camids, paths, *, mode="all", shot="single", trials=10, sampler="agw",
                   perm=None, max_rank=20):
    pids = [int(p) for p in pids]
    camids = [int(c) for c in camids]
    paths = [str(p) for p in paths]
    query_rows = [row for row in range(len(pids)) if camids[row] in (3, 6)]
    if sampler == "official":
        galleries = reference_official_galleries(pids, camids, paths, perm, mode, shot, trials)
    else:
        galleries = reference_agw_galleries(pids, camids, paths, mode, shot, trials)
    results = [reference_trial(features, pids, camids, query_rows, g, rule="sysu", max_rank=max_rank)
               for g in galleries]
    return _summary(results, galleries, len(query_rows))


def reference_regdb(features, pids, camids, *, direction="v2t", max_rank=20):
    pids = [int(p) for p in pids]
    camids = [int(c) for c in camids]
    query_cam, gallery_cam = (1, 2) if direction == "v2t" else (2, 1)
    query_rows = [row for row in range(len(pids)) if camids[row] == query_cam]
    gallery = [row for row in range(len(pids)) if camids[row] == gallery_cam]
    result = reference_trial(features, pids, camids, query_rows, gallery, rule="regdb", max_rank=max_rank)
    return _summary([result], [gallery], len(query_rows))


def reference_llcm_draws(pids, camids, paths, direction, trials):
    """process_gallery_llcm: seed the trial, ids ascending, cameras in order, one choice per sorted folder."""
    cameras = list(range(1, 10)) if direction == "ir2vis" else [11, 12, 14, 15, 16, 17, 18, 19]
    folders = _folders(pids, camids, paths, cameras)
    draws = []
    for trial in range(trials):
        random.seed(trial)
        draws.append([random.choice(folders[(cam, pid)]) for pid in sorted({p for (_, p) in folders})
                      for cam in cameras if (cam, pid) in folders])
    return draws


def reference_llcm(features, pids, camids, paths, *, direction="ir2vis", trials=10, max_rank=20):
    pids = [int(p) for p in pids]
    camids = [int(c) for c in camids]
    paths = [str(p) for p in paths]
    draws = reference_llcm_draws(pids, camids, paths, direction, trials)
    if direction == "ir2vis":
        fixed = [row for row in range(len(pids)) if camids[row] in (11, 12, 14, 15, 16, 17, 18, 19)]
        trial_sets = [(fixed, drawn) for drawn in draws]
    else:
        fixed = [row for row in range(len(pids)) if camids[row] <= 9]
        trial_sets = [(drawn, fixed) for drawn in draws]
    results = [reference_trial(features, pids, camids, queries, gallery, rule="llcm", max_rank=max_rank)
               for queries, gallery in trial_sets]
    summary = _summary(results, [gallery for _, gallery in trial_sets], np.mean([len(q) for q, _ in trial_sets]))
    summary["draws"] = draws
    return summary


def reference_same_modality(features, pids, camids, paths, *, modality="ir", trials=10, max_rank=20):
    pids = [int(p) for p in pids]
    camids = [int(c) for c in camids]
    paths = [str(p) for p in paths]
    cameras = [3, 6] if modality == "ir" else [1, 2, 4, 5]
    query_rows = [row for row in range(len(pids)) if camids[row] in cameras]
    galleries = reference_agw_galleries(pids, camids, paths, None, "single", trials, cameras=cameras)
    results = [reference_trial(features, pids, camids, query_rows, g, rule="same_camera", max_rank=max_rank)
               for g in galleries]
    return _summary(results, galleries, len(query_rows))
