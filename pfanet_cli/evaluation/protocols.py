"""Evaluation protocols of SYSU-MM01 and RegDB (SPEC §5), exact and vectorised.

What is computed (the community's rules, as in the AGW baseline's ``eval_metrics.py``):

* **SYSU-MM01.** Queries are every test IR image (cameras 3 and 6), fixed. The gallery is sampled per
  trial from the RGB cameras of the mode (``all``: 1, 2, 4, 5; ``indoor``: 1, 2): one image
  (single-shot) or ten (multi-shot) per (identity, camera) folder. A cam3 query never sees cam2
  gallery images (same room, :data:`~pfanet_cli.data.sysu.SAME_ROOM`), whatever the identity;
  nothing else is removed. CMC: after removing that junk, each identity is kept only at its first
  occurrence in the ranked list, then cumulative match (R1, R5, R10, R20). mAP on the junk-filtered
  list *without* de-duplication. mINP = (number of positives) / (rank of the last positive).
  Queries with no positive in the gallery are left out of every average.
* **RegDB.** Visible queries (camid 1) against the thermal gallery (camid 2), or the reverse;
  nothing removed, image-level CMC, same mAP/mINP.

The ranking itself is :mod:`pfanet_cli.evaluation.ranking`; the gallery samplers are
:mod:`pfanet_cli.evaluation.galleries`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from pfanet_cli.data import regdb
from pfanet_cli.data.sysu import ALL_CAMERAS, IR_CAMERAS, SAME_ROOM, RandPerm
from pfanet_cli.errors import DataError, UsageError
from pfanet_cli.evaluation.features import validate_arrays
from pfanet_cli.evaluation.galleries import (
    check_choice,
    check_trials,
    gallery_cameras,
    load_perm,
    sample_sysu_galleries,
    shot_count,
)
from pfanet_cli.evaluation.ranking import DEFAULT_MEMORY_BUDGET, RankingEngine, TrialOutcome, cosine_normalise
from pfanet_cli.utils.atomic import write_text

METRIC_KEYS = ("r1", "r5", "r10", "r20", "mAP", "mINP")
CMC_RANKS = {"r1": 1, "r5": 5, "r10": 10, "r20": 20}
ALL_SYSU_SETTINGS = (("all", "single"), ("all", "multi"), ("indoor", "single"), ("indoor", "multi"))


@dataclass
class EvalResult:
    """The outcome of one protocol setting over its trials (metrics in percent)."""

    dataset: str
    mode: str
    shot: str
    sampler: str
    trials: int
    num_query: int
    """Query images (SYSU: every test IR image, 3,803 on the real data)."""
    num_gallery: int | float
    """Gallery images per trial (the mean when it varies between trials)."""
    metrics: dict[str, float]
    std: dict[str, float]
    per_trial: list[dict[str, float]]
    cmc: np.ndarray
    """Mean CMC curve in percent, ranks 1..max_rank."""
    num_valid_query: int | float = 0
    """Queries with at least one positive in the gallery, the ones averaged (mean over trials)."""

    @property
    def setting(self) -> str:
        if self.dataset == "sysu":
            return f"{self.mode}/{self.shot}"
        return f"{self.dataset} {self.mode}"

    def to_json_dict(self) -> dict:
        """Exactly the evaluation JSON of SPEC §1."""
        return {
            "dataset": self.dataset,
            "mode": self.mode,
            "shot": self.shot,
            "sampler": self.sampler,
            "trials": int(self.trials),
            "num_query": int(self.num_query),
            "num_gallery": _plain_number(self.num_gallery),
            "metrics": {k: float(self.metrics[k]) for k in METRIC_KEYS},
            "std": {k: float(self.std[k]) for k in METRIC_KEYS},
            "per_trial": [{k: float(t[k]) for k in METRIC_KEYS} for t in self.per_trial],
        }


def _plain_number(value: float) -> int | float:
    value = float(value)
    return int(value) if value.is_integer() else value


def _mean_or_int(values: Sequence[float]) -> int | float:
    return _plain_number(float(np.mean(values)))


def summarise_trials(per_trial: Sequence[Mapping[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and standard deviation (population, ddof=0) of each metric over the trials."""
    table = np.array([[float(t[k]) for k in METRIC_KEYS] for t in per_trial], dtype=np.float64)
    mean = table.mean(axis=0)
    std = table.std(axis=0)
    return dict(zip(METRIC_KEYS, mean.tolist())), dict(zip(METRIC_KEYS, std.tolist()))


