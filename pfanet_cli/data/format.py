"""The prepared format (SPEC §2), shared by its writer (``prepare``) and its reader (``prepared``).

A prepared folder holds, per split, ``<split>_images.npy`` (uint8 N×H×W×3) and ``<split>_index.csv``
(columns ``path,pid,camid,modality,label``, the same row order), plus ``manifest.json`` (dataset,
size, counts, source fingerprint, format version) and ``exp/`` (the raw dataset's protocol files).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from pfanet_cli.errors import DataError

PREPARED_FORMAT = "pfanet-prepared"
PREPARED_FORMAT_VERSION = 1
INDEX_COLUMNS = ("path", "pid", "camid", "modality", "label")
MODALITIES = ("rgb", "ir")
MANIFEST_NAME = "manifest.json"
EXP_DIR = "exp"
"""Where a prepared folder keeps the raw dataset's protocol files (id lists, permutations)."""


@dataclass(frozen=True)
class ImageEntry:
    """One image of a split: ``path`` relative to the raw root (POSIX separators)."""

    path: str
    pid: int
    camid: int
    modality: str
    label: int


def images_file(root: Path, split: str) -> Path:
    return Path(root) / f"{split}_images.npy"


def index_file(root: Path, split: str) -> Path:
    return Path(root) / f"{split}_index.csv"


def write_index(path: Path, entries: list[ImageEntry]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(INDEX_COLUMNS)
        for e in entries:
            writer.writerow((e.path, e.pid, e.camid, e.modality, e.label))


def read_index(path: Path) -> list[list[str]]:
    """The rows of an index file (header checked, each row checked for its column count and modality)."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if tuple(header or ()) != INDEX_COLUMNS:
            raise DataError(f"{path}: header {header} is not {','.join(INDEX_COLUMNS)}")
        rows = list(reader)
    for number, row in enumerate(rows, 2):
        if len(row) != len(INDEX_COLUMNS) or row[3] not in MODALITIES:
            raise DataError(f"{path}:{number}: malformed row {row}")
    return rows


def read_manifest(root: Path) -> dict | None:
    """The manifest of a prepared folder, or None when it has no readable one."""
    try:
        return json.loads((Path(root) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_manifest(root: Path, manifest: dict) -> None:
    (Path(root) / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def is_current_format(manifest: dict) -> bool:
    return manifest.get("format") == PREPARED_FORMAT and manifest.get("format_version") == PREPARED_FORMAT_VERSION
