"""Run directories (SPEC §1): ``config.yaml`` (the fully resolved recipe), ``overrides.txt``,
``env.txt``, ``run.yaml`` (stage), ``metrics.jsonl``, ``checkpoints/`` and images; choosing the run
directory of a new or resumed stage, and finding the newest checkpoints of a stage under the runs folder.
A run directory is never silently overwritten: reusing one needs ``--resume``."""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import platform
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy
import torch
import torchvision
import yaml

from pfanet_cli import __version__
from pfanet_cli.config import Recipe, dump_recipe
from pfanet_cli.errors import CheckpointError, DataError, UsageError
from pfanet_cli.utils.atomic import append_line, process_alive, remove_stale_temporaries, write_text
from pfanet_cli.utils.console import console

CHECKPOINT_DIR = "checkpoints"
LAST_NAME = "last.pt"
LOCK_NAME = ".pfanet-lock"
"""The one-writer lock of a run directory (it exists while a command writes there)."""


NON_LOSS_KEYS = frozenset({"stage", "phase", "phase_order", "iteration", "global_iteration", "lr",
                           "iterations_per_s", "images_per_s", "val", "best"})
"""Keys of a ``metrics.jsonl`` row that are bookkeeping, not losses (a validation row holds ``val``, its
metrics, and ``best``, whether it chose ``best.pt``)."""


def loss_values(row: dict[str, Any]) -> dict[str, float]:
    """The losses of one ``metrics.jsonl`` row."""
    return {key: value for key, value in row.items() if key not in NON_LOSS_KEYS}


def loss_series(rows: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Each loss of a stage's ``metrics.jsonl`` rows as (global iteration, value) points."""
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in loss_values(row).items():
            series.setdefault(key, []).append((row["global_iteration"], value))
    return series


def checkpoint_name(iteration: int) -> str:
    return f"iter-{iteration:06d}.pt"


@dataclass
class RunDir:
    path: Path

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / LAST_NAME

    @property
    def samples(self) -> Path:
        return self.path / "samples"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    def append_metrics(self, row: dict[str, Any]) -> None:
        """One row, appended whole (a full disk leaves the file as it was and raises ``DiskFull``)."""
        append_line(self.metrics_file, json.dumps(row))

    def read_metrics(self) -> list[dict[str, Any]]:
        """The rows of ``metrics.jsonl``; a last line cut short by a killed process is left out."""
        if not self.metrics_file.is_file():
            return []
        lines = self.metrics_file.read_text(encoding="utf-8", errors="replace").splitlines()
        rows = []
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line) if line.strip() else None
            except ValueError:
                if number == len(lines):
                    break
                raise DataError(f"{self.metrics_file}:{number} is not a JSON row; remove the line or the file")
            if row is not None:
                rows.append(row)
        return rows

    def remove_stale_files(self) -> None:
        """Temporary files a killed writer left behind (call with the run's lock held)."""
        for folder in (self.path, self.checkpoints, self.samples):
            remove_stale_temporaries(folder)
        (self.checkpoints / f".{LAST_NAME}.link").unlink(missing_ok=True)

    def truncate_metrics(self, iteration: int, phase_order: int) -> None:
        """Drop rows logged after the checkpoint a resumed run restarts from."""
        if not self.metrics_file.is_file():
            return
        rows = [r for r in self.read_metrics() if (r.get("phase_order", 0), r["iteration"]) <= (phase_order, iteration)]
        write_text(self.metrics_file, "".join(json.dumps(r) + "\n" for r in rows))


# ----------------------------------------------------------------------------------------------
# One writer per run directory


_held_locks: set[int] = set()


def _close_inherited_locks() -> None:
    """In a forked child (e.g. a decoding worker), drop its copies of the parent's lock descriptors, so the
    lock goes away with the parent even when a child outlives it."""
    for fd in _held_locks:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held_locks.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


@contextlib.contextmanager
def run_lock(path: Path, command: str, enabled: bool = True) -> Iterator[None]:
    """Hold the one-writer lock of the run directory ``path`` (created when missing) while the block runs.

    Another process holding it is an exit-2 error naming that process. The lock is the kernel's
    (``flock``), so it dies with its process: a lock file left by a killed process is taken over."""
    if not enabled:
        yield
        return
    path = Path(path)
    created = [folder for folder in (path, *path.parents) if not folder.exists()]
    fd = _acquire(path, command)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            (path / LOCK_NAME).unlink()
        _held_locks.discard(fd)
        os.close(fd)
        for folder in created:  # a command that wrote nothing leaves no empty run directory behind
            with contextlib.suppress(OSError):
                folder.rmdir()


def _acquire(path: Path, command: str) -> int:
    path.mkdir(parents=True, exist_ok=True)
    lock = path / LOCK_NAME
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise UsageError(f"run directory {path} is in use by {holder}; wait for it to finish or stop it "
                             "(two writers would mix their checkpoints)") from None
        except OSError:
            pass  # a file system without flock: go on unlocked rather than refuse to train
        try:
            current = os.stat(lock).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)  # the holder removed the file between our open and flock: lock the new one
    _note_stale_owner(fd, path)
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "started": _timestamp()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(owner).encode(), 0)
    _held_locks.add(fd)
    return fd