# ----------------------------------------------------------------------------------------------
# input checks


def check_arrays(features, pids, camids, paths=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str] | None]:
    """The features-file checks (:func:`validate_arrays`), keeping the caller's float precision."""
    checked = validate_arrays(features, pids, camids, paths, keep_float_dtype=True)
    return checked.features, checked.pids, checked.camids, None if paths is None else checked.paths


def _check_cameras(camids: np.ndarray, allowed: Iterable[int], dataset: str) -> None:
    allowed = tuple(allowed)
    unknown = np.setdiff1d(np.unique(camids), np.asarray(allowed))
    if unknown.size:
        shown = ", ".join(str(int(c)) for c in unknown[:8])
        raise DataError(
            f"unknown {dataset} camera ids {shown} in the features file "
            f"({dataset} cameras are {', '.join(map(str, allowed))})"
        )


# ----------------------------------------------------------------------------------------------
# aggregation


def _trial_summary(outcome: TrialOutcome, max_rank: int) -> tuple[dict[str, float], np.ndarray, int]:
    valid = outcome.valid
    nvalid = int(valid.sum())
    if nvalid == 0:
        raise DataError("no query has a positive in the gallery (query and gallery identities do not overlap)")
    ranks = outcome.cmc_rank[valid]
    longest = max(max_rank, max(CMC_RANKS.values()))
    hist = np.bincount(np.minimum(ranks, longest + 1) - 1, minlength=longest + 1)[:longest]
    cmc = np.cumsum(hist) / nvalid
    metrics = {key: float(cmc[r - 1] * 100.0) for key, r in CMC_RANKS.items()}
    metrics["mAP"] = float(outcome.ap[valid].mean() * 100.0)
    metrics["mINP"] = float(outcome.inp[valid].mean() * 100.0)
    return metrics, cmc[:max_rank] * 100.0, nvalid


def _result(dataset: str, mode: str, shot: str, sampler: str, outcomes: Sequence[TrialOutcome],
            num_query: int, gallery_sizes: Sequence[int], max_rank: int) -> EvalResult:
    per_trial, curves, valid_counts = [], [], []
    for outcome in outcomes:
        metrics, curve, nvalid = _trial_summary(outcome, max_rank)
        per_trial.append(metrics)
        curves.append(curve)
        valid_counts.append(nvalid)
    mean, std = summarise_trials(per_trial)
    return EvalResult(
        dataset=dataset, mode=mode, shot=shot, sampler=sampler, trials=len(outcomes), num_query=num_query,
        num_gallery=_mean_or_int(gallery_sizes), metrics=mean, std=std, per_trial=per_trial,
        cmc=np.mean(curves, axis=0), num_valid_query=_mean_or_int(valid_counts),
    )


def _check_max_rank(max_rank: int) -> int:
    if int(max_rank) < 1:
        raise UsageError(f"--max-rank must be at least 1, got {max_rank}")
    return int(max_rank)


# ----------------------------------------------------------------------------------------------
# public entry points


def sysu_query_rows(camids: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.isin(camids, np.asarray(IR_CAMERAS)))


