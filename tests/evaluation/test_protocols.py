"""SYSU-MM01 and RegDB protocols: the vectorised evaluator against a per-query loop oracle, hand-built
cases with known answers, the two gallery samplers, and the real permutation file."""

from __future__ import annotations

import json
import os
import random
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from pfanet_cli.data.sysu import load_rand_perm_cam
from pfanet_cli.errors import DataError, UsageError
from pfanet_cli.evaluation.examples import sysu_ranked_examples, top_k_gallery
from pfanet_cli.evaluation.galleries import load_perm, sample_gallery_agw, sample_gallery_official
from pfanet_cli.evaluation.protocols import (
    ALL_SYSU_SETTINGS,
    METRIC_KEYS,
    evaluate_regdb,
    evaluate_sysu,
    evaluate_sysu_settings,
)
from pfanet_cli.evaluation.ranking import RankingEngine
from pfanet_cli.evaluation.reference import reference_regdb, reference_sysu
from tests.helpers import SHARED, assert_matches_oracle, perm_for, sysu_like

REAL_PERM = SHARED / "sysu-mm01" / "rand_perm_cam.mat"


# ---------------------------------------------------------------------------------------------
# data


# ---------------------------------------------------------------------------------------------
# oracle


@pytest.mark.parametrize("exact_ties", [False, True], ids=["noise", "exact-ties"])
@pytest.mark.parametrize("sampler", ["agw", "official"])
def test_every_sysu_setting_equals_the_loop_oracle(sampler, exact_ties):
    feats, pids, camids, paths = sysu_like(seed=1, exact_ties=exact_ties)
    perm = perm_for(pids, camids, seed=2)
    results = evaluate_sysu_settings(feats, pids, camids, paths, ALL_SYSU_SETTINGS, trials=10, sampler=sampler,
                                     perm=perm)
    for (mode, shot), result in zip(ALL_SYSU_SETTINGS, results):
        assert (result.mode, result.shot, result.sampler) == (mode, shot, sampler)
        oracle = reference_sysu(feats, pids, camids, paths, mode=mode, shot=shot, trials=10, sampler=sampler,
                                perm=perm)
        assert_matches_oracle(result, oracle)
    # the corner cases are really there: some queries have no positive, indoor fewer still
    assert results[0].num_valid_query < results[0].num_query
    assert results[2].num_valid_query < results[0].num_valid_query


@pytest.mark.parametrize("top_ranks", [1, 5])
def test_deduplication_beyond_the_searched_top_ranks_equals_the_oracle(monkeypatch, top_ranks):
    """Queries whose first positive lies below the top ranks take the whole-gallery path."""
    monkeypatch.setattr(RankingEngine, "TOP_RANKS", top_ranks)
    feats, pids, camids, paths = sysu_like(seed=4)
    perm = perm_for(pids, camids, seed=5)
    results = evaluate_sysu_settings(feats, pids, camids, paths, ALL_SYSU_SETTINGS, trials=5, sampler="official",
                                     perm=perm)
    for (mode, shot), result in zip(ALL_SYSU_SETTINGS, results):
        oracle = reference_sysu(feats, pids, camids, paths, mode=mode, shot=shot, trials=5, sampler="official",
                                perm=perm)
        assert_matches_oracle(result, oracle)
    # some queries see 10 or more identities before their first positive: deeper than the top ranks
    assert results[0].metrics["r10"] < 100.0


def test_one_setting_alone_chunked_and_threaded_gives_the_same_numbers(monkeypatch):
    feats, pids, camids, paths = sysu_like(seed=3)
    shared = evaluate_sysu_settings(feats, pids, camids, paths, ALL_SYSU_SETTINGS, trials=4, sampler="agw")
    for (mode, shot), expected in zip(ALL_SYSU_SETTINGS, shared):
        alone = evaluate_sysu(feats, pids, camids, paths, mode=mode, shot=shot, trials=4, sampler="agw",
                              memory_budget=1)  # one query per chunk, one chunk per block
        assert alone.per_trial == expected.per_trial
        np.testing.assert_array_equal(alone.cmc, expected.cmc)
    monkeypatch.setenv("PFANET_EVAL_THREADS", "3")
    threaded = evaluate_sysu(feats, pids, camids, paths, mode="all", shot="multi", trials=4, sampler="agw",
                             memory_budget=40_000)  # several blocks and chunks on three threads
    assert threaded.per_trial == shared[1].per_trial


