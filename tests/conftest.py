"""Fixtures shared by the tests (builders live in ``tests/helpers.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pfanet_cli.config import load_recipe
from pfanet_cli.data.prepare import prepare_sysu
from pfanet_cli.engine.train_gan import GanTrainer
from pfanet_cli.engine.train_joint import JointTrainer
from pfanet_cli.engine.trainer import run_stage
from tests.helpers import SMALL_SPLITS, TINY, make_sysu_tree, small_layout


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
