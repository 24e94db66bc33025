"""Builders shared by the tests: small hand-made raw trees in the SYSU-MM01 and RegDB layouts, the tiny
recipe, and readers of what a run wrote."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pfanet_cli.config import ModelConfig, Recipe, load_recipe, recipe_to_dict
from pfanet_cli.data.prepare import prepare_sysu
from pfanet_cli.data import llcm
from pfanet_cli.engine.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, save_checkpoint
from pfanet_cli.modeling.build import build_networks
from pfanet_cli.evaluation.protocols import METRIC_KEYS

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "recipes" / "tiny_cpu.yaml"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SMALL = (64, 32)
FULL = (288, 144)
"""Image sizes (height, width): the smallest the discriminators accept, and the paper's."""
CONTRACT = ["dataset", "mode", "shot", "sampler", "trials", "num_query", "num_gallery", "metrics", "std", "per_trial"]
"""The keys of the evaluation JSON of SPEC §1, in order (the protocol card follows them)."""
SHARED = REPO.parent / "shared"
"""The task's shared folder (the official SYSU-MM01 protocol files); tests that need it skip without it."""


def write_image(path: Path, rng: np.random.Generator, size: tuple[int, int] = (40, 24), mode: str = "RGB") -> None:
    """A random JPEG (or PNG for modes JPEG cannot hold) of ``size`` = (height, width)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, size=size + (3,), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path)


def make_sysu_tree(root: Path, layout: dict[int, dict[int, int]], splits: dict[str, list[int]],
                   seed: int = 0, sizes: tuple[tuple[int, int], ...] = ((40, 24), (52, 20), (37, 30))) -> Path:
    """Write ``layout[camid][pid] = number of images`` as random JPEGs of varying sizes plus exp/*.txt."""
    rng = np.random.default_rng(seed)
    for camid in range(1, 7):
        (root / f"cam{camid}").mkdir(parents=True, exist_ok=True)
        for pid, count in layout.get(camid, {}).items():
            for n in range(1, count + 1):
                size = sizes[int(rng.integers(len(sizes)))]
                write_image(root / f"cam{camid}" / f"{pid:04d}" / f"{n:04d}.jpg", rng, size)
    exp = root / "exp"
    exp.mkdir(parents=True, exist_ok=True)
    for name, ids in splits.items():
        (exp / f"{name}_id.txt").write_text(",".join(str(i) for i in ids))
    available = sorted(set().union(*splits.values()))
    (exp / "available_id.txt").write_text(",".join(str(i) for i in available))
    return root


SMALL_SPLITS = {"train": [1, 4, 7], "val": [2], "test": [3, 5]}


def small_layout() -> dict[int, dict[int, int]]:
    """Six ids over six cameras with uneven counts; id 5 is absent from the indoor cameras 1, 2."""
    layout: dict[int, dict[int, int]] = {c: {} for c in range(1, 7)}
    for pid in (1, 2, 3, 4, 5, 7):
        for camid in range(1, 7):
            if pid == 5 and camid in (1, 2):
                continue
            if pid == 4 and camid == 6:
                continue
            layout[camid][pid] = 1 + (pid + camid) % 3
    return layout


def make_regdb_tree(root: Path, ids: int = 4, per_modality: int = 3, trial: int = 1, seed: int = 0) -> Path:
    """A RegDB-layout tree: half the ids train, half test, idx files for ``trial``."""
    rng = np.random.default_rng(seed)
    idx = root / "idx"
    idx.mkdir(parents=True, exist_ok=True)
    lines = {(s, m): [] for s in ("train", "test") for m in ("visible", "thermal")}
    for pid in range(1, ids + 1):
        split = "train" if pid <= ids // 2 else "test"
        label = pid - 1 if split == "train" else pid - 1 - ids // 2
        for modality, folder, tag in (("visible", "Visible", "v"), ("thermal", "Thermal", "t")):
            for n in range(per_modality):
                rel = f"{folder}/{pid}/person_{tag}_{n:05d}_{pid}.bmp"
                write_image(root / rel, rng, (36, 20), mode="L" if modality == "thermal" else "RGB")
                lines[(split, modality)].append(f"{rel} {label}")
    for (split, modality), rows in lines.items():
        (idx / f"{split}_{modality}_{trial}.txt").write_text("\n".join(rows) + "\n")
    return root


def prepare_small(root: Path, train_split: str = "trainval",
                  splits: dict[str, list[int]] | None = None) -> Path:
    """Eight ids with 2-3 images in every camera, prepared at 64x32 under ``root/prep``; by default ids 1-5
    train (``trainval``), or 1-4 train with the val id 5 kept apart (``train``), and ids 6-8 test."""
    splits = splits or {"train": [1, 2, 3, 4], "val": [5], "test": [6, 7, 8]}
    layout = {c: {pid: 2 + (pid + c) % 2 for pid in range(1, 9)} for c in range(1, 7)}
    raw = make_sysu_tree(root / "raw", layout, splits, sizes=((64, 32), (80, 40)))
    prepare_sysu(raw, root / "prep", height=64, width=32, workers=1, train_split=train_split)
    return root / "prep"


def small_config(**overrides) -> ModelConfig:
    """A ResNet-18 model config without pretrained weights, with overrides."""
    values = dict(backbone="resnet18", pretrained="none")
    values.update(overrides)
    return ModelConfig(**values)


def tiny(prepared: Path, *overrides: str) -> Recipe:
    """The tiny CPU recipe on a prepared folder, with overrides."""
    return load_recipe(TINY, [f"data.root={prepared}", *overrides])


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every network in a checkpoint, as ``network.parameter``."""
    payload = torch.load(checkpoint, weights_only=True)
    return {f"{net}.{k}": v for net, state in payload["networks"].items() for k, v in state.items()}


def error_line(capsys) -> str:
    """What a command printed on stderr, checked to be one line."""
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    return err


def sysu_like(seed: int = 0, ids: int = 12, dim: int = 16, exact_ties: bool = False):
    """A SYSU-layout test set with identity structure: ids x cameras x images, shuffled rows.

    Every corner of the protocol occurs: folders with fewer than 10 images, ids missing from some
    cameras, id 1 with IR images only (its queries have no positive), id 2 whose only RGB images are in
    cam2 (its cam3 queries have none), id 3 absent from the indoor cameras. ``exact_ties`` draws
    features from a few vectors with entries 0 and +-0.5 (unit norm, exact dot products), so many
    similarities tie exactly.
    """
    rng = np.random.default_rng(seed)
    identity = rng.standard_normal((ids + 1, dim))
    pool = np.zeros((6, dim))
    for v in pool:
        v[rng.choice(dim, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    feats, pids, camids, paths = [], [], [], []
    for pid in range(1, ids + 1):
        for cam in range(1, 7):
            if pid == 1 and cam in (1, 2, 4, 5):
                continue
            if pid == 2 and cam in (1, 4, 5):
                continue
            if pid == 3 and cam in (1, 2):
                continue
            if pid > 3 and rng.random() < 0.15:
                continue
            for k in range(1, int(rng.integers(1, 14)) + 1):
                if exact_ties:
                    feats.append(pool[(pid + rng.integers(0, 2)) % len(pool)])
                else:
                    feats.append(identity[pid] + 0.3 * identity[0] * (cam in (3, 6)) + 1.1 * rng.standard_normal(dim))
                pids.append(pid)
                camids.append(cam)
                paths.append(f"cam{cam}/{pid:04d}/{k:04d}.jpg")
    order = rng.permutation(len(pids))
    return (np.asarray(feats, np.float32)[order], np.asarray(pids, np.int64)[order],
            np.asarray(camids, np.int64)[order], [paths[i] for i in order])


def perm_for(pids, camids, seed: int = 0):
    """A permutation in the official format for every (camera, person) folder."""
    rng = np.random.default_rng(seed)
    counts: dict[tuple[int, int], int] = {}
    for p, c in zip(pids.tolist(), camids.tolist()):
        counts[(c, p)] = counts.get((c, p), 0) + 1
    perm: dict[int, dict[int, np.ndarray]] = {c: {} for c in range(1, 7)}
    for (c, p), n in counts.items():
        perm[c][p] = np.stack([rng.permutation(n) + 1 for _ in range(10)])
    return perm


def llcm_like(seed: int = 0, ids: int = 14, dim: int = 12, exact_ties: bool = False):
    """An LLCM-layout test set with identity and camera structure (a person looks alike in one camera
    number whatever the modality, so the camera rule changes the numbers); corners: id 1 never visible,
    NIR camera 3 images (outside the protocol), folders of one image."""
    rng = np.random.default_rng(seed)
    person, camera = rng.standard_normal((ids + 1, dim)), rng.standard_normal((10, dim))
    pool = np.zeros((5, dim))
    for v in pool:
        v[rng.choice(dim, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    feats, pids, camids, paths = [], [], [], []
    for pid in range(1, ids + 1):
        for camid in llcm.VIS_CAMERAS + llcm.NIR_CAMERAS:
            if rng.random() < 0.55 or (pid == 1 and camid < 10):
                continue
            modality = llcm.modality_of_camera(camid)
            for n in range(1, int(rng.integers(1, 5)) + 1):
                if exact_ties:
                    feats.append(pool[(pid + rng.integers(0, 2)) % len(pool)])
                else:
                    feats.append(person[pid] + 0.8 * camera[camid % 10] + rng.standard_normal(dim))
                pids.append(pid)
                camids.append(camid)
                paths.append(f"{llcm.image_folder('test', modality, camid, pid)}/{n:04d}.jpg")
    order = rng.permutation(len(pids))
    return (np.asarray(feats, np.float32)[order], np.asarray(pids)[order], np.asarray(camids)[order],
            [paths[i] for i in order])


def assert_matches_oracle(result, oracle, tol=1e-9):
    assert result.trials == len(oracle["per_trial"])
    for mine, ref in zip(result.per_trial, oracle["per_trial"]):
        for key in METRIC_KEYS:
            assert mine[key] == pytest.approx(ref[key], abs=tol), key
    for key in METRIC_KEYS:
        assert result.metrics[key] == pytest.approx(oracle["metrics"][key], abs=tol)
    np.testing.assert_allclose(result.cmc, oracle["cmc"], atol=tol, rtol=0)
    assert result.num_query == oracle["num_query"]
    assert result.num_gallery == pytest.approx(np.mean(oracle["num_gallery"]))
    assert result.num_valid_query == pytest.approx(np.mean(oracle["num_valid_query"]))


def dead_pid() -> int:
    """The id of a process that has exited (what a killed writer's temporary files carry)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


class SmallDisk:
    """A size-limited tmpfs mounted at ``root`` (the machine must allow ``mount``: root in CI), to meet every
    writer with a real full disk: :meth:`fill` takes all its free space, :meth:`free` gives it back."""

    def __init__(self, root: Path, size_mb: int = 48) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(root)],
                                capture_output=True, text=True)
        self.mounted = result.returncode == 0
        self.reason = result.stderr.strip()
        self._filler = root / ".filler"

    def fill(self, leave: int = 0) -> None:
        """Write a filler file until the disk is full, then free ``leave`` bytes of it again."""
        chunk = b"\0" * (1 << 20)
        with open(self._filler, "ab", buffering=0) as handle:
            try:
                while True:
                    handle.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
        if leave:
            os.truncate(self._filler, max(self._filler.stat().st_size - leave, 0))

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.root)], check=False)


def untrained_checkpoint(path: Path, recipe: Recipe, num_classes: int = 8) -> Path:
    """A train-joint checkpoint of the recipe's freshly initialised networks (no training, no data)."""
    networks = build_networks(recipe.model, num_classes, joint_discriminator=True, load_pretrained=False)
    save_checkpoint(path, {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "stage": "train-joint",
                           "architecture": recipe_to_dict(recipe)["model"], "num_classes": num_classes,
                           "image_size": [recipe.data.height, recipe.data.width], "recipe": recipe_to_dict(recipe),
                           "networks": {key: net.state_dict() for key, net in networks.items()}})
    return path
