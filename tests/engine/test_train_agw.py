"""train-agw end to end on tiny data with the demo-scale recipes (AGW, CAJ), and PFANet with CAJ's augmentation:
checkpoints, run files, AGW's learning-rate schedule, exact resume with the augmentations on, extraction through
the modality's stem, evaluation, model selection on val, and the stage/method errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pfanet_cli.cli import main
from pfanet_cli.config import AgwConfig, load_recipe
from pfanet_cli.data.prepared import open_prepared
from pfanet_cli.engine.checkpoint import load_checkpoint, restore_networks
from pfanet_cli.engine.train_agw import AgwTrainer, agw_iterations_per_epoch, agw_learning_rate_factor
from pfanet_cli.engine.train_joint import JointTrainer
from pfanet_cli.engine.trainer import run_stage
from pfanet_cli.evaluation.extract import extract_split
from pfanet_cli.evaluation.features import load_features
from tests.engine.test_training import interrupt_at
from tests.helpers import error_line, prepare_small, tiny, weights

TINY_AGW = ("agw.epochs=2", "agw.iterations_per_epoch=2", "agw.ids_per_batch=2", "agw.images_per_id=2",
            "agw.first_decay=1", "agw.second_decay=2", "train.log_every=1", "train.device=cpu",
            "train.checkpoint_every=2", "train.sample_every=2")
"""The demo recipes cut to 4 iterations of 2 ids x 2 images: epoch 0 at lr, epoch 1 at lr x 0.1."""


def agw_recipe(name: str, prepared: Path, *overrides: str):
    return load_recipe(name, [f"data.root={prepared}", *TINY_AGW, *overrides])


def test_agws_schedule_and_epoch_are_its_codes():
    agw = AgwConfig()
    factors = [agw_learning_rate_factor(epoch, agw) for epoch in (0, 4, 9, 10, 19, 20, 49, 50, 80)]
    assert factors == pytest.approx([0.1, 0.5, 1.0, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
    assert agw_iterations_per_epoch(22_258, 11_909, agw) == 696  # SYSU-MM01: int(22,258 / 32) + 1
    assert agw_iterations_per_epoch(2_060, 2_060, agw) == 65  # RegDB
    assert agw_iterations_per_epoch(10, 10, AgwConfig(iterations_per_epoch=7)) == 7


def test_demo_agw_trains_extracts_and_evaluates(prepared, tmp_path, capsys):
    run = tmp_path / "agw"
    assert main(["train-agw", "demo_agw.yaml", f"data.root={prepared}", *TINY_AGW, "--out", str(run)]) == 0
    payload = load_checkpoint(run / "checkpoints" / "last.pt")
    assert payload["stage"] == "train-agw" and set(payload["networks"]) == {"agw"} and payload["iteration"] == 4
    assert payload["architecture"]["method"] == "agw" and payload["num_classes"] == 5
    info = yaml.safe_load((run / "run.yaml").read_text())
    assert info["method"].startswith("AGW: two-stream resnet18 (from scratch;") and "weighted regularised" in info["method"]
    assert info["augmentation"] == "horizontal flip; zero padding 4 + random crop"
    assert (info["iterations_per_epoch"], info["epochs"]) == (2, 2)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4] and all({"ce", "tri"} <= set(r) for r in rows)
    # the rate the next iteration uses: epoch 0 at 0.05 (no warm-up in demo_agw), epoch 1 x0.1, then x0.01
    assert [r["lr"]["agw.1"] for r in rows] == pytest.approx([0.05, 0.005, 0.005, 0.0005])
    assert [r["lr"]["agw.0"] for r in rows] == pytest.approx([0.05, 0.005, 0.005, 0.0005])  # backbone factor 1
    assert sorted(p.name for p in (run / "samples").iterdir())[-1] == "train-agw-agw-000004.png"

    capsys.readouterr()
    features = tmp_path / "f.npz"
    assert main(["extract", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--data", str(prepared),
                 "--out", str(features), "--device", "cpu"]) == 0
    extracted = load_features(features)
    assert extracted.features.shape[1] == 512
    np.testing.assert_allclose(np.linalg.norm(extracted.features, axis=1), 1.0, atol=1e-5)
    assert main(["evaluate", "--features", str(features), "--trials", "2", "--sampler", "agw",
                 "--json", str(tmp_path / "r.json")]) == 0
    card = json.loads((tmp_path / "r.json").read_text())["card"]
    assert card["method"] == info["method"] and card["augmentation"] == info["augmentation"]
    assert card["feature"].startswith("fc: AGW's BN-neck") and card["flip"].startswith("not flipped (AGW's test.py)")
    assert card["translation"] == "none: AGW's RGB images go through its visible stem"
    assert main(["extract", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--data", str(prepared),
                 "--out", str(tmp_path / "n.npz"), "--generator-norm", "instance"]) == 2
    assert "is AGW's (train-agw), which has no generator" in error_line(capsys)
    pool = tmp_path / "pool.npz"
    assert main(["extract", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--data", str(prepared),
                 "--out", str(pool), "--device", "cpu", "--feature", "pool"]) == 0
    assert not np.allclose(load_features(pool).features, extracted.features)
    assert main(["extract", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--data", str(prepared),
                 "--out", str(pool), "--feature", "bn"]) == 2
    assert "AGW's test feature is fc or pool, not 'bn'" in error_line(capsys)


def test_an_agw_checkpoint_sends_rgb_through_the_visible_stem_and_ir_through_the_thermal_one(prepared, tmp_path):
    result = run_stage(AgwTrainer, agw_recipe("demo_caj.yaml", prepared), [], tmp_path / "caj", None,
                       show_progress=False)
    nets, _ = restore_networks(result.checkpoint, ["agw"], "test")
    net = nets["agw"]
    net.configure_test("fc", flip=True)
    test = open_prepared(prepared).split("test")
    unit = torch.from_numpy(np.array(test.images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    is_rgb = torch.from_numpy(~test.is_ir)
    extracted = extract_split(result.checkpoint, prepared, device="cpu").features
    torch.testing.assert_close(torch.from_numpy(extracted), net.test_features(unit, is_rgb), atol=1e-5, rtol=0)

    def one_stem(visible: bool, images: torch.Tensor) -> torch.Tensor:
        return net.test_features(images, torch.full((len(images),), visible))

    rgb, ir = unit[is_rgb], unit[~is_rgb]
    torch.testing.assert_close(torch.from_numpy(extracted[is_rgb.numpy()]), one_stem(True, rgb), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.from_numpy(extracted[~is_rgb.numpy()]), one_stem(False, ir), atol=1e-5, rtol=0)
    assert (one_stem(False, rgb) - one_stem(True, rgb)).abs().max() > 1e-3  # the stems differ
    # CAJ's test feature: the normalised mean of the image's and its flip's normalised fc vectors
    net.configure_test("fc", flip=False)
    plain, flipped = one_stem(True, rgb), one_stem(True, torch.flip(rgb, dims=[3]))
    net.configure_test("fc", flip=True)
    torch.testing.assert_close(one_stem(True, rgb), torch.nn.functional.normalize(plain + flipped), atol=1e-6, rtol=0)


@pytest.mark.parametrize("trainer_class, phase", [(AgwTrainer, "agw"), (JointTrainer, "joint")],
                         ids=["demo-caj-and-grayscale", "tiny-pfanet-every-augmentation"])
def test_resume_is_exact_with_the_augmentations_on(prepared, tmp_path, monkeypatch, trainer_class, phase):
    """Random erasing, CAJ's channel operations (and the second RGB views) and random grayscale draw from the
    batch source's generator, which checkpoints hold as they hold the crop plan's: a run killed after iteration 2
    and resumed (3 batches prefetched) ends with the weights of an uninterrupted one."""
    common = [f"data.root={prepared}", "train.deterministic=true", "train.prefetch=3", "train.device=cpu"]
    if trainer_class is AgwTrainer:
        config = load_recipe("demo_caj.yaml", [*common, *TINY_AGW, "data.grayscale=0.5"])
        options: dict = {}
    else:
        config = tiny(prepared, *common, "data.erasing=0.5", "data.channel_exchange=0.5", "data.ir_adaptive_gray=true",
                      "data.grayscale=0.5")
        options = {"init_gan": "none"}
    straight = run_stage(trainer_class, config, [], tmp_path / "straight", None, show_progress=False, **options)
    with monkeypatch.context() as patch:
        interrupt_at(patch, trainer_class, 3, phase)
        with pytest.raises(KeyboardInterrupt):
            run_stage(trainer_class, config, [], tmp_path / "resumed", None, show_progress=False, **options)
    resumed = run_stage(trainer_class, config, [], tmp_path / "resumed", "auto", show_progress=False, **options)
    expected, got = weights(straight.checkpoint), weights(resumed.checkpoint)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[key], got[key]) for key in expected)


@pytest.mark.slow
def test_demo_pfanet_caj_trains_both_stages_and_evaluates(prepared, tmp_path):
    tiny_pfanet = [f"data.root={prepared}", "gan.iterations=2", "joint.warmup_iterations=2", "joint.iterations=2",
                   "joint.lr_decay_at=1", "joint.ids_per_batch=2", "joint.images_per_id=2", "train.device=cpu",
                   "train.log_every=1"]
    assert main(["train-gan", "demo_pfanet_caj.yaml", *tiny_pfanet, "--out", str(tmp_path / "gan")]) == 0
    assert main(["train-joint", "demo_pfanet_caj.yaml", *tiny_pfanet, "--init-gan",
                 str(tmp_path / "gan/checkpoints/last.pt"), "--out", str(tmp_path / "joint")]) == 0
    info = yaml.safe_load((tmp_path / "joint" / "run.yaml").read_text())
    assert info["method"].startswith("PFANet: F resnet18 (from scratch) with BNG and MMM")
    assert "random erasing p 0.5" in info["augmentation"] and "ChannelAdapGray(0.5)" in info["augmentation"]
    assert yaml.safe_load((tmp_path / "gan" / "run.yaml").read_text())["augmentation"].startswith("horizontal flip; no")
    assert main(["evaluate", "--checkpoint", str(tmp_path / "joint/checkpoints/last.pt"), "--data", str(prepared),
                 "--trials", "1", "--sampler", "agw", "--device", "cpu", "--json", str(tmp_path / "r.json")]) == 0
    card = json.loads((tmp_path / "r.json").read_text())["card"]
    assert card["augmentation"] == info["augmentation"] and card["feature"].startswith("pooled v")


def test_agw_keeps_the_best_val_checkpoint(tmp_path):
    """Without non-local blocks: after 2 iterations from scratch the running statistics are far from the batches',
    and in eval mode the non-local products (cubic in the activations) overflow float32 on these images."""
    data = prepare_small(tmp_path / "val", train_split="train")
    recipe = agw_recipe("demo_agw.yaml", data, "agw.validate_every=2", "agw.validate_trials=1", "model.non_local=off")
    result = run_stage(AgwTrainer, recipe, [], tmp_path / "run", None, show_progress=False)
    rows = [r for r in result.run.read_metrics() if "val" in r]
    assert [r["global_iteration"] for r in rows] == [2, 4]
    best = load_checkpoint(result.run.checkpoints / "best.pt")
    assert best["selection"]["rule"] == "best val mAP" and best["stage"] == "train-agw"


def test_each_stage_refuses_the_other_methods_recipes(prepared, tmp_path, capsys):
    assert main(["train-joint", "sysu_agw.yaml", "--dry-run"]) == 2
    assert "is AGW (model.method=agw), which trains in one stage without a GAN: run pfanet train-agw" in \
        error_line(capsys)
    assert main(["train-gan", "demo_agw.yaml", f"data.root={prepared}", "--out", str(tmp_path / "r")]) == 2
    assert "run pfanet train-agw with it, not train-gan" in error_line(capsys)
    assert main(["train-agw", "demo_cpu.yaml", "--dry-run"]) == 2
    assert "is PFANet (model.method=pfanet): train it with pfanet train-gan, then pfanet train-joint" in \
        error_line(capsys)
    assert main(["train-joint", "tiny_cpu.yaml", "data.rgb_views=2", "--dry-run"]) == 2
    assert "data.rgb_views=2 (CAJ's two RGB views) needs model.method=agw" in error_line(capsys)
    assert not (tmp_path / "r").exists()