@pytest.mark.parametrize("direction", ["v2t", "t2v"])
def test_regdb_equals_the_loop_oracle(direction):
    rng = np.random.default_rng(5)
    ids = rng.standard_normal((15, 12))
    pids = np.repeat(np.arange(1, 16), 8)
    camids = np.tile(np.repeat([1, 2], 4), 15)
    feats = (ids[pids - 1] + 1.3 * rng.standard_normal((len(pids), 12))).astype(np.float32)
    result = evaluate_regdb(feats, pids, camids, direction=direction, max_rank=25)
    oracle = reference_regdb(feats, pids, camids, direction=direction, max_rank=25)
    assert (result.dataset, result.mode, result.trials, result.num_gallery) == ("regdb", direction, 1, 60)
    assert_matches_oracle(result, oracle)
    assert result.std == {k: 0.0 for k in METRIC_KEYS}


# ---------------------------------------------------------------------------------------------
# hand-built cases


def one_image_folders(rows):
    """(pid, camid, feature) rows, one image per (camera, person) folder, so every sampler agrees."""
    pids = np.array([r[0] for r in rows], np.int64)
    camids = np.array([r[1] for r in rows], np.int64)
    feats = np.array([r[2] for r in rows], np.float32)
    paths = [f"cam{c}/{p:04d}/{i:04d}.jpg" for i, (p, c) in enumerate(zip(pids, camids), start=1)]
    return feats, pids, camids, paths


def test_queries_without_positive_and_cam3_queries_seeing_only_cam2_are_excluded():
    feats, pids, camids, paths = one_image_folders([
        (1, 1, [1, 0, 0, 0]),          # gallery: id 1 in cam1
        (2, 2, [0, 1, 0, 0]),          # id 2 in cam2 only (same room as cam3)
        (3, 4, [0, 0, 1, 0]),          # id 3 in cam4
        (1, 3, [1, 3, 2, 0]),          # cam3 query id 1: cam2 image first (junk), then id 3, then id 1
        (2, 3, [0, 1, 0, 0]),          # cam3 query id 2: its only positive is in cam2 -> excluded
        (4, 6, [1, 1, 1, 1]),          # cam6 query id 4: never in the gallery -> excluded
        (2, 6, [0, 1, 0, 0]),          # cam6 query id 2: sees cam2 -> rank 1
    ])
    result = evaluate_sysu(feats, pids, camids, paths, mode="all", shot="single", trials=2, sampler="agw")
    assert result.num_query == 4 and result.num_valid_query == 2 and result.num_gallery == 3
    assert result.metrics == pytest.approx({"r1": 50.0, "r5": 100.0, "r10": 100.0, "r20": 100.0,
                                            "mAP": 75.0, "mINP": 75.0})
    np.testing.assert_allclose(result.cmc[:3], [50.0, 100.0, 100.0])
    examples = sysu_ranked_examples(feats, pids, camids, paths, sampler="agw", num_queries=10)
    assert [q for q, _ in examples] == [3, 6]                   # only the queries that count are shown
    assert [top.tolist() for _, top in examples] == [[2, 0], [1, 0, 2]]
    indoor = evaluate_sysu(feats, pids, camids, paths, mode="indoor", shot="single", trials=2, sampler="agw")
    # indoor gallery = cam1 + cam2: the cam3 query of id 1 now finds its positive first
    assert indoor.num_valid_query == 2 and indoor.num_gallery == 2
    assert indoor.metrics == pytest.approx({k: 100.0 for k in METRIC_KEYS})


