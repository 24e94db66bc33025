"""Fixtures shared by the tests (builders live in ``tests/helpers.py``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pfanet_cli.config import load_recipe
from pfanet_cli.data.prepare import prepare_sysu
from pfanet_cli.engine.train_gan import GanTrainer
from pfanet_cli.engine.train_joint import JointTrainer
from pfanet_cli.engine.trainer import run_stage
from tests.helpers import SMALL_SPLITS, TINY, SmallDisk, make_sysu_tree, small_layout


@pytest.fixture
def sysu_tree(tmp_path: Path) -> Path:
    return make_sysu_tree(tmp_path / "SYSU-MM01", small_layout(), SMALL_SPLITS)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A tiny train-gan and train-joint run on a small SYSU-layout tree (prepared at 64x32)."""
    root = tmp_path_factory.mktemp("trained")
    layout = {c: {pid: 2 for pid in range(1, 8)} for c in range(1, 7)}
    raw = make_sysu_tree(root / "raw", layout, {"train": [1, 2, 3], "val": [4], "test": [5, 6, 7]},
                         sizes=((64, 32), (96, 40)))
    prepare_sysu(raw, root / "prep", height=64, width=32, workers=1)
    recipe = load_recipe(TINY, [f"data.root={root / 'prep'}", "train.runs_root=" + str(root / "runs")])
    gan = run_stage(GanTrainer, recipe, [], root / "runs/tiny/gan", None, show_progress=False)
    joint = run_stage(JointTrainer, recipe, [], root / "runs/tiny/joint", None, show_progress=False,
                      init_gan=gan.checkpoint)
    return {"root": root, "raw": raw, "prep": root / "prep", "gan": gan.checkpoint, "joint": joint.checkpoint,
            "runs": root / "runs"}


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 48 MB tmpfs to fill up (skipped where the machine does not allow mounting one)."""
    disk = SmallDisk(tmp_path / "disk")
    if not disk.mounted:
        pytest.skip(f"cannot mount a size-limited tmpfs here ({disk.reason}); CI runs as root and can")
    try:
        yield disk
    finally:
        disk.close()


@pytest.fixture
def read_only_folder(tmp_path: Path):
    """A folder on a read-only file system (a read-only tmpfs: even root cannot write there)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here ({result.stderr.strip()}); CI runs as root and can")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
