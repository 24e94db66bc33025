"""Run directories (SPEC §1): ``config.yaml`` (the fully resolved recipe), ``overrides.txt``,
``env.txt``, ``run.yaml`` (stage), ``metrics.jsonl``, ``checkpoints/`` and images; choosing the run
directory of a new or resumed stage, and finding the newest finished checkpoint of a stage under the
runs folder. A run directory is never silently overwritten: reusing one needs ``--resume``."""

from __future__ import annotations

import datetime
import json
import pickle
import platform
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy
import torch
import torchvision
import yaml

from pfanet_cli import __version__
from pfanet_cli.config import Recipe, dump_recipe
from pfanet_cli.errors import CheckpointError, UsageError

CHECKPOINT_DIR = "checkpoints"
LAST_NAME = "last.pt"


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
        with open(self.metrics_file, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_file.is_file():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text(encoding="utf-8").splitlines() if line]

    def truncate_metrics(self, iteration: int, phase_order: int) -> None:
        """Drop rows logged after the checkpoint a resumed run restarts from."""
        rows = [r for r in self.read_metrics() if (r.get("phase_order", 0), r["iteration"]) <= (phase_order, iteration)]
        self.metrics_file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


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
    (run.path / "config.yaml").write_text(dump_recipe(recipe), encoding="utf-8")
    (run.path / "overrides.txt").write_text("".join(o + "\n" for o in overrides), encoding="utf-8")
    (run.path / "env.txt").write_text(environment_report(device), encoding="utf-8")
    info = {"stage": stage, "recipe": recipe.name, "created": _timestamp(), **(extra or {})}
    (run.path / "run.yaml").write_text(yaml.safe_dump(info, sort_keys=False), encoding="utf-8")


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


def newest_finished_gan_checkpoint(root: Path, recipe_name: str) -> Path | None:
    """``last.pt`` of the newest train-gan run of recipe ``recipe_name`` under ``root`` that trained all of its
    ``gan.iterations``, or None. The checkpoint is memory-mapped to read its iteration, its tensors are not."""
    for last in find_checkpoints(root, ("train-gan",)):
        if read_run_info(last.parent.parent).get("recipe") == recipe_name and _gan_finished(last):
            return last
    return None


def _gan_finished(checkpoint: Path) -> bool:
    try:
        payload = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
        wanted = int(payload["recipe"]["gan"]["iterations"])
        return payload["stage"] == "train-gan" and int(payload["iteration"]) >= wanted
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, KeyError,
            TypeError):
        return False
