"""train-joint under torchrun with two CPU processes (DDP over gloo), as a user would start it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from pfanet_cli.data.prepare import prepare_sysu
from tests.helpers import TINY, make_sysu_tree


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
@pytest.mark.parametrize("overrides", [[], ["joint.triplet_feature=pooled", "model.generator_skip=true"]],
                         ids=["paper", "pooled-triplet"])
def test_train_joint_under_torchrun_with_two_processes(tmp_path, overrides):
    """Every parameter with ``requires_grad`` must get a gradient in every step, or DDP stops the run."""
    layout = {c: {pid: 2 for pid in range(1, 9)} for c in range(1, 7)}
    raw = make_sysu_tree(tmp_path / "raw", layout, {"train": [1, 2, 3, 4], "val": [5], "test": [6, 7, 8]},
                         sizes=((64, 32),))
    prepare_sysu(raw, tmp_path / "prep", height=64, width=32, workers=1)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "pfanet_cli", "train-joint", str(TINY), f"data.root={tmp_path / 'prep'}", *overrides,
               "--init-gan", "none", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    payload = torch.load(out / "checkpoints/last.pt", weights_only=True)
    assert payload["world_size"] == 2 and payload["phase"] == "joint" and payload["iteration"] == 4
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 4  # rank 0 alone logs: 2 warm-up rows and 2 joint rows
    assert done.stdout.count("train-joint finished") == 1