def evaluate_sysu_settings(features, pids, camids, paths, settings: Sequence[tuple[str, str]] = ALL_SYSU_SETTINGS,
                           *, trials: int = 10, sampler: str = "auto", perm: RandPerm | str | Path | None = None,
                           max_rank: int = 20, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> list[EvalResult]:
    """Several SYSU-MM01 settings ((mode, shot) pairs) sharing one ranking of the candidates."""
    feats, pids, camids, paths = check_arrays(features, pids, camids, paths)
    if paths is None:
        raise DataError("the SYSU-MM01 protocol needs the image paths to sample the gallery")
    _check_cameras(camids, ALL_CAMERAS, "SYSU-MM01")
    if len(set(paths)) != len(paths):
        raise DataError("the features file lists an image path twice; each test image must appear once")
    max_rank = _check_max_rank(max_rank)
    check_trials(trials)
    perm = load_perm(perm)
    for mode, shot in settings:
        gallery_cameras(mode)
        shot_count(shot)
    queries = sysu_query_rows(camids)
    if queries.size == 0:
        raise DataError("the features file holds no IR query images (SYSU-MM01 cameras 3 and 6)")
    plans = []
    for mode, shot in settings:
        used, galleries = sample_sysu_galleries(pids, camids, paths, mode=mode, shot=shot, trials=trials,
                                                sampler=sampler, perm=perm)
        plans.append((mode, shot, used, galleries))
    candidates = np.unique(np.concatenate([g for *_, gals in plans for g in gals]))
    parts: list[list[list[TrialOutcome]]] = [[[] for _ in gals] for *_, gals in plans]
    unit_candidates = cosine_normalise(feats[candidates])
    # One engine per query camera group: a cam3 query never sees cam2 (same room), so its candidates
    # are the others; removing them before ranking is the same as filtering each ranked list.
    for hidden, rows in _junk_groups(camids, queries):
        shown = slice(None) if hidden is None else camids[candidates] != hidden
        visible = candidates[shown]
        if visible.size == 0:
            for setting in parts:
                for trial in setting:
                    trial.append(TrialOutcome.empty(len(rows)))
            continue
        engine = RankingEngine(cosine_normalise(feats[rows]), pids[rows], unit_candidates[shown],
                               pids[visible], memory_budget=memory_budget)
        jobs = [([np.searchsorted(visible, g if hidden is None else g[camids[g] != hidden]) for g in gals], True)
                for *_, gals in plans]
        for setting, outs in zip(parts, engine.evaluate(jobs)):
            for trial, out in zip(setting, outs):
                trial.append(out)
        del engine
    return [
        _result("sysu", mode, shot, used, [TrialOutcome.concat(t) for t in setting], len(queries),
                [len(g) for g in gals], max_rank)
        for (mode, shot, used, gals), setting in zip(plans, parts)
    ]


def _junk_groups(camids: np.ndarray, queries: np.ndarray) -> list[tuple[int | None, np.ndarray]]:
    """Queries grouped by the gallery camera they must not see (SAME_ROOM), None for none."""
    hidden = np.array([SAME_ROOM.get(int(c), -1) for c in camids[queries]])
    return [(None if h < 0 else int(h), queries[hidden == h]) for h in np.unique(hidden)]


def evaluate_sysu(features, pids, camids, paths, *, mode: str = "all", shot: str = "single", trials: int = 10,
                  sampler: str = "auto", perm: RandPerm | str | Path | None = None, max_rank: int = 20,
                  memory_budget: int = DEFAULT_MEMORY_BUDGET) -> EvalResult:
    """The SYSU-MM01 protocol for one setting; ``features`` holds every test image of both modalities."""
    return evaluate_sysu_settings(features, pids, camids, paths, [(mode, shot)], trials=trials, sampler=sampler,
                                  perm=perm, max_rank=max_rank, memory_budget=memory_budget)[0]


def regdb_rows(camids: np.ndarray, direction: str) -> tuple[np.ndarray, np.ndarray]:
    """Query and gallery rows of a RegDB direction (v2t: visible queries, thermal gallery)."""
    check_choice("direction", direction, regdb.DIRECTIONS)
    qcam, gcam = regdb.direction_cameras(direction)
    return np.flatnonzero(camids == qcam), np.flatnonzero(camids == gcam)


def evaluate_regdb(features, pids, camids, *, direction: str = "v2t", max_rank: int = 20,
                   memory_budget: int = DEFAULT_MEMORY_BUDGET) -> EvalResult:
    """The RegDB protocol for one split: nothing removed, image-level CMC, mAP, mINP."""
    feats, pids, camids, _ = check_arrays(features, pids, camids)
    _check_cameras(camids, regdb.CAMERAS, "RegDB")
    max_rank = _check_max_rank(max_rank)
    queries, gallery = regdb_rows(camids, direction)
    if queries.size == 0 or gallery.size == 0:
        missing = "query" if queries.size == 0 else "gallery"
        cam = regdb.direction_cameras(direction)[0 if missing == "query" else 1]
        raise DataError(
            f"RegDB {direction}: empty {missing} set (no {regdb.CAMERA_NAMES[cam]} images in the features file)")
    engine = RankingEngine(cosine_normalise(feats[queries]), pids[queries], cosine_normalise(feats[gallery]),
                           pids[gallery], memory_budget=memory_budget)
    outcomes = engine.evaluate([([np.arange(len(gallery))], False)])[0]
    return _result("regdb", direction, "all", "none", outcomes, len(queries), [len(gallery)], max_rank)


def write_results_json(path: str | Path, results: Sequence[EvalResult], *, as_list: bool = False) -> Path:
    """Write the SPEC §1 evaluation JSON (atomically): one object, or a list when ``as_list``."""
    path = Path(path)
    payload = [r.to_json_dict() for r in results] if as_list else results[0].to_json_dict()
    write_text(path, json.dumps(payload, indent=2) + "\n")
    return path