def _read_owner(fd: int) -> dict[str, Any]:
    try:
        owner = json.loads(os.pread(fd, 4096, 0).decode("utf-8", errors="replace") or "{}")
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _lock_holder(fd: int) -> str:
    owner = _read_owner(fd)
    if "pid" not in owner:
        return "another process"
    where = f" on {owner['host']}" if owner.get("host") not in (None, socket.gethostname()) else ""
    what = f"{owner.get('command', 'pfanet')}, started {owner.get('started', '?')}"
    return f"process {owner['pid']}{where} ({what})"


def _note_stale_owner(fd: int, path: Path) -> None:
    owner = _read_owner(fd)
    pid = owner.get("pid")
    if isinstance(pid, int) and pid != os.getpid() and owner.get("host") == socket.gethostname() \
            and not process_alive(pid):
        console.print(f"[dim]{path}: taking over the lock left by process {pid}, which no longer runs[/]",
                      soft_wrap=True)


def _timestamp() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def default_run_path(recipe: Recipe, stage: str) -> Path:
    return Path(recipe.train.runs_root) / recipe.name / f"{stage}-{_timestamp()}"


def _newest_run(recipe: Recipe, stage: str) -> Path | None:
    parent = Path(recipe.train.runs_root) / recipe.name
    runs = sorted((p for p in parent.glob(f"{stage}-*") if (p / CHECKPOINT_DIR / LAST_NAME).is_file()),
                  key=lambda p: p.name)
    return runs[-1] if runs else None


def resolve_run(recipe: Recipe, stage: str, out: Path | None, resume: str | None) -> tuple[RunDir, Path | None]:
    """Pick the run directory and the checkpoint to resume from (None for a fresh run).

    ``resume='auto'`` continues ``out`` (or the newest run of this recipe and stage) from its
    ``last.pt``, and starts fresh when there is none; ``resume=PATH`` continues from that file.
    """
    if resume not in (None, "auto"):
        checkpoint = Path(resume)
        if not checkpoint.is_file():
            raise CheckpointError(f"--resume: checkpoint not found: {checkpoint}")
        path = out or (checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINT_DIR else None)
        if path is None:
            raise UsageError(f"--resume {checkpoint}: pass --out for the run directory to continue")
        return RunDir(Path(path)), checkpoint
    if resume == "auto":
        path = out or _newest_run(recipe, stage) or default_run_path(recipe, stage)
        run = RunDir(Path(path))
        return run, run.last_checkpoint if run.last_checkpoint.is_file() else None
    path = Path(out) if out else default_run_path(recipe, stage)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UsageError(
            f"run directory {path} already exists and is not empty; pass --resume auto to continue it "
            "or choose another --out"
        )
    return RunDir(path), None


def initialise_run(run: RunDir, recipe: Recipe, stage: str, overrides: list[str], device: str,
                   extra: dict[str, Any] | None = None) -> None:
    """Write the run's description files (rewritten on resume: they describe the latest start)."""
    run.path.mkdir(parents=True, exist_ok=True)
    run.checkpoints.mkdir(exist_ok=True)
    write_text(run.path / "config.yaml", dump_recipe(recipe))
    write_text(run.path / "overrides.txt", "".join(o + "\n" for o in overrides))
    write_text(run.path / "env.txt", environment_report(device))
    info = {"stage": stage, "recipe": recipe.name, "created": _timestamp(), **(extra or {})}
    write_text(run.path / "run.yaml", yaml.safe_dump(info, sort_keys=False))


def environment_report(device: str) -> str:
    """``env.txt``: versions, device, threads and the git commit."""
    lines = {
        "pfanet": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "device": device,
        "cuda": torch.version.cuda or "none",
        "cpu_threads": torch.get_num_threads(),
        "git_sha": git_sha() or "unknown",
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        lines["gpu"] = torch.cuda.get_device_name(0)
    return "".join(f"{k}: {v}\n" for k, v in lines.items())


def git_sha() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def find_checkpoints(root: Path, stages: Iterable[str]) -> list[Path]:
    """``last.pt`` files of run directories under ``root`` whose stage is in ``stages``, newest first.

    The stage of a run directory is read from its ``run.yaml`` (written by the run-directory code),
    so finding the newest checkpoint never loads checkpoints.
    """
    stages = set(stages)
    found = []
    for info in Path(root).glob("**/run.yaml"):
        last = info.parent / CHECKPOINT_DIR / LAST_NAME
        if not last.is_file():
            continue
        try:
            stage = (yaml.safe_load(info.read_text(encoding="utf-8")) or {}).get("stage")
        except (OSError, yaml.YAMLError):
            continue
        if stage in stages:
            found.append(last)
    return sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def newest_checkpoint(root: Path, stages: Iterable[str], purpose: str) -> Path:
    stages = tuple(stages)
    found = find_checkpoints(root, stages)
    if not found:
        raise CheckpointError(
            f"no {' or '.join(stages)} checkpoint found under {root}/ for {purpose}; "
            "train first or pass --checkpoint"
        )
    return found[0]


def read_run_info(run_path: Path) -> dict[str, Any]:
    """The run's ``run.yaml`` (stage, recipe name, how it started), or {} when unreadable."""
    try:
        info = yaml.safe_load((Path(run_path) / "run.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return info if isinstance(info, dict) else {}
