"""model.pixel_alignment=grey, the ablation without the GAN: G_I is a fixed luma conversion, train-joint trains F
alone (no train-gan run, no G_R, no discriminators), and extract and translate use the same conversion."""

from __future__ import annotations

import json

import numpy as np
import torch
import yaml
from PIL import Image

from pfanet_cli.cli import main
from pfanet_cli.evaluation.extract import extract_split
from pfanet_cli.inference.feature_model import load_feature_networks
from pfanet_cli.modeling.build import EXTRACTOR, GENERATOR_RGB2IR, parameter_counts
from pfanet_cli.modeling.gan import GreyGenerator
from pfanet_cli.translate import translate_folder
from tests.helpers import TINY, error_line, small_config

GREY = "model.pixel_alignment=grey"


def test_grey_generator_is_luma_in_three_channels_and_has_nothing_to_train():
    x = torch.rand(2, 3, 8, 4) * 2 - 1
    y = GreyGenerator()(x)
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    assert y.shape == x.shape and torch.allclose(y, luma[:, None].expand_as(x), atol=1e-6)
    assert list(GreyGenerator().parameters()) == [] and GreyGenerator().state_dict() == {}
    assert y.min() >= -1 - 1e-6 and y.max() <= 1 + 1e-6


def test_grey_train_joint_trains_f_alone_and_extract_uses_luma(prepared, tmp_path, capsys):
    (tmp_path / "rgb").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 32, 3), dtype=np.uint8)).save(tmp_path / "rgb/a.png")
    out = tmp_path / "grey"
    assert main(["train-joint", str(TINY), f"data.root={prepared}", f"train.runs_root={tmp_path / 'runs'}", GREY,
                 "joint.warmup_iterations=2", "joint.iterations=2", "--out", str(out)]) == 0
    payload = torch.load(out / "checkpoints/last.pt", weights_only=True)
    assert sorted(payload["networks"]) == [EXTRACTOR, GENERATOR_RGB2IR] and payload["networks"][GENERATOR_RGB2IR] == {}
    assert sorted(payload["optimizers"]) == ["extractor"] and payload["architecture"]["pixel_alignment"] == "grey"
    assert yaml.safe_load((out / "run.yaml").read_text())["init_gan"].startswith("none: model.pixel_alignment")
    rows = [line for line in (out / "metrics.jsonl").read_text().splitlines() if '"joint"' in line]
    assert rows and all("g_adv" not in row and "d_ir" not in row for row in rows)  # no G or D step
    _, generator, _ = load_feature_networks(out / "checkpoints/last.pt", translate=True)
    assert isinstance(generator, GreyGenerator)
    features = extract_split(out / "checkpoints/last.pt", prepared, device="cpu")
    assert np.isfinite(features.features).all() and len(features) > 0
    assert features.provenance["translation"].startswith("RGB -> grey by a fixed luma conversion")
    assert features.provenance["flip"].endswith("; RGB images converted to grey first")
    assert "G_I" not in features.provenance["flip"]
    summary = translate_folder(tmp_path / "rgb", tmp_path / "fake", out / "checkpoints/last.pt")
    manifest = json.loads(summary.manifest.read_text())
    assert manifest["generator_test_norm"] is None  # the luma conversion has no InstanceNorm to describe
    fake = np.asarray(Image.open(tmp_path / "fake" / "a.png")).astype(float)
    assert np.abs(fake[..., 0] - fake[..., 2]).max() <= 1  # grey: the three channels agree


def test_grey_refuses_train_gan_and_an_init_gan(prepared, tmp_path, capsys):
    args = [str(TINY), f"data.root={prepared}", f"train.runs_root={tmp_path / 'runs'}", GREY]
    assert main(["train-gan", *args, "--out", str(tmp_path / "g")]) == 2
    assert "model.pixel_alignment=grey has no generator to train" in error_line(capsys)
    assert main(["train-joint", *args, "--init-gan", str(tmp_path / "x.pt"), "--out", str(tmp_path / "j")]) == 2
    assert "has no generator to start from" in error_line(capsys)
    assert main(["train-joint", *args, "joint.generator_warmup_iterations=2", "--dry-run"]) == 2
    assert "model.pixel_alignment=grey has none" in error_line(capsys)


def test_grey_dry_run_counts_f_and_nothing_else():
    counts = parameter_counts(small_config(pixel_alignment="grey"), 10, "train-joint")
    assert set(counts) == {"G_I", "F", "total"} and counts["G_I"] == 0 and counts["total"] == counts["F"]
    assert set(parameter_counts(small_config(), 10, "train-joint")) == {"G_I", "G_R", "D_R", "D_I", "F", "total"}
