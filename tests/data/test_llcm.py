"""LLCM: the synthetic renderer's LLCM layout, the scanner against a restatement of the reference loaders,
prepare-data llcm, the path pattern, and bad trees (exit 3, naming the problem)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from pfanet_cli.cli import main
from pfanet_cli.data import llcm
from pfanet_cli.data.datasets import identity_from_path
from pfanet_cli.data.prepare import prepare_llcm
from pfanet_cli.data.prepared import open_prepared
from pfanet_cli.data.synthetic import plan_synthetic_llcm, render_synthetic_llcm, render_synthetic_sysu
from pfanet_cli.errors import DataError, UsageError
from tests.helpers import error_line

H, W = 32, 16


@pytest.fixture(scope="module")
def llcm_tree(tmp_path_factory):
    """A small synthetic LLCM-layout render (tiny images)."""
    root = tmp_path_factory.mktemp("llcm") / "LLCM"
    summary = render_synthetic_llcm(root, ids=8, seed=1, height=H, width=W, workers=1)
    return root, summary


def test_render_writes_the_llcm_layout_with_its_idx_lists(llcm_tree):
    root, summary = llcm_tree
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == [
        "idx", "test_nir", "test_vis", "train_nir", "train_vis"]
    images = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    assert len(images) == summary.total_images == sum(t["rgb"] + t["ir"] for t in summary.totals.values())
    assert all(re.fullmatch(r"(train|test)_(vis|nir)/cam[1-9]/\d{4}/\d{4}\.jpg", p) for p in images)
    assert not any(p.startswith(("train_nir/cam3/", "test_nir/cam3/")) for p in images)   # no NIR camera 3
    train_lines = {m: (root / "idx" / f"train_{m}.txt").read_text().split("\n")[:-1] for m in ("vis", "nir")}
    listed = sorted(line.split()[0] for lines in train_lines.values() for line in lines)
    assert listed == sorted(p for p in images if p.startswith("train_"))
    labels = {line.split()[0].split("/")[2]: int(line.split()[1]) for lines in train_lines.values() for line in lines}
    assert sorted(set(labels.values())) == list(range(summary.totals["train"]["ids"]))
    assert [labels[k] for k in sorted(labels)] == sorted(labels.values())         # labels follow ascending ids
    test_ids = [int(t) for t in (root / "idx" / "test_id.txt").read_text().split(",")]
    assert len(test_ids) == summary.totals["test"]["ids"]
    assert {int(p.split("/")[2]) for p in images if p.startswith("test_")} <= set(test_ids)


def test_ir_images_are_grey_and_visible_ones_are_not(llcm_tree):
    from PIL import Image

    root, _ = llcm_tree
    nir = np.asarray(Image.open(next((root / "test_nir").rglob("*.jpg"))), dtype=np.int16)
    vis = np.asarray(Image.open(next((root / "test_vis").rglob("*.jpg"))), dtype=np.int16)
    assert np.abs(nir[..., 0] - nir[..., 1]).max() <= 2 and np.abs(vis[..., 0] - vis[..., 2]).max() > 10


def reference_train_list(root: Path, name: str) -> list[tuple[str, int]]:
    """The reference's load_data: each line split on a space into path and label."""
    with open(os.path.join(str(root), "idx", name)) as handle:
        return [(line.split(" ")[0], int(line.split(" ")[1])) for line in handle.read().splitlines()]


def test_scan_follows_the_reference_loaders(llcm_tree):
    root, _ = llcm_tree
    splits, bad = llcm.scan_llcm(root)
    assert bad == []
    train = splits["train"]
    reference = reference_train_list(root, "train_vis.txt") + reference_train_list(root, "train_nir.txt")
    assert sorted(e.path for e in train) == sorted(path for path, _ in reference)
    assert {e.path: e.label for e in train} == dict(reference)            # dense labels: the file's own
    for entry in train:
        assert entry.camid == int(entry.path.split("/")[1][3:]) + (10 if entry.path.startswith("train_nir") else 0)
        assert entry.modality == ("ir" if entry.camid > 10 else "rgb")
    keys = [(e.pid, e.modality == "ir", e.camid, e.path) for e in train]
    assert keys == sorted(keys)
    test_paths = [e.path for e in splits["test"]]
    walked = []
    ids = sorted("%04d" % int(x) for x in (root / "idx/test_id.txt").read_text().split(","))
    for folders in (["test_vis/cam%d" % k for k in range(1, 10)], ["test_nir/cam%d" % k for k in (1, 2, 4, 5, 6, 7, 8, 9)]):
        for pid in ids:
            for cam in folders:
                if os.path.isdir(root / cam / pid):
                    walked.extend(f"{cam}/{pid}/{name}" for name in sorted(os.listdir(root / cam / pid)))
    assert sorted(test_paths) == sorted(walked)


