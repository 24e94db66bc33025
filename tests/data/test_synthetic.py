"""The synthetic SYSU-MM01 renderer: layout, determinism, refusal rules, the ``sysu`` preset's plan,
and the raw-pixel baseline that shows the synthetic task has to be learned."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pfanet_cli.evaluation.baselines import raw_pixel_features
from pfanet_cli.errors import DataError, UsageError
from pfanet_cli.data.synthetic import (
    MARKER_FILE,
    draw_identity,
    plan_synthetic_sysu,
    render_plan,
    render_synthetic_sysu,
)
from pfanet_cli.data.synthetic.person import TOP, TOP_B
from pfanet_cli.data.sysu import (
    ALL_CAMERAS,
    IR_CAMERAS,
    RGB_CAMERAS,
    load_rand_perm_cam,
    read_id_list,
)

SPLITS = ("train", "val", "test", "available")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """One render of the default ``small`` preset, shared by the read-only tests."""
    out = tmp_path_factory.mktemp("synthetic") / "sysu"
    summary = render_synthetic_sysu(out, seed=0)
    return out, summary


def _tree(root: Path) -> dict[int, dict[int, list[str]]]:
    """camera -> pid -> sorted file names, as found on disk."""
    tree: dict[int, dict[int, list[str]]] = {}
    for cam in ALL_CAMERAS:
        tree[cam] = {}
        for folder in sorted((root / f"cam{cam}").iterdir()):
            tree[cam][int(folder.name)] = sorted(f.name for f in folder.iterdir())
    return tree


def _splits(root: Path) -> dict[str, list[int]]:
    return {name: read_id_list(root / "exp" / f"{name}_id.txt") for name in SPLITS}


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------ layout


def test_layout_folders_numbering_and_id_lists(small):
    root, summary = small
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == [
        "cam1", "cam2", "cam3", "cam4", "cam5", "cam6", "exp"]
    for cam in ALL_CAMERAS:
        for folder in (root / f"cam{cam}").iterdir():
            assert re.fullmatch(r"\d{4}", folder.name), folder
            names = sorted(f.name for f in folder.iterdir())
            assert names, folder
            assert all(re.fullmatch(r"\d{4}\.jpg", n) for n in names), folder
            assert [int(n[:4]) for n in names] == list(range(1, len(names) + 1)), folder
    for name in SPLITS:
        text = (root / "exp" / f"{name}_id.txt").read_text()
        assert re.fullmatch(r"\d+(,\d+)*", text.strip()), (name, text[:50])
        assert "\n" not in text.strip()

    splits = _splits(root)
    train, val, test, available = (set(splits[n]) for n in SPLITS)
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == available
    assert summary.ids == {n: len(splits[n]) for n in SPLITS}
    assert 50 <= summary.ids["available"] <= 70 and summary.ids["test"] >= 20

    tree = _tree(root)
    assert {cam: sum(len(v) for v in tree[cam].values()) for cam in ALL_CAMERAS} == summary.images_per_camera
    assert sum(summary.images_per_camera.values()) == summary.total_images
    for pid in available:  # every id has RGB and IR images
        assert any(pid in tree[c] for c in RGB_CAMERAS), pid
        assert any(pid in tree[c] for c in IR_CAMERAS), pid
    folders = {pid for cam in ALL_CAMERAS for pid in tree[cam]}
    assert folders == available
    # like the real data, some ids are absent from the indoor RGB cameras (fewer indoor queries)
    outdoor_only = [p for p in test if p not in tree[1] and p not in tree[2]]
    assert 0 < len(outdoor_only) < len(test)
    for cam in ALL_CAMERAS:
        assert all(4 <= len(files) <= 10 for files in tree[cam].values())

    with Image.open(next((root / "cam1").rglob("*.jpg"))) as img:
        assert img.format == "JPEG" and img.mode == "RGB" and img.size == (64, 128)
    assert json.loads((root / MARKER_FILE).read_text())["complete"] is True


def test_ir_images_have_equal_channels_rgb_images_do_not(small):
    root, _ = small
    for cam in IR_CAMERAS:
        for path in sorted((root / f"cam{cam}").rglob("*.jpg")):
            with Image.open(path) as img:
                assert img.mode == "RGB", path
                a = np.asarray(img)
            assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all(), path
    chroma = []
    for path in sorted((root / "cam4").rglob("*.jpg"))[:40]:
        a = np.asarray(Image.open(path).convert("RGB")).astype(np.int16)
        chroma.append(np.abs(a[..., 0] - a[..., 2]).mean())
    assert min(chroma) > 3.0


def test_rand_perm_cam_round_trips_and_matches_folders(small):
    root, _ = small
    perm = load_rand_perm_cam(root / "exp" / "rand_perm_cam.mat")
    tree = _tree(root)
    shuffled = 0
    for cam in ALL_CAMERAS:
        assert sorted(perm[cam]) == sorted(tree[cam]), cam
        for pid, files in tree[cam].items():
            n = len(files)
            entry = perm[cam][pid]
            assert entry.shape == (10, n), (cam, pid)
            assert (np.sort(entry, axis=1) == np.arange(1, n + 1)).all(), (cam, pid)
            shuffled += len({tuple(row) for row in entry}) > 1
    assert shuffled > 0.9 * sum(len(v) for v in tree.values())  # rows are seeded random permutations


def test_colour_and_emissivity_are_independent():
    """IR intensity of a garment must not be predictable from its visible colour."""
    lum, emis, lum_b, emis_b = [], [], [], []
    for pid in range(1, 401):
        ident = draw_identity(0, pid)
        lum.append(ident.rgb[TOP] @ np.array([0.299, 0.587, 0.114]))
        emis.append(ident.ir[TOP])
        lum_b.append(ident.rgb[TOP_B] @ np.array([0.299, 0.587, 0.114]))
        emis_b.append(ident.ir[TOP_B])
        assert abs(ident.ir[TOP] - ident.ir[TOP_B]) >= 0.25  # patterns stay visible in IR
    assert abs(np.corrcoef(lum, emis)[0, 1]) < 0.15
    assert abs(np.corrcoef(lum_b, emis_b)[0, 1]) < 0.15
    assert np.array_equal(draw_identity(0, 7).rgb, draw_identity(0, 7).rgb)


# ------------------------------------------------------------------- determinism, options


def test_deterministic_for_a_seed_whatever_the_workers(tmp_path):
    one = render_synthetic_sysu(tmp_path / "a", ids=5, seed=3, workers=1)
    two = render_synthetic_sysu(tmp_path / "b", ids=5, seed=3, workers=2)
    other = render_synthetic_sysu(tmp_path / "c", ids=5, seed=4, workers=2)
    a, b, c = (_file_bytes(tmp_path / name) for name in "abc")
    assert one.total_images == two.total_images > 0
    assert a == b
    assert a.keys() != c.keys() or any(a[k] != c[k] for k in a if k.endswith(".jpg"))
    common = [k for k in a if k in c and k.endswith(".jpg")]
    assert sum(a[k] != c[k] for k in common) == len(common)
    assert other.seed == 4


def test_ids_override_and_invalid_arguments(tmp_path):
    plan = plan_synthetic_sysu("small", ids=20, seed=1)
    sizes = {n: len(plan.splits[n]) for n in SPLITS}
    assert sizes == {"train": 10, "val": 2, "test": 8, "available": 20}
    assert plan.pids == list(range(1, 21))
    assert len(plan_synthetic_sysu("small", ids=200).splits["test"]) == 80
    summary = render_synthetic_sysu(tmp_path / "r", ids=3, seed=1, height=32, width=16, show_progress=True)
    assert summary.ids == {"train": 1, "val": 1, "test": 1, "available": 3}
    with Image.open(next((tmp_path / "r" / "cam4").rglob("*.jpg"))) as img:
        assert img.size == (16, 32)
    for bad in ({"ids": 2}, {"ids": -1}, {"seed": -1}, {"height": 8}):
        with pytest.raises(UsageError):
            plan_synthetic_sysu("small", **bad)
    with pytest.raises(UsageError):
        plan_synthetic_sysu("market")


def test_refuses_foreign_folder_and_file_but_rerenders_its_own(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        render_synthetic_sysu(foreign, ids=3)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]

    a_file = tmp_path / "file.jpg"
    a_file.write_bytes(b"x")
    with pytest.raises(DataError, match="is a file"):
        render_synthetic_sysu(a_file, ids=3)

    own = tmp_path / "own"
    render_synthetic_sysu(own, ids=6, seed=0, height=32, width=16)
    again = render_synthetic_sysu(own, ids=3, seed=0, height=32, width=16)  # over a previous render
    pids = {int(p.name) for cam in ALL_CAMERAS for p in (own / f"cam{cam}").iterdir()}
    assert pids == {1, 2, 3}  # nothing stale from the first render
    assert sum(1 for _ in own.rglob("*.jpg")) == again.total_images
    empty = tmp_path / "empty"
    empty.mkdir()
    assert render_synthetic_sysu(empty, ids=3, height=32, width=16).total_images > 0


def test_reuse_keeps_a_complete_render_of_the_same_plan_only(tmp_path):
    out = tmp_path / "r"
    render_synthetic_sysu(out, ids=3, seed=0, height=32, width=16)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg")}
    kept = render_synthetic_sysu(out, ids=3, seed=0, height=32, width=16, reuse=True)
    assert kept.seconds == 0.0 and kept.total_images == len(stamps)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg")} == stamps
    render_synthetic_sysu(out, ids=3, seed=1, height=32, width=16, reuse=True)  # another plan: rendered anew
    assert any(p.stat().st_mtime_ns != stamps[p] for p in stamps if p.exists())


# --------------------------------------------------------------------------- sysu preset


def _real_counts() -> dict:
    text = resources.files("pfanet_cli").joinpath("resources/sysu_counts.json").read_text("utf-8")
    return json.loads(text)


def test_sysu_plan_is_the_real_dataset():
    real = _real_counts()
    plan = plan_synthetic_sysu("sysu")
    assert (plan.height, plan.width) == (256, 128)
    for cam in ALL_CAMERAS:
        assert plan.counts[cam] == {int(p): n for p, n in real["counts"][f"cam{cam}"].items()}, cam
    for name in SPLITS:
        assert plan.splits[name] == sorted(real["splits"][name])
    # the numbers of SPEC §2, independently of the json
    assert plan.total_images == 45863
    sizes = {n: len(plan.splits[n]) for n in SPLITS}
    assert sizes == {"train": 296, "val": 99, "test": 96, "available": 491}
    trainval = set(plan.splits["train"]) | set(plan.splits["val"])
    test = set(plan.splits["test"])

    def images(cams, ids):
        return sum(n for c in cams for p, n in plan.counts[c].items() if p in ids)

    assert images(RGB_CAMERAS, trainval) == 22258 and images(IR_CAMERAS, trainval) == 11909
    assert images((3,), test) == 1883 and images((6,), test) == 1920

    sub = plan_synthetic_sysu("sysu", ids=10)
    assert {n: len(sub.splits[n]) for n in SPLITS} == {"train": 6, "val": 2, "test": 2, "available": 10}
    for cam in ALL_CAMERAS:
        assert all(plan.counts[cam][p] == n for p, n in sub.counts[cam].items())


def test_sysu_plan_renders_a_few_ids_for_real(tmp_path):
    real = _real_counts()
    plan = plan_synthetic_sysu("sysu", height=64, width=32)
    available = set(plan.splits["available"])
    test = plan.splits["test"]
    indoor = min(p for p in test if p in plan.counts[1])
    outdoor_only = min(p for p in test if p not in plan.counts[1] and p not in plan.counts[2])
    single_modality = min(p for p in plan.pids if p not in available)  # real folders outside the splits
    train, val = plan.splits["train"][0], plan.splits["val"][0]
    chosen = [indoor, outdoor_only, single_modality, train, val]
    with pytest.raises(UsageError, match="empty"):  # exp/train_id.txt cannot be empty
        render_plan(plan.subset([indoor]), tmp_path / "no-train")
    render_plan(plan.subset(chosen), tmp_path / "sysu", workers=2)
    tree = _tree(tmp_path / "sysu")
    for cam in ALL_CAMERAS:
        expected = {p: real["counts"][f"cam{cam}"][str(p)] for p in chosen if str(p) in real["counts"][f"cam{cam}"]}
        assert {p: len(files) for p, files in tree[cam].items()} == expected, cam
    splits = _splits(tmp_path / "sysu")
    assert splits["test"] == sorted([indoor, outdoor_only])
    assert splits["train"] == [train] and splits["val"] == [val]
    assert splits["available"] == sorted([indoor, outdoor_only, train, val])
    perm = load_rand_perm_cam(tmp_path / "sysu" / "exp" / "rand_perm_cam.mat")
    assert perm[3][indoor].shape == (10, real["counts"]["cam3"][str(indoor)])


# ----------------------------------------------------------------------- raw-pixel baseline


def _rank1(feats, q_idx, g_idx, pids, cams) -> float:
    """Rank-1 of cosine retrieval; cam3 queries never see cam2 gallery images (same room)."""
    sim = feats[q_idx] @ feats[g_idx].T
    same_room = (cams[q_idx][:, None] == 3) & (cams[g_idx][None, :] == 2)
    sim[same_room] = -np.inf
    best = g_idx[np.argmax(sim, axis=1)]
    return float(np.mean(pids[best] == pids[q_idx]))


def _one_per_id(rng, test_ids, cameras, pids, cams) -> np.ndarray:
    picks = []
    for pid in test_ids:
        for cam in cameras:
            idx = np.flatnonzero((pids == pid) & (cams == cam))
            if len(idx):
                picks.append(rng.choice(idx))
    return np.array(picks)


def test_raw_pixels_match_within_rgb_but_not_across_modalities(small):
    root, _ = small
    test_ids = _splits(root)["test"]
    paths, pids, cams = [], [], []
    for cam in ALL_CAMERAS:
        for pid in test_ids:
            folder = root / f"cam{cam}" / f"{pid:04d}"
            if folder.is_dir():
                for f in sorted(folder.iterdir()):
                    paths.append(f)
                    pids.append(pid)
                    cams.append(cam)
    pids, cams = np.array(pids), np.array(cams)
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    feats = raw_pixel_features(images)

    ir_queries = np.flatnonzero(np.isin(cams, IR_CAMERAS))
    cam4_queries = np.flatnonzero(cams == 4)
    gallery_ids = {int(pids[i]) for i in np.flatnonzero(np.isin(cams, RGB_CAMERAS))}
    chance = 1.0 / len(gallery_ids)
    cross, rgb = [], []
    for trial in range(5):
        rng = np.random.default_rng(trial)
        gallery = _one_per_id(rng, test_ids, RGB_CAMERAS, pids, cams)
        cross.append(_rank1(feats, ir_queries, gallery, pids, cams))
        rgb.append(_rank1(feats, cam4_queries, _one_per_id(rng, test_ids, (5,), pids, cams), pids, cams))
    cross_r1, rgb_r1 = float(np.mean(cross)), float(np.mean(rgb))
    print(f"\nraw-pixel baseline on {len(test_ids)} test ids: chance {100 * chance:.1f}%, "
          f"cross-modality (IR->RGB all-search) R1 {100 * cross_r1:.1f}% over {len(ir_queries)} queries, "
          f"RGB (cam4->cam5) R1 {100 * rgb_r1:.1f}% over {len(cam4_queries)} queries")
    assert cross_r1 <= 3 * chance
    assert rgb_r1 >= 5 * cross_r1
    assert rgb_r1 >= 5 * chance
