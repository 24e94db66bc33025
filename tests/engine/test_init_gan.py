"""Where train-joint's generators come from (SPEC §4): --init-gan PATH, else the newest finished train-gan run
of the same recipe (named on screen), else exit 2; --init-gan none on purpose, warned and recorded."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
import yaml

from pfanet_cli.cli import main
from tests.helpers import TINY, error_line, weights


def train_gan(prepared: Path, runs: Path, name: str, mtime: float) -> Path:
    """A finished tiny train-gan run in ``runs/name`` whose last.pt has modification time ``mtime``."""
    assert main(["train-gan", str(TINY), f"data.root={prepared}", f"train.runs_root={runs}", "--out",
                 str(runs / name)]) == 0
    last = runs / name / "checkpoints/last.pt"
    os.utime(last, (mtime, mtime))
    return last


def copy_run(runs: Path, source: str, name: str, mtime: float) -> Path:
    shutil.copytree(runs / source, runs / name)
    last = runs / name / "checkpoints/last.pt"
    os.utime(last, (mtime, mtime))
    return last


def generator_parameters(checkpoint: Path) -> dict[str, torch.Tensor]:
    """G_I's and G_R's learned parameters (not InstanceNorm running statistics, which the warm-up updates)."""
    return {k: v for k, v in weights(checkpoint).items()
            if k.startswith("generator_") and "running_" not in k and "num_batches" not in k}


def test_train_joint_starts_from_the_newest_finished_gan_run_of_its_recipe(prepared, tmp_path, capsys):
    runs, now = tmp_path / "runs", 1_700_000_000
    train_gan(prepared, runs, "gan-old", now - 100)
    newest = train_gan(prepared, runs, "gan-new", now - 50)
    unfinished = copy_run(runs, "gan-new", "gan-unfinished", now)
    payload = torch.load(unfinished, weights_only=True)
    payload["iteration"] = 2  # of the recipe's gan.iterations=4
    torch.save(payload, unfinished)
    os.utime(unfinished, (now, now))
    other = copy_run(runs, "gan-new", "gan-other-recipe", now + 10)
    (other.parent.parent / "run.yaml").write_text(yaml.safe_dump({"stage": "train-gan", "recipe": "other"}))
    capsys.readouterr()

    out = tmp_path / "joint"
    assert main(["train-joint", str(TINY), f"data.root={prepared}", f"train.runs_root={runs}",
                 "joint.warmup_iterations=2", "joint.iterations=0", "--out", str(out)]) == 0
    assert f"G_I and G_R start from {newest}" in capsys.readouterr().out
    assert yaml.safe_load((out / "run.yaml").read_text())["init_gan"] == str(newest)
    expected, got = generator_parameters(newest), generator_parameters(out / "checkpoints/last.pt")
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


def test_train_joint_without_a_finished_gan_run_exits_2_and_says_what_to_do(prepared, tmp_path, capsys):
    runs = tmp_path / "runs"
    train_gan(prepared, runs, "gan", 1_700_000_000)
    (runs / "gan/run.yaml").write_text(yaml.safe_dump({"stage": "train-gan", "recipe": "other"}))
    code = main(["train-joint", str(TINY), f"data.root={prepared}", f"train.runs_root={runs}", "--out",
                 str(tmp_path / "joint")])
    assert code == 2
    message = error_line(capsys)
    assert f"no finished train-gan run of recipe 'tiny_cpu' is under {runs}/" in message
    assert "run 'pfanet train-gan' with this recipe first, or pass --init-gan PATH" in message
    assert not (tmp_path / "joint").exists()


def test_init_gan_none_is_warned_recorded_and_kept_on_resume(prepared, tmp_path, capsys):
    args = ["train-joint", str(TINY), f"data.root={prepared}", f"train.runs_root={tmp_path / 'runs'}",
            "joint.warmup_iterations=2", "joint.iterations=0", "--out", str(tmp_path / "joint")]
    assert main(args + ["--init-gan", "none"]) == 0
    assert "warning: --init-gan none: G_I and G_R start from random weights" in capsys.readouterr().err
    run_yaml = tmp_path / "joint/run.yaml"
    assert yaml.safe_load(run_yaml.read_text())["init_gan"] == "none"
    # resuming needs no train-gan run (the generators come from the checkpoint) and still says how it started
    assert main(args + ["joint.warmup_iterations=3", "--resume", "auto"]) == 0
    assert yaml.safe_load(run_yaml.read_text())["init_gan"] == "none"
