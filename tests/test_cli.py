"""The command line as a user meets it: help texts, version, the module entry point, error policy."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pfanet_cli import __version__
from pfanet_cli.cli import main
from tests.helpers import error_line

COMMANDS = [
    ["prepare-data", "sysu"], ["prepare-data", "regdb"], ["prepare-data", "llcm"], ["prepare-data", "synthetic"],
    ["train-gan"], ["train-joint"], ["translate"], ["extract"], ["evaluate"], ["convert-features"], ["regdb-all"],
    ["demo"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_every_command_has_real_help(command, capsys):
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage: pfanet " + " ".join(command) in " ".join(out.split())
    assert "--help" in out and len(out.splitlines()) > 6


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("prepare-data", "train-gan", "train-joint", "translate", "extract", "evaluate", "convert-features",
                 "regdb-all", "demo"):
        assert name in out


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"pfanet {__version__}"


def test_module_entry_point_and_exit_codes():
    ok = subprocess.run([sys.executable, "-m", "pfanet_cli", "--version"], capture_output=True, text=True)
    assert ok.returncode == 0 and __version__ in ok.stdout
    usage = subprocess.run([sys.executable, "-m", "pfanet_cli", "evaluate", "--no-such-option"],
                           capture_output=True, text=True)
    assert usage.returncode == 2
    data = subprocess.run([sys.executable, "-m", "pfanet_cli", "prepare-data", "sysu", "/no/such/tree"],
                          capture_output=True, text=True)
    assert data.returncode == 3
    assert data.stderr.strip().count("\n") == 0 and "Traceback" not in data.stderr


def test_debug_shows_the_traceback(tmp_path, capsys):
    assert main(["--debug", "prepare-data", "sysu", str(tmp_path / "missing")]) == 3
    assert "Traceback" in capsys.readouterr().err


def test_unexpected_errors_are_one_line_with_exit_1(monkeypatch, capsys, tmp_path):
    import pfanet_cli.data.prepare  # the module whose function is patched

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(pfanet_cli.data.prepare, "prepare_sysu", broken)
    assert main(["prepare-data", "sysu", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "error: RuntimeError: disk on fire (run with --debug for the traceback)"


def test_a_full_disk_in_a_writer_without_its_own_message_is_still_one_line(tmp_path, small_disk, capsys):
    small_disk.fill()
    out = small_disk.root / "raw"
    assert main(["prepare-data", "synthetic", str(out), "--ids", "8", "--workers", "1"]) == 1
    message = error_line(capsys)
    assert message.startswith("error: no space left on the device writing ") and str(small_disk.root) in message
    assert "free some space and run the same command again" in message
    small_disk.free()
    assert main(["prepare-data", "synthetic", str(out), "--ids", "8", "--workers", "1"]) == 0
