"""translate on a tiny trained checkpoint: tree, names and sizes kept, determinism per image, the newest
checkpoint by default, and its bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from pfanet_cli.cli import main
from pfanet_cli.translate import translate_folder
from tests.helpers import error_line, write_image


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


def test_no_checkpoint_anywhere(tmp_path, capsys):
    source = tmp_path / "rgb"
    write_image(source / "a.jpg", np.random.default_rng(0), (64, 32))
    assert main(["translate", str(source), str(tmp_path / "o"), "--runs-root", str(tmp_path / "runs")]) == 4
    assert "no train-gan or train-joint checkpoint found" in error_line(capsys)


def bomb(path: Path, side: int = 8000) -> Path:
    """A small PNG that declares side x side pixels (a decompression bomb)."""
    Image.new("1", (side, side)).save(path)
    return path


def test_a_decompression_bomb_and_an_empty_file_are_skipped_and_named(trained, tmp_path, capsys):
    source = tmp_path / "rgb"
    write_image(source / "good.jpg", np.random.default_rng(0), (64, 32))
    assert bomb(source / "bomb.png").stat().st_size < 100_000
    bomb(source / "huge.png", 20_000)  # past the limit at which PIL itself refuses
    (source / "empty.jpg").write_bytes(b"")
    assert main(["translate", str(source), str(tmp_path / "out"), "--checkpoint", str(trained["gan"])]) == 0
    assert "translated 1 image(s)" in capsys.readouterr().out
    skipped = json.loads((tmp_path / "out/translate_manifest.json").read_text())["skipped"]
    assert skipped[0].startswith("bomb.png: 8000x8000 pixels, more than the 40,000,000 an image may have")
    assert skipped[1] == "empty.jpg: empty file (0 bytes)"
    assert skipped[2].startswith("huge.png: more pixels than an image may have (a decompression bomb?)")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.jpg", "translate_manifest.json"]


def test_links_out_of_the_source_are_not_followed_unless_asked(trained, tmp_path, capsys):
    outside = tmp_path / "private"
    write_image(outside / "secret.jpg", np.random.default_rng(1), (64, 32))
    source = tmp_path / "rgb"
    write_image(source / "a.jpg", np.random.default_rng(0), (64, 32))
    (source / "inside.jpg").symlink_to(source / "a.jpg")
    (source / "secret.jpg").symlink_to(outside / "secret.jpg")
    ckpt = ["--checkpoint", str(trained["gan"])]
    assert main(["translate", str(source), str(tmp_path / "out"), *ckpt]) == 0
    assert f"skipped 1 link(s) to files outside {source} (--follow-links reads them)" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.jpg", "inside.jpg", "translate_manifest.json"]
    manifest = json.loads((tmp_path / "out/translate_manifest.json").read_text())
    assert manifest["links_not_followed"] == ["secret.jpg"]
    assert main(["translate", str(source), str(tmp_path / "all"), *ckpt, "--follow-links"]) == 0
    assert (tmp_path / "all/secret.jpg").is_file()
    (source / "a.jpg").unlink()
    (source / "inside.jpg").unlink()
    assert main(["translate", str(source), str(tmp_path / "none"), *ckpt]) == 3
    assert "every image under" in error_line(capsys) and not (tmp_path / "none").exists()


def test_a_read_only_output_folder_is_a_usage_error(trained, tmp_path, read_only_folder, capsys):
    source = tmp_path / "rgb"
    write_image(source / "a.jpg", np.random.default_rng(0), (64, 32))
    assert main(["translate", str(source), str(read_only_folder), "--checkpoint", str(trained["gan"])]) == 2
    assert f"cannot write into the output folder {read_only_folder} (Read-only file system)" in error_line(capsys)


def test_translated_images_on_a_full_disk_keep_earlier_outputs_and_finish_after(trained, tmp_path, small_disk,
                                                                                capsys):
    source = tmp_path / "rgb"
    for n in range(6):
        write_image(source / f"{n}.png", np.random.default_rng(n), (200, 100))
    out = small_disk.root / "out"
    command = ["translate", str(source), str(out), "--checkpoint", str(trained["gan"]), "--batch-size", "2"]
    assert main(command) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    small_disk.fill()
    assert main([*command, "--overwrite"]) == 1
    message = error_line(capsys)
    assert f"no space left on the device writing {out / '0.png'}" in message
    assert "run the same command again with --overwrite (the 0 image(s) written before stay)" in message
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    small_disk.free()
    assert main([*command, "--overwrite"]) == 0


def test_translate_uses_the_checkpoints_generator_test_norm_unless_told(trained, tmp_path):
    """``--generator-norm`` (``model.generator_test_norm``): the manifest names what G_I's InstanceNorm used."""
    source = tmp_path / "rgb"
    write_image(source / "one.png", np.random.default_rng(1), (64, 32))
    translate_folder(source, tmp_path / "running", trained["joint"])
    translate_folder(source, tmp_path / "instance", trained["joint"], generator_norm="instance")
    manifests = [json.loads((tmp_path / name / "translate_manifest.json").read_text())
                 for name in ("running", "instance")]
    assert [m["generator_test_norm"] for m in manifests] == ["running", "instance"]
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "running/one.png")),
                              np.asarray(Image.open(tmp_path / "instance/one.png")))
