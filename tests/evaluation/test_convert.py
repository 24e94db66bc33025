"""convert-features: the two AGW-family exports (.mat and .npy/.npz) become features files whose evaluation
equals that of the features they were exported from; camera ids per dataset; bad exports (exit 3)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from pfanet_cli.cli import main
from pfanet_cli.errors import DataError
from pfanet_cli.evaluation.convert import NOTE_ONE_TRIAL, convert_export
from pfanet_cli.evaluation.features import load_features, read_provenance
from pfanet_cli.evaluation.protocols import evaluate_llcm, evaluate_regdb, evaluate_sysu
from tests.helpers import error_line, llcm_like, sysu_like


def assert_same_trials(mine, original):
    assert len(mine.per_trial) == len(original.per_trial)
    for a, b in zip(mine.per_trial, original.per_trial):
        assert a == pytest.approx(b, abs=1e-9)


def export_order(paths, rows):
    """Rows as the exporting scripts list them: ids ascending, cameras in order, files sorted."""
    return sorted(rows, key=lambda r: paths[r])


def sysu_export(tmp_path: Path):
    feats, pids, camids, paths = sysu_like(seed=9, ids=8, dim=6)
    query = export_order(paths, [r for r in range(len(pids)) if camids[r] in (3, 6)])
    gallery = export_order(paths, [r for r in range(len(pids)) if camids[r] not in (3, 6)])
    return (feats, pids, camids, paths), query, gallery


def test_a_mat_export_evaluates_like_the_features_it_came_from(tmp_path, capsys):
    (feats, pids, camids, paths), query, gallery = sysu_export(tmp_path)
    scipy.io.savemat(str(tmp_path / "pytorch_result.mat"), {
        "query_f": feats[query], "query_label": pids[query], "query_cam": camids[query],
        "gallery_f": feats[gallery], "gallery_label": pids[gallery], "gallery_cam": camids[gallery]})
    out = tmp_path / "converted.npz"
    assert main(["convert-features", str(tmp_path / "pytorch_result.mat"), "--out", str(out)]) == 0
    assert "next: pfanet evaluate --features" in " ".join(capsys.readouterr().out.split())
    converted = load_features(out)
    assert converted.dataset == "sysu" and converted.paths == [paths[r] for r in query + gallery]
    np.testing.assert_array_equal(converted.camids, camids[query + gallery])
    for mode, shot in (("all", "single"), ("indoor", "multi")):
        mine = evaluate_sysu(converted.features, converted.pids, converted.camids, converted.paths, mode=mode,
                             shot=shot, trials=3, sampler="agw")
        original = evaluate_sysu(feats, pids, camids, paths, mode=mode, shot=shot, trials=3, sampler="agw")
        assert_same_trials(mine, original)
    provenance = read_provenance(out)
    assert provenance["checkpoint"].startswith("none: features exported") and "mat export" in provenance["feature"]
    assert main(["evaluate", "--features", str(out), "--json", str(tmp_path / "r.json"), "--trials", "2"]) == 0
    card = json.loads((tmp_path / "r.json").read_text())["card"]
    assert card["flip"] == "as exported (not recorded by the export)" and card["features_file"] == str(out)


def test_an_npy_folder_of_llcm_features_with_camera_numbers(tmp_path):
    feats, pids, camids, paths = llcm_like(seed=3, ids=10)
    query = export_order(paths, [r for r in range(len(pids)) if camids[r] in (11, 12, 14, 15, 16, 17, 18, 19)])
    gallery = export_order(paths, [r for r in range(len(pids)) if camids[r] <= 9])
    folder = tmp_path / "agw"
    folder.mkdir()
    for side, rows in (("query", query), ("gall", gallery)):
        np.save(folder / f"{side}_feat_pool.npy", feats[rows])
        np.save(folder / f"{side}_label.npy", pids[rows])
        np.save(folder / f"{side}_cam.npy", camids[rows] % 10)          # the reference's camera numbers
    with pytest.raises(Exception, match="no query_feat array .*pass --variant pool"):
        convert_export(folder, "llcm")
    converted, notes = convert_export(folder, "llcm", variant="pool")
    assert notes == []
    np.testing.assert_array_equal(converted.camids, camids[query + gallery])
    assert converted.paths == [paths[r] for r in query + gallery]
    for direction in ("ir2vis", "vis2ir"):
        mine = evaluate_llcm(converted.features, converted.pids, converted.camids, converted.paths,
                             direction=direction, trials=3)
        original = evaluate_llcm(feats, pids, camids, paths, direction=direction, trials=3)
        assert_same_trials(mine, original)


def test_a_regdb_npz_without_cameras_and_a_one_trial_gallery(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"query_feat": rng.standard_normal((6, 4)), "query_label": np.repeat([1, 2, 3], 2),
              "gall_feat": rng.standard_normal((6, 4)), "gall_label": np.repeat([1, 2, 3], 2)}
    np.savez(tmp_path / "regdb.npz", **arrays)
    converted, notes = convert_export(tmp_path / "regdb.npz", "regdb", query_modality="ir")
    assert converted.camids.tolist() == [2] * 6 + [1] * 6           # queries thermal (ir), gallery visible
    assert converted.paths[0] == "Thermal/1/0001.bmp" and converted.paths[7] == "Visible/1/0002.bmp"
    converted, _ = convert_export(tmp_path / "regdb.npz", "regdb", query_modality="rgb")
    assert converted.camids.tolist() == [1] * 6 + [2] * 6
    one_per_folder = {"query_feat": arrays["query_feat"], "query_label": arrays["query_label"],
                      "query_cam": np.full(6, 3), "gall_feat": arrays["gall_feat"][:3],
                      "gall_label": np.array([1, 2, 3]), "gall_cam": np.array([1, 1, 2])}
    np.savez(tmp_path / "sysu.npz", **one_per_folder)
    assert convert_export(tmp_path / "sysu.npz", "sysu")[1] == [NOTE_ONE_TRIAL]


def test_paths_file(tmp_path, capsys):
    np.savez(tmp_path / "e.npz", query_feat=np.eye(2), query_label=[1, 2], query_cam=[3, 6], gall_feat=np.eye(2),
             gall_label=[1, 2], gall_cam=[1, 2])
    (tmp_path / "paths.txt").write_text("cam3/0001/a.jpg\ncam6/0002/b.jpg\ncam1/0001/c.jpg\ncam2/0002/d.jpg\n")
    converted, _ = convert_export(tmp_path / "e.npz", "sysu", paths_file=tmp_path / "paths.txt")
    assert converted.paths == ["cam3/0001/a.jpg", "cam6/0002/b.jpg", "cam1/0001/c.jpg", "cam2/0002/d.jpg"]
    (tmp_path / "short.txt").write_text("cam3/0001/a.jpg\n")
    assert main(["convert-features", str(tmp_path / "e.npz"), "--paths", str(tmp_path / "short.txt"),
                 "--out", str(tmp_path / "o.npz")]) == 3
    assert "lists 1 paths but the export holds 4 rows" in error_line(capsys)


@pytest.mark.parametrize("arrays,message", [
    ({"query_f": np.eye(2), "gallery_f": np.eye(2), "gallery_label": [1, 2]}, "missing query_label"),
    ({"query_f": np.eye(2), "query_label": [1, 2, 3], "query_cam": [3, 3], "gallery_f": np.eye(2),
      "gallery_label": [1, 2], "gallery_cam": [1, 1]}, "mismatched arrays"),
])
def test_bad_mat_exports_exit_3(tmp_path, capsys, arrays, message):
    scipy.io.savemat(str(tmp_path / "bad.mat"), arrays)
    assert main(["convert-features", str(tmp_path / "bad.mat"), "--out", str(tmp_path / "o.npz")]) == 3
    assert message in error_line(capsys)
    assert not (tmp_path / "o.npz").exists()


def test_usage_errors_exit_2(tmp_path, capsys):
    (tmp_path / "x.csv").write_text("1,2")
    assert main(["convert-features", str(tmp_path / "x.csv")]) == 2
    assert "cannot tell the export format" in error_line(capsys)
    assert main(["convert-features", str(tmp_path / "x.csv"), "--format", "npy", "--dataset", "market"]) == 2
    assert "unknown dataset 'market'" in error_line(capsys)
    assert main(["convert-features", str(tmp_path / "x.csv"), "--query-modality", "uv"]) == 2
    assert "--query-modality must be ir or rgb" in error_line(capsys)


def regdb_split(seed: int = 5):
    """A RegDB test split: visible (camid 1) and thermal (camid 2) features of ten ids."""
    rng = np.random.default_rng(seed)
    pids = np.repeat(np.arange(1, 11), 4)
    camids = np.tile([1, 1, 2, 2], 10)
    feats = rng.standard_normal((10, 8))[pids - 1] + rng.standard_normal((40, 8)) + 0.8 * (camids == 2)[:, None]
    return feats, pids, camids


def test_an_agw_regdb_export_needs_its_query_side_and_then_gives_agw_directions(tmp_path, capsys):
    """AGW's test.py extracts the visible images as queries (its tvsearch swaps the roles at scoring time), so the
    old default (--query-modality ir) labelled them thermal and v2t and t2v traded places."""
    feats, pids, camids = regdb_split()
    visible, thermal = np.flatnonzero(camids == 1), np.flatnonzero(camids == 2)
    np.savez(tmp_path / "agw.npz", query_feat_pool=feats[visible], query_label=pids[visible],
             gall_feat_pool=feats[thermal], gall_label=pids[thermal])
    out = tmp_path / "o.npz"
    assert main(["convert-features", str(tmp_path / "agw.npz"), "--dataset", "regdb", "--variant", "pool",
                 "--out", str(out)]) == 2
    message = error_line(capsys)
    assert "AGW baseline's test.py" in message and "visible" in message and "DEEN" in message
    assert "pass --query-modality rgb or ir" in message and not out.exists()
    assert main(["convert-features", str(tmp_path / "agw.npz"), "--dataset", "regdb", "--variant", "pool",
                 "--query-modality", "rgb", "--out", str(out)]) == 0
    converted = load_features(out)
    for direction in ("v2t", "t2v"):
        mine = evaluate_regdb(converted.features, converted.pids, converted.camids, direction=direction)
        original = evaluate_regdb(feats, pids, camids, direction=direction)
        assert mine.metrics == pytest.approx(original.metrics, abs=1e-9)
        assert mine.num_query == original.num_query


def deen_export(folder: Path, feats, pids, query, gallery, variants: int = 6) -> np.ndarray:
    """DEEN's test.py arrays (query_feat1 .. query_feat6, gall_feat1 .. gall_feat6): here each variant is the
    features plus its own offset; returns the joined features."""
    folder.mkdir()
    joined = []
    for k in range(1, variants + 1):
        variant = feats + 0.1 * k
        joined.append(variant)
        np.save(folder / f"query_feat{k}.npy", variant[query])
        np.save(folder / f"gall_feat{k}.npy", variant[gallery])
    for side, rows in (("query", query), ("gall", gallery)):
        np.save(folder / f"{side}_label.npy", pids[rows])
    return np.concatenate(joined, axis=1)


def test_deen_exports_read_by_variant_number_or_all_joined(tmp_path, capsys):
    """DEEN's query_feat1 .. query_feat6 could not be read, and the hint 'pass --variant feat1' failed."""
    feats, pids, camids = regdb_split(6)
    thermal, visible = np.flatnonzero(camids == 2), np.flatnonzero(camids == 1)   # DEEN: thermal queries
    joined = deen_export(tmp_path / "deen", feats, pids, thermal, visible)
    out = tmp_path / "o.npz"
    assert main(["convert-features", str(tmp_path / "deen"), "--dataset", "regdb", "--query-modality", "ir",
                 "--out", str(out)]) == 3
    message = error_line(capsys)
    assert "pass --variant 1, 2, 3, 4, 5 or 6, or all to join them" in message
    for variant in ("3", "feat3"):
        converted, _ = convert_export(tmp_path / "deen", "regdb", query_modality="ir", variant=variant)
        np.testing.assert_allclose(converted.features, (feats + 0.3)[np.concatenate([thermal, visible])], rtol=1e-6)
        assert converted.camids.tolist() == [2] * len(thermal) + [1] * len(visible)
    converted, notes = convert_export(tmp_path / "deen", "regdb", query_modality="ir", variant="all")
    assert converted.dim == 6 * feats.shape[1] and "joined query_feat1, query_feat2" in notes[0]
    np.testing.assert_allclose(converted.features, joined[np.concatenate([thermal, visible])], rtol=1e-6)
    with pytest.raises(DataError, match="no query_feat array of --variant 7 .*pass --variant 1, 2"):
        convert_export(tmp_path / "deen", "regdb", query_modality="ir", variant="7")


