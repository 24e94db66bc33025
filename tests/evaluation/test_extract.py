"""extract on a tiny trained checkpoint: the SPEC §3 test feature, image folders, and the checkpoint it needs."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import torch
import torchvision

from pfanet_cli.cli import main
from pfanet_cli.data.prepared import open_prepared
from pfanet_cli.engine.checkpoint import model_config_from_checkpoint, restore_networks
from pfanet_cli.evaluation.extract import extract_folder, extract_split
from pfanet_cli.modeling.extractor import FeatureExtractor
from tests.helpers import error_line


def test_extract_computes_the_spec_feature(trained):
    result = extract_split(trained["joint"], trained["prep"], batch_size=5)
    test = open_prepared(trained["prep"]).split("test")
    assert result.features.shape == (len(test), 512) and result.features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(result.features, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(result.paths, test.paths)
    np.testing.assert_array_equal(result.camids, test.camids)

    nets, _ = restore_networks(trained["joint"], ["extractor", "generator_rgb2ir"], "test")
    rows = [int(np.flatnonzero(~test.is_ir)[0]), int(np.flatnonzero(test.is_ir)[0])]
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(test.images[rows])).permute(0, 3, 1, 2).float() / 127.5 - 1
        x[0] = nets["generator_rgb2ir"](x[:1])[0]  # RGB goes through G_I, IR as it is
        flip = torch.flip(x, dims=[3])
        v = nets["extractor"](x).pooled + nets["extractor"](flip).pooled
        expected = torch.nn.functional.normalize(v, dim=1).numpy()
    np.testing.assert_allclose(result.features[rows], expected, atol=1e-5)

    plain = extract_split(trained["joint"], trained["prep"], translate=False)
    assert not np.allclose(plain.features[rows[0]], result.features[rows[0]])
    np.testing.assert_allclose(plain.features[rows[1]], result.features[rows[1]], atol=1e-6)


def hand_made_features(extractor: torch.nn.Module, generator: torch.nn.Module, images: np.ndarray,
                       is_rgb: list[bool], normalise: bool) -> np.ndarray:
    """The SPEC test feature computed by hand with an F that does not normalise its input itself: [-1, 1]
    images, RGB ones through G_I, then ImageNet mean/std (when ``normalise``) for F, flip-summed, L2-normalised."""
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
        for row, rgb in enumerate(is_rgb):
            if rgb:
                x[row] = generator(x[row:row + 1])[0]
        if normalise:
            x = torchvision.transforms.functional.normalize((x + 1) / 2, mean, std)
        v = extractor(x).pooled + extractor(torch.flip(x, dims=[3])).pooled
        return torch.nn.functional.normalize(v, dim=1).numpy()


def test_extract_gives_the_features_of_a_hand_made_imagenet_normalisation(trained):
    """The model's F normalises its input (``model.input_norm: imagenet``, as in training); the same weights in an F
    that does not, fed by hand-normalised images, give the same features."""
    result = extract_split(trained["joint"], trained["prep"])
    nets, payload = restore_networks(trained["joint"], ["extractor", "generator_rgb2ir"], "test")
    assert payload["architecture"]["input_norm"] == "imagenet"
    config = model_config_from_checkpoint(payload, trained["joint"])
    plain = FeatureExtractor(int(payload["num_classes"]), dataclasses.replace(config, input_norm="none"))
    plain.load_state_dict(nets["extractor"].state_dict())
    plain.eval()
    test = open_prepared(trained["prep"]).split("test")
    rows = [int(np.flatnonzero(~test.is_ir)[0]), int(np.flatnonzero(test.is_ir)[0])]
    expected = hand_made_features(plain, nets["generator_rgb2ir"], test.images[rows], [True, False], normalise=True)
    np.testing.assert_allclose(result.features[rows], expected, atol=1e-5)
    unnormalised = hand_made_features(plain, nets["generator_rgb2ir"], test.images[rows], [True, False], False)
    assert not np.allclose(result.features[rows], unnormalised, atol=1e-3)


def test_a_checkpoint_from_before_input_norm_still_feeds_f_unnormalised_images(trained, tmp_path):
    """Checkpoints written before ``model.input_norm`` existed trained F on [-1, 1]: they load as ``none``."""
    payload = torch.load(trained["joint"], weights_only=True)
    del payload["architecture"]["input_norm"]
    torch.save(payload, tmp_path / "old.pt")
    nets, _ = restore_networks(tmp_path / "old.pt", ["extractor", "generator_rgb2ir"], "test")
    assert nets["extractor"].input_norm == "none"
    result = extract_split(tmp_path / "old.pt", trained["prep"])
    test = open_prepared(trained["prep"]).split("test")
    rows = [int(np.flatnonzero(~test.is_ir)[0]), int(np.flatnonzero(test.is_ir)[0])]
    expected = hand_made_features(nets["extractor"], nets["generator_rgb2ir"], test.images[rows], [True, False],
                                  normalise=False)
    np.testing.assert_allclose(result.features[rows], expected, atol=1e-5)


def test_extract_image_folder_reads_identities_from_paths(trained, tmp_path):
    folder = tmp_path / "imgs"
    shutil.copytree(trained["raw"] / "cam1/0005", folder / "cam1/0005")
    shutil.copytree(trained["raw"] / "cam3/0006", folder / "cam3/0006")
    result = extract_folder(trained["joint"], folder)
    assert list(result.pids) == [5, 5, 6, 6] and list(result.camids) == [1, 1, 3, 3]
    assert result.dataset == "sysu" and result.features.shape == (4, 512)


def test_extract_needs_a_joint_checkpoint(trained, capsys):
    code = main(["extract", "--checkpoint", str(trained["gan"]), "--data", str(trained["prep"]), "--out", "x.npz"])
    assert code == 4
    assert "has no extractor, which extract needs" in error_line(capsys)


def test_features_on_a_full_disk_keep_the_previous_file_and_finish_after(trained, small_disk, capsys):
    out = small_disk.root / "features.npz"
    command = ["extract", "--checkpoint", str(trained["joint"]), "--data", str(trained["prep"]), "--out", str(out)]
    assert main(command) == 0
    before = out.read_bytes()
    small_disk.fill()
    assert main(command) == 1
    message = error_line(capsys)
    assert f"no space left on the device writing {out}: it needs about" in message
    assert "the previous features.npz is unchanged; free some space and run the same command again" in message
    assert out.read_bytes() == before and sorted(p.name for p in small_disk.root.iterdir()) == [".filler", out.name]
    small_disk.free()
    assert main(command) == 0


def test_features_into_a_read_only_folder_are_a_usage_error(trained, read_only_folder, capsys):
    out = read_only_folder / "features.npz"
    assert main(["extract", "--checkpoint", str(trained["joint"]), "--data", str(trained["prep"]),
                 "--out", str(out)]) == 2
    assert f"cannot write {out} (Read-only file system); choose a writable location" in error_line(capsys)


def test_g_i_test_norm_comes_from_the_checkpoint_or_generator_norm_and_is_on_the_card(trained, tmp_path, capsys):
    """``model.generator_test_norm``: the checkpoint's value by default, ``--generator-norm`` overrides it without
    retraining; only the translated RGB rows change, and the protocol card's ``translation`` says which."""
    test = open_prepared(trained["prep"]).split("test")
    running = extract_split(trained["joint"], trained["prep"])
    instance = extract_split(trained["joint"], trained["prep"], generator_norm="instance")
    assert "running statistics" in running.provenance["translation"]
    assert "each image's own statistics" in instance.provenance["translation"]
    np.testing.assert_allclose(instance.features[test.is_ir], running.features[test.is_ir], atol=1e-6)
    assert not np.allclose(instance.features[~test.is_ir], running.features[~test.is_ir], atol=1e-4)

    payload = torch.load(trained["joint"], weights_only=True)
    payload["architecture"]["generator_test_norm"] = "instance"  # as train-joint writes it with the key set
    torch.save(payload, tmp_path / "instance.pt")
    stored = extract_split(tmp_path / "instance.pt", trained["prep"])
    np.testing.assert_allclose(stored.features, instance.features, atol=1e-6)
    untranslated = extract_split(tmp_path / "instance.pt", trained["prep"], translate=False)
    assert untranslated.provenance["translation"].startswith("none")

    out = tmp_path / "f.npz"
    assert main(["extract", "--checkpoint", str(trained["joint"]), "--data", str(trained["prep"]),
                 "--generator-norm", "instance", "--out", str(out), "--device", "cpu"]) == 0
    code = main(["evaluate", "--features", str(out), "--data", str(trained["prep"]), "--trials", "1",
                 "--sampler", "agw", "--json", str(tmp_path / "r.json")])
    assert code == 0, capsys.readouterr().err
    card = json.loads((tmp_path / "r.json").read_text())["card"]
    assert card["translation"] == instance.provenance["translation"]
    assert main(["extract", "--checkpoint", str(trained["joint"]), "--data", str(trained["prep"]),
                 "--generator-norm", "batch", "--out", str(out)]) == 2
    assert "must be one of running, instance, got 'batch'" in error_line(capsys)
