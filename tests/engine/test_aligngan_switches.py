"""AlignGAN's arrangement of train-joint as recipe switches (docs/model.md, "AlignGAN's arrangement"): its two
warm-ups, per-modality F forwards, the detached real feature in G's adversarial term, its loss scaling, and
translating F's RGB images before their pad + crop. Each test checks that its switch does what it says."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from pfanet_cli.cli import main
from pfanet_cli.data.augment import crop_and_flip_unit_range, to_unit_range
from pfanet_cli.data.prepared import open_prepared
from pfanet_cli.engine.checkpoint import load_checkpoint
from pfanet_cli.engine.train_joint import JointTrainer
from pfanet_cli.engine.trainer import run_stage
from pfanet_cli.engine.validation import evaluation_mode
from pfanet_cli.modeling.gan import generator_test_norm
from tests.engine.test_joint_iteration import generator_gradients, joint_trainer, record_calls
from tests.helpers import TINY, error_line, tiny, weights


def prepared_images(prepared: Path) -> torch.Tensor:
    """Every training image as prepared, in [-1, 1]."""
    train = open_prepared(prepared).split("train")
    return to_unit_range(torch.from_numpy(np.array(train.images)).permute(0, 3, 1, 2))


def is_prepared_image(image: torch.Tensor, originals: torch.Tensor) -> bool:
    return any(torch.equal(image, original) for original in originals)


def first_batch(prepared: Path, tmp_path: Path, *overrides: str):
    """The first batch F's source of a trainer with these overrides hands out (the same seeds as any other)."""
    return joint_trainer(prepared, tmp_path, *overrides).batches.next()


def test_the_feature_warm_up_on_ir_only_runs_no_generator(prepared, tmp_path):
    """``joint.warmup_images: ir_only`` (AlignGAN's core/warmup.py): F sees the real IR of its batch alone."""
    default = joint_trainer(prepared, tmp_path / "a")
    generator_calls = record_calls(default.nets["generator_rgb2ir"])
    extractor_calls = record_calls(default.nets["extractor"])
    default.step("warmup", 1)
    assert len(generator_calls) == 1 and len(extractor_calls[0][0]) == 2 * 2 * 2  # fake + real IR of 2 x 2

    trainer = joint_trainer(prepared, tmp_path / "b", "joint.warmup_images=ir_only")
    generator_calls = record_calls(trainer.nets["generator_rgb2ir"])
    extractor_calls = record_calls(trainer.nets["extractor"])
    expected_ir = first_batch(prepared, tmp_path / "c", "joint.warmup_images=ir_only").ir
    losses = trainer.step("warmup", 1)
    assert generator_calls == [] and len(extractor_calls) == 1
    torch.testing.assert_close(extractor_calls[0][0], expected_ir)
    assert set(losses) == {"f_ce", "f_tri"} and trainer.last_images == []


def test_the_generator_warm_up_trains_g_through_the_warmed_f_against_its_own_patchgans(prepared, tmp_path):
    """``joint.generator_warmup_iterations`` (AlignGAN's pixel warm-up): a phase between the two others; G and
    the two warm-up PatchGANs learn, F and the joint phase's discriminators do not, and F's CE and triplet
    reach G (its gradient changes with lambda3, lambda4)."""
    trainer = joint_trainer(prepared, tmp_path / "a", "joint.generator_warmup_iterations=2")
    assert [phase.name for phase in trainer.phases()] == ["warmup", "generator_warmup", "joint"]
    before = {key: copy.deepcopy(net.state_dict()) for key, net in trainer.nets.items()}
    losses = trainer.step("generator_warmup", 1)
    assert {"g_adv", "g_cycle", "g_ce", "g_tri", "d_ir", "d_rgb"} == set(losses)

    def changed(key: str, parameters_only: bool = True) -> bool:
        names = {n for n, _ in trainer.nets[key].named_parameters()} if parameters_only else before[key]
        state = trainer.nets[key].state_dict()
        return any(not torch.equal(before[key][n], state[n]) for n in names)

    assert all(changed(k) for k in ("generator_rgb2ir", "generator_ir2rgb", "disc_rgb_warmup", "disc_ir_warmup"))
    assert not any(changed(k) for k in ("extractor", "disc_rgb", "disc_ir"))
    assert changed("extractor", parameters_only=False)  # F ran in train mode: its BN statistics moved

    guided = _warmup_generator_gradients(prepared, tmp_path / "b")
    unguided = _warmup_generator_gradients(prepared, tmp_path / "c", "joint.loss.cls_gan=0", "joint.loss.tri_gan=0")
    assert any(not torch.allclose(a, b) for a, b in zip(guided, unguided))


