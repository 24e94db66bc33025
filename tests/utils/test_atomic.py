"""Safe writes on a real full disk (a size-limited tmpfs): the previous file survives, the error names the
file and the space, the next write after space is freed succeeds; temporaries of killed writers are swept,
those of live ones are not; a read-only output folder is a one-line usage error."""

from __future__ import annotations

import os

import pytest

from pfanet_cli.errors import DiskFull, UsageError
from pfanet_cli.utils.atomic import append_line, check_writable_folder, remove_stale_temporaries, write_text
from tests.helpers import dead_pid


def test_a_full_disk_keeps_the_previous_file_and_says_what_it_needs(small_disk):
    path = small_disk.root / "results.json"
    write_text(path, "good\n")
    small_disk.fill()
    with pytest.raises(DiskFull) as error:
        write_text(path, "x" * 300_000)
    message = str(error.value)
    assert f"no space left on the device writing {path}: it needs about 293.0 kB, 0 bytes free" in message
    assert "the previous results.json is unchanged; free some space and run the same command again" in message
    assert path.read_text() == "good\n"
    assert sorted(p.name for p in small_disk.root.iterdir()) == [".filler", "results.json"]
    small_disk.free()
    write_text(path, "x" * 300_000)
    assert path.stat().st_size == 300_000


def test_an_append_on_a_full_disk_leaves_no_half_line(small_disk):
    log = small_disk.root / "metrics.jsonl"
    append_line(log, '{"iteration": 1}')
    small_disk.fill()
    with pytest.raises(DiskFull, match=f"writing {log}: it needs about 97.7 kB"):
        append_line(log, "y" * 100_000)
    assert log.read_text() == '{"iteration": 1}\n'
    small_disk.free()
    append_line(log, '{"iteration": 2}')
    assert log.read_text().splitlines() == ['{"iteration": 1}', '{"iteration": 2}']


def test_temporaries_of_dead_writers_are_swept_and_those_of_live_ones_kept(tmp_path):
    stale = tmp_path / f".last.pt.{dead_pid()}.k3j_x9a2.tmp"
    live = tmp_path / f".last.pt.{os.getpid()}.q7w_e1r2.tmp"
    other = tmp_path / f".iter-000002.pt.{dead_pid()}.abcdefgh.tmp"
    for path in (stale, live, other):
        path.write_bytes(b"half")
    write_text(tmp_path / "last.pt", "new")
    assert not stale.exists() and live.exists() and other.exists()  # only the written file's own temporaries
    assert remove_stale_temporaries(tmp_path) == [other]
    assert live.exists()


def test_a_read_only_folder_is_a_usage_error(read_only_folder):
    with pytest.raises(UsageError, match=f"cannot write into the output folder {read_only_folder} "
                                         r"\(Read-only file system\); choose a writable folder"):
        check_writable_folder(read_only_folder)
