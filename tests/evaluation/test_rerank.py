"""k-reciprocal re-ranking: the vectorised version against a straightforward one written here from the
method's description (Zhong et al. 2017), one row at a time with dense matrices, and its parameter checks;
trials sharing one neighbour search against each trial on its own; torch against numpy; near-ties that
float32 could not order."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from pfanet_cli.data.llcm import TEST_NIR_CAMERAS, VIS_CAMERAS
from pfanet_cli.errors import UsageError
from pfanet_cli.evaluation.features import save_features
from pfanet_cli.evaluation.galleries import sample_gallery_agw, sample_llcm
from pfanet_cli.evaluation import rerank
from pfanet_cli.evaluation.protocols import evaluate_llcm, evaluate_regdb, evaluate_sysu, evaluate_sysu_settings
from pfanet_cli.evaluation.rerank import KReciprocal, RerankConfig, kreciprocal_distances, rerank_config, rerank_device
from tests.helpers import llcm_like, sysu_like


def reciprocal_set(rank: np.ndarray, i: int, k: int) -> list[int]:
    """The j among i's k + 1 nearest that hold i among their own k + 1 nearest."""
    return [int(j) for j in rank[i, : k + 1] if i in rank[j, : k + 1]]


def reference_rerank(queries, gallery, k1=20, k2=6, lam=0.3, power=1):
    """``power`` 2 squares the squared Euclidean distance again, as layumi's re_ranking.py does with the cosine
    similarities its evaluate_rerank.py passes."""
    feats = np.concatenate([queries, gallery]).astype(np.float64)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    n, num_query = len(feats), len(queries)
    dist = np.maximum(2.0 - 2.0 * feats @ feats.T, 0.0) ** power
    dist = dist / dist.max(axis=1, keepdims=True)              # each row by its largest distance
    rank = np.argsort(dist, axis=1, kind="stable")
    weights = np.zeros((n, n))
    half = int(np.around(k1 / 2.0))
    for i in range(n):
        members = reciprocal_set(rank, i, k1)
        expanded = set(members)
        for candidate in members:
            extra = reciprocal_set(rank, candidate, half)
            if len(set(extra) & set(members)) > 2.0 / 3.0 * len(extra):
                expanded.update(extra)
        cols = sorted(expanded)
        w = np.exp(-dist[i, cols])
        weights[i, cols] = w / w.sum()
    if k2 != 1:
        weights = np.stack([weights[rank[i, :k2]].mean(axis=0) for i in range(n)])
    final = np.zeros((num_query, n - num_query))
    for i in range(num_query):
        for j in range(num_query, n):
            overlap = np.minimum(weights[i], weights[j]).sum()
            final[i, j - num_query] = (1 - lam) * (1 - overlap / (2 - overlap)) + lam * dist[i, j]
    return final


def clustered(seed: int, ids: int, per_id: int, dim: int = 8):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, dim))
    labels = np.repeat(np.arange(ids), per_id)
    return centres[labels] + 0.7 * rng.standard_normal((len(labels), dim)), labels


@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (5, 1, 0.0), (7, 3, 1.0), (3, 2, 0.5)])
def test_equals_the_straightforward_reference(k1, k2, lam):
    feats, _ = clustered(k1 + k2, ids=9, per_id=6)
    queries, gallery = feats[:19], feats[19:]
    mine = kreciprocal_distances(queries, gallery, RerankConfig(k1, k2, lam))
    expected = reference_rerank(queries, gallery, k1, k2, lam)
    np.testing.assert_allclose(mine, expected, atol=1e-6, rtol=0)
    assert mine.shape == (19, 35) and mine.min() >= 0.0 and mine.max() <= 1.0


