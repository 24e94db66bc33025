"""One joint iteration of train-joint, taken apart: where D_I's feature maps come from, the G and D steps'
own batch, and what lambda1 multiplies."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pfanet_cli.data.augment import to_unit_range
from pfanet_cli.data.prepared import open_prepared
from pfanet_cli.engine.rundir import RunDir
from pfanet_cli.engine.runtime import Distributed
from pfanet_cli.engine.train_joint import JointTrainer
from pfanet_cli.errors import UsageError
from tests.helpers import tiny


def joint_trainer(prepared: Path, tmp_path: Path, *overrides: str) -> JointTrainer:
    """A train-joint trainer on the tiny recipe with random generators, outside a run."""
    return JointTrainer(tiny(prepared, *overrides), RunDir(tmp_path / "r"), open_prepared(prepared),
                        torch.device("cpu"), Distributed(), show_progress=False, init_gan="none")


def record_calls(module: nn.Module) -> list[tuple[torch.Tensor, ...]]:
    """Every call's inputs to ``module`` from now on, detached copies."""
    calls: list[tuple[torch.Tensor, ...]] = []
    module.register_forward_pre_hook(lambda _, args: calls.append(tuple(a.detach().clone() for a in args)))
    return calls


def train_mode_map(extractor: nn.Module, images: torch.Tensor, train: bool = True) -> torch.Tensor:
    """F's feature map of ``images`` alone, in train mode (batch statistics) or eval mode, without touching F."""
    extractor = copy.deepcopy(extractor).train(train)
    with torch.no_grad():
        return extractor(images).feature_map


def test_d_i_real_and_fake_maps_come_from_the_same_f_in_the_same_bn_mode(prepared, tmp_path):
    """D_I's real map f(x_ir) and fake map f(x'_ir) are what the current F gives for each modality alone in train
    mode (recomputed here independently), and the F step's adversarial term sees fakes the same way."""
    trainer = joint_trainer(prepared, tmp_path, "joint.ids_per_batch=3")
    extractor = trainer.nets["extractor"]
    calls = record_calls(trainer.nets["disc_ir"])
    before = copy.deepcopy(extractor)
    trainer.step("joint", 1)
    f_step, g_step, d_step = calls
    images, features = (t.chunk(4) for t in d_step)
    real_ir, fake_ir = images[0], images[1]
    assert torch.equal(images[3], real_ir) and torch.equal(images[2], fake_ir)  # eq. 5's pairs
    assert len(real_ir) == 2 * 2  # the G/D batch: tiny's joint.gan_batch, not F's 3 x 2

    torch.testing.assert_close(features[0], train_mode_map(extractor, real_ir))  # real pair f(x_ir)
    torch.testing.assert_close(features[1], train_mode_map(extractor, fake_ir))  # fake pair f(x'_ir)
    torch.testing.assert_close(g_step[1], features[1])  # G step: D_I(x'_ir, f(x'_ir)), the same map
    # F step: D_I(x_ir, f(x'_ir)) on the same G/D batch, f from F before its update, on the fakes alone
    torch.testing.assert_close(f_step[0], real_ir)
    torch.testing.assert_close(f_step[1], train_mode_map(before, fake_ir))
    assert not torch.allclose(features[0], train_mode_map(extractor, real_ir, train=False), atol=1e-3)  # BN mode


def test_g_and_d_steps_draw_their_own_unpadded_batch(prepared, tmp_path):
    trainer = joint_trainer(prepared, tmp_path, "data.flip=false", "data.pad=8", "joint.ids_per_batch=3",
                            "joint.images_per_id=2", "joint.gan_batch.ids_per_batch=2",
                            "joint.gan_batch.images_per_id=1")
    d_rgb = record_calls(trainer.nets["disc_rgb"])
    train = open_prepared(prepared).split("train")
    originals = to_unit_range(torch.from_numpy(np.array(train.images)).permute(0, 3, 1, 2))
    trainer.step("joint", 1)
    g_step, d_step = d_rgb
    assert len(g_step[0]) == 2 and len(d_step[0]) == 2 * 2  # D_R(G_R(x_ir)), then real + pooled fake RGB
    real_rgb = d_step[0][:2]
    for image in real_rgb:  # unpadded: each real RGB image is a training image as prepared
        assert any(torch.equal(image, original) for original in originals)
    padded = trainer.batches.next().rgb  # F's own batch keeps its pad-8 crops, with black borders
    assert not all(any(torch.equal(image, original) for original in originals) for image in padded)


def test_the_g_and_d_batch_size_is_checked_under_its_own_key(prepared, tmp_path):
    with pytest.raises(UsageError, match=r"joint\.gan_batch\.ids_per_batch=9 x 1 process\(es\) needs 9"):
        joint_trainer(prepared, tmp_path, "joint.gan_batch.ids_per_batch=9")


def generator_gradients(prepared: Path, tmp_path: Path, *overrides: str) -> list[torch.Tensor]:
    """G_I's and G_R's gradients from one G step on a fresh trainer (same seed, same batch every call)."""
    torch.manual_seed(0)
    trainer = joint_trainer(prepared, tmp_path, "joint.loss.cls_gan=0", "joint.loss.tri_gan=0", *overrides)
    batch = trainer.batch_sources["gan"].next()
    fake_ir = trainer.nets["generator_rgb2ir"](batch.rgb)
    trainer.generator_step(batch, fake_ir)
    return [p.grad.clone() for key in ("generator_rgb2ir", "generator_ir2rgb")
            for p in trainer.nets[key].parameters()]


def test_lambda1_multiplies_the_whole_generator_loss(prepared, tmp_path):
    """Eq. 16: lambda1 x L_G with L_G = adversarial + omega x cycle (eq. 7), so 0.5 halves every gradient of G."""
    full = generator_gradients(prepared, tmp_path / "a", "joint.loss.gen_adv=1.0")
    half = generator_gradients(prepared, tmp_path / "b", "joint.loss.gen_adv=0.5")
    assert sum(float(g.abs().sum()) for g in full) > 0
    for a, b in zip(full, half):
        torch.testing.assert_close(b, 0.5 * a)


@pytest.mark.parametrize("where", ["real", "fake"])
def test_the_fake_anchored_triplet_mines_negatives_where_the_recipe_says(prepared, tmp_path, monkeypatch, where):
    """``joint.fake_anchor_negatives``: both triplet terms of each step; the one anchored on fake IR takes its
    negatives among the real IR (AlignGAN) or among the fake IR (eqs. 14/15 read literally)."""
    import pfanet_cli.engine.train_joint as module  # the module whose triplet is watched

    calls = []
    original = module.cross_modality_triplet

    def watched(anchors, labels, others, other_labels, margin, distance="cosine", negatives=None,
                negative_labels=None):
        calls.append((anchors, others, negatives))
        return original(anchors, labels, others, other_labels, margin, distance, negatives, negative_labels)

    monkeypatch.setattr(module, "cross_modality_triplet", watched)
    trainer = joint_trainer(prepared, tmp_path, f"joint.fake_anchor_negatives={where}")
    trainer.step("warmup", 1)
    (real_anchor, fakes, default), (fake_anchor, reals, negatives) = calls
    assert real_anchor is reals and fakes is fake_anchor and default is None
    assert (negatives is None) if where == "real" else (negatives is fake_anchor)
