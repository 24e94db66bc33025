"""prepare-data: equivalence with the community's reference preprocessing, the prepared format,
idempotence, RegDB, and every bad-input case of SPEC §7 that concerns raw trees."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pfanet_cli.cli import main
from pfanet_cli.errors import DataError
from pfanet_cli.data.prepare import prepare_regdb, prepare_sysu
from pfanet_cli.data.sysu import scan_sysu
from tests.helpers import SMALL_SPLITS, make_regdb_tree, make_sysu_tree, small_layout, write_image
from pfanet_cli.data.prepared import open_prepared

H, W = 32, 16


def reference_sysu_train(raw: Path, height: int, width: int):
    """The community's reference preprocessing re-stated plainly (AGW's pre_process_sysu.py rule):
    ids = train + val ascending; RGB files from cams 1, 2, 4, 5 and IR files from cams 3, 6, each
    folder sorted; labels over the ids in ascending order; PIL LANCZOS to (w, h), RGB-converted."""
    ids = [int(t) for t in (raw / "exp/train_id.txt").read_text().split(",")]
    ids += [int(t) for t in (raw / "exp/val_id.txt").read_text().split(",")]
    rgb_files, ir_files = [], []
    for pid in sorted(ids):
        for cams, files in (((1, 2, 4, 5), rgb_files), ((3, 6), ir_files)):
            for cam in cams:
                folder = raw / f"cam{cam}" / f"{pid:04d}"
                if folder.is_dir():
                    files.extend(sorted(folder / name for name in os.listdir(folder)))
    pid2label = {pid: label for label, pid in enumerate(sorted({int(p.parent.name) for p in ir_files}))}

    def load(files):
        return np.stack([np.array(Image.open(p).convert("RGB").resize((width, height), Image.LANCZOS))
                         for p in files])

    return rgb_files, ir_files, load(rgb_files), load(ir_files), pid2label


def test_train_split_matches_reference_preprocessing(sysu_tree, tmp_path):
    summary = prepare_sysu(sysu_tree, tmp_path / "prep", height=H, width=W, workers=2)
    assert not summary.skipped_unchanged
    train = open_prepared(tmp_path / "prep").split("train")
    rgb_files, ir_files, rgb_pixels, ir_pixels, pid2label = reference_sysu_train(sysu_tree, H, W)

    rel = lambda files: [p.relative_to(sysu_tree).as_posix() for p in files]  # noqa: E731
    assert list(train.paths[~train.is_ir]) == rel(rgb_files)
    assert list(train.paths[train.is_ir]) == rel(ir_files)
    np.testing.assert_array_equal(train.images[~train.is_ir], rgb_pixels)
    np.testing.assert_array_equal(train.images[train.is_ir], ir_pixels)
    assert [pid2label[p] for p in train.pids] == list(train.labels)
    # interleaved order: per id RGB cameras 1, 2, 4, 5 then IR cameras 3, 6
    order = {1: 0, 2: 1, 4: 2, 5: 3, 3: 4, 6: 5}
    keys = [(pid, order[cam]) for pid, cam in zip(train.pids, train.camids)]
    assert keys == sorted(keys)
    assert train.num_classes == 4 and train.image_size == (H, W)


def test_test_split_holds_every_test_image_and_exp_is_copied(sysu_tree, tmp_path):
    prepare_sysu(sysu_tree, tmp_path / "prep", height=H, width=W, workers=1)
    data = open_prepared(tmp_path / "prep")
    test = data.split("test")
    expected = sorted(
        f"cam{c}/{pid:04d}/{n:04d}.jpg" for c, people in small_layout().items()
        for pid, count in people.items() if pid in SMALL_SPLITS["test"] for n in range(1, count + 1)
    )
    assert sorted(test.paths) == expected
    assert set(test.camids[test.is_ir]) == {3, 6} and set(test.camids[~test.is_ir]) == {1, 2, 4, 5}
    assert (tmp_path / "prep/exp/test_id.txt").read_text() == "3,5"
    manifest = data.manifest
    assert manifest["splits"]["train"]["images"] == len(data.split("train"))
    assert manifest["splits"]["test"]["ir"] == int(test.is_ir.sum())
    assert set(data.splits) == {"train", "test"}


def test_train_split_option_keeps_val_apart(sysu_tree, tmp_path):
    prepare_sysu(sysu_tree, tmp_path / "prep", height=H, width=W, train_split="train")
    data = open_prepared(tmp_path / "prep")
    assert set(data.splits) == {"train", "val", "test"}
    assert set(data.split("train").pids) == {1, 4, 7}
    assert set(data.split("val").pids) == {2}


def test_parallel_and_serial_decoding_are_identical(sysu_tree, tmp_path, monkeypatch):
    monkeypatch.setattr("pfanet_cli.data.prepare.CHUNK_SIZE", 5)
    prepare_sysu(sysu_tree, tmp_path / "one", height=H, width=W, workers=1)
    prepare_sysu(sysu_tree, tmp_path / "two", height=H, width=W, workers=2)
    for split in ("train", "test"):
        a, b = (np.load(tmp_path / d / f"{split}_images.npy") for d in ("one", "two"))
        np.testing.assert_array_equal(a, b)


def test_rerun_on_unchanged_source_is_a_noop_and_changes_are_picked_up(sysu_tree, tmp_path, capsys):
    out = tmp_path / "prep"
    assert main(["prepare-data", "sysu", str(sysu_tree), "--out", str(out), "--height", "32", "--width", "16"]) == 0
    stamp = (out / "train_images.npy").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["prepare-data", "sysu", str(sysu_tree), "--out", str(out), "--height", "32", "--width", "16"]) == 0
    assert "up to date" in " ".join(capsys.readouterr().out.split())  # rich wraps at the terminal width
    assert (out / "train_images.npy").stat().st_mtime_ns == stamp
    write_image(sysu_tree / "cam1/0001/0009.jpg", np.random.default_rng(5))
    summary = prepare_sysu(sysu_tree, out, height=H, width=W)
    assert not summary.skipped_unchanged
    assert "cam1/0001/0009.jpg" in open_prepared(out).split("train").paths
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".prep")]


def test_image_modes_are_converted(tmp_path):
    layout = {c: {1: 1, 2: 1} for c in range(1, 7)}
    raw = make_sysu_tree(tmp_path / "raw", layout, {"train": [1], "val": [2], "test": [3]})
    rng = np.random.default_rng(1)
    (raw / "cam3/0003").mkdir(parents=True)
    (raw / "cam1/0003").mkdir(parents=True)
    cases = {"L": raw / "cam1/0001/0001.jpg", "P": raw / "cam2/0001/0001.png", "RGBA": raw / "cam4/0001/0001.png"}
    for path in (raw / "cam2/0001/0001.jpg", raw / "cam4/0001/0001.jpg"):
        path.unlink()
    for mode, path in cases.items():
        write_image(path, rng, (32, 16), mode)
    deep = (np.arange(32 * 16).reshape(32, 16) * 97 % 4000 + 100).astype(np.uint16)
    Image.fromarray(deep).save(raw / "cam3/0001/0001.png")
    (raw / "cam3/0001/0001.jpg").unlink()
    write_image(raw / "cam3/0003/0001.jpg", rng, (32, 16))
    write_image(raw / "cam1/0003/0001.jpg", rng, (32, 16))
    prepare_sysu(raw, tmp_path / "prep", height=32, width=16)
    train = open_prepared(tmp_path / "prep").split("train")
    by_path = dict(zip(train.paths, train.images))
    for mode, path in cases.items():
        expected = np.array(Image.open(path).convert("RGB"))
        np.testing.assert_array_equal(by_path[path.relative_to(raw).as_posix()], expected, err_msg=mode)
    gray = by_path["cam3/0001/0001.png"]
    assert gray.dtype == np.uint8 and gray.min() == 0 and gray.max() == 255
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    expected = np.round((deep - deep.min()) * (255.0 / (deep.max() - deep.min()))).astype(np.uint8)
    np.testing.assert_array_equal(gray[..., 0], expected)


def test_regdb_trial_is_prepared(tmp_path):
    raw = make_regdb_tree(tmp_path / "RegDB", ids=4, per_modality=3, trial=2)
    prepare_regdb(raw, tmp_path / "prep", trial=2, height=32, width=16)
    data = open_prepared(tmp_path / "prep")
    assert data.dataset == "regdb"
    train, test = data.split("train"), data.split("test")
    assert len(train) == 12 and len(test) == 12
    assert set(train.camids[~train.is_ir]) == {1} and set(train.camids[train.is_ir]) == {2}
    assert list(train.labels) == sorted(train.labels)
    assert all(p.startswith(("Visible/", "Thermal/")) for p in train.paths)
    assert set(test.pids) == {3, 4}
    with pytest.raises(DataError, match="missing RegDB index file"):
        prepare_regdb(raw, tmp_path / "prep3", trial=3, height=32, width=16)


def test_scan_of_a_tree_with_the_real_sysu_counts(tmp_path):
    """Zero-byte files in the real per-camera layout: the index has the real SYSU-MM01 sizes."""
    from importlib import resources

    counts = json.loads(resources.files("pfanet_cli").joinpath("resources/sysu_counts.json").read_text())
    raw = tmp_path / "raw"
    for cam, people in counts["counts"].items():
        for pid, n in people.items():
            folder = raw / cam / f"{int(pid):04d}"
            folder.mkdir(parents=True)
            for i in range(1, n + 1):
                (folder / f"{i:04d}.jpg").touch()
    (raw / "exp").mkdir()
    for name in ("train", "val", "test"):
        (raw / "exp" / f"{name}_id.txt").write_text(",".join(map(str, counts["splits"][name])))
    splits, bad = scan_sysu(raw)
    train, test = splits["train"], splits["test"]
    assert sum(e.modality == "rgb" for e in train) == 22258
    assert sum(e.modality == "ir" for e in train) == 11909
    assert sum(e.modality == "ir" for e in test) == 3803
    assert len({e.pid for e in train}) == 395 and max(e.label for e in train) == 394
    per_camera = {f"cam{c}": 0 for c in range(1, 7)}
    for entry in train + test:
        per_camera[f"cam{entry.camid}"] += 1
    ids = set(counts["splits"]["train"] + counts["splits"]["val"] + counts["splits"]["test"])
    for cam, people in counts["counts"].items():
        assert per_camera[cam] == sum(n for pid, n in people.items() if int(pid) in ids)
    assert not bad


# ---------------------------------------------------------------------------------------------
# Bad input: each case exits with code 3 and a one-line message naming the problem.


def run_sysu(raw: Path, out: Path, *extra: str) -> int:
    return main(["prepare-data", "sysu", str(raw), "--out", str(out), "--height", "32", "--width", "16", *extra])


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def test_missing_tree(tmp_path, capsys):
    assert run_sysu(tmp_path / "nothing", tmp_path / "prep") == 3
    assert "SYSU-MM01 raw tree not found" in error_line(capsys)


def test_raw_path_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert run_sysu(tmp_path / "file", tmp_path / "prep") == 3
    assert "is a file, expected a folder" in error_line(capsys)


def test_partial_tree_names_missing_cameras(sysu_tree, tmp_path, capsys):
    import shutil

    shutil.rmtree(sysu_tree / "cam6")
    assert run_sysu(sysu_tree, tmp_path / "prep") == 3
    assert "missing camera folder(s) cam6" in error_line(capsys)


def test_missing_exp_file(sysu_tree, tmp_path, capsys):
    (sysu_tree / "exp/val_id.txt").unlink()
    assert run_sysu(sysu_tree, tmp_path / "prep") == 3
    assert "missing id list" in error_line(capsys)


@pytest.mark.parametrize("content", ["1;2;4", "1,2,x", "", "1,2,2"])
def test_malformed_id_list(sysu_tree, tmp_path, capsys, content):
    (sysu_tree / "exp/train_id.txt").write_text(content)
    assert run_sysu(sysu_tree, tmp_path / "prep") == 3
    message = error_line(capsys)
    assert "train_id.txt" in message and "id list" in message


def test_empty_person_folder(sysu_tree, tmp_path, capsys):
    (sysu_tree / "cam4/0007").mkdir(exist_ok=True)
    for path in (sysu_tree / "cam4/0007").iterdir():
        path.unlink()
    assert run_sysu(sysu_tree, tmp_path / "prep") == 3
    assert "cam4/0007: person folder has no images" in error_line(capsys)
    assert run_sysu(sysu_tree, tmp_path / "prep", "--skip-bad") == 0


def test_corrupt_jpeg_is_named_or_skipped_and_counted(sysu_tree, tmp_path, capsys):
    target = sysu_tree / "cam5/0004/0001.jpg"
    target.write_bytes(target.read_bytes()[:100])
    assert run_sysu(sysu_tree, tmp_path / "prep") == 3
    assert "cam5/0004/0001.jpg" in error_line(capsys)
    assert not (tmp_path / "prep").exists()

    assert run_sysu(sysu_tree, tmp_path / "prep", "--skip-bad") == 0
    assert "skipped 1 bad file(s)" in capsys.readouterr().out
    data = open_prepared(tmp_path / "prep")
    train = data.split("train")
    assert "cam5/0004/0001.jpg" not in train.paths
    assert len(train.images) == len(train.paths)
    assert data.manifest["skipped_files"] == ["cam5/0004/0001.jpg"]


def test_non_image_file_is_named(sysu_tree, tmp_path, capsys):
    (sysu_tree / "cam1/0001/notes.txt").write_text("hello")
    assert run_sysu(sysu_tree, tmp_path / "prep") == 3
    assert "cam1/0001/notes.txt: not an image file" in error_line(capsys)


def test_failed_run_keeps_previous_prepared_data(sysu_tree, tmp_path, capsys):
    out = tmp_path / "prep"
    assert run_sysu(sysu_tree, out) == 0
    before = (out / "manifest.json").read_text()
    (sysu_tree / "cam2/0001/0001.jpg").write_bytes(b"not a jpeg")
    assert run_sysu(sysu_tree, out) == 3
    assert (out / "manifest.json").read_text() == before
    assert open_prepared(out).split("train").images.shape[0] > 0


def test_output_that_is_not_prepared_data_is_refused(sysu_tree, tmp_path, capsys):
    out = tmp_path / "prep"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert run_sysu(sysu_tree, out) == 3
    assert "not empty" in error_line(capsys)
    assert (out / "precious.txt").read_text() == "keep me"


def test_size_not_divisible_by_16_is_a_usage_error(sysu_tree, tmp_path, capsys):
    assert main(["prepare-data", "sysu", str(sysu_tree), "--out", str(tmp_path / "p"), "--height", "30"]) == 2
    assert "multiples of 16" in error_line(capsys)
