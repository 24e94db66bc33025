"""Evaluating a feature set end to end: which permutation the official sampler uses, and the prepared
folder opened at most once."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import numpy as np
import pytest

import pfanet_cli.evaluation.run as run_module
from pfanet_cli.data.sysu import bundled_perm_bytes, load_rand_perm_cam, save_rand_perm_cam
from pfanet_cli.errors import DataError
from pfanet_cli.evaluation.features import validate_arrays
from pfanet_cli.evaluation.run import BUNDLED, EvaluationSource, Permutation, official_permutation
from tests.helpers import REPO, SHARED

OWN = {1: {1: np.tile([1, 2], (10, 1))}}
CARRIED = {1: {1: np.tile([2, 1], (10, 1))}}


def first_row(permutation) -> list[int]:
    return permutation.perm[1][1][0].tolist()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A folder whose exp/ holds a permutation, and another permutation file beside it."""
    (tmp_path / "exp").mkdir()
    save_rand_perm_cam(tmp_path / "exp" / "rand_perm_cam.mat", OWN)
    save_rand_perm_cam(tmp_path / "other.mat", CARRIED)
    return tmp_path


def source(folder: Path, carried: bool, trusted: bool) -> EvaluationSource:
    features = validate_arrays(np.eye(2, dtype=np.float32), [1, 1], [3, 1], ["cam3/0001/a.jpg", "cam1/0001/b.jpg"])
    features.perm_mat_bytes = (folder / "other.mat").read_bytes() if carried else None
    return EvaluationSource(features, "sysu", folder, trusted_data=trusted)


def test_the_option_wins_then_the_carried_copy_then_a_folder_that_belongs_to_the_features(folder):
    assert first_row(official_permutation(source(folder, False, True), "auto", None)) == [1, 2]
    assert first_row(official_permutation(source(folder, True, True), "auto", None)) == [2, 1]
    assert first_row(official_permutation(source(folder, False, True), "official", folder / "other.mat")) == [2, 1]
    assert official_permutation(source(folder, False, True), "auto", None).origin.endswith("exp/rand_perm_cam.mat")
    # the default prepared folder is not the features' source: its permutation file is not used, and the
    # shipped (real SYSU-MM01) file does not fit these features
    assert official_permutation(source(folder, False, False), "auto", None) == Permutation()
    assert official_permutation(source(folder / "nowhere", False, True), "auto", None) == Permutation()
    assert official_permutation(source(folder, True, True), "agw", None) == Permutation()
    with pytest.raises(DataError, match="shipped rand_perm_cam.mat .* does not fit these features"):
        official_permutation(source(folder, False, False), "official", None)


def test_the_shipped_permutation_serves_real_sysu_features(tmp_path: Path):
    counts = json.loads((Path(run_module.__file__).parents[1] / "resources" / "sysu_counts.json").read_text())
    rows = [(pid, cam, f"cam{cam}/{pid:04d}/{n:04d}.jpg") for pid in counts["splits"]["test"] for cam in range(1, 7)
            for n in range(1, counts["counts"][f"cam{cam}"].get(str(pid), 0) + 1)]
    features = validate_arrays(np.zeros((len(rows), 2), np.float32) + 1, [r[0] for r in rows], [r[1] for r in rows],
                               [r[2] for r in rows])
    evaluation = EvaluationSource(features, "sysu", tmp_path / "nowhere", trusted_data=False)
    for sampler in ("auto", "official"):
        chosen = official_permutation(evaluation, sampler, None)
        assert chosen.origin == BUNDLED
        np.testing.assert_array_equal(chosen.perm[1][6], load_rand_perm_cam(bundled_perm_bytes())[1][6])
    assert load_rand_perm_cam(bundled_perm_bytes())[1][6].shape == (10, counts["counts"]["cam1"]["6"])


def test_the_prepared_folder_is_opened_once(folder, monkeypatch):
    opened = []
    monkeypatch.setattr(run_module, "open_prepared", lambda path: opened.append(path))
    evaluation = source(folder, False, True)
    evaluation.prepared()
    evaluation.prepared()
    assert opened == [folder]


@pytest.mark.skipif(not (SHARED / "sysu-mm01" / "rand_perm_cam.mat").is_file(),
                    reason="the project's copy of the official protocol files is not available")
def test_the_shipped_file_is_the_official_one_and_is_package_data():
    assert bundled_perm_bytes() == (SHARED / "sysu-mm01" / "rand_perm_cam.mat").read_bytes()
    line = re.search(r"^pfanet_cli = \[(.*)\]$", (REPO / "pyproject.toml").read_text(), re.MULTILINE).group(1)
    declared = [pattern.strip().strip('"') for pattern in line.split(",")]
    for name in ("rand_perm_cam.mat", "README.md"):
        assert any(fnmatch.fnmatch(f"resources/{name}", pattern) for pattern in declared), name
