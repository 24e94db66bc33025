"""The checkpoint file itself: atomic writes that survive a full disk or Ctrl-C, and the checks on load."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from pfanet_cli.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    architecture_differences,
    load_checkpoint,
    require_networks,
    save_checkpoint,
)
from pfanet_cli.errors import CheckpointError


def payload(value: float) -> dict:
    return {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "stage": "train-gan",
            "networks": {"generator_rgb2ir": {"w": torch.full((3,), value)}}}


def interrupted_save(monkeypatch, error: BaseException):
    def half_written(obj, handle):
        handle.write(b"PK\x03\x04 half of a checkpoint")
        raise error

    monkeypatch.setattr(torch, "save", half_written)


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()],
                         ids=["disk-full", "ctrl-c"])
def test_the_last_good_checkpoint_survives_a_failed_write(tmp_path, monkeypatch, error):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, payload(1.0))
    with monkeypatch.context() as patch:
        interrupted_save(patch, error)
        with pytest.raises(type(error)):
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