def test_an_llcm_mat_export_is_refused_as_sysu_at_conversion(tmp_path, capsys):
    """LLCM's Visualization/extract.py numbers cameras 1..9 in both modalities; converted as SYSU-MM01 (the
    default) it used to fail only at evaluation ('unknown SYSU-MM01 camera ids 7, 8, 9')."""
    feats, pids, camids, paths = llcm_like(seed=4, ids=10)
    query = export_order(paths, [r for r in range(len(pids)) if camids[r] > 10])
    gallery = export_order(paths, [r for r in range(len(pids)) if camids[r] <= 9])
    scipy.io.savemat(str(tmp_path / "tsne.mat"), {
        "query_f": feats[query], "query_label": pids[query], "query_cam": camids[query] % 10,
        "gallery_f": feats[gallery], "gallery_label": pids[gallery], "gallery_cam": camids[gallery]})
    out = tmp_path / "o.npz"
    assert main(["convert-features", str(tmp_path / "tsne.mat"), "--out", str(out)]) == 3
    message = error_line(capsys)
    assert "not SYSU-MM01's IR cameras (3, 6)" in message and "an LLCM export? pass --dataset llcm" in message
    assert not out.exists()
    assert main(["convert-features", str(tmp_path / "tsne.mat"), "--dataset", "llcm", "--out", str(out)]) == 0
    assert main(["evaluate", "--features", str(out), "--trials", "2"]) == 0
