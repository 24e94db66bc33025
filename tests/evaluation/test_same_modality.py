"""The same-modality diagnostic (IR->IR, RGB->RGB) against the per-query oracle, its card, and its refusals."""

from __future__ import annotations

import numpy as np
import pytest

from pfanet_cli.errors import DataError
from pfanet_cli.evaluation.reference import reference_same_modality
from pfanet_cli.evaluation.same_modality import DIAGNOSTIC, evaluate_same_modality
from tests.helpers import assert_matches_oracle, sysu_like


@pytest.mark.parametrize("exact_ties", [False, True])
def test_same_modality_equals_the_per_query_oracle(exact_ties):
    feats, pids, camids, paths = sysu_like(seed=3, ids=14, exact_ties=exact_ties)
    ir, rgb = evaluate_same_modality(feats, pids, camids, paths, trials=6)
    assert (ir.mode, rgb.mode) == ("ir->ir", "rgb->rgb") and ir.dataset == rgb.dataset == DIAGNOSTIC
    for result, modality in ((ir, "ir"), (rgb, "rgb")):
        oracle = reference_same_modality(feats, pids, camids, paths, modality=modality, trials=6)
        assert_matches_oracle(result, oracle)


def test_the_query_s_own_camera_is_junk_and_the_card_says_it_is_not_the_protocol():
    """Features dominated by the camera: the own-camera image of the query's identity is removed, so the
    other identities of the query's camera come first and the match from the other camera is fourth."""
    pids = np.repeat(np.arange(1, 5), 4)                 # 4 ids, 2 images in cam3 and 2 in cam6 each
    camids = np.tile([3, 3, 6, 6], 4)
    paths = [f"cam{c}/{p:04d}/{k:04d}.jpg" for p, c, k in zip(pids, camids, np.tile([1, 2, 1, 2], 4))]
    feats = np.stack([np.eye(8)[p - 1] + 3 * np.eye(8)[4 + c % 4] for p, c in zip(pids, camids)]).astype(np.float32)
    ir, _ = _with_rgb(feats, pids, camids, paths)
    assert ir.num_gallery == 8                           # one image per (identity, IR camera)
    assert (ir.metrics["r1"], ir.metrics["r5"], ir.metrics["mAP"]) == (0.0, 100.0, 25.0)
    assert "not the SYSU-MM01 protocol" in ir.card["dataset"]
    assert "query's own camera are removed" in ir.card["camera_rule"]
    assert ir.card["mode"].startswith("IR queries")


def _with_rgb(feats, pids, camids, paths):
    """The same people seen by cam1 and cam4 too (an RGB side, so both settings run)."""
    rgb_cams = np.where(camids == 3, 1, 4)
    rgb_paths = [p.replace(f"cam{c}/", f"cam{r}/") for p, c, r in zip(paths, camids, rgb_cams)]
    return evaluate_same_modality(np.concatenate([feats, feats]), np.concatenate([pids, pids]),
                                  np.concatenate([camids, rgb_cams]), paths + rgb_paths, trials=2)


def test_refuses_features_of_other_cameras_or_a_missing_modality():
    feats, pids, camids, paths = sysu_like(seed=1)
    with pytest.raises(DataError, match="cameras 1..6"):
        evaluate_same_modality(feats, pids, np.where(camids == 6, 7, camids), paths)
    ir_only = np.isin(camids, (3, 6))
    with pytest.raises(DataError, match="no images of cameras 1, 2, 4, 5"):
        evaluate_same_modality(feats[ir_only], pids[ir_only], camids[ir_only], [p for p, k in zip(paths, ir_only) if k])
    with pytest.raises(DataError, match="image paths"):
        evaluate_same_modality(feats, pids, camids, None)
