"""The run directory under faults: one writer at a time (a second command on a run in use is refused with
exit 2 naming the process; the lock of a killed process is taken over), a metrics log that a kill or a full
disk never leaves with half a row, and stale temporaries swept when a run starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pfanet_cli.cli import main
from pfanet_cli.data.prepare import prepare_sysu
from pfanet_cli.engine.rundir import LOCK_NAME, RunDir, run_lock
from pfanet_cli.errors import DataError, DiskFull, UsageError
from tests.helpers import REPO, TINY, error_line, make_sysu_tree

HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from pfanet_cli.engine.rundir import run_lock
    with run_lock(Path(sys.argv[1]), "pfanet train-gan"):
        print("locked", flush=True)
        time.sleep(600)
""")


KILLED_WITH_A_CHILD = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    from pfanet_cli.engine.rundir import run_lock
    with run_lock(Path(sys.argv[1]), "pfanet demo"):
        if os.fork() == 0:
            time.sleep(10)
            os._exit(0)
        os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    layout = {c: {pid: 2 for pid in range(1, 7)} for c in range(1, 7)}
    raw = make_sysu_tree(root / "raw", layout, {"train": [1, 2, 3], "val": [4], "test": [5, 6]}, sizes=((64, 32),))
    prepare_sysu(raw, root / "prep", height=64, width=32, workers=1)
    return root / "prep"


def hold_lock(run: Path) -> subprocess.Popen:
    """Another process that holds the lock of ``run`` until it is killed."""
    process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True,
                               cwd=REPO)
    assert process.stdout.readline().strip() == "locked"
    return process


def train_gan(prepared: Path, run: Path, *extra: str) -> list[str]:
    return ["train-gan", str(TINY), f"data.root={prepared}", "gan.iterations=2", "--out", str(run), *extra]


def test_a_second_writer_is_refused_naming_the_process_and_a_killed_ones_lock_is_taken_over(prepared, tmp_path,
                                                                                            capsys):
    run = tmp_path / "run"
    holder = hold_lock(run)
    try:
        assert main(train_gan(prepared, run, "--resume", "auto")) == 2
        message = error_line(capsys)
        assert f"run directory {run} is in use by process {holder.pid} (pfanet train-gan, started" in message
        assert "wait for it to finish or stop it" in message
        assert not (run / "checkpoints").exists()  # the refused command wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == holder.pid  # the killed process's lock file stays
    assert main(train_gan(prepared, run, "--resume", "auto")) == 0
    assert f"taking over the lock left by process {holder.pid}, which no longer runs" in capsys.readouterr().out
    assert (run / "checkpoints/last.pt").is_file() and not (run / LOCK_NAME).exists()


def test_a_second_demo_on_a_demo_folder_in_use_is_refused(tmp_path, capsys):
    out = tmp_path / "demo"
    holder = hold_lock(out)
    try:
        assert main(["demo", "--out", str(out), "--recipe", "tiny_cpu.yaml", "--ids", "12", "--device", "cpu"]) == 2
        assert f"run directory {out} is in use by process {holder.pid}" in error_line(capsys)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_excludes_another_open_in_the_same_process_and_is_released(tmp_path):
    with run_lock(tmp_path / "run", "first"):
        with pytest.raises(UsageError, match=rf"in use by process {os.getpid()} \(first"):
            with run_lock(tmp_path / "run", "second"):
                pass
    with run_lock(tmp_path / "run", "third"):
        assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["command"] == "third"
    assert not (tmp_path / "run").exists()  # created for the lock, empty again: removed


def test_a_forked_child_does_not_keep_the_lock_of_a_killed_parent(tmp_path):
    """A decoding worker forked while the lock is held outlives its killed parent: the lock goes anyway."""
    killed = subprocess.run([sys.executable, "-c", KILLED_WITH_A_CHILD, str(tmp_path / "run")], cwd=REPO,
                            stdout=subprocess.DEVNULL)
    assert killed.returncode == -signal.SIGKILL and (tmp_path / "run" / LOCK_NAME).exists()
    with run_lock(tmp_path / "run", "next"):  # while the child still sleeps
        pass


def test_metrics_log_survives_a_cut_last_row_and_refuses_a_corrupt_middle_one(tmp_path):
    run = RunDir(tmp_path)
    run.append_metrics({"iteration": 1})
    run.append_metrics({"iteration": 2})
    with open(run.metrics_file, "a") as handle:
        handle.write('{"iteration": 3, "los')  # a process killed in the middle of a write
    assert run.read_metrics() == [{"iteration": 1}, {"iteration": 2}]
    run.truncate_metrics(iteration=1, phase_order=0)
    assert run.metrics_file.read_text() == '{"iteration": 1}\n'
    run.metrics_file.write_text('{"iteration": 1}\nnot json\n{"iteration": 3}\n')
    with pytest.raises(DataError, match="metrics.jsonl:2 is not a JSON row"):
        run.read_metrics()


def test_metrics_row_on_a_full_disk_leaves_the_log_whole(small_disk):
    run = RunDir(small_disk.root)
    run.append_metrics({"iteration": 1})
    small_disk.fill()
    with pytest.raises(DiskFull, match=f"writing {run.metrics_file}: it needs about"):
        run.append_metrics({"iteration": 2, "note": "x" * 8000})
    assert run.read_metrics() == [{"iteration": 1}]
    small_disk.free()
    run.append_metrics({"iteration": 2})
    assert run.read_metrics() == [{"iteration": 1}, {"iteration": 2}]


def test_a_run_sweeps_what_a_killed_writer_left(prepared, tmp_path):
    run = tmp_path / "run"
    assert main(train_gan(prepared, run)) == 0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftovers = [run / "checkpoints" / f".last.pt.{dead.stdout.strip()}.a1b2c3d4.tmp",
                 run / "checkpoints" / ".last.pt.link", run / f".config.yaml.{dead.stdout.strip()}.zz9_x8y7.tmp"]
    for path in leftovers:
        path.write_bytes(b"half written")
    assert main(train_gan(prepared, run, "--resume", "auto")) == 0
    assert not any(path.exists() for path in leftovers)


def test_a_fresh_start_drops_the_rows_of_an_attempt_killed_before_its_first_checkpoint(prepared, tmp_path):
    run = tmp_path / "run"
    assert main(train_gan(prepared, run)) == 0
    rows = RunDir(run).read_metrics()
    for checkpoint in (run / "checkpoints").iterdir():  # as if killed after logging, before checkpointing
        checkpoint.unlink()
    assert main(train_gan(prepared, run, "--resume", "auto")) == 0
    assert [r["iteration"] for r in RunDir(run).read_metrics()] == [r["iteration"] for r in rows]