def test_identity_de_duplication_changes_r5_but_not_r1():
    e = np.eye(6)
    feats, pids, camids, paths = one_image_folders([
        (2, 1, e[0]), (2, 2, e[1]), (2, 4, e[2]), (2, 5, e[3]),   # id 2 in the four RGB cameras
        (3, 1, e[4]),                                             # id 3
        (1, 1, e[5]),                                             # id 1
        (1, 6, [9, 8, 7, 6, 5, 1]),   # list: 2 2 2 2 3 1 -> image rank 6, identity rank 3
        (2, 6, [9, 0, 0, 0, 1, 2]),   # list: 2 1 3 2 2 2 -> rank 1; positives at 1, 4, 5, 6
    ])
    result = evaluate_sysu(feats, pids, camids, paths, mode="all", shot="single", trials=1, sampler="agw")
    ap_second = (1 / 1 + 2 / 4 + 3 / 5 + 4 / 6) / 4
    assert result.metrics == pytest.approx({
        "r1": 50.0, "r5": 100.0, "r10": 100.0, "r20": 100.0,
        "mAP": 100 * (1 / 6 + ap_second) / 2, "mINP": 100 * (1 / 6 + 4 / 6) / 2,
    })
    np.testing.assert_allclose(result.cmc[:4], [50.0, 50.0, 100.0, 100.0])
    # the same ranking without de-duplication (RegDB's image-level CMC): R5 drops, R1 and mAP stay
    regdb_cams = np.where(np.isin(camids, (3, 6)), 1, 2)
    plain = evaluate_regdb(feats, pids, regdb_cams, direction="v2t")
    assert plain.metrics["r1"] == pytest.approx(50.0) and plain.metrics["r5"] == pytest.approx(50.0)
    assert plain.metrics["r10"] == pytest.approx(100.0)
    assert plain.metrics["mAP"] == pytest.approx(result.metrics["mAP"])


@pytest.mark.parametrize("positive_first", [False, True])
def test_ties_keep_the_gallery_order_of_the_features_file(positive_first):
    rows = [(2, 1, [1, 0]), (1, 4, [1, 0])]        # identical gallery features: an exact tie
    if positive_first:
        rows.reverse()
    feats, pids, camids, paths = one_image_folders(rows + [(1, 6, [1, 0])])
    result = evaluate_sysu(feats, pids, camids, paths, mode="all", shot="single", trials=1, sampler="agw")
    expected = 100.0 if positive_first else 0.0
    assert result.metrics["r1"] == expected
    assert result.metrics["mAP"] == pytest.approx(100.0 if positive_first else 50.0)
    tops = top_k_gallery(feats, camids, [2], [0, 1], k=2)
    assert tops[0].tolist() == [0, 1]


def test_similarities_closer_than_the_sort_key_resolution_are_still_ordered_exactly():
    tiny = 4.5e-7   # cosine 1 - 1e-13: below the sort key's resolution with 5,000 candidates
    fillers = [(pid, 5, [0.0, 1.0]) for pid in range(10, 5010)]
    feats, pids, camids, paths = one_image_folders([
        (2, 1, [1.0, tiny]),     # earlier row, slightly lower similarity
        (1, 4, [1.0, 0.0]),      # the positive: similarity exactly 1
    ] + fillers + [(1, 6, [1.0, 0.0])])
    result = evaluate_sysu(feats, pids, camids, paths, mode="all", shot="single", trials=1, sampler="agw")
    assert result.metrics["r1"] == 100.0 and result.num_gallery == 5002


# ---------------------------------------------------------------------------------------------
# samplers


def agw_restated(root: Path, test_ids: list[int], mode: str, trial: int, shot: str) -> list[str]:
    """The AGW gallery rule walked over a real directory tree (os.listdir / os.path.isdir)."""
    random.seed(trial)
    cameras = ["cam1", "cam2", "cam4", "cam5"] if mode == "all" else ["cam1", "cam2"]
    chosen = []
    for folder in sorted("%04d" % i for i in test_ids):
        for cam in cameras:
            img_dir = os.path.join(str(root), cam, folder)
            if os.path.isdir(img_dir):
                files = sorted(img_dir + "/" + name for name in os.listdir(img_dir))
                if shot == "single":
                    chosen.append(random.choice(files))
                else:
                    chosen.extend(random.sample(files, 10))
    return [os.path.relpath(p, root).replace(os.sep, "/") for p in chosen]


def test_agw_sampler_picks_the_same_files_as_the_agw_rule(tmp_path: Path):
    rng = np.random.default_rng(7)
    test_ids = [3, 8, 11, 25, 40]
    rows = []
    for pid in test_ids:
        for cam in range(1, 7):
            if rng.random() < 0.25 and cam not in (1, 3):
                continue                                   # some (id, camera) folders do not exist
            count = int(rng.integers(10, 19))
            for n in rng.permutation(np.arange(1, count + 1)):
                rows.append((pid, cam, f"cam{cam}/{pid:04d}/{n:04d}.jpg"))
    rng.shuffle(rows)                                      # features rows in no particular order
    for _, _, rel in rows:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).touch()
    pids = np.array([r[0] for r in rows])
    camids = np.array([r[1] for r in rows])
    paths = [r[2] for r in rows]
    state = random.getstate()
    for mode in ("all", "indoor"):
        for shot in ("single", "multi"):
            mine = sample_gallery_agw(pids, camids, paths, mode=mode, shot=shot, trials=3)
            for trial in range(3):
                expected = agw_restated(tmp_path, test_ids, mode, trial, shot)
                assert [paths[r] for r in mine[trial]] == expected
    random.setstate(state)


