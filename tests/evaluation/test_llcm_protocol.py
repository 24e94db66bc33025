"""The LLCM protocol: the trial sampler against a restatement of the reference code's rule walking a real
directory tree with the published per-split sizes, the vectorised evaluator against the per-query loop oracle
in both directions, the camera rule on a hand-built case, and bad input."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

from pfanet_cli.data import llcm
from pfanet_cli.data.synthetic import plan_synthetic_llcm
from pfanet_cli.errors import DataError, UsageError
from pfanet_cli.evaluation.examples import llcm_ranked_examples
from pfanet_cli.evaluation.galleries import sample_llcm
from pfanet_cli.evaluation.protocols import evaluate_llcm
from pfanet_cli.evaluation.ranking import RankingEngine
from pfanet_cli.evaluation.reference import reference_llcm
from tests.helpers import assert_matches_oracle, llcm_like

VIS_FOLDERS = ["test_vis/cam%d" % k for k in range(1, 10)]
NIR_FOLDERS = ["test_nir/cam%d" % k for k in (1, 2, 4, 5, 6, 7, 8, 9)]


def reference_listing(root: Path, folders: list[str], trial: int | None) -> list[str]:
    """The reference's walk, restated: test ids from idx/test_id.txt as %04d strings, sorted; each camera
    folder in order; os.path.isdir; sorted os.listdir; all files (queries) or random.choice after
    random.seed(trial) (the per-trial draw)."""
    with open(os.path.join(str(root), "idx/test_id.txt")) as handle:
        ids = ["%04d" % int(x) for x in handle.read().splitlines()[0].split(",")]
    if trial is not None:
        random.seed(trial)
    chosen = []
    for pid in sorted(ids):
        for cam in folders:
            img_dir = os.path.join(str(root), cam, pid)
            if os.path.isdir(img_dir):
                files = sorted(img_dir + "/" + name for name in os.listdir(img_dir))
                chosen.extend(files if trial is None else [random.choice(files)])
    return [os.path.relpath(p, root).replace(os.sep, "/") for p in chosen]


@pytest.fixture(scope="module")
def published_tree(tmp_path_factory):
    """The test split of the ``llcm`` preset (the published sizes) as empty files, and its index rows."""
    plan = plan_synthetic_llcm("llcm", seed=3)
    root = tmp_path_factory.mktemp("llcm")
    rows = [(rel, pid, camid) for split, rel, pid, camid in plan.images() if split == "test"]
    for rel, _, _ in rows:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).touch()
    (root / "idx").mkdir()
    (root / "idx" / "test_id.txt").write_text(",".join(str(p) for p in plan.splits["test"]))
    order = np.random.default_rng(0).permutation(len(rows))          # features rows in no particular order
    rows = [rows[i] for i in order]
    return plan, root, [r[0] for r in rows], np.array([r[1] for r in rows]), np.array([r[2] for r in rows])


def test_the_published_sizes(published_tree):
    plan = published_tree[0]
    assert plan.totals() == {split: dict(llcm.PUBLISHED_COUNTS[split]) for split in ("train", "test")}
    assert plan.total_images == 46767


@pytest.mark.parametrize("direction,folders", [("ir2vis", VIS_FOLDERS), ("vis2ir", NIR_FOLDERS)])
def test_sampler_picks_the_files_of_the_reference_rule(published_tree, direction, folders):
    _, root, paths, pids, camids = published_tree
    state = random.getstate()
    drawn = sample_llcm(pids, camids, paths, direction=direction, trials=4)
    for trial in range(4):
        assert [paths[r] for r in drawn[trial]] == reference_listing(root, folders, trial)
    random.setstate(state)
    assert len(drawn[0]) == len({(p, c) for p, c in zip(pids, camids) if c in (llcm.VIS_CAMERAS if direction ==
                                                                                  "ir2vis" else llcm.TEST_NIR_CAMERAS)})


def test_queries_are_the_reference_query_listing(published_tree):
    _, root, paths, _, camids = published_tree
    nir = {paths[r] for r in np.flatnonzero(np.isin(camids, llcm.TEST_NIR_CAMERAS))}
    listed = reference_listing(root, NIR_FOLDERS, None)
    assert len(listed) == len(nir) == 7166 and set(listed) == nir


@pytest.mark.parametrize("exact_ties", [False, True], ids=["noise", "exact-ties"])
@pytest.mark.parametrize("direction", ["ir2vis", "vis2ir"])
def test_evaluate_equals_the_loop_oracle(direction, exact_ties):
    feats, pids, camids, paths = llcm_like(seed=2, exact_ties=exact_ties)
    assert (camids == 13).any()                              # NIR cam3 exists and must be left out
    result = evaluate_llcm(feats, pids, camids, paths, direction=direction, trials=10)
    oracle = reference_llcm(feats, pids, camids, paths, direction=direction, trials=10)
    assert_matches_oracle(result, oracle)
    assert (result.dataset, result.mode, result.sampler, result.trials) == ("llcm", direction, "llcm-seeded", 10)
    assert result.num_valid_query < result.num_query or direction == "vis2ir"
    assert result.card["direction"].startswith(direction) and "camera" in result.card["camera_rule"]


@pytest.mark.parametrize("direction", ["ir2vis", "vis2ir"])
def test_deep_first_positives_equal_the_oracle(monkeypatch, direction):
    monkeypatch.setattr(RankingEngine, "TOP_RANKS", 1)
    feats, pids, camids, paths = llcm_like(seed=5, ids=20, dim=4)
    result = evaluate_llcm(feats, pids, camids, paths, direction=direction, trials=3)
    assert_matches_oracle(result, reference_llcm(feats, pids, camids, paths, direction=direction, trials=3))


def test_the_camera_rule_removes_the_same_person_in_the_same_camera_only():
    rows = [  # (pid, camid, feature): one image per folder, so every trial draws the same gallery
        (1, 4, [1.0, 0.0, 0.0]),      # person 1, visible cam4: junk for the cam4 NIR query of person 1
        (2, 5, [0.9, 0.1, 0.0]),      # person 2, visible cam5
        (1, 6, [0.8, 0.2, 0.0]),      # person 1, visible cam6: the positive that counts
        (1, 14, [1.0, 0.0, 0.0]),     # NIR cam4 query of person 1
    ]
    pids = np.array([r[0] for r in rows])
    camids = np.array([r[1] for r in rows])
    feats = np.array([r[2] for r in rows], np.float32)
    paths = [f"{llcm.image_folder('test', llcm.modality_of_camera(c), c, p)}/0001.jpg" for p, c in zip(pids, camids)]
    result = evaluate_llcm(feats, pids, camids, paths, direction="ir2vis", trials=2)
    # junk removed: person 2 then person 1 -> rank 2; AP 1/2; without the rule it would be rank 1
    assert result.metrics["r1"] == 0.0 and result.metrics["r5"] == 100.0
    assert result.metrics["mAP"] == pytest.approx(50.0) and result.num_gallery == 3


def test_bad_input():
    feats, pids, camids, paths = llcm_like(seed=1)
    with pytest.raises(UsageError, match="unknown direction 'both'"):
        evaluate_llcm(feats, pids, camids, paths, direction="both")
    with pytest.raises(DataError, match="unknown LLCM camera ids 10"):
        evaluate_llcm(feats, pids, np.where(camids == 11, 10, camids), paths)
    nir = camids > 10
    with pytest.raises(DataError, match="no visible test images"):
        evaluate_llcm(feats[nir], pids[nir], camids[nir], [p for p, k in zip(paths, nir) if k])
    with pytest.raises(DataError, match="needs the image paths"):
        evaluate_llcm(feats, pids, camids, None)
    with pytest.raises(UsageError, match="--trials must be at least 1"):
        evaluate_llcm(feats, pids, camids, paths, trials=0)


@pytest.mark.parametrize("direction", ["ir2vis", "vis2ir"])
def test_ranked_examples_follow_the_direction_and_drop_junk(direction):
    feats, pids, camids, paths = llcm_like(seed=6)
    examples = llcm_ranked_examples(feats, pids, camids, paths, direction=direction, num_queries=3, k=5)
    assert len(examples) == 3
    for query, top in examples:
        assert (camids[query] > 10) and len(top) == 5
        assert (camids[top] <= 9).all()
        junk = (pids[top] == pids[query]) & (camids[top] % 10 == camids[query] % 10)
        assert not junk.any()
