"""The features .npz contract (SPEC §1): writing, reading and refusing bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pfanet_cli.data.sysu import load_rand_perm_cam, save_rand_perm_cam
from pfanet_cli.errors import DataError
from pfanet_cli.evaluation.features import load_features, save_features, validate_arrays


def arrays(n: int = 6, dim: int = 4):
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((n, dim)).astype(np.float32)
    pids = np.arange(n, dtype=np.int64) // 2 + 1
    camids = np.array([1, 3] * (n // 2), dtype=np.int64)
    paths = [f"cam{c}/{p:04d}/{i + 1:04d}.jpg" for i, (p, c) in enumerate(zip(pids, camids))]
    return feats, pids, camids, paths


def test_round_trip_with_dataset_and_permutation(tmp_path: Path):
    feats, pids, camids, paths = arrays()
    perm = {1: {1: np.tile(np.arange(1, 4), (10, 1))}, 3: {2: np.tile(np.arange(2, 0, -1), (10, 1))}}
    save_rand_perm_cam(tmp_path / "perm.mat", perm)
    raw = (tmp_path / "perm.mat").read_bytes()
    out = save_features(tmp_path / "sub" / "f.npz", feats, pids, camids, paths, dataset="sysu", perm_mat_bytes=raw)
    assert out == tmp_path / "sub" / "f.npz"
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["f.npz"]  # no temporary file left behind
    fs = load_features(out)
    np.testing.assert_array_equal(fs.features, feats)
    assert fs.features.dtype == np.float32 and fs.pids.dtype == np.int64 and fs.camids.dtype == np.int64
    np.testing.assert_array_equal(fs.pids, pids)
    np.testing.assert_array_equal(fs.camids, camids)
    assert fs.paths == paths and fs.dataset == "sysu" and len(fs) == 6 and fs.dim == 4
    assert fs.perm_mat_bytes == raw
    carried = fs.perm()
    expected = load_rand_perm_cam(tmp_path / "perm.mat")
    np.testing.assert_array_equal(carried[1][1], expected[1][1])
    np.testing.assert_array_equal(carried[3][2], expected[3][2])


def test_optional_keys_may_be_absent_and_are_stored_without_pickle(tmp_path: Path):
    feats, pids, camids, paths = arrays()
    save_features(tmp_path / "f.npz", feats.astype(np.float64), pids.astype(np.int32), camids, paths)
    with np.load(tmp_path / "f.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == ["camids", "features", "paths", "pids"]
        assert npz["features"].dtype == np.float32 and npz["pids"].dtype == np.int64
        assert npz["paths"].dtype.kind == "U"
    fs = load_features(tmp_path / "f.npz")
    assert fs.dataset is None and fs.perm_mat_bytes is None and fs.perm() is None


def write_npz(path: Path, **arrays_) -> Path:
    np.savez(path, **arrays_)
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.pop("pids"), "missing key pids"),
        (lambda a: (a.pop("paths"), a.pop("camids")), "missing keys camids, paths"),
        (lambda a: a.update(pids=a["pids"][:-1]), "mismatched lengths"),
        (lambda a: a.update(paths=a["paths"][:3]), "mismatched lengths"),
        (lambda a: a["features"].__setitem__((2, 1), np.nan), "NaN or inf values in 1 rows (first: row 2"),
        (lambda a: a["features"].__setitem__((4, 0), np.inf), "NaN or inf"),
        (lambda a: a.update(features=a["features"].astype(np.int32)), "must be floating point"),
        (lambda a: a.update(features=a["features"][0]), "2-D N x D matrix"),
        (lambda a: a.update(pids=a["pids"].astype(np.float32)), "'pids' must be integers"),
        (lambda a: a.update(camids=a["camids"][:, None]), "'camids' must be a 1-D vector"),
        (lambda a: a.update(paths=np.arange(6)), "'paths' must be strings"),
        (lambda a: a.update(dataset=np.array("market")), "'dataset' is 'market'"),
        (lambda a: a.update(perm_mat=np.arange(5, dtype=np.int64)), "'perm_mat' must be the bytes"),
    ],
)
def test_bad_features_files_name_the_problem_and_the_file(tmp_path: Path, change, message):
    feats, pids, camids, paths = arrays()
    content = {"features": feats, "pids": pids, "camids": camids, "paths": np.array(paths)}
    change(content)
    path = write_npz(tmp_path / "bad.npz", **content)
    with pytest.raises(DataError) as info:
        load_features(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_unreadable_files(tmp_path: Path):
    with pytest.raises(DataError, match="not found"):
        load_features(tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("not a zip archive")
    with pytest.raises(DataError, match="not a readable features .npz"):
        load_features(tmp_path / "text.npz")
    feats, pids, camids, paths = arrays()
    good = save_features(tmp_path / "good.npz", feats, pids, camids, paths)
    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[:200])
    with pytest.raises(DataError, match="cut.npz"):
        load_features(tmp_path / "cut.npz")
    write_npz(tmp_path / "objects.npz", features=feats, pids=pids, camids=camids,
              paths=np.array(paths, dtype=object))
    with pytest.raises(DataError, match="Python objects"):
        load_features(tmp_path / "objects.npz")


def test_save_refuses_bad_arrays_and_leaves_nothing(tmp_path: Path):
    feats, pids, camids, paths = arrays()
    with pytest.raises(DataError, match="mismatched lengths"):
        save_features(tmp_path / "f.npz", feats, pids[:2], camids, paths)
    with pytest.raises(DataError, match="'dataset'"):
        save_features(tmp_path / "f.npz", feats, pids, camids, paths, dataset="market")
    assert list(tmp_path.iterdir()) == []


def test_validate_arrays_without_a_file_omits_the_location():
    feats, pids, camids, paths = arrays()
    with pytest.raises(DataError) as info:
        validate_arrays(feats, pids, camids[:1], paths)
    assert str(info.value).startswith("mismatched lengths")