def _warmup_generator_gradients(prepared: Path, tmp_path: Path, *overrides: str) -> list[torch.Tensor]:
    torch.manual_seed(0)
    trainer = joint_trainer(prepared, tmp_path, "joint.generator_warmup_iterations=1", *overrides)
    captured = []
    original = trainer.opts["generators"].step

    def step(*args, **kwargs):
        captured.extend(p.grad.clone() for group in trainer.opts["generators"].param_groups for p in group["params"])
        return original(*args, **kwargs)

    trainer.opts["generators"].step = step
    trainer.step("generator_warmup", 1)
    return captured


def test_a_run_with_the_generator_warm_up_resumes_exactly_and_refuses_another_schedule(prepared, tmp_path, capsys):
    recipe = tiny(prepared, "train.deterministic=true", "joint.generator_warmup_iterations=2",
                  "joint.warmup_images=ir_only")
    straight = run_stage(JointTrainer, recipe, [], tmp_path / "straight", None, show_progress=False, init_gan="none")
    run_stage(JointTrainer, recipe, [], tmp_path / "run", None, show_progress=False, init_gan="none")
    payload = torch.load(tmp_path / "run/checkpoints/iter-000004.pt", weights_only=True)
    assert (payload["phase"], payload["iteration"]) == ("generator_warmup", 1)
    assert {"disc_rgb_warmup", "disc_ir_warmup"} <= set(payload["networks"])
    torch.save(payload, tmp_path / "run/checkpoints/last.pt")
    resumed = run_stage(JointTrainer, recipe, [], tmp_path / "run", "auto", show_progress=False)
    expected, got = weights(straight.checkpoint), weights(resumed.checkpoint)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)

    torch.save(payload, tmp_path / "run/checkpoints/last.pt")
    capsys.readouterr()
    args = ["train-joint", str(TINY), f"data.root={prepared}", "train.deterministic=true",
            "joint.warmup_images=ir_only", "--out", str(tmp_path / "run"), "--resume", "auto"]
    assert main(args) == 4
    assert "stopped in phase 'generator_warmup' (number 2); this recipe's train-joint phases are warmup, joint" \
        in error_line(capsys)
    assert load_checkpoint(tmp_path / "run/checkpoints/last.pt")["phase"] == "generator_warmup"


def test_per_modality_f_forwards_in_the_f_step(prepared, tmp_path):
    """``joint.f_step_bn: per_modality`` (AlignGAN's core/train.py lines 137-138): fake and real IR go through F
    in two forwards, so each is normalised by its own batch statistics."""
    trainer = joint_trainer(prepared, tmp_path / "a", "joint.f_step_bn=per_modality")
    calls = record_calls(trainer.nets["extractor"])
    batch = first_batch(prepared, tmp_path / "b", "joint.f_step_bn=per_modality")
    trainer.step("warmup", 1)
    fake, real = calls
    assert len(fake[0]) == len(real[0]) == len(batch.ir)
    torch.testing.assert_close(real[0], batch.ir)


def test_g_can_see_d_i_with_the_detached_real_feature_map(prepared, tmp_path):
    """``joint.gen_adv_feature: real_detached`` (AlignGAN's core/train.py line 53): G's adversarial term is
    D_I(x'_ir, f(x_ir).detach()), so with lambda3 = lambda4 = 0 no gradient of the G step reaches F."""
    for choice, reaches_f in (("fake", True), ("real_detached", False)):
        trainer = joint_trainer(prepared, tmp_path / choice, f"joint.gen_adv_feature={choice}", "joint.loss.cls_gan=0",
                                "joint.loss.tri_gan=0")
        calls = record_calls(trainer.nets["disc_ir"])
        batch = trainer.batch_sources["gan"].next()
        fake_ir = trainer.nets["generator_rgb2ir"](batch.rgb)
        _, _, real_map, fake_map = trainer.generator_step(batch, fake_ir)
        torch.testing.assert_close(calls[0][1], fake_map if choice == "fake" else real_map)
        grads = [p.grad for p in trainer.nets["extractor"].parameters() if p.grad is not None]
        assert (sum(float(g.abs().sum()) for g in grads) > 0) == reaches_f