def test_the_docstring_names_the_implementation_pfanet_equals_and_one_it_does_not():
    """pfanet computes 2 - 2 cos, as zhunzhong07's re_ranking_ranklist.py does from Euclidean distances; the copy
    that squares it again (layumi's re_ranking.py) gives other distances, so the docstring may not say that
    AGW-family copies all give pfanet's numbers."""
    feats, _ = clustered(11, ids=9, per_id=6)
    queries, gallery = feats[:19], feats[19:]
    mine = kreciprocal_distances(queries, gallery)
    np.testing.assert_allclose(mine, reference_rerank(queries, gallery), atol=1e-6, rtol=0)
    assert np.abs(mine - reference_rerank(queries, gallery, power=2)).max() > 1e-2
    doc = " ".join(rerank.__doc__.split())
    assert "zhunzhong07/person-re-ranking" in doc and "re_ranking_ranklist.py" in doc
    assert "layumi's ``re_ranking.py``" in doc and "differ" in doc
    assert "AGW / reid-strong-baseline copies" not in doc


def test_small_memory_budgets_give_the_same_distances():
    feats, _ = clustered(3, ids=12, per_id=5)
    whole = kreciprocal_distances(feats[:25], feats[25:])
    blocked = kreciprocal_distances(feats[:25], feats[25:], memory_budget=2_000)   # one row per block
    np.testing.assert_allclose(blocked, whole, atol=1e-12, rtol=0)


def test_tied_neighbours_are_taken_in_index_order():
    """Duplicated features tie exactly; the neighbour lists follow the index, like a stable sort."""
    feats, _ = clustered(5, ids=5, per_id=4)
    feats = np.concatenate([feats, feats[:6]])
    np.testing.assert_allclose(kreciprocal_distances(feats[:9], feats[9:], RerankConfig(4, 2, 0.3)),
                               reference_rerank(feats[:9], feats[9:], 4, 2, 0.3), atol=1e-6, rtol=0)


@pytest.mark.parametrize("min_depth", [64, 4])                 # 4: short lists, nodes fall back to the trial
def test_trials_sharing_one_search_equal_each_trial_on_its_own(monkeypatch, min_depth):
    monkeypatch.setattr(rerank, "MIN_DEPTH", min_depth)
    monkeypatch.setattr(rerank, "DEPTH_FACTOR", 1)
    feats, _ = clustered(6, ids=20, per_id=7)
    queries, pool = feats[:40], feats[40:]
    config = RerankConfig(5, 3, 0.3)
    reranker = KReciprocal(queries, pool, config)
    rng = np.random.default_rng(7)
    for _ in range(3):
        rows = np.sort(rng.choice(len(queries), 30, replace=False))
        gallery = np.sort(rng.choice(len(pool), 45, replace=False))
        shared = reranker.distances(rows, gallery)
        np.testing.assert_allclose(shared, kreciprocal_distances(queries[rows], pool[gallery], config),
                                   atol=1e-12, rtol=0)
        np.testing.assert_allclose(shared, reference_rerank(queries[rows], pool[gallery], 5, 3, 0.3),
                                   atol=1e-12, rtol=0)


def test_the_torch_path_equals_the_numpy_path():
    feats, _ = clustered(8, ids=12, per_id=6)
    config = RerankConfig(6, 3, 0.3)
    on_numpy = KReciprocal(feats[:30], feats[30:], config, memory_budget=5_000)
    on_torch = KReciprocal(feats[:30], feats[30:], config.on("cpu"), memory_budget=5_000)
    for gallery in (np.arange(42), np.arange(0, 42, 2)):
        np.testing.assert_allclose(on_torch.distances(None, gallery), on_numpy.distances(None, gallery),
                                   atol=1e-12, rtol=0)


