"""RegDB: its raw layout, camera ids, the scanner of one trial's split and the path pattern of its images.

Raw layout: ``Visible/<pid>/<file>.bmp``, ``Thermal/<pid>/<file>.bmp`` and
``idx/{train,test}_{visible,thermal}_{1..10}.txt`` (lines ``<relative path> <label>``); 412 ids, 10 + 10
images each, split 206/206 per trial. The toolkit gives visible images camid 1 and thermal images camid 2.
"""

from __future__ import annotations

import re
from pathlib import Path

from pfanet_cli.data.format import ImageEntry
from pfanet_cli.data.scan import listed_image_exists, read_image_list, require_dir
from pfanet_cli.errors import DataError, UsageError

VISIBLE, THERMAL = 1, 2
"""Camera ids of the two modalities."""
CAMERAS = (VISIBLE, THERMAL)
CAMERA_NAMES = {VISIBLE: "visible (camid 1)", THERMAL: "thermal (camid 2)"}
TRIALS = range(1, 11)
TRAIN_CLASSES = 206
"""Identities of one trial's training split."""
DIRECTIONS = ("v2t", "t2v")

_PATH = re.compile(r"(?:^|/)(Visible|Thermal)/(\d+)/[^/]+$", re.IGNORECASE)


def modality_of_camera(camid: int) -> str:
    return "rgb" if camid == VISIBLE else "ir"


def parse_path(path: str) -> tuple[int, int] | None:
    """(pid, camid) of a path in the raw layout (``Thermal/6/x.bmp``), None for any other path."""
    match = _PATH.search(path)
    if not match:
        return None
    return int(match.group(2)), VISIBLE if match.group(1).lower() == "visible" else THERMAL


def direction_cameras(direction: str) -> tuple[int, int]:
    """(query camera, gallery camera) of a direction: v2t = visible queries, thermal gallery."""
    return (VISIBLE, THERMAL) if direction == "v2t" else (THERMAL, VISIBLE)


def check_trial(trial: int) -> None:
    if trial not in TRIALS:
        raise DataError(f"RegDB trial must be 1..10, got {trial}")


def parse_trials(text: str | int) -> list[int]:
    """The trials a ``--trial`` value names: ``all`` (1..10), one trial ``3`` or a list ``1,2,5``;
    :class:`UsageError` naming the value when it is anything else or outside 1..10."""
    value = str(text).strip().lower()
    if value == "all":
        return list(TRIALS)
    tokens = [t.strip() for t in value.split(",")]
    if not tokens or not all(t.lstrip("-").isdigit() for t in tokens):
        raise UsageError(f"--trial must be all, a trial 1..10 or a comma-separated list such as 1,2; got {text!r}")
    trials = [int(t) for t in tokens]
    outside = [t for t in trials if t not in TRIALS]
    if outside:
        raise UsageError(f"RegDB trial ids are 1..10, got {outside[0]} (in --trial {text})")
    if len(set(trials)) != len(trials):
        raise UsageError(f"--trial {text} names a trial twice")
    return trials


def idx_files(raw: Path, trial: int) -> list[Path]:
    """The four index files of a trial (train/test x visible/thermal)."""
    return [raw / "idx" / f"{split}_{modality}_{trial}.txt" for split in ("train", "test")
            for modality in ("visible", "thermal")]


def scan_regdb(raw: Path, trial: int, skip_bad: bool = False) -> tuple[dict, list[str]]:
    """Index RegDB for one trial from ``idx/{train,test}_{visible,thermal}_{trial}.txt``.

    Visible images get camid 1 (``rgb``), thermal camid 2 (``ir``); the label is the idx file's.
    """
    hint = "point RAW at the RegDB folder holding idx/, Visible/ and Thermal/"
    require_dir(raw, "RegDB raw tree", hint)
    require_dir(raw / "idx", "RegDB idx folder", hint)
    check_trial(trial)
    splits = {}
    bad: list[str] = []
    for split in ("train", "test"):
        rows = []
        for modality, camid in (("visible", VISIBLE), ("thermal", THERMAL)):
            rows.extend(_read_idx(raw, raw / "idx" / f"{split}_{modality}_{trial}.txt", camid, skip_bad, bad))
        rows.sort(key=lambda e: (e.label, e.camid, e.path))
        splits[split] = rows
    return splits, bad


def _read_idx(raw: Path, path: Path, camid: int, skip_bad: bool, bad: list[str]) -> list[ImageEntry]:
    if not path.is_file():
        raise DataError(f"missing RegDB index file {path}")
    entries = []
    for where, rel, label in read_image_list(path):
        folder = Path(rel).parent.name
        if not folder.isdigit():
            raise DataError(f"{where}: cannot read the person id from {rel!r}")
        if listed_image_exists(raw, rel, where, skip_bad, bad):
            entries.append(ImageEntry(rel, int(folder), camid, modality_of_camera(camid), label))
    return entries
