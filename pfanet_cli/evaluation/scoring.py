"""Scoring one trial's queries against its gallery under a protocol's junk rule, from features or from
re-ranked distances (trials re-ranked together): the pieces the protocols of ``protocols.py`` share."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pfanet_cli.data import llcm
from pfanet_cli.data.sysu import SAME_ROOM
from pfanet_cli.evaluation.ranking import RankingEngine, TrialOutcome
from pfanet_cli.evaluation.rerank import KReciprocal, RerankConfig

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


def reranked_outcomes(feats: np.ndarray, pids: np.ndarray, camids: np.ndarray,
                      trials: Sequence[tuple[np.ndarray, np.ndarray]], rerank: RerankConfig, *, dedup: bool,
                      junk: str | None, memory_budget: int) -> list[TrialOutcome]:
    """Trials (query rows, gallery rows) scored on k-reciprocal re-ranked distances.

    Re-ranking sees the whole trial (every query and every gallery image, junk included, as the method's
    reference implementations do); the junk rule then removes items from each ranked list. Rows are taken in
    ascending order, the tie order of the features file. The trials share one neighbour search over the union
    of their queries and the union of their galleries (``rerank.KReciprocal``) unless computing each trial on
    its own is cheaper (trials that share little)."""
    trials = [(np.asarray(q, dtype=np.int64), np.unique(g)) for q, g in trials]
    query_pool = np.unique(np.concatenate([q for q, _ in trials]))
    gallery_pool = np.unique(np.concatenate([g for _, g in trials]))
    shared = (len(query_pool) + len(gallery_pool)) ** 2 <= sum((len(q) + len(g)) ** 2 for q, g in trials)
    reranker = _reranker(feats, query_pool, gallery_pool, rerank, memory_budget) if shared else None
    outcomes = []
    for queries, gallery in trials:
        ordered, inverse = np.unique(queries, return_inverse=True)
        if shared:
            dist = reranker.distances(np.searchsorted(query_pool, ordered), np.searchsorted(gallery_pool, gallery))
        else:
            dist = _reranker(feats, ordered, gallery, rerank, memory_budget).distances()
        outcome = scored_outcome(-dist, pids, camids, ordered, gallery, dedup=dedup, junk=junk,
                                 memory_budget=memory_budget)
        outcomes.append(outcome.select(inverse))                       # back in the order of ``queries``
    return outcomes


def _reranker(feats: np.ndarray, queries: np.ndarray, gallery: np.ndarray, rerank: RerankConfig,
              memory_budget: int) -> KReciprocal:
    return KReciprocal(feats[queries], feats[gallery], rerank, memory_budget=memory_budget)


def scored_outcome(scores: np.ndarray, pids: np.ndarray, camids: np.ndarray, queries: np.ndarray,
                   gallery: np.ndarray, *, dedup: bool, junk: str | None, memory_budget: int) -> TrialOutcome:
    """One trial scored on ``scores`` (queries x gallery, larger is closer) under the junk rule."""
    if junk == "sysu":
        outcome = TrialOutcome.empty(len(queries))                    # rows in the order of ``queries``
        for hidden, rows in junk_groups(camids, queries):
            shown = np.ones(len(gallery), bool) if hidden is None else camids[gallery] != hidden
            picked = np.isin(queries, rows)
            if shown.any():
                engine = RankingEngine.from_scores(scores[np.ix_(picked, shown)], pids[queries[picked]],
                                                   pids[gallery[shown]], memory_budget=memory_budget)
                outcome.place(picked, engine.evaluate([([np.arange(int(shown.sum()))], dedup)])[0][0])
        return outcome
    options = llcm_cameras(camids, queries, gallery) if junk == "llcm" else {}
    engine = RankingEngine.from_scores(scores, pids[queries], pids[gallery], memory_budget=memory_budget, **options)
    return engine.evaluate([([np.arange(len(gallery))], dedup)])[0][0]