def test_near_ties_below_float32_resolution_follow_float64():
    """Tight clusters: distances of about 1e-9 apart by 1e-10, where float32 similarities of unit vectors
    (resolution 6e-8) are all equal; the neighbour order must be float64's."""
    rng = np.random.default_rng(9)
    centres = rng.standard_normal((6, 8))
    feats = centres[np.repeat(np.arange(6), 9)] + 1e-5 * rng.standard_normal((54, 8))
    unit32 = (feats / np.linalg.norm(feats, axis=1, keepdims=True)).astype(np.float32)
    assert np.all(unit32[:9] @ unit32[:9].T >= np.float32(1.0) - 3e-7)      # float32 cannot order them
    mine = kreciprocal_distances(feats[::3], np.delete(feats, np.arange(0, 54, 3), axis=0), RerankConfig(5, 3, 0.3))
    expected = reference_rerank(feats[::3], np.delete(feats, np.arange(0, 54, 3), axis=0), 5, 3, 0.3)
    np.testing.assert_allclose(mine, expected, atol=1e-12, rtol=0)


def test_the_device_follows_the_command_line():
    assert rerank_device("cpu") is None
    try:
        import torch  # only to know what this machine has
    except ImportError:                                                # pragma: no cover - torch is a dependency
        pytest.skip("torch is not installed")
    if torch.cuda.is_available():
        assert rerank_device(None).startswith("cuda") and rerank_device("cuda").startswith("cuda")
    else:
        assert rerank_device(None) is None
        with pytest.raises(UsageError, match="no CUDA device"):
            rerank_device("cuda")


