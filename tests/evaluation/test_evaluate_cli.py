"""`pfanet evaluate`: JSON contract, table, settings, plots, and one exit code per kind of bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pfanet_cli.evaluation.extract as extract
from pfanet_cli.cli import main
from pfanet_cli.data.format import PREPARED_FORMAT, PREPARED_FORMAT_VERSION
from pfanet_cli.data.sysu import save_rand_perm_cam
from pfanet_cli.evaluation.features import load_features, save_features
from pfanet_cli.evaluation.protocols import METRIC_KEYS
from tests.helpers import CONTRACT, error_line, perm_for, sysu_like

@pytest.fixture
def sysu_files(tmp_path: Path):
    feats, pids, camids, paths = sysu_like(seed=11, ids=8, dim=8)
    perm = perm_for(pids, camids, seed=3)
    save_rand_perm_cam(tmp_path / "rand_perm_cam.mat", perm)
    raw = (tmp_path / "rand_perm_cam.mat").read_bytes()
    with_perm = save_features(tmp_path / "feats.npz", feats, pids, camids, paths, dataset="sysu", perm_mat_bytes=raw)
    bare = save_features(tmp_path / "bare.npz", feats, pids, camids, paths)
    return {"dir": tmp_path, "features": with_perm, "bare": bare, "perm": tmp_path / "rand_perm_cam.mat",
            "arrays": (feats, pids, camids, paths)}


def run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(["evaluate", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_table_and_default_cmc_plot(sysu_files, capsys):
    out = sysu_files["dir"] / "results" / "sysu.json"
    code, stdout, _ = run(["--features", sysu_files["features"], "--mode", "indoor", "--shot", "multi",
                           "--trials", "3", "--json", out], capsys)
    assert code == 0
    payload = json.loads(out.read_text())
    assert list(payload) == CONTRACT + ["card"]
    assert (payload["dataset"], payload["mode"], payload["shot"], payload["sampler"], payload["trials"]) == (
        "sysu", "indoor", "multi", "official", 3)
    card = payload["card"]
    assert card["sampler"].startswith("official") and "carried in the features file" in card["sampler"]
    assert card["mode"].startswith("indoor") and card["shot"].startswith("multi-shot") and card["trials"] == 3
    assert "cam3" in card["camera_rule"] and card["rerank"] == "off"
    assert card["features_file"] == str(sysu_files["features"]) and card["checkpoint"] == "not recorded"
    assert "protocol card" in stdout and "camera rule" in stdout and "features file" in stdout
    assert list(payload["metrics"]) == list(METRIC_KEYS) and len(payload["per_trial"]) == 3
    assert all(0.0 <= v <= 100.0 for v in payload["metrics"].values())
    for label in ("R1", "R5", "R10", "R20", "mAP", "mINP", "queries", "gallery", "indoor/multi", "±"):
        assert label in stdout
    plot = out.with_name("sysu_cmc.png")
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.size[0] > 300


def test_all_settings_writes_a_list_of_four(sysu_files, capsys):
    out = sysu_files["dir"] / "all.json"
    plot = sysu_files["dir"] / "curves.png"
    code, stdout, _ = run(["--features", sysu_files["bare"], "--all-settings", "--trials", "2", "--json", out,
                           "--cmc-plot", plot, "--max-rank", "10"], capsys)
    assert code == 0
    payload = json.loads(out.read_text())
    assert [(p["mode"], p["shot"]) for p in payload] == [("all", "single"), ("all", "multi"),
                                                         ("indoor", "single"), ("indoor", "multi")]
    assert {p["sampler"] for p in payload} == {"agw"}          # no permutation fits -> AGW sampler
    assert all(list(p) == CONTRACT + ["card"] for p in payload)
    assert plot.is_file() and not out.with_name("all_cmc.png").exists()
    assert "indoor/single" in stdout and "valid queries" in stdout


def test_sampler_and_permutation_options(sysu_files, capsys):
    out = sysu_files["dir"] / "r.json"
    code, _, _ = run(["--features", sysu_files["bare"], "--perm-file", sysu_files["perm"], "--trials", "2",
                      "--json", out], capsys)
    assert code == 0 and json.loads(out.read_text())["sampler"] == "official"
    code, _, _ = run(["--features", sysu_files["features"], "--sampler", "agw", "--trials", "2", "--json", out],
                     capsys)
    assert code == 0 and json.loads(out.read_text())["sampler"] == "agw"
    # a prepared dir given with --data supplies exp/rand_perm_cam.mat
    data = sysu_files["dir"] / "prepared"
    (data / "exp").mkdir(parents=True)
    (data / "exp" / "rand_perm_cam.mat").write_bytes(sysu_files["perm"].read_bytes())
    code, _, _ = run(["--features", sysu_files["bare"], "--data", data, "--trials", "2", "--json", out], capsys)
    assert code == 0 and json.loads(out.read_text())["sampler"] == "official"
    code, _, err = run(["--features", sysu_files["bare"], "--sampler", "official"], capsys)
    assert code == 3 and "shipped rand_perm_cam.mat" in err and "does not fit these features" in err


def write_prepared(folder: Path, paths, pids, camids, size=(16, 8)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (len(paths),) + size + (3,), dtype=np.uint8)
    np.save(folder / "test_images.npy", images)
    with open(folder / "test_index.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "pid", "camid", "modality", "label"])
        for path, pid, cam in zip(paths, pids, camids):
            writer.writerow([path, int(pid), int(cam), "ir" if cam in (3, 6) else "rgb", -1])
    manifest = {"format": PREPARED_FORMAT, "format_version": PREPARED_FORMAT_VERSION, "dataset": "sysu",
                "size": list(size), "splits": {"test": {"images": len(paths)}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_ranks_image_from_a_prepared_dir_and_from_the_raw_root(sysu_files, capsys):
    feats, pids, camids, paths = sysu_files["arrays"]
    data = write_prepared(sysu_files["dir"] / "prepared", paths, pids, camids)
    picture = sysu_files["dir"] / "ranks.png"
    code, stdout, _ = run(["--features", sysu_files["features"], "--data", data, "--trials", "1",
                           "--ranks-image", picture], capsys)
    assert code == 0 and "ranked lists of 4 queries" in stdout
    with Image.open(picture) as image:
        width, height = image.size
    assert width > 10 * 64 and height > 4 * 128            # 4 queries x (query + 10 gallery) cells
    raw = sysu_files["dir"] / "raw"
    for path in paths:
        (raw / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (12, 24), (90, 120, 30)).save(raw / path)
    code, stdout, _ = run(["--features", sysu_files["features"], "--image-root", raw, "--trials", "1",
                           "--ranks-image", sysu_files["dir"] / "raw.png"], capsys)
    assert code == 0 and (sysu_files["dir"] / "raw.png").is_file()
    code, stdout, _ = run(["--features", sysu_files["features"], "--image-root", sysu_files["dir"] / "nowhere",
                           "--trials", "1", "--ranks-image", sysu_files["dir"] / "none.png"], capsys)
    assert code == 0 and "skipped" in stdout and not (sysu_files["dir"] / "none.png").exists()


def test_regdb_features(tmp_path: Path, capsys):
    rng = np.random.default_rng(1)
    pids = np.repeat(np.arange(1, 9), 6)
    camids = np.tile(np.repeat([1, 2], 3), 8)
    feats = (rng.standard_normal((8, 6))[pids - 1] + rng.standard_normal((48, 6))).astype(np.float32)
    paths = [f"{'Visible' if c == 1 else 'Thermal'}/{p}/{i}.bmp" for i, (p, c) in enumerate(zip(pids, camids))]
    path = save_features(tmp_path / "regdb.npz", feats, pids, camids, paths, dataset="regdb")
    out = tmp_path / "r.json"
    code, stdout, _ = run(["--features", path, "--direction", "t2v", "--json", out], capsys)
    assert code == 0 and "regdb t2v" in stdout
    payload = json.loads(out.read_text())
    assert (payload["dataset"], payload["mode"], payload["trials"], payload["num_query"]) == ("regdb", "t2v", 1, 24)
    code, _, _ = run(["--features", path, "--all-settings", "--json", out], capsys)
    assert code == 0 and [p["mode"] for p in json.loads(out.read_text())] == ["v2t", "t2v"]


def test_options_of_another_dataset_are_refused_not_ignored(tmp_path: Path, sysu_files, capsys):
    feats, pids, camids, _ = sysu_files["arrays"]
    regdb_camids = np.where(np.isin(camids, (3, 6)), 2, 1)
    paths = [f"{'Visible' if c == 1 else 'Thermal'}/{p}/{i}.bmp" for i, (p, c) in enumerate(zip(pids, regdb_camids))]
    regdb_file = save_features(tmp_path / "regdb.npz", feats, pids, regdb_camids, paths, dataset="regdb")
    for args in (["--sampler", "agw"], ["--mode", "indoor"], ["--shot", "multi"], ["--trials", "3"],
                 ["--perm-file", sysu_files["perm"]], ["--sampler", "auto"]):  # a default given is still given
        code, _, err = run(["--features", regdb_file, *args], capsys)
        assert code == 2 and f"{args[0]} applies to SYSU-MM01" in err and "RegDB" in err, (args, err)
        assert len(err.strip().splitlines()) == 1
    code, _, err = run(["--features", sysu_files["features"], "--direction", "t2v"], capsys)
    assert code == 2 and "--direction applies to RegDB and LLCM only" in err
    code, _, _ = run(["--features", regdb_file, "--direction", "t2v"], capsys)
    assert code == 0
    code, _, err = run(["--all-trials", "--features", tmp_path / "trial{trial}.npz", "--shot", "multi"], capsys)
    assert code == 2 and "--shot applies to SYSU-MM01 only" in err


def write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def test_bad_inputs_exit_3_naming_the_problem(sysu_files, capsys):
    feats, pids, camids, paths = sysu_files["arrays"]
    folder = sysu_files["dir"]
    good = {"features": feats, "pids": pids, "camids": camids, "paths": np.array(paths)}
    cases = {
        "mismatched lengths": dict(good, pids=pids[:-2]),
        "missing key camids": {k: v for k, v in good.items() if k != "camids"},
        "unknown SYSU-MM01 camera ids 7": dict(good, camids=np.where(camids == 5, 7, camids)),
        "empty gallery": {k: v[np.isin(camids, (3, 6))] for k, v in good.items()},
        "NaN or inf": dict(good, features=np.where(np.arange(len(pids))[:, None] == 3, np.nan, feats)),
    }
    for message, arrays in cases.items():
        path = write_npz(folder / "bad.npz", **arrays)
        code, _, err = run(["--features", path], capsys)
        assert code == 3, message
        assert message in err, (message, err)
    code, _, err = run(["--features", folder / "absent.npz"], capsys)
    assert code == 3 and "not found" in err
    perm = perm_for(pids, camids)
    short = {c: {p: e[:, 1:] for p, e in v.items()} for c, v in perm.items()}
    save_rand_perm_cam(folder / "short.mat", short)
    code, _, err = run(["--features", sysu_files["bare"], "--perm-file", folder / "short.mat"], capsys)
    assert code == 3 and "does not match these features" in err
    del perm[1][min(perm[1])]
    save_rand_perm_cam(folder / "partial.mat", perm)
    code, _, err = run(["--features", sysu_files["bare"], "--perm-file", folder / "partial.mat"], capsys)
    assert code == 3 and "no entry for gallery folder cam1/" in err
    (folder / "junk.mat").write_text("not a MATLAB file")
    code, _, err = run(["--features", sysu_files["bare"], "--perm-file", folder / "junk.mat"], capsys)
    assert code == 3 and "junk.mat" in err
    assert len(err.strip().splitlines()) == 1                # one line, no traceback


def test_usage_errors_exit_2(sysu_files, capsys):
    for args, message in ((["--mode", "outdoor"], "unknown mode 'outdoor'"),
                          (["--trials", "0"], "--trials must be at least 1"),
                          (["--dataset", "market"], "unknown dataset 'market'")):
        code, _, err = run(["--features", sysu_files["features"], *args], capsys)
        assert code == 2 and message in err


def test_no_features_and_no_checkpoint_is_exit_4(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["--mode", "indoor", "--shot", "multi"], capsys)
    assert code == 4 and "--features" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(["--checkpoint", tmp_path / "missing.pt"], capsys)
    assert code == 4 and "missing.pt" in err


def test_checkpoint_branch_uses_the_extract_stage(sysu_files, tmp_path: Path, capsys, monkeypatch):
    calls = []

    def fake(checkpoint, data, split, device, runs_root):
        calls.append((checkpoint, data.root, split, device))
        return load_features(sysu_files["features"])

    monkeypatch.setattr(extract, "extract_split", fake)
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"stand-in")
    feats, pids, camids, paths = sysu_files["arrays"]
    data = write_prepared(tmp_path / "prepared", paths, pids, camids)
    out = tmp_path / "r.json"
    code, _, _ = run(["--checkpoint", checkpoint, "--data", data, "--device", "cpu", "--trials", "1",
                      "--json", out], capsys)
    assert code == 0 and calls == [(checkpoint, data, "test", "cpu")]
    assert json.loads(out.read_text())["sampler"] == "official"   # the permutation travels with the features
    code, _, err = run(["--checkpoint", checkpoint, "--data", data, "--direction", "t2v"], capsys)
    assert code == 2 and "--direction applies to RegDB and LLCM only" in err
    assert len(calls) == 1                                          # refused before extracting anything


def test_results_and_plots_on_a_full_disk_keep_the_previous_files_and_finish_after(sysu_files, small_disk, capsys):
    out = small_disk.root / "eval.json"
    command = ["evaluate", "--features", str(sysu_files["features"]), "--json", str(out)]
    assert main(command) == 0
    before = {p.name: p.read_bytes() for p in small_disk.root.iterdir()}
    small_disk.fill()
    assert main(command) == 1
    message = error_line(capsys)
    assert f"no space left on the device writing {out}: it needs about" in message
    assert {p.name: p.read_bytes() for p in small_disk.root.iterdir() if p.name != ".filler"} == before
    small_disk.free()
    assert main(command) == 0


def test_multi_shot_on_one_image_per_folder_is_refused_or_said_on_the_card(tmp_path: Path, capsys):
    """Features with one gallery image per identity and camera (an export of one trial's gallery) used to be
    evaluated single-shot under a card saying multi-shot."""
    feats, pids, camids, paths = sysu_like(seed=12, ids=8, dim=8)
    first_of_folder = {}
    for row, key in enumerate(zip(pids.tolist(), camids.tolist())):
        if key[1] not in (3, 6):
            first_of_folder.setdefault(key, row)
    keep = sorted(set(first_of_folder.values()) | set(np.flatnonzero(np.isin(camids, (3, 6))).tolist()))
    single = save_features(tmp_path / "one.npz", feats[keep], pids[keep], camids[keep], [paths[r] for r in keep])
    code, _, err = run(["--features", single, "--shot", "multi", "--sampler", "agw", "--json", tmp_path / "m.json"],
                       capsys)
    assert code == 3 and "one gallery image per identity and camera" in err and "use --shot single" in err
    assert not (tmp_path / "m.json").exists()
    out = tmp_path / "all.json"
    code, _, _ = run(["--features", single, "--all-settings", "--sampler", "agw", "--trials", "2", "--json", out],
                     capsys)
    assert code == 0
    results = {(r["mode"], r["shot"]): r for r in json.loads(out.read_text())}
    for mode in ("all", "indoor"):
        multi, one = results[(mode, "multi")], results[(mode, "single")]
        assert multi["metrics"] == one["metrics"]
        assert "one gallery image per identity and camera, so every trial's gallery is the single-shot one" in \
            multi["card"]["shot"]
        assert "single-shot one" not in one["card"]["shot"]
    code, _, _ = run(["--features", sysu_like_file(tmp_path), "--shot", "multi", "--trials", "1",
                      "--sampler", "agw"], capsys)
    assert code == 0                                            # several images per folder: multi-shot as before


def sysu_like_file(tmp_path: Path) -> Path:
    feats, pids, camids, paths = sysu_like(seed=12, ids=8, dim=8)
    return save_features(tmp_path / "many.npz", feats, pids, camids, paths)


def test_same_modality_is_printed_and_written_apart_from_the_protocol(sysu_files, capsys):
    plain, with_diagnostic = sysu_files["dir"] / "plain.json", sysu_files["dir"] / "both.json"
    assert run(["--features", sysu_files["features"], "--trials", "3", "--json", plain], capsys)[0] == 0
    code, stdout, _ = run(["--features", sysu_files["features"], "--trials", "3", "--json", with_diagnostic,
                           "--same-modality"], capsys)
    assert code == 0
    protocol = json.loads(with_diagnostic.read_text())
    assert protocol["metrics"] == json.loads(plain.read_text())["metrics"]  # the protocol's numbers untouched
    diagnostic = json.loads(with_diagnostic.with_name("both_same_modality.json").read_text())
    assert [(d["dataset"], d["mode"]) for d in diagnostic] == [("sysu-same-modality", "ir->ir"),
                                                               ("sysu-same-modality", "rgb->rgb")]
    assert all(d["trials"] == 3 and "not the SYSU-MM01 protocol" in d["card"]["dataset"] for d in diagnostic)
    assert diagnostic[0]["card"]["features_file"] == str(sysu_files["features"])
    assert "same-modality diagnostic" in stdout and "ir->ir" in stdout and "rgb->rgb" in stdout


def test_same_modality_is_refused_for_regdb_features(tmp_path, capsys):
    feats = np.eye(4, dtype=np.float32)
    regdb = save_features(tmp_path / "regdb.npz", feats, np.array([1, 1, 2, 2]), np.array([1, 2, 1, 2]),
                          [f"x/{i}.bmp" for i in range(4)], dataset="regdb")
    code, _, err = run(["--features", regdb, "--same-modality"], capsys)
    assert code == 2 and "--same-modality applies to SYSU-MM01 only" in err
