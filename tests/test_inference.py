"""translate and extract on a tiny trained checkpoint, their file contracts and their bad input;
checkpoint failure modes (truncated, other stage, other version)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_sysu_tree, write_image
from pfanet_cli.cli import main
from pfanet_cli.extract import parse_identity
from pfanet_cli.prepare import prepare_sysu
from pfanet_cli.recipes import load_recipe
from pfanet_cli.train_gan import GanTrainer
from pfanet_cli.train_joint import JointTrainer
from pfanet_cli.training import run_stage

TINY = Path(__file__).resolve().parents[1] / "recipes" / "tiny_cpu.yaml"


@pytest.fixture(scope="module")
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


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    return err


def test_translate_keeps_tree_names_and_sizes(trained, tmp_path, capsys):
    source = tmp_path / "rgb"
    rng = np.random.default_rng(0)
    write_image(source / "a/x.jpg", rng, (100, 50))
    write_image(source / "a/b/y.png", rng, (64, 32))
    write_image(source / "z.bmp", rng, (30, 70), mode="L")
    code = main(["translate", str(source), str(tmp_path / "out"), "--checkpoint", str(trained["gan"])])
    assert code == 0, capsys.readouterr().err
    for rel, size in (("a/x.jpg", (50, 100)), ("a/b/y.png", (32, 64)), ("z.bmp", (70, 30))):
        with Image.open(tmp_path / "out" / rel) as image:
            assert image.size == size and image.mode == "RGB"
    manifest = json.loads((tmp_path / "out/translate_manifest.json").read_text())
    assert [r["source"] for r in manifest["images"]] == ["a/b/y.png", "a/x.jpg", "z.bmp"]
    assert manifest["stage"] == "train-gan" and manifest["model_size"] == [64, 32]

    assert main(["translate", str(source), str(tmp_path / "fixed"), "--checkpoint", str(trained["joint"]),
                 "--model-size"]) == 0
    with Image.open(tmp_path / "fixed/a/x.jpg") as image:
        assert image.size == (32, 64)


def test_translate_is_deterministic_per_image_and_uses_the_newest_checkpoint(trained, tmp_path):
    from pfanet_cli.translate import translate_folder

    source = tmp_path / "rgb"
    write_image(source / "one.png", np.random.default_rng(1), (64, 32))
    write_image(source / "two.png", np.random.default_rng(2), (64, 32))
    first = translate_folder(source, tmp_path / "out1", runs_root=trained["runs"], batch_size=2)
    assert first.checkpoint == trained["joint"]  # newest of train-gan / train-joint
    (source / "two.png").unlink()
    translate_folder(source, tmp_path / "out2", runs_root=trained["runs"], batch_size=1)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out1/one.png")),
                                  np.asarray(Image.open(tmp_path / "out2/one.png")))


def test_translate_bad_input(trained, tmp_path, capsys):
    ckpt = ["--checkpoint", str(trained["gan"])]
    (tmp_path / "empty").mkdir()
    assert main(["translate", str(tmp_path / "empty"), str(tmp_path / "o1"), *ckpt]) == 3
    assert "holds no files" in error_line(capsys)

    (tmp_path / "texts").mkdir()
    (tmp_path / "texts/readme.txt").write_text("not an image")
    assert main(["translate", str(tmp_path / "texts"), str(tmp_path / "o2"), *ckpt]) == 3
    assert "no image files (only other files)" in error_line(capsys)

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken/a.jpg").write_bytes(b"garbage")
    assert main(["translate", str(tmp_path / "broken"), str(tmp_path / "o3"), *ckpt]) == 3
    assert "none of the 1 image files" in error_line(capsys)

    source = tmp_path / "rgb"
    write_image(source / "sub/a.jpg", np.random.default_rng(0), (64, 32))
    assert main(["translate", str(source), str(source / "inside"), *ckpt]) == 2
    assert "inside the input folder" in error_line(capsys)

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (tmp_path / "o4").mkdir()
    (tmp_path / "o4/sub").symlink_to(outside)
    assert main(["translate", str(source), str(tmp_path / "o4"), *ckpt]) == 3
    assert "would be written outside" in error_line(capsys)
    assert not any(outside.iterdir())

    assert main(["translate", str(source), str(tmp_path / "o5"), *ckpt]) == 0
    capsys.readouterr()
    assert main(["translate", str(source), str(tmp_path / "o5"), *ckpt]) == 3
    assert "already exists; pass --overwrite" in error_line(capsys)
    assert main(["translate", str(source), str(tmp_path / "o5"), *ckpt, "--overwrite"]) == 0


def test_extract_computes_the_spec_feature(trained):
    from pfanet_cli.checkpoint import restore_networks
    from pfanet_cli.extract import extract_split
    from pfanet_cli.prepared import open_prepared

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


def test_extract_image_folder_reads_identities_from_paths(trained, tmp_path):
    from pfanet_cli.extract import extract_folder

    folder = tmp_path / "imgs"
    shutil.copytree(trained["raw"] / "cam1/0005", folder / "cam1/0005")
    shutil.copytree(trained["raw"] / "cam3/0006", folder / "cam3/0006")
    result = extract_folder(trained["joint"], folder)
    assert list(result.pids) == [5, 5, 6, 6] and list(result.camids) == [1, 1, 3, 3]
    assert result.dataset == "sysu" and result.features.shape == (4, 512)


def test_parse_identity():
    assert parse_identity("cam3/0006/0001.jpg") == (6, 3, "ir", "sysu")
    assert parse_identity("x/cam5/0012/0003.jpg") == (12, 5, "rgb", "sysu")
    assert parse_identity("Thermal/7/a_t_1.bmp") == (7, 2, "ir", "regdb")
    assert parse_identity("Visible/7/a_v_1.bmp") == (7, 1, "rgb", "regdb")
    assert parse_identity("people/a.jpg") == (-1, -1, None, None)


def test_extract_needs_a_joint_checkpoint(trained, capsys):
    code = main(["extract", "--checkpoint", str(trained["gan"]), "--data", str(trained["prep"]), "--out", "x.npz"])
    assert code == 4
    assert "has no extractor, which extract needs" in error_line(capsys)


def test_truncated_and_foreign_checkpoints_exit_4(trained, tmp_path, capsys):
    data = trained["joint"].read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    source = tmp_path / "rgb"
    write_image(source / "a.jpg", np.random.default_rng(0), (64, 32))
    assert main(["translate", str(source), str(tmp_path / "o"), "--checkpoint", str(tmp_path / "cut.pt")]) == 4
    assert "is truncated or corrupt" in error_line(capsys)

    payload = torch.load(trained["gan"], weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    assert main(["translate", str(source), str(tmp_path / "o"), "--checkpoint", str(tmp_path / "future.pt")]) == 4
    assert "has checkpoint format version 99" in error_line(capsys)

    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    assert main(["translate", str(source), str(tmp_path / "o"), "--checkpoint", str(tmp_path / "other.pt")]) == 4
    assert "is not a pfanet checkpoint" in error_line(capsys)

    assert main(["translate", str(source), str(tmp_path / "o"), "--checkpoint", str(tmp_path / "none.pt")]) == 4
    assert "checkpoint not found" in error_line(capsys)

    assert main(["train-joint", str(TINY), f"data.root={trained['prep']}", "--init-gan", str(trained["gan"]),
                 "model.generator_channels=4", "--out", str(tmp_path / "r")]) == 4
    assert "--init-gan" in error_line(capsys)


def test_no_checkpoint_anywhere(tmp_path, capsys):
    source = tmp_path / "rgb"
    write_image(source / "a.jpg", np.random.default_rng(0), (64, 32))
    assert main(["translate", str(source), str(tmp_path / "o"), "--runs-root", str(tmp_path / "runs")]) == 4
    assert "no train-gan or train-joint checkpoint found" in error_line(capsys)
