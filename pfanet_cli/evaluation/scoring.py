"""Scoring one trial's queries against its gallery under a protocol's junk rule, from features or from
re-ranked distances: the pieces the protocols of ``protocols.py`` share."""

from __future__ import annotations

import numpy as np

from pfanet_cli.data import llcm
from pfanet_cli.data.sysu import SAME_ROOM
from pfanet_cli.evaluation.ranking import RankingEngine, TrialOutcome
from pfanet_cli.evaluation.rerank import RerankConfig, kreciprocal_distances

JUNK_RULES = (None, "sysu", "llcm")
"""None: nothing removed; sysu: a cam3 query never sees cam2; llcm: same identity and camera removed."""


def junk_groups(camids: np.ndarray, queries: np.ndarray) -> list[tuple[int | None, np.ndarray]]:
    """SYSU-MM01 queries grouped by the gallery camera they must not see (SAME_ROOM), None for none."""
    hidden = np.array([SAME_ROOM.get(int(c), -1) for c in camids[queries]])
    return [(None if h < 0 else int(h), queries[hidden == h]) for h in np.unique(hidden)]


def llcm_cameras(camids: np.ndarray, queries: np.ndarray, candidates: np.ndarray) -> dict[str, np.ndarray]:
    """The engine options of LLCM's camera rule: the camera numbers of queries and candidates."""
    return {"query_cameras": llcm.physical_camera(camids[queries]),
            "candidate_cameras": llcm.physical_camera(camids[candidates])}


def reranked_outcome(feats: np.ndarray, pids: np.ndarray, camids: np.ndarray, queries: np.ndarray,
                     gallery: np.ndarray, rerank: RerankConfig, *, dedup: bool, junk: str | None,
                     memory_budget: int) -> TrialOutcome:
    """One trial scored on k-reciprocal re-ranked distances.

    Re-ranking sees the whole trial (every query and every gallery image, junk included, as the method's
    reference implementations do); the junk rule then removes items from each ranked list. Gallery rows are
    taken in ascending order, the tie order of the features file."""
    gallery = np.unique(gallery)
    scores = -kreciprocal_distances(feats[queries], feats[gallery], rerank, memory_budget=memory_budget)
    if junk == "sysu":
        parts = []
        for hidden, rows in junk_groups(camids, queries):
            shown = np.ones(len(gallery), bool) if hidden is None else camids[gallery] != hidden
            if not shown.any():
                parts.append(TrialOutcome.empty(len(rows)))
                continue
            picked = np.isin(queries, rows)
            engine = RankingEngine.from_scores(scores[np.ix_(picked, shown)], pids[queries[picked]],
                                               pids[gallery[shown]], memory_budget=memory_budget)
            parts.append(engine.evaluate([([np.arange(int(shown.sum()))], dedup)])[0][0])
        return TrialOutcome.concat(parts)
    options = llcm_cameras(camids, queries, gallery) if junk == "llcm" else {}
    engine = RankingEngine.from_scores(scores, pids[queries], pids[gallery], memory_budget=memory_budget, **options)
    return engine.evaluate([([np.arange(len(gallery))], dedup)])[0][0]