def test_agw_sampler_leaves_the_global_rng_alone_and_takes_short_folders_whole():
    paths = [f"cam1/0001/{n:04d}.jpg" for n in range(1, 5)] + [f"cam1/0002/{n:04d}.jpg" for n in range(1, 13)]
    pids = np.array([1] * 4 + [2] * 12)
    camids = np.ones(16, dtype=np.int64)
    random.seed(123)
    before = random.random()
    random.seed(123)
    galleries = sample_gallery_agw(pids, camids, paths, mode="indoor", shot="multi", trials=2)
    assert random.random() == before
    assert [len(g) for g in galleries] == [14, 14]
    assert sorted(galleries[0][:4].tolist()) == [0, 1, 2, 3]   # the 4-image folder in random.sample order
    rng = random.Random(1)
    expected_short = rng.sample([0, 1, 2, 3], 4)
    assert galleries[1][:4].tolist() == expected_short


def test_official_sampler_maps_image_numbers_to_sorted_files_camera_by_camera():
    paths = ["cam2/0007/0002.jpg", "cam1/0007/0003.jpg", "cam1/0007/0001.jpg", "cam1/0007/0002.jpg",
             "cam2/0007/0001.jpg", "cam1/0005/0001.jpg"]
    pids = np.array([7, 7, 7, 7, 7, 5])
    camids = np.array([2, 1, 1, 1, 2, 1])
    perm = {1: {7: np.array([[3, 1, 2]] * 9 + [[2, 3, 1]]), 5: np.ones((10, 1), int)},
            2: {7: np.array([[2, 1]] * 10)}}
    single = sample_gallery_official(pids, camids, paths, perm, mode="indoor", shot="single", trials=10)
    assert [paths[r] for r in single[0]] == ["cam1/0005/0001.jpg", "cam1/0007/0003.jpg", "cam2/0007/0002.jpg"]
    assert [paths[r] for r in single[9]] == ["cam1/0005/0001.jpg", "cam1/0007/0002.jpg", "cam2/0007/0002.jpg"]
    multi = sample_gallery_official(pids, camids, paths, perm, mode="all", shot="multi", trials=1)
    assert [paths[r] for r in multi[0]] == ["cam1/0005/0001.jpg", "cam1/0007/0003.jpg", "cam1/0007/0001.jpg",
                                            "cam1/0007/0002.jpg", "cam2/0007/0002.jpg", "cam2/0007/0001.jpg"]


def real_test_index():
    info = json.loads(resources.files("pfanet_cli").joinpath("resources/sysu_counts.json").read_text())
    pids, camids, paths = [], [], []
    for pid in info["splits"]["test"]:
        for cam in range(1, 7):
            for n in range(1, info["counts"][f"cam{cam}"].get(str(pid), 0) + 1):
                pids.append(pid)
                camids.append(cam)
                paths.append(f"cam{cam}/{pid:04d}/{n:04d}.jpg")
    return np.array(pids), np.array(camids), paths


@pytest.mark.skipif(not REAL_PERM.is_file(), reason=f"the official permutation file {REAL_PERM} is not available")
def test_official_sampler_on_the_real_permutation_file():
    perm = load_rand_perm_cam(REAL_PERM)
    pids, camids, paths = real_test_index()
    assert np.isin(camids, (3, 6)).sum() == 3803
    expected = {("all", "single"): 301, ("all", "multi"): 3010, ("indoor", "single"): 112, ("indoor", "multi"): 1120}
    for (mode, shot), size in expected.items():
        galleries = sample_gallery_official(pids, camids, paths, perm, mode=mode, shot=shot, trials=10)
        assert [len(g) for g in galleries] == [size] * 10
        assert len(set(galleries[0].tolist())) == size
    first = sample_gallery_official(pids, camids, paths, perm, mode="all", shot="single", trials=10)
    number = int(perm[1][6][3][0])                      # trial 3, camera 1, person 6
    assert f"cam1/0006/{number:04d}.jpg" in [paths[r] for r in first[3]]
    feats = np.random.default_rng(0).standard_normal((len(pids), 4)).astype(np.float32)
    indoor = evaluate_sysu(feats, pids, camids, paths, mode="indoor", shot="single", trials=2, perm=perm)
    allsearch = evaluate_sysu(feats, pids, camids, paths, mode="all", shot="single", trials=2, perm=perm)
    assert indoor.sampler == "official" and indoor.num_query == 3803
    assert indoor.num_valid_query == 2208 and allsearch.num_valid_query == 3803