def test_aligngan_loss_scaling_averages_g_pairs_and_sums_its_triplet_terms(prepared, tmp_path):
    """``joint.loss_scaling: aligngan``: G's pixel terms are pair means (half the eqs. 6/7 sums), G's two triplet
    terms are summed (twice eq. 14's half), and the F step's CE is the sum of the two modalities' means (twice
    eq. 15's mean over the union of two equal halves)."""
    pixel = generator_gradients(prepared, tmp_path / "a")
    halved = generator_gradients(prepared, tmp_path / "b", "joint.loss_scaling=aligngan")
    for a, b in zip(pixel, halved):
        torch.testing.assert_close(b, 0.5 * a)
    only_triplet = ("joint.loss.gen_adv=0", "joint.loss.tri_gan=0.1")
    triplet = generator_gradients(prepared, tmp_path / "c", *only_triplet)
    doubled = generator_gradients(prepared, tmp_path / "d", *only_triplet, "joint.loss_scaling=aligngan")
    assert sum(float(g.abs().sum()) for g in triplet) > 0
    for a, b in zip(triplet, doubled):
        torch.testing.assert_close(b, 2 * a)
    ce = {}
    for scaling in ("pfanet", "aligngan"):
        torch.manual_seed(0)
        ce[scaling] = joint_trainer(prepared, tmp_path / scaling, f"joint.loss_scaling={scaling}").step("warmup", 1)
    torch.testing.assert_close(ce["aligngan"]["f_ce"], 2 * ce["pfanet"]["f_ce"])
    torch.testing.assert_close(ce["aligngan"]["f_tri"], ce["pfanet"]["f_tri"])


def test_the_f_step_can_translate_before_the_pad_and_crop(prepared, tmp_path):
    """``joint.f_step_translate: before_pad``: G_I sees F's RGB images as prepared (no black borders), and F gets
    the translations padded, cropped and flipped by the draws the padded batch would have had."""
    overrides = ("data.pad=8", "joint.ids_per_batch=3")
    trainer = joint_trainer(prepared, tmp_path / "b", *overrides, "joint.f_step_translate=before_pad")
    padded = joint_trainer(prepared, tmp_path / "a", *overrides).batches.next()
    generator_calls = record_calls(trainer.nets["generator_rgb2ir"])
    extractor_calls = record_calls(trainer.nets["extractor"])
    batch = first_batch(prepared, tmp_path / "c", *overrides, "joint.f_step_translate=before_pad")
    trainer.step("warmup", 1)
    originals = prepared_images(prepared)
    assert all(is_prepared_image(image, originals) for image in generator_calls[0][0])
    torch.testing.assert_close(batch.ir, padded.ir)  # IR is augmented as before
    assert torch.equal(crop_and_flip_unit_range(batch.rgb, batch.rgb_plan, 8), padded.rgb)  # the same draws
    with torch.no_grad():
        fake = copy.deepcopy(trainer.nets["generator_rgb2ir"])(batch.rgb)
    expected = crop_and_flip_unit_range(fake, batch.rgb_plan, 8)
    torch.testing.assert_close(extractor_calls[0][0][:len(expected)], expected)
    assert (expected == -1).any()  # the pad, black in [-1, 1], is added after the translation


def test_before_pad_keeps_the_ir_augmentation_and_refuses_the_rgb_ones_it_would_reorder(prepared, tmp_path, capsys):
    """With the batch augmentations of issue 21, ``before_pad`` defers only the RGB images' pad + crop + flip:
    the IR images get their channel operation as in the padded batch, and an RGB augmentation (greyscale,
    erasing, channel exchange) with it is a usage error rather than a silent choice of order."""
    overrides = ("data.pad=8", "data.ir_adaptive_gray=true")
    deferred = first_batch(prepared, tmp_path / "b", *overrides, "joint.f_step_translate=before_pad")
    padded = first_batch(prepared, tmp_path / "a", *overrides)
    plain = first_batch(prepared, tmp_path / "c", "data.pad=8")
    assert torch.equal(deferred.ir, padded.ir) and not torch.equal(padded.ir, plain.ir)
    assert torch.equal(crop_and_flip_unit_range(deferred.rgb, deferred.rgb_plan, 8), padded.rgb)
    capsys.readouterr()  # the trainers' --init-gan none warnings
    for key in ("grayscale", "erasing", "channel_exchange"):
        assert main(["train-joint", str(TINY), f"data.root={prepared}", f"data.{key}=0.5",
                     "joint.f_step_translate=before_pad", "--dry-run"]) == 2
        assert f"defers only the RGB images' pad, crop and flip until after G_I, not data.{key}" in error_line(capsys)


def test_the_validation_translates_with_the_recipes_generator_test_norm(prepared, tmp_path):
    """``model.generator_test_norm`` is built into train-joint's G_I, which the validation runs in eval mode (as
    ``extract`` does from the checkpoint): with ``instance`` its fakes are the train-mode ones."""
    trainer = joint_trainer(prepared, tmp_path, "model.generator_test_norm=instance")
    generator = trainer.nets["generator_rgb2ir"]
    assert generator_test_norm(generator) == "instance"
    images = trainer.batches.next().rgb
    with torch.no_grad():
        trained = generator(images)
        with evaluation_mode(generator):
            validated = generator(images)
    torch.testing.assert_close(validated, trained)
