"""Evaluation protocols of SYSU-MM01, RegDB and LLCM (SPEC §5, docs/protocols.md), exact and vectorised.

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
* **LLCM.** As its reference code (``ZYK100/LLCM``): ir2vis ranks every NIR test image against a visible
  gallery of one image per (identity, camera) drawn per trial with ``random.seed(trial)``; vis2ir draws the
  NIR images per trial and scores them as queries against every visible image (the reference's role
  swap). A gallery image of the query's identity from the query's camera is junk; CMC de-duplicated.

Every result carries its protocol card (``card.py``). With a :class:`~pfanet_cli.evaluation.rerank.RerankConfig`,
each trial's query x gallery distances are k-reciprocal re-ranked (``rerank.py``) and ranked from those.

The ranking itself is :mod:`pfanet_cli.evaluation.ranking`; the gallery samplers are
:mod:`pfanet_cli.evaluation.galleries`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from pfanet_cli.data import llcm, regdb
from pfanet_cli.data.sysu import ALL_CAMERAS, IR_CAMERAS, RandPerm
from pfanet_cli.errors import DataError, UsageError
from pfanet_cli.evaluation.card import complete_card, protocol_card
from pfanet_cli.evaluation.features import validate_arrays
from pfanet_cli.evaluation.galleries import (
    check_choice,
    check_trials,
    gallery_cameras,
    load_perm,
    one_image_per_folder,
    sample_llcm,
    sample_sysu_galleries,
    shot_count,
)
from pfanet_cli.evaluation.ranking import DEFAULT_MEMORY_BUDGET, RankingEngine, TrialOutcome, cosine_normalise
from pfanet_cli.evaluation.rerank import RerankConfig
from pfanet_cli.evaluation.scoring import junk_groups, llcm_cameras, reranked_outcomes
from pfanet_cli.utils.atomic import write_text

METRIC_KEYS = ("r1", "r5", "r10", "r20", "mAP", "mINP")
CMC_RANKS = {"r1": 1, "r5": 5, "r10": 10, "r20": 20}
ALL_SYSU_SETTINGS = (("all", "single"), ("all", "multi"), ("indoor", "single"), ("indoor", "multi"))
MULTI_ON_SINGLE = "the features hold one gallery image per identity and camera"


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
    card: dict = field(default_factory=dict)
    """The protocol card (``card.py``): every choice behind these numbers."""

    @property
    def setting(self) -> str:
        if self.dataset == "sysu":
            return f"{self.mode}/{self.shot}"
        if self.dataset == "sysu-same-modality":
            return self.mode
        return f"{self.dataset} {self.mode}"

    def to_json_dict(self) -> dict:
        """The evaluation JSON of SPEC §1, then the protocol card."""
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
            "card": complete_card(self.card),
        }

    @classmethod
    def from_json_dict(cls, payload: Mapping) -> "EvalResult":
        """A result read back from its JSON (no CMC curve: the JSON holds R1..R20 only)."""
        return cls(dataset=payload["dataset"], mode=payload["mode"], shot=payload["shot"], sampler=payload["sampler"],
                   trials=int(payload["trials"]), num_query=int(payload["num_query"]),
                   num_gallery=payload["num_gallery"], metrics=dict(payload["metrics"]), std=dict(payload["std"]),
                   per_trial=[dict(t) for t in payload["per_trial"]], cmc=np.zeros(0),
                   card=dict(payload.get("card") or {}))


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


def result_of_trials(dataset: str, mode: str, shot: str, sampler: str, outcomes: Sequence[TrialOutcome],
            num_query: int | float, gallery_sizes: Sequence[int], max_rank: int, card: dict) -> EvalResult:
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
        cmc=np.mean(curves, axis=0), num_valid_query=_mean_or_int(valid_counts), card=card,
    )


def check_max_rank(max_rank: int) -> int:
    if int(max_rank) < 1:
        raise UsageError(f"--max-rank must be at least 1, got {max_rank}")
    return int(max_rank)


# ----------------------------------------------------------------------------------------------
# public entry points


def sysu_query_rows(camids: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.isin(camids, np.asarray(IR_CAMERAS)))


def evaluate_sysu_settings(features, pids, camids, paths, settings: Sequence[tuple[str, str]] = ALL_SYSU_SETTINGS,
                           *, trials: int = 10, sampler: str = "auto", perm: RandPerm | str | Path | None = None,
                           max_rank: int = 20, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                           rerank: RerankConfig | None = None, multi_on_single: str = "refuse") -> list[EvalResult]:
    """Several SYSU-MM01 settings ((mode, shot) pairs) sharing one ranking of the candidates (re-ranking,
    when asked for, re-ranks each trial, from one neighbour search shared by every trial of every setting). A
    multi-shot setting on features with one image per identity and camera would be the single-shot one:
    ``multi_on_single`` ``refuse`` stops with a :class:`DataError`, ``note`` evaluates it and says so on its
    card."""
    feats, pids, camids, paths = check_arrays(features, pids, camids, paths)
    if paths is None:
        raise DataError("the SYSU-MM01 protocol needs the image paths to sample the gallery")
    _check_cameras(camids, ALL_CAMERAS, "SYSU-MM01")
    _check_unique_paths(paths)
    max_rank = check_max_rank(max_rank)
    check_trials(trials)
    perm = load_perm(perm)
    for mode, shot in settings:
        gallery_cameras(mode)
        shot_count(shot)
    _check_multi_shot(pids, camids, settings, multi_on_single)
    queries = sysu_query_rows(camids)
    if queries.size == 0:
        raise DataError("the features file holds no IR query images (SYSU-MM01 cameras 3 and 6)")
    plans = []
    for mode, shot in settings:
        used, galleries = sample_sysu_galleries(pids, camids, paths, mode=mode, shot=shot, trials=trials,
                                                sampler=sampler, perm=perm)
        plans.append((mode, shot, used, galleries))
    if rerank is None:
        parts = _sysu_outcomes(feats, pids, camids, queries, [gals for *_, gals in plans], memory_budget)
    else:
        every = iter(reranked_outcomes(feats, pids, camids, [(queries, g) for *_, gals in plans for g in gals],
                                       rerank, dedup=True, junk="sysu", memory_budget=memory_budget))
        parts = [[next(every) for _ in gals] for *_, gals in plans]
    described = rerank.describe() if rerank else None
    results = [
        result_of_trials("sysu", mode, shot, used, setting, len(queries), [len(g) for g in gals], max_rank,
                         protocol_card("sysu", sampler=used, trials=trials, shot=shot, mode=mode, rerank=described))
        for (mode, shot, used, gals), setting in zip(plans, parts)
    ]
    for result in results:
        if result.shot == "multi" and one_image_per_folder(pids, camids, result.mode):
            result.card["shot"] += f"; {MULTI_ON_SINGLE}, so every trial's gallery is the single-shot one"
    return results


def _check_multi_shot(pids: np.ndarray, camids: np.ndarray, settings: Sequence[tuple[str, str]], policy: str) -> None:
    check_choice("multi_on_single", policy, ("refuse", "note"))
    for mode, shot in settings:
        if shot == "multi" and policy == "refuse" and one_image_per_folder(pids, camids, mode):
            raise DataError(f"--shot multi draws up to 10 gallery images per identity and camera, and "
                            f"{MULTI_ON_SINGLE} (an export of one trial's gallery?): it would evaluate single-shot; "
                            "use --shot single")


def _sysu_outcomes(feats: np.ndarray, pids: np.ndarray, camids: np.ndarray, queries: np.ndarray,
                   settings: Sequence[Sequence[np.ndarray]], memory_budget: int) -> list[list[TrialOutcome]]:
    """Per setting and trial, the outcomes of every query, from one ranking of the union of the galleries.

    One engine per query camera group: a cam3 query never sees cam2 (same room), so its candidates are the
    others; removing them before ranking is the same as filtering each ranked list."""
    candidates = np.unique(np.concatenate([g for gals in settings for g in gals]))
    parts: list[list[list[TrialOutcome]]] = [[[] for _ in gals] for gals in settings]
    unit_candidates = cosine_normalise(feats[candidates])
    for hidden, rows in junk_groups(camids, queries):
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
                for gals in settings]
        for setting, outs in zip(parts, engine.evaluate(jobs)):
            for trial, out in zip(setting, outs):
                trial.append(out)
        del engine
    return [[TrialOutcome.concat(trial) for trial in setting] for setting in parts]


def _check_unique_paths(paths: Sequence[str]) -> None:
    if len(set(paths)) != len(paths):
        raise DataError("the features file lists an image path twice; each test image must appear once")


def evaluate_sysu(features, pids, camids, paths, *, mode: str = "all", shot: str = "single", trials: int = 10,
                  sampler: str = "auto", perm: RandPerm | str | Path | None = None, max_rank: int = 20,
                  memory_budget: int = DEFAULT_MEMORY_BUDGET, rerank: RerankConfig | None = None) -> EvalResult:
    """The SYSU-MM01 protocol for one setting; ``features`` holds every test image of both modalities."""
    return evaluate_sysu_settings(features, pids, camids, paths, [(mode, shot)], trials=trials, sampler=sampler,
                                  perm=perm, max_rank=max_rank, memory_budget=memory_budget, rerank=rerank)[0]


def regdb_rows(camids: np.ndarray, direction: str) -> tuple[np.ndarray, np.ndarray]:
    """Query and gallery rows of a RegDB direction (v2t: visible queries, thermal gallery)."""
    check_choice("direction", direction, regdb.DIRECTIONS)
    qcam, gcam = regdb.direction_cameras(direction)
    return np.flatnonzero(camids == qcam), np.flatnonzero(camids == gcam)


def evaluate_regdb(features, pids, camids, *, direction: str = "v2t", max_rank: int = 20,
                   memory_budget: int = DEFAULT_MEMORY_BUDGET, rerank: RerankConfig | None = None) -> EvalResult:
    """The RegDB protocol for one split: nothing removed, image-level CMC, mAP, mINP."""
    feats, pids, camids, _ = check_arrays(features, pids, camids)
    _check_cameras(camids, regdb.CAMERAS, "RegDB")
    max_rank = check_max_rank(max_rank)
    queries, gallery = regdb_rows(camids, direction)
    if queries.size == 0 or gallery.size == 0:
        missing = "query" if queries.size == 0 else "gallery"
        cam = regdb.direction_cameras(direction)[0 if missing == "query" else 1]
        raise DataError(
            f"RegDB {direction}: empty {missing} set (no {regdb.CAMERA_NAMES[cam]} images in the features file)")
    if rerank is None:
        engine = RankingEngine(cosine_normalise(feats[queries]), pids[queries], cosine_normalise(feats[gallery]),
                               pids[gallery], memory_budget=memory_budget)
        outcomes = engine.evaluate([([np.arange(len(gallery))], False)])[0]
    else:
        outcomes = reranked_outcomes(feats, pids, camids, [(queries, gallery)], rerank, dedup=False, junk=None,
                                     memory_budget=memory_budget)
    card = protocol_card("regdb", sampler="none", trials=1, direction=direction,
                         rerank=rerank.describe() if rerank else None)
    return result_of_trials("regdb", direction, "all", "none", outcomes, len(queries), [len(gallery)], max_rank,
                            card)


def evaluate_llcm(features, pids, camids, paths, *, direction: str = "ir2vis", trials: int = 10, max_rank: int = 20,
                  memory_budget: int = DEFAULT_MEMORY_BUDGET, rerank: RerankConfig | None = None) -> EvalResult:
    """The LLCM protocol of the benchmark's reference code (module docstring, docs/protocols.md);
    ``features`` holds every test image of both modalities, camids 1..9 visible and 11..19 NIR."""
    feats, pids, camids, paths = check_arrays(features, pids, camids, paths)
    if paths is None:
        raise DataError("the LLCM protocol needs the image paths to draw the trials' images")
    _check_cameras(camids, llcm.CAMERAS, "LLCM")
    _check_unique_paths(paths)
    max_rank = check_max_rank(max_rank)
    drawn = sample_llcm(pids, camids, paths, direction=direction, trials=trials)
    fixed = np.flatnonzero(np.isin(camids, llcm.TEST_NIR_CAMERAS if direction == "ir2vis" else llcm.VIS_CAMERAS))
    for what, rows in (("NIR", fixed if direction == "ir2vis" else drawn[0]),
                       ("visible", drawn[0] if direction == "ir2vis" else fixed)):
        if rows.size == 0:
            raise DataError(f"LLCM {direction}: the features file holds no {what} test images "
                            f"(camids {'11, 12, 14..19' if what == 'NIR' else '1..9'})")
    trial_sets = [(fixed, g) for g in drawn] if direction == "ir2vis" else [(q, fixed) for q in drawn]
    if rerank is not None:
        outcomes = reranked_outcomes(feats, pids, camids, trial_sets, rerank, dedup=True, junk="llcm",
                                     memory_budget=memory_budget)
    elif direction == "ir2vis":
        candidates = np.unique(np.concatenate(drawn))
        engine = RankingEngine(cosine_normalise(feats[fixed]), pids[fixed], cosine_normalise(feats[candidates]),
                               pids[candidates], memory_budget=memory_budget, **llcm_cameras(camids, fixed, candidates))
        outcomes = engine.evaluate([([np.searchsorted(candidates, g) for g in drawn], True)])[0]
    else:
        outcomes = _llcm_drawn_queries(feats, pids, camids, drawn, fixed, memory_budget)
    card = protocol_card("llcm", sampler="llcm-seeded", trials=trials, direction=direction,
                         rerank=rerank.describe() if rerank else None)
    return result_of_trials("llcm", direction, "single", "llcm-seeded", outcomes,
                            _mean_or_int([len(q) for q, _ in trial_sets]), [len(g) for _, g in trial_sets], max_rank,
                            card)


def _llcm_drawn_queries(feats: np.ndarray, pids: np.ndarray, camids: np.ndarray, drawn: Sequence[np.ndarray],
                        gallery: np.ndarray, memory_budget: int) -> list[TrialOutcome]:
    """vis2ir: the gallery is fixed, so every query drawn in some trial is ranked once and each trial takes
    the outcomes of its own queries."""
    queries = np.unique(np.concatenate(drawn))
    engine = RankingEngine(cosine_normalise(feats[queries]), pids[queries], cosine_normalise(feats[gallery]),
                           pids[gallery], memory_budget=memory_budget, **llcm_cameras(camids, queries, gallery))
    every = engine.evaluate([([np.arange(len(gallery))], True)])[0][0]
    picks = [np.searchsorted(queries, rows) for rows in drawn]
    return [every.select(p) for p in picks]



def write_results_json(path: str | Path, results: Sequence[EvalResult], *, as_list: bool = False) -> Path:
    """Write the SPEC §1 evaluation JSON (atomically): one object, or a list when ``as_list``."""
    path = Path(path)
    payload = [r.to_json_dict() for r in results] if as_list else results[0].to_json_dict()
    write_text(path, json.dumps(payload, indent=2) + "\n")
    return path