def test_prepare_llcm_and_the_prepared_folder(llcm_tree, tmp_path):
    root, summary = llcm_tree
    result = prepare_llcm(root, tmp_path / "prep", height=H, width=W, workers=1)
    data = open_prepared(tmp_path / "prep")
    assert data.dataset == "llcm" and result.counts == {"train": summary.totals["train"]["rgb"] +
                                                         summary.totals["train"]["ir"],
                                                         "test": summary.totals["test"]["rgb"] +
                                                         summary.totals["test"]["ir"]}
    test = data.split("test")
    assert test.is_ir.sum() == summary.totals["test"]["ir"] and set(test.camids[test.is_ir]) <= set(llcm.NIR_CAMERAS)
    assert data.manifest["num_classes"] == summary.totals["train"]["ids"]
    assert sorted(p.name for p in (tmp_path / "prep" / "exp").iterdir()) == ["test_id.txt", "train_nir.txt",
                                                                             "train_vis.txt"]
    assert prepare_llcm(root, tmp_path / "prep", height=H, width=W, workers=1).skipped_unchanged


def test_paths_name_their_dataset():
    assert identity_from_path("test_nir/cam4/0012/0003.jpg") == (12, 14, "ir", "llcm")
    assert identity_from_path("x/train_vis/cam9/0001/a.jpg") == (1, 9, "rgb", "llcm")
    assert identity_from_path("cam3/0006/0001.jpg") == (6, 3, "ir", "sysu")
    assert llcm.physical_camera(14) == 4 and llcm.camera_id("ir", 4) == 14 and llcm.camera_id("rgb", 4) == 4


def test_the_published_plan_and_its_limits():
    plan = plan_synthetic_llcm("llcm")
    assert plan.totals() == {s: dict(llcm.PUBLISHED_COUNTS[s]) for s in ("train", "test")}
    assert not set(plan.splits["train"]) & set(plan.splits["test"])
    assert plan_synthetic_llcm("small", seed=4).images() == plan_synthetic_llcm("small", seed=4).images()
    small = plan_synthetic_llcm("small").totals()["test"]          # was 10 test ids: R20 could not fail
    assert small["ids"] >= 2 * 20 and small["rgb"] > small["ids"] and small["ir"] > small["ids"]
    with pytest.raises(UsageError, match="--ids applies to the small preset"):
        plan_synthetic_llcm("llcm", ids=10)
    with pytest.raises(UsageError, match="unknown LLCM synthetic preset 'sysu'"):
        plan_synthetic_llcm("sysu")


def break_tree(root: Path, target: Path, how: str) -> Path:
    """A copy of the idx lists (images linked) broken in one way."""
    target.mkdir()
    for item in root.iterdir():
        if item.name != "idx":
            (target / item.name).symlink_to(item)
    (target / "idx").mkdir()
    for name in ("train_vis.txt", "train_nir.txt", "test_id.txt"):
        (target / "idx" / name).write_text((root / "idx" / name).read_text())
    if how == "no idx":
        for name in os.listdir(target / "idx"):
            (target / "idx" / name).unlink()
        (target / "idx").rmdir()
    elif how == "no nir list":
        (target / "idx" / "train_nir.txt").unlink()
    elif how == "bad line":
        (target / "idx" / "train_vis.txt").write_text("train_vis/cam1/0001/0001.jpg\n")
    elif how == "wrong modality":
        (target / "idx" / "train_vis.txt").write_text("train_nir/cam1/0001/0001.jpg 0\n")
    elif how == "two labels":
        lines = (root / "idx" / "train_vis.txt").read_text().splitlines()
        path, label = lines[1].split()
        lines[1] = f"{path} {int(label) + 1}"
        (target / "idx" / "train_vis.txt").write_text("\n".join(lines))
    return target


@pytest.mark.parametrize("how,message", [
    ("no idx", "LLCM idx folder not found"),
    ("no nir list", "is missing idx/train_nir.txt"),
    ("bad line", "expected '<relative path> <label>'"),
    ("wrong modality", "is not an image path of the form train_vis/"),
    ("two labels", "has label"),
])
def test_bad_trees_exit_3_naming_the_problem(llcm_tree, tmp_path, capsys, how, message):
    root, _ = llcm_tree
    broken = break_tree(root, tmp_path / "broken", how)
    code = main(["prepare-data", "llcm", str(broken), "--out", str(tmp_path / "prep"), "--height", "32",
                 "--width", "16", "--workers", "1"])
    assert code == 3
    assert message in error_line(capsys)
    assert not (tmp_path / "prep").exists()