def test_re_ranking_on_the_cpu_evaluates_a_features_file_without_importing_torch(tmp_path):
    feats, pids, camids, paths = sysu_like(seed=3)
    save_features(tmp_path / "f.npz", feats, pids, camids, paths, dataset="sysu")
    script = ("import sys; from pfanet_cli.cli import main; "
              f"code = main(['evaluate', '--features', {str(tmp_path / 'f.npz')!r}, '--rerank', 'kreciprocal', "
              "'--device', 'cpu', '--sampler', 'agw', '--trials', '1', '--json', 'out.json']); "
              "print(code, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.stdout.split()[-2:] == ["0", "False"], done.stdout + done.stderr
    assert json.loads((tmp_path / "out.json").read_text())["card"]["rerank"]["method"].startswith("k-reciprocal")


def test_re_ranking_improves_a_clustered_retrieval():
    feats, labels = clustered(11, ids=10, per_id=8, dim=6)
    queries, gallery = np.arange(0, 80, 4), np.setdiff1d(np.arange(80), np.arange(0, 80, 4))
    plain = 2 - 2 * (feats[queries] / np.linalg.norm(feats[queries], axis=1, keepdims=True)) @ (
        feats[gallery] / np.linalg.norm(feats[gallery], axis=1, keepdims=True)).T
    reranked = kreciprocal_distances(feats[queries], feats[gallery])

    def top1(dist):
        return np.mean(labels[gallery][dist.argmin(axis=1)] == labels[queries])

    assert top1(reranked) >= top1(plain)


def test_parameters_are_checked():
    assert rerank_config("off") is None
    assert rerank_config("kreciprocal") == RerankConfig(20, 6, 0.3)
    assert rerank_config("kreciprocal", 10, 3, 0.5).describe() == {
        "method": "k-reciprocal (Zhong et al. 2017)", "k1": 10, "k2": 3, "lambda": 0.5}
    for args, message in (((0, None, None), "--k1 must be at least 1"), ((None, 0, None), "--k2 must be at least 1"),
                          ((None, None, 1.5), "--lambda must be in [0, 1]"),
                          ((None, None, -0.1), "--lambda must be in [0, 1]")):
        with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
            rerank_config("kreciprocal", *args)
    with pytest.raises(UsageError, match="apply to --rerank kreciprocal"):
        rerank_config("off", k1=10)
    with pytest.raises(UsageError, match="unknown --rerank 'fancy'"):
        rerank_config("fancy")


def loop_metrics(dist, queries, gallery, pids, camids, rule):
    """R1, R5, mAP of one trial from a distance matrix, one query at a time (junk removed by ``rule``,
    CMC de-duplicated except for RegDB)."""
    ranks, aps = [], []
    for qi, q in enumerate(queries):
        order = gallery[np.argsort(dist[qi], kind="stable")]
        if rule == "sysu" and camids[q] == 3:
            order = order[camids[order] != 2]
        if rule == "llcm":
            order = order[~((pids[order] == pids[q]) & (camids[order] % 10 == camids[q] % 10))]
        hits = pids[order] == pids[q]
        if not hits.any():
            continue
        first = int(np.argmax(hits))
        ranks.append(first + 1 if rule == "regdb" else len(set(pids[order][:first].tolist())) + 1)
        positions = np.flatnonzero(hits) + 1
        aps.append(np.mean(np.arange(1, len(positions) + 1) / positions))
    ranks = np.array(ranks)
    return {"r1": 100 * np.mean(ranks <= 1), "r5": 100 * np.mean(ranks <= 5), "mAP": 100 * np.mean(aps)}


def test_protocols_rank_by_the_re_ranked_distances():
    """Every protocol with --rerank equals a per-query loop over the reference's re-ranked distances."""
    config = RerankConfig(6, 3, 0.3)
    feats, pids, camids, paths = sysu_like(seed=8, ids=7, dim=10)
    result = evaluate_sysu(feats, pids, camids, paths, mode="all", shot="single", trials=2, sampler="agw",
                           rerank=config)
    queries = np.flatnonzero(np.isin(camids, (3, 6)))
    for trial, gallery in enumerate(sample_gallery_agw(pids, camids, paths, mode="all", shot="single", trials=2)):
        gallery = np.sort(gallery)
        dist = reference_rerank(feats[queries], feats[gallery], 6, 3, 0.3)
        expected = loop_metrics(dist, queries, gallery, pids, camids, "sysu")
        assert {k: result.per_trial[trial][k] for k in expected} == pytest.approx(expected, abs=1e-9)
    assert result.card["rerank"] == config.describe()
    plain = evaluate_sysu(feats, pids, camids, paths, mode="all", shot="single", trials=2, sampler="agw")
    assert plain.per_trial != result.per_trial and plain.card["rerank"] == "off"

    both = evaluate_sysu_settings(feats, pids, camids, paths, [("all", "multi"), ("indoor", "single")], trials=2,
                                  sampler="agw", rerank=config)                 # one search for four trials
    for result in both:
        galleries = sample_gallery_agw(pids, camids, paths, mode=result.mode, shot=result.shot, trials=2)
        for trial, gallery in enumerate(galleries):
            gallery = np.sort(gallery)
            dist = reference_rerank(feats[queries], feats[gallery], 6, 3, 0.3)
            expected = loop_metrics(dist, queries, gallery, pids, camids, "sysu")
            assert {k: result.per_trial[trial][k] for k in expected} == pytest.approx(expected, abs=1e-9)

    regdb_cams = np.where(np.isin(camids, (3, 6)), 2, 1)
    result = evaluate_regdb(feats, pids, regdb_cams, direction="t2v", rerank=config)
    gallery = np.flatnonzero(regdb_cams == 1)
    expected = loop_metrics(reference_rerank(feats[queries], feats[gallery], 6, 3, 0.3), queries, gallery, pids,
                            regdb_cams, "regdb")
    assert {k: result.metrics[k] for k in expected} == pytest.approx(expected, abs=1e-9)

    feats, pids, camids, paths = llcm_like(seed=4, ids=8, dim=6)
    for direction in ("ir2vis", "vis2ir"):
        result = evaluate_llcm(feats, pids, camids, paths, direction=direction, trials=2, rerank=config)
        for trial, drawn in enumerate(sample_llcm(pids, camids, paths, direction=direction, trials=2)):
            fixed = np.flatnonzero(np.isin(camids, TEST_NIR_CAMERAS if direction == "ir2vis" else VIS_CAMERAS))
            q, g = (fixed, np.sort(drawn)) if direction == "ir2vis" else (drawn, fixed)
            expected = loop_metrics(reference_rerank(feats[q], feats[g], 6, 3, 0.3), q, g, pids, camids, "llcm")
            assert {k: result.per_trial[trial][k] for k in expected} == pytest.approx(expected, abs=1e-9)
