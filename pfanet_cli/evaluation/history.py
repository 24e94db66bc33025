"""A training run's log of the evaluations of its checkpoints: ``<run>/evaluations.jsonl``.

``pfanet evaluate`` appends one line when it extracted the features itself from a checkpoint inside a run folder
(``<run>/checkpoints/*.pt`` beside ``run.yaml``): the checkpoint's SHA-256, when, and each result's SPEC §1 keys
with its protocol card. ``pfanet export`` reads the newest line whose hash is the checkpoint's, so ``model.json``
carries the checkpoint's last evaluation without ``--results`` (a resumed run's ``last.pt`` has another hash,
so an evaluation of an earlier ``last.pt`` is never attached to a later one). Lines are appended, never rewritten:
a write cut short by a full disk leaves a partial last line, which the reader skips, and every earlier line stays.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

from pfanet_cli.evaluation.protocols import EvalResult
from pfanet_cli.utils.digest import file_sha256

HISTORY_NAME = "evaluations.jsonl"
RECORDED_KEYS = ("dataset", "mode", "shot", "sampler", "trials", "metrics", "card")
"""What a line keeps of each result's evaluation JSON (not the per-trial rows or the CMC curve)."""


def history_file(checkpoint: Path) -> Path | None:
    """The log of the run ``checkpoint`` belongs to; None for a checkpoint outside a run folder."""
    folder = Path(checkpoint).resolve().parent
    if folder.name != "checkpoints" or not (folder.parent / "run.yaml").is_file():
        return None
    return folder.parent / HISTORY_NAME


def record_evaluation(checkpoint: Path, results: Sequence[EvalResult]) -> Path | None:
    """Append the evaluation of ``checkpoint`` to its run's log and return the log (None outside a run folder)."""
    log = history_file(checkpoint)
    if log is None:
        return None
    results_json = [result.to_json_dict() for result in results]
    line = {"checkpoint": Path(checkpoint).name, "sha256": file_sha256(checkpoint),
            "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "results": [{key: entry.get(key) for key in RECORDED_KEYS} for entry in results_json]}
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")
    return log


def last_evaluation(checkpoint: Path, digest: str) -> dict[str, Any] | None:
    """The newest logged evaluation of exactly this checkpoint file (``digest``: its SHA-256), with ``log`` naming
    the file; None when its run has no log or the log has no line of it."""
    log = history_file(checkpoint)
    if log is None or not log.is_file():
        return None
    found = None
    for text in log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            line = json.loads(text)
        except ValueError:
            continue  # a line cut short by a full disk or a kill
        if isinstance(line, dict) and line.get("sha256") == digest and isinstance(line.get("results"), list):
            found = line
    return None if found is None else {**found, "log": str(log)}
