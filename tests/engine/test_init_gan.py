"""Where train-joint's generators come from (SPEC §4): --init-gan PATH, else the newest finished train-gan run
of the same recipe trained on the same prepared data at the same size (named on screen), else exit 2 naming
the newest candidate and what differed; a GAN of other data or size is refused unless --init-gan-any;
--init-gan none on purpose, warned and recorded."""

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
    assert "run 'pfanet train-gan' with this recipe and data first, or pass --init-gan PATH" in message
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


def edit_checkpoint(path: Path, mtime: float, **changes) -> Path:
    """Rewrite a checkpoint's top-level entries (``recipe_gan_iterations`` sets its own gan.iterations)."""
    payload = torch.load(path, weights_only=True)
    if "recipe_gan_iterations" in changes:
        payload["recipe"]["gan"]["iterations"] = changes.pop("recipe_gan_iterations")
    payload.update(changes)
    torch.save(payload, path)
    os.utime(path, (mtime, mtime))
    return path


def test_a_smoke_run_another_data_set_or_another_size_is_never_picked_up(prepared, tmp_path, capsys):
    runs, now = tmp_path / "runs", 1_700_000_000
    good = train_gan(prepared, runs, "gan-real", now - 100)
    # newer runs of the same recipe name that do not fit: a finished 2-iteration smoke run (the recipe asks
    # for 4), another trial's data, another image size
    edit_checkpoint(copy_run(runs, "gan-real", "gan-smoke", now), now, iteration=2, recipe_gan_iterations=2)
    edit_checkpoint(copy_run(runs, "gan-real", "gan-trial2", now + 10), now + 10, dataset_fingerprint="f" * 64)
    edit_checkpoint(copy_run(runs, "gan-real", "gan-big", now + 20), now + 20, image_size=[288, 144])
    capsys.readouterr()
    out = tmp_path / "joint"
    assert main(["train-joint", str(TINY), f"data.root={prepared}", f"train.runs_root={runs}",
                 "joint.warmup_iterations=1", "joint.iterations=0", "--out", str(out)]) == 0
    assert f"G_I and G_R start from {good}" in capsys.readouterr().out
    info = yaml.safe_load((out / "run.yaml").read_text())
    fingerprint = torch.load(good, weights_only=True, mmap=True)["dataset_fingerprint"]
    assert info["init_gan"] == str(good) and info["init_gan_fingerprint"] == fingerprint


def test_with_no_fitting_run_left_train_joint_names_the_newest_and_what_differed(prepared, tmp_path, capsys):
    runs, now = tmp_path / "runs", 1_700_000_000
    last = train_gan(prepared, runs, "gan", now)
    fingerprint = torch.load(last, weights_only=True, mmap=True)["dataset_fingerprint"]
    newest = edit_checkpoint(copy_run(runs, "gan", "gan-newest", now + 10), now + 10, dataset_fingerprint="f" * 64,
                             image_size=[80, 48], iteration=2, recipe_gan_iterations=2)
    edit_checkpoint(last, now, iteration=3)
    code = main(["train-joint", str(TINY), f"data.root={prepared}", f"train.runs_root={runs}", "--out",
                 str(tmp_path / "joint")])
    assert code == 2
    message = error_line(capsys)
    assert (f"no train-gan run of recipe 'tiny_cpu' under {runs}/ fits this run; the newest, {newest}, differs"
            in message)
    assert f"prepared data ffffffffffff (sysu), this run's {fingerprint[:12]} (sysu, {prepared})" in message
    assert "image size 80x48, this run's 64x32" in message
    assert "trained 2 iterations, the recipe asks for gan.iterations=4" in message
    assert not (tmp_path / "joint").exists()


def test_an_explicit_gan_of_other_data_is_refused_unless_init_gan_any(prepared, tmp_path, capsys):
    runs = tmp_path / "runs"
    other = edit_checkpoint(train_gan(prepared, runs, "gan", 1_700_000_000), 1_700_000_000,
                            dataset_fingerprint="e" * 64)
    args = ["train-joint", str(TINY), f"data.root={prepared}", "joint.warmup_iterations=1", "joint.iterations=0",
            "--init-gan", str(other), "--out", str(tmp_path / "joint")]
    assert main(args) == 2
    message = error_line(capsys)
    assert f"--init-gan {other} was trained on other data or at another size: prepared data eeeeeeeeeeee" in message
    assert "pass --init-gan-any to start from it anyway" in message
    assert not (tmp_path / "joint").exists()

    assert main(args + ["--init-gan-any"]) == 0
    assert f"warning: --init-gan-any: G_I and G_R start from {other}" in capsys.readouterr().err
    info = yaml.safe_load((tmp_path / "joint/run.yaml").read_text())
    assert info["init_gan"] == str(other) and info["init_gan_fingerprint"] == "e" * 64
    resumed = main(args[:-2] + ["--out", str(tmp_path / "joint"), "joint.warmup_iterations=2", "--resume", "auto"])
    assert resumed == 0  # the generators come from the checkpoint: nothing to refuse, and run.yaml still says
    assert yaml.safe_load((tmp_path / "joint/run.yaml").read_text())["init_gan_fingerprint"] == "e" * 64