# ---------------------------------------------------------------------------------------------
# bad input


def test_bad_inputs_are_data_errors_naming_the_problem(tmp_path: Path):
    feats, pids, camids, paths = sysu_like(seed=4, ids=6)
    perm = perm_for(pids, camids)
    bad_cams = camids.copy()
    bad_cams[0] = 9
    with pytest.raises(DataError, match="unknown SYSU-MM01 camera ids 9"):
        evaluate_sysu(feats, pids, bad_cams, paths)
    ir_only = np.isin(camids, (3, 6))
    with pytest.raises(DataError, match="empty gallery"):
        evaluate_sysu(feats[ir_only], pids[ir_only], camids[ir_only], [p for p, k in zip(paths, ir_only) if k])
    rgb_only = ~ir_only
    with pytest.raises(DataError, match="no IR query images"):
        evaluate_sysu(feats[rgb_only], pids[rgb_only], camids[rgb_only], [p for p, k in zip(paths, rgb_only) if k])
    with pytest.raises(DataError, match="mismatched|one entry per feature row"):
        evaluate_sysu(feats, pids[:-1], camids, paths)
    with pytest.raises(DataError, match="twice"):
        evaluate_sysu(feats, pids, camids, paths[:-1] + paths[:1])
    with pytest.raises(DataError, match="needs the permutation file"):
        evaluate_sysu(feats, pids, camids, paths, sampler="official")
    missing = {c: dict(v) for c, v in perm.items()}
    del missing[1][4]
    with pytest.raises(DataError, match="no entry for gallery folder cam1/0004"):
        evaluate_sysu(feats, pids, camids, paths, perm=missing)
    short = {c: {p: e[:, :-1] for p, e in v.items()} for c, v in perm.items()}
    with pytest.raises(DataError, match="does not match these features"):
        evaluate_sysu(feats, pids, camids, paths, perm=short)
    with pytest.raises(DataError, match="expected 12 trial rows"):
        evaluate_sysu(feats, pids, camids, paths, perm=perm, trials=12)
    wrong = tmp_path / "wrong.mat"
    scipy.io.savemat(str(wrong), {"rand_perm_cam": np.zeros((3, 1))})
    with pytest.raises(DataError, match="6x1 cell array"):
        load_perm(wrong)
    with pytest.raises(DataError, match="not found"):
        load_perm(tmp_path / "absent.mat")
    with pytest.raises(UsageError, match="unknown mode 'outdoor'"):
        evaluate_sysu(feats, pids, camids, paths, mode="outdoor")
    with pytest.raises(UsageError, match="unknown sampler"):
        evaluate_sysu(feats, pids, camids, paths, sampler="random")
    with pytest.raises(DataError, match="unknown RegDB camera ids 3"):
        evaluate_regdb(feats, pids, camids)
    regdb_cams = np.ones_like(camids)
    with pytest.raises(DataError, match="empty gallery set"):
        evaluate_regdb(feats, pids, regdb_cams)


def test_ranked_examples_and_json_contract():
    feats, pids, camids, paths = sysu_like(seed=6, ids=8)
    examples = sysu_ranked_examples(feats, pids, camids, paths, sampler="agw", num_queries=3)
    assert len(examples) == 3
    for query, top in examples:
        assert camids[query] in (3, 6) and 0 < len(top) <= 10
        assert np.isin(camids[top], (1, 2, 4, 5)).all()
        if camids[query] == 3:
            assert not (camids[top] == 2).any()
    result = evaluate_sysu(feats, pids, camids, paths, sampler="agw", trials=3)
    payload = result.to_json_dict()
    assert list(payload) == ["dataset", "mode", "shot", "sampler", "trials", "num_query", "num_gallery",
                             "metrics", "std", "per_trial", "card"]
    assert payload["card"]["sampler"].startswith("agw") and payload["card"]["trials"] == 3
    assert list(payload["metrics"]) == list(METRIC_KEYS) == list(payload["std"])
    assert len(payload["per_trial"]) == 3 and json.loads(json.dumps(payload)) == payload
