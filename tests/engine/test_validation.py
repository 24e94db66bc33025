"""Model selection on the val identities (SPEC §4): joint.validate_every runs the SYSU protocol on the val split,
logs it, and keeps best.pt by val mAP beside last.pt; the test split is never read; resume stays exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pfanet_cli.cli import main
from pfanet_cli.data.format import images_file, index_file
from pfanet_cli.data.prepared import PreparedData, open_prepared
from pfanet_cli.engine.checkpoint import load_checkpoint, restore_networks
from pfanet_cli.engine.train_joint import JointTrainer
from pfanet_cli.engine.trainer import run_stage
from pfanet_cli.engine.validation import Validator
from pfanet_cli.inference.feature_model import compute_features
from pfanet_cli.evaluation.protocols import evaluate_sysu_settings
from tests.engine.test_training import interrupt_at
from tests.helpers import TINY, error_line, prepare_small, tiny, weights

VALIDATING = ("joint.validate_every=2", "joint.validate_trials=3", "train.deterministic=true")
"""tiny_cpu: 3 warm-up + 4 joint iterations, validated at global iterations 2, 4, 6 and 7 (the end)."""


@pytest.fixture(scope="module")
def prepared_val(tmp_path_factory) -> Path:
    """Train ids 1-4, val ids 5-7 kept apart (--train-split train), and a test split that cannot be read."""
    root = prepare_small(tmp_path_factory.mktemp("val"), train_split="train",
                         splits={"train": [1, 2, 3, 4], "val": [5, 6, 7], "test": [8]})
    images_file(root, "test").unlink()
    index_file(root, "test").unlink()
    return root


@pytest.fixture
def no_test_split(monkeypatch):
    """Fails any attempt to open the test split."""
    original = PreparedData.split

    def split(self, name):
        assert name != "test", "the test split was opened during training"
        return original(self, name)

    monkeypatch.setattr(PreparedData, "split", split)


def networks_of(checkpoint: Path) -> dict[str, torch.Tensor]:
    return weights(checkpoint)


def test_best_pt_is_the_checkpoint_with_the_best_val_map(prepared_val, tmp_path, no_test_split):
    result = run_stage(JointTrainer, tiny(prepared_val, *VALIDATING), [], tmp_path / "run", None,
                       show_progress=False, init_gan="none")
    rows = [r for r in result.run.read_metrics() if "val" in r]
    assert [r["global_iteration"] for r in rows] == [2, 4, 6, 7]
    maps = [r["val"]["mAP"] for r in rows]
    chosen = rows[maps.index(max(maps))]
    assert [r["best"] for r in rows] == [m > max(maps[:i], default=-1) for i, m in enumerate(maps)]

    best = load_checkpoint(result.run.checkpoints / "best.pt")
    assert best["selection"] == {"rule": "best val mAP", "metric": "mAP", "value": pytest.approx(max(maps)),
                                 "global_iteration": chosen["global_iteration"], "split": "val"}
    assert "selection" not in load_checkpoint(result.checkpoint)
    # best.pt holds the networks that scored it: re-evaluating them on the val split gives the logged metrics
    nets, _ = restore_networks(result.run.checkpoints / "best.pt", ["extractor", "generator_rgb2ir"], "test")
    for net in nets.values():  # as they were trained (train.channels_last), so the same kernels run
        net.to(memory_format=torch.channels_last)
    val = open_prepared(prepared_val).split("val")
    features = compute_features(nets["extractor"], nets["generator_rgb2ir"], val.images, ~val.is_ir, (64, 32))
    again, = evaluate_sysu_settings(features, val.pids, val.camids, list(val.paths), [("all", "single")],
                                    trials=3, sampler="agw")
    assert again.metrics == pytest.approx(chosen["val"])


def test_a_later_better_val_map_replaces_best_pt(prepared_val, tmp_path, monkeypatch):
    scores = iter([10.0, 30.0, 20.0, 25.0])
    monkeypatch.setattr(Validator, "evaluate", lambda self, f, g: {"r1": 0.0, "mAP": next(scores)})
    result = run_stage(JointTrainer, tiny(prepared_val, *VALIDATING), [], tmp_path / "run", None,
                       show_progress=False, init_gan="none")
    best = result.run.checkpoints / "best.pt"
    assert load_checkpoint(best)["selection"]["global_iteration"] == 4
    assert load_checkpoint(best)["selection"]["value"] == 30.0
    kept = weights(result.run.checkpoints / "iter-000004.pt")
    assert all(torch.equal(kept[k], v) for k, v in weights(best).items())


def test_resume_across_a_validation_step_is_exact(prepared_val, tmp_path, monkeypatch, no_test_split):
    recipe = tiny(prepared_val, *VALIDATING)
    straight = run_stage(JointTrainer, recipe, [], tmp_path / "straight", None, show_progress=False, init_gan="none")
    with monkeypatch.context() as patch:
        interrupt_at(patch, JointTrainer, 3, "joint")  # global 6: after the validations at 2 and 4
        with pytest.raises(KeyboardInterrupt):
            run_stage(JointTrainer, recipe, [], tmp_path / "resumed", None, show_progress=False, init_gan="none")
    resumed = run_stage(JointTrainer, recipe, [], tmp_path / "resumed", "auto", show_progress=False)
    for name in ("last.pt", "best.pt"):
        expected, got = weights(straight.run.checkpoints / name), weights(resumed.run.checkpoints / name)
        assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected), name
    assert load_checkpoint(resumed.run.checkpoints / "best.pt")["selection"] == \
        load_checkpoint(straight.run.checkpoints / "best.pt")["selection"]
    val_rows = [[(r["global_iteration"], r["val"]) for r in run.read_metrics() if "val" in r]
                for run in (straight.run, resumed.run)]
    assert val_rows[0] == val_rows[1]


def test_validation_without_a_val_split_exits_3(prepared, tmp_path, capsys):
    code = main(["train-joint", str(TINY), f"data.root={prepared}", "joint.validate_every=2", "--init-gan", "none",
                 "--out", str(tmp_path / "run")])
    assert code == 3
    assert "has no 'val' split; run 'pfanet prepare-data sysu --train-split train'" in error_line(capsys)