def test_cli_renders_and_prepares_llcm(tmp_path, capsys):
    out = tmp_path / "raw"
    assert main(["prepare-data", "synthetic", str(out), "--layout", "llcm", "--ids", "4", "--height", "32",
                 "--width", "16", "--workers", "1"]) == 0
    assert "next: pfanet prepare-data llcm" in " ".join(capsys.readouterr().out.split())
    marker = json.loads((out / ".pfanet-synthetic.json").read_text())
    assert marker["format"] == "pfanet-synthetic-llcm" and marker["complete"]
    assert main(["prepare-data", "llcm", str(out), "--out", str(tmp_path / "prep"), "--height", "32",
                 "--width", "16", "--workers", "1"]) == 0
    assert open_prepared(tmp_path / "prep").dataset == "llcm"
    assert main(["prepare-data", "synthetic", str(tmp_path / "x"), "--layout", "market"]) == 2
    assert "unknown --layout 'market'" in error_line(capsys)
    assert main(["prepare-data", "synthetic", str(tmp_path / "y"), "--layout", "llcm", "--preset", "llcm",
                 "--ids", "5"]) == 2
    assert "--ids applies to the small preset" in error_line(capsys)


def test_scan_errors_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="LLCM raw tree not found"):
        llcm.scan_llcm(tmp_path / "absent")


def test_dry_run_builds_the_classifier_for_llcms_713_training_ids(capsys):
    counts = {}
    for recipe in ("sysu_pfanet.yaml", "llcm_pfanet.yaml"):
        assert main(["train-joint", recipe, "--dry-run", "--json"]) == 0
        counts[recipe] = json.loads(capsys.readouterr().out)["parameters"]["F"]
    # the classifier's last layer grows by (713 - 395) classes x (256 weights + 1 bias)
    assert counts["llcm_pfanet.yaml"] - counts["sysu_pfanet.yaml"] == (713 - 395) * 257


@pytest.mark.slow
def test_train_extract_and_evaluate_on_a_synthetic_llcm_tree(llcm_tree, tmp_path, capsys):
    root, _ = llcm_tree
    prepare_llcm(root, tmp_path / "prep", height=64, width=32, workers=1)
    overrides = [f"data.root={tmp_path / 'prep'}", "data.dataset=llcm", f"train.runs_root={tmp_path / 'runs'}"]
    assert main(["train-gan", "tiny_cpu.yaml", *overrides, "--out", str(tmp_path / "gan")]) == 0
    assert main(["train-joint", "tiny_cpu.yaml", *overrides, "--out", str(tmp_path / "joint"),
                 "--init-gan", str(tmp_path / "gan" / "checkpoints" / "last.pt")]) == 0
    out = tmp_path / "llcm.json"
    assert main(["evaluate", "--checkpoint", str(tmp_path / "joint" / "checkpoints" / "last.pt"), "--data",
                 str(tmp_path / "prep"), "--direction", "both", "--trials", "3", "--device", "cpu",
                 "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert [(r["dataset"], r["mode"], r["sampler"], r["trials"]) for r in results] == [
        ("llcm", "ir2vis", "llcm-seeded", 3), ("llcm", "vis2ir", "llcm-seeded", 3)]
    assert results[0]["card"]["checkpoint"]["path"] == str(tmp_path / "joint" / "checkpoints" / "last.pt")
    assert results[0]["card"]["split"].startswith("LLCM test ids")


def test_rendering_one_layout_over_the_other_clears_the_old_folders(tmp_path):
    out = tmp_path / "render"
    render_synthetic_sysu(out, ids=3, height=32, width=16, workers=1)
    render_synthetic_llcm(out, ids=3, height=32, width=16, workers=1)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "idx", "test_nir", "test_vis", "train_nir", "train_vis"]
    render_synthetic_sysu(out, ids=3, height=32, width=16, workers=1)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "cam1", "cam2", "cam3", "cam4", "cam5", "cam6", "exp"]
    (out / "notes.txt").write_text("mine")
    render_synthetic_llcm(out, ids=3, height=32, width=16, workers=1)
    assert (out / "notes.txt").read_text() == "mine"           # only the renders' own folders are cleared
