"""The features .npz contract (SPEC §1): writing, reading and refusing bad files."""

from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pfanet_cli.cli import main
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
        (lambda a: a["features"].__setitem__(3, 0.0), "'features' holds only zeros in 1 rows (first: row 3"),
        (lambda a: a["paths"].__setitem__(4, a["paths"][1]), "appears twice (rows 1 and 4)"),
        (lambda a: a.update(features=a["features"].astype(np.complex64)), "must be floating point"),
        (lambda a: a.update(pids=a["pids"] > 2), "'pids' must be integers (int64), got bool"),
        (lambda a: a.update(paths=np.array([b"\xff\xfe"] * 6)), "'paths' holds bytes that are not UTF-8"),
        (lambda a: a.update(features=a["features"].astype(object)), "'features' holds Python objects"),
        (lambda a: a.update(pids=np.array([None] * 6)), "'pids' holds Python objects"),
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


def test_a_header_that_claims_more_data_than_the_file_holds_is_refused_before_allocating(tmp_path: Path):
    feats, pids, camids, paths = arrays()
    good = save_features(tmp_path / "good.npz", feats, pids, camids, paths)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 10**4)})
    bad = tmp_path / "liar.npz"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(bad, "w") as target:
        for name in source.namelist():
            data = header.getvalue() + b"\0" * 64 if name == "features.npy" else source.read(name)
            target.writestr(name, data)
    with pytest.raises(DataError, match=r"liar.npz: 'features' is truncated: its header claims 40,000,000,000,000 "
                                        r"bytes of \(1000000000, 10000\) float32, the file holds 64"):
        load_features(bad)


def test_evaluate_refuses_a_hostile_features_file_in_one_line(tmp_path: Path, capfd):
    feats, pids, camids, paths = arrays()
    path = write_npz(tmp_path / "objects.npz", features=feats, pids=pids, camids=camids,
                     paths=np.array(paths, dtype=object))
    assert main(["evaluate", "--features", str(path)]) == 3
    err = capfd.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert f"{path}: 'paths' holds Python objects, which are never unpickled" in err


FEATURE_ARRAYS = st.sampled_from(["features", "pids", "camids", "paths", "dataset", "perm_mat"])
DTYPES = st.sampled_from(["f4", "f8", "f2", "i8", "i4", "u1", "b1", "c8", "U8", "S4", "O"])


@st.composite
def npz_contents(draw):
    """A features file with random keys, dtypes, shapes and values (valid ones among them)."""
    n = draw(st.integers(0, 5))
    content = {}
    for key in draw(st.lists(FEATURE_ARRAYS, min_size=0, max_size=6, unique=True)):
        dtype = draw(DTYPES)
        shape = draw(st.sampled_from([(), (n,), (n, 3), (n + 1,), (0, 2)]))
        values = draw(st.lists(st.one_of(st.floats(allow_nan=True), st.integers(-3, 9)),
                               min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # casting NaN or big numbers to integers warns
            content[key] = np.array(values, dtype=object if dtype == "O" else None).reshape(shape).astype(dtype)
    return content


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=npz_contents(), cut=st.one_of(st.none(), st.integers(0, 400)))
def test_any_features_file_reads_or_is_refused_in_one_line(tmp_path_factory, content, cut):
    path = tmp_path_factory.mktemp("npz") / "f.npz"
    np.savez(path, **content)
    if cut is not None:
        path.write_bytes(path.read_bytes()[:cut])
    try:
        result = load_features(path)
    except DataError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
        return
    assert result.features.dtype == np.float32 and np.isfinite(result.features).all()
    assert len(set(result.paths)) == len(result.paths) == len(result)


@pytest.mark.parametrize("writer", [np.savez, np.savez_compressed], ids=["stored", "compressed"])
def test_damaged_array_data_inside_an_intact_archive_is_refused(tmp_path: Path, writer):
    feats, pids, camids, paths = arrays(n=64, dim=32)
    path = tmp_path / "damaged.npz"
    writer(path, features=feats, pids=pids, camids=camids, paths=np.array(paths))
    data = bytearray(path.read_bytes())
    start = data.index(b"features.npy") + 200  # inside the features array, far from the directory at the end
    data[start:start + 64] = bytes(64)
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"damaged.npz: corrupt array 'features' \("):
        load_features(path)
