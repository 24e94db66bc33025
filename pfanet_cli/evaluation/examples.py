"""Ranked lists of a few queries for pictures: which queries to show (one per identity, spread over the
identities that have a positive) and their top-k gallery images, for one trial of a protocol setting."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from pfanet_cli.data import llcm
from pfanet_cli.data.sysu import SAME_ROOM, RandPerm
from pfanet_cli.evaluation.galleries import sample_llcm, sample_sysu_galleries
from pfanet_cli.evaluation.protocols import EvalResult, check_arrays, regdb_rows, sysu_query_rows
from pfanet_cli.evaluation.ranking import cosine_normalise


def top_k_gallery(features, camids, query_rows, gallery_rows, *, k: int = 10,
                  junk: Mapping[int, int] | None = None) -> list[np.ndarray]:
    """For a few queries, the first ``k`` gallery rows of the ranked list (junk removed)."""
    feats = np.asarray(features)
    camids = np.asarray(camids)
    gallery_rows = np.sort(np.asarray(gallery_rows, dtype=np.int64))
    query_rows = np.asarray(query_rows, dtype=np.int64)
    if query_rows.size == 0:
        return []
    sims = cosine_normalise(feats[query_rows]) @ cosine_normalise(feats[gallery_rows]).T
    keep = np.ones(sims.shape, dtype=bool)
    for qcam, gcam in (junk or {}).items():
        keep &= ~((camids[query_rows] == qcam)[:, None] & (camids[gallery_rows] == gcam)[None, :])
    order = np.argsort(np.where(keep, -sims, np.inf), axis=1, kind="stable")
    kept = np.take_along_axis(keep, order, axis=1)
    return [gallery_rows[o[m]][:k] for o, m in zip(order, kept)]


def pick_example_queries(pids, camids, query_rows, gallery_rows, count: int,
                         junk: Mapping[int, int] | None = None) -> np.ndarray:
    """Up to ``count`` queries of different identities with a positive in the gallery (deterministic)."""
    pids = np.asarray(pids)
    camids = np.asarray(camids)
    query_rows = np.asarray(query_rows, dtype=np.int64)
    gallery_rows = np.asarray(gallery_rows, dtype=np.int64)
    valid = np.zeros(len(query_rows), dtype=bool)
    for qcam in np.unique(camids[query_rows]):
        hidden = (junk or {}).get(int(qcam))
        seen = gallery_rows if hidden is None else gallery_rows[camids[gallery_rows] != hidden]
        here = camids[query_rows] == qcam
        valid[here] = np.isin(pids[query_rows[here]], pids[seen])
    valid_rows = query_rows[valid]
    if valid_rows.size == 0 or count <= 0:
        return np.zeros(0, dtype=np.int64)
    # identities spread evenly over the valid ones, the first valid query (in row order) of each
    ids, first = np.unique(pids[valid_rows], return_index=True)
    take = np.unique(np.linspace(0, ids.size - 1, min(count, ids.size)).round().astype(np.int64))
    return valid_rows[first[take]]


def sysu_ranked_examples(features, pids, camids, paths, *, mode: str = "all", shot: str = "single",
                         sampler: str = "auto", perm: RandPerm | None = None, trial: int = 0,
                         num_queries: int = 4, k: int = 10) -> list[tuple[int, np.ndarray]]:
    """(query row, top-k gallery rows) for a few queries of one trial, for the ranked-list picture."""
    feats, pids, camids, paths = check_arrays(features, pids, camids, paths)
    _, galleries = sample_sysu_galleries(pids, camids, paths, mode=mode, shot=shot, trials=trial + 1,
                                         sampler=sampler, perm=perm)
    gallery = galleries[trial]
    queries = pick_example_queries(pids, camids, sysu_query_rows(camids), gallery, num_queries, junk=SAME_ROOM)
    tops = top_k_gallery(feats, camids, queries, gallery, k=k, junk=SAME_ROOM)
    return list(zip(queries.tolist(), tops))


def ranked_examples(features, pids, camids, paths, result: EvalResult, *, perm: RandPerm | None = None,
                    num_queries: int = 4, k: int = 10) -> list[tuple[int, np.ndarray]]:
    """Examples for the ranked-list picture of the setting an :class:`EvalResult` describes (trial 0)."""
    if result.dataset == "sysu":
        return sysu_ranked_examples(features, pids, camids, paths, mode=result.mode, shot=result.shot,
                                    sampler=result.sampler, perm=perm, num_queries=num_queries, k=k)
    if result.dataset == "llcm":
        return llcm_ranked_examples(features, pids, camids, paths, direction=result.mode, num_queries=num_queries,
                                    k=k)
    return regdb_ranked_examples(features, pids, camids, direction=result.mode, num_queries=num_queries, k=k)


def regdb_ranked_examples(features, pids, camids, *, direction: str = "v2t", num_queries: int = 4,
                          k: int = 10) -> list[tuple[int, np.ndarray]]:
    feats, pids, camids, _ = check_arrays(features, pids, camids)
    queries, gallery = regdb_rows(camids, direction)
    picked = pick_example_queries(pids, camids, queries, gallery, num_queries)
    tops = top_k_gallery(feats, camids, picked, gallery, k=k)
    return list(zip(picked.tolist(), tops))


def llcm_ranked_examples(features, pids, camids, paths, *, direction: str = "ir2vis", num_queries: int = 4,
                         k: int = 10) -> list[tuple[int, np.ndarray]]:
    """LLCM trial 0 (queries and gallery as the protocol scores them), the camera rule's junk left out."""
    feats, pids, camids, paths = check_arrays(features, pids, camids, paths)
    drawn = sample_llcm(pids, camids, paths, direction=direction, trials=1)[0]
    fixed = np.flatnonzero(np.isin(camids, llcm.TEST_NIR_CAMERAS if direction == "ir2vis" else llcm.VIS_CAMERAS))
    queries, gallery = (fixed, drawn) if direction == "ir2vis" else (drawn, fixed)
    picked = pick_example_queries(pids, camids, queries, gallery, num_queries)
    tops = top_k_gallery(feats, camids, picked, gallery, k=len(gallery))
    same = [(pids[top] == pids[q]) & (llcm.physical_camera(camids[top]) == llcm.physical_camera(camids[q]))
            for q, top in zip(picked, tops)]
    return [(q, top[~junk][:k]) for q, top, junk in zip(picked.tolist(), tops, same)]


def ranked_list_rows(examples: Sequence[tuple[int, Sequence[int]]], paths: Sequence[str],
                     pids: np.ndarray) -> list[tuple[str, int, list[tuple[str, int]]]]:
    """(query row, gallery rows) examples as the (path, pid) rows ``utils.plots.save_ranked_lists`` draws."""
    return [(paths[q], int(pids[q]), [(paths[g], int(pids[g])) for g in gallery]) for q, gallery in examples]
