"""The checkpoint file itself: atomic writes that survive a full disk or Ctrl-C, and the checks on load."""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import warnings

import numpy as np
import pytest
import torch

from pfanet_cli.cli import main
from pfanet_cli.data.prepare import prepare_sysu
from pfanet_cli.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    architecture_differences,
    load_checkpoint,
    require_networks,
    restore_networks,
    save_checkpoint,
)
from pfanet_cli.engine.train_gan import GanTrainer
from pfanet_cli.engine.trainer import run_stage
from pfanet_cli.errors import CheckpointError, DiskFull
from pfanet_cli.translate import translate_folder
from tests.helpers import FIXTURES, TINY, error_line, make_sysu_tree, tiny, weights, write_image

LEGACY_GAN = FIXTURES / "train-gan-0.1.0.pt"
"""A train-gan checkpoint written by pfanet 0.1.0 before the package was reorganised into data/, modeling/,
engine/ and evaluation/ (tiny_cpu.yaml with 2-channel G and D, no image pool, 2 iterations)."""
LEGACY_OVERRIDES = ("model.generator_channels=2", "model.generator_res_blocks=1", "model.disc_channels=2",
                    "gan.pool_size=0", "gan.iterations=4", "train.deterministic=true")


def payload(value: float) -> dict:
    return {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "stage": "train-gan",
            "networks": {"generator_rgb2ir": {"w": torch.full((3,), value)}}}


def interrupted_save(monkeypatch, error: BaseException):
    def half_written(obj, handle):
        handle.write(b"PK\x03\x04 half of a checkpoint")
        raise error

    monkeypatch.setattr(torch, "save", half_written)


@pytest.mark.parametrize("error, raised", [(OSError(errno.ENOSPC, "No space left on device"), DiskFull),
                                           (KeyboardInterrupt(), KeyboardInterrupt)], ids=["disk-full", "ctrl-c"])
def test_the_last_good_checkpoint_survives_a_failed_write(tmp_path, monkeypatch, error, raised):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, payload(1.0))
    with monkeypatch.context() as patch:
        interrupted_save(patch, error)
        with pytest.raises(raised):
            save_checkpoint(path, payload(2.0))
    assert torch.equal(load_checkpoint(path)["networks"]["generator_rgb2ir"]["w"], torch.ones(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temporary file left behind


def test_checkpoints_load_with_weights_only_and_get_ordinary_permissions(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, payload(3.0))
    assert torch.load(path, weights_only=True)["stage"] == "train-gan"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="is truncated or corrupt"):
        load_checkpoint(tmp_path / "junk.pt")
    old = payload(1.0)
    old["format_version"] = 0
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="format version 0; this pfanet .* reads version 1"):
        load_checkpoint(tmp_path / "old.pt")


def test_missing_networks_and_architecture_differences_are_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"\(stage train-gan\) has no extractor, which extract needs"):
        require_networks(payload(1.0), tmp_path / "c.pt", ["generator_rgb2ir", "extractor"], "extract")
    assert architecture_differences({"backbone": "resnet50", "bng": True}, {"backbone": "resnet18", "bng": True}) \
        == ["model.backbone: 'resnet50' in the checkpoint, 'resnet18' requested"]


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


def test_a_checkpoint_written_before_the_reorganisation_loads_translates_and_resumes(tmp_path):
    payload = load_checkpoint(LEGACY_GAN)
    assert (payload["stage"], payload["toolkit_version"], payload["iteration"]) == ("train-gan", "0.1.0", 2)
    networks, _ = restore_networks(LEGACY_GAN, ["generator_rgb2ir"], "test")
    assert networks["generator_rgb2ir"].base_channels == 2

    source = tmp_path / "rgb"
    write_image(source / "a.jpg", np.random.default_rng(0), (64, 32))
    assert translate_folder(source, tmp_path / "fake", LEGACY_GAN).written == 1

    layout = {c: {pid: 2 for pid in range(1, 7)} for c in range(1, 7)}
    raw = make_sysu_tree(tmp_path / "raw", layout, {"train": [1, 2, 3], "val": [4], "test": [5, 6]},
                         sizes=((64, 32),))
    prepare_sysu(raw, tmp_path / "prep", height=64, width=32, workers=1)
    run = tmp_path / "run/checkpoints"
    run.mkdir(parents=True)
    shutil.copyfile(LEGACY_GAN, run / "last.pt")
    resumed = run_stage(GanTrainer, tiny(tmp_path / "prep", *LEGACY_OVERRIDES), [], tmp_path / "run", "auto",
                        show_progress=False)
    assert load_checkpoint(resumed.checkpoint)["iteration"] == 4
    assert weights(resumed.checkpoint).keys() == weights(LEGACY_GAN).keys()


class RunsCode:
    """An object whose unpickling runs ``os.system``: what a hostile checkpoint would hold."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("layout", ["torch-zip", "bare-pickle"])
def test_a_checkpoint_whose_unpickling_would_run_code_runs_nothing(tmp_path, capfd, layout):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    content = {"format": CHECKPOINT_FORMAT, "networks": RunsCode(marker)}
    if layout == "torch-zip":
        torch.save(content, evil)
    else:
        evil.write_bytes(pickle.dumps(content, protocol=4))  # torch warns about protocol 4: it must not leak
    source = tmp_path / "rgb"
    write_image(source / "a.jpg", np.random.default_rng(0), (64, 32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["translate", str(source), str(tmp_path / "o"), "--checkpoint", str(evil)]) == 4
    assert [str(w.message) for w in caught] == []
    err = capfd.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and "Warning" not in err, err
    assert f"checkpoint {evil} holds Python objects that a safe load refuses" in err
    assert "nothing in it was run" in err and "weights_only" not in err
    assert not marker.exists()


def test_empty_and_garbage_checkpoints_are_named_as_such(tmp_path, capsys):
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "text.pt").write_bytes(b"hello, this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match=r"empty.pt is empty \(0 bytes\)"):
        load_checkpoint(tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match=r"text.pt is truncated or corrupt .*not a file that torch.save wrote"):
        load_checkpoint(tmp_path / "text.pt")


def test_a_training_checkpoint_on_a_full_disk_keeps_the_last_good_one_and_resumes_after(small_disk, tmp_path,
                                                                                       capsys):
    layout = {c: {pid: 2 for pid in range(1, 6)} for c in range(1, 7)}
    raw = make_sysu_tree(tmp_path / "raw", layout, {"train": [1, 2, 3], "val": [4], "test": [5]}, sizes=((64, 32),))
    prepare_sysu(raw, tmp_path / "prep", height=64, width=32, workers=1)
    run = small_disk.root / "run"
    command = ["train-gan", str(TINY), f"data.root={tmp_path / 'prep'}", "train.sample_every=100",
               "train.checkpoint_every=1", "--out", str(run)]
    assert main([*command, "gan.iterations=2"]) == 0
    before = (run / "checkpoints/last.pt").read_bytes()
    small_disk.fill(leave=64 << 10)  # room for the run's text files, not for a checkpoint
    assert main([*command, "gan.iterations=4", "--resume", "auto"]) == 1
    message = error_line(capsys)
    assert f"no space left on the device writing {run / 'checkpoints/iter-000003.pt'}: it needs about" in message
    assert "free; free some space and run the same command again" in message
    assert (run / "checkpoints/last.pt").read_bytes() == before
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    small_disk.free()
    assert main([*command, "gan.iterations=4", "--resume", "auto"]) == 0
    assert load_checkpoint(run / "checkpoints/last.pt")["iteration"] == 4
