"""SYSU-MM01: its raw layout, camera roles, id lists, the official ``rand_perm_cam.mat`` permutation
file, the scanner that indexes a raw tree, and the path pattern of its images.

Raw layout: ``cam1..cam6/<pid:04d>/<n:04d>.jpg`` and ``exp/{train,val,test,available}_id.txt`` (one
line of comma-separated ids each). RGB cameras 1, 2, 4, 5; IR cameras 3, 6; cam3 shares room 2 with
cam2.

``rand_perm_cam.mat`` holds a 6x1 MATLAB cell (one per camera); cell ``c`` is an Nx1 cell indexed by
person id (1-based), each entry a 10 x n matrix whose row ``t`` is a permutation of the 1-based image
numbers of that person in that camera (trial ``t``); people absent from a camera have a 10x0 entry.
"""

from __future__ import annotations

import io
import json
import re
from importlib import resources
from pathlib import Path

import numpy as np
import scipy.io

from pfanet_cli.data.format import EXP_DIR, ImageEntry
from pfanet_cli.data.scan import list_person_folder, require_dir
from pfanet_cli.errors import DataError

RGB_CAMERAS = (1, 2, 4, 5)
IR_CAMERAS = (3, 6)
ALL_CAMERAS = (1, 2, 3, 4, 5, 6)
INDOOR_RGB_CAMERAS = (1, 2)
TRAIN_CAMERA_ORDER = (1, 2, 4, 5, 3, 6)
"""Per-id camera order of the prepared train split: RGB cameras 1, 2, 4, 5, then IR cameras 3, 6."""
SAME_ROOM = {3: 2}
"""cam3 (IR) shares room 2 with cam2: a cam3 query never sees cam2 gallery images."""
ID_LIST_FILES = ("train_id.txt", "val_id.txt", "test_id.txt", "available_id.txt")
PERM_FILE = "rand_perm_cam.mat"
PERM_TRIALS = 10
TRAIN_CLASSES = 395
"""Identities of the default training split (train ∪ val)."""
TRAIN_SPLITS = ("trainval", "train")

RandPerm = dict[int, dict[int, np.ndarray]]
"""camera id -> person id -> (10, n) array of 1-based image numbers."""

_PATH = re.compile(r"(?:^|/)cam([1-6])/(\d+)/[^/]+$")


def modality_of_camera(camid: int) -> str:
    return "ir" if camid in IR_CAMERAS else "rgb"


def parse_path(path: str) -> tuple[int, int] | None:
    """(pid, camid) of a path in the raw layout (``cam3/0006/0001.jpg``), None for any other path."""
    match = _PATH.search(path)
    return (int(match.group(2)), int(match.group(1))) if match else None


def real_counts() -> dict:
    """The real per-camera, per-person image counts and official splits (package data)."""
    text = resources.files("pfanet_cli").joinpath("resources/sysu_counts.json").read_text("utf-8")
    return json.loads(text)


# ----------------------------------------------------------------------------------------------
# id lists


def parse_id_list(text: str, source: str | Path) -> list[int]:
    """Parse the one-line, comma-separated id list of ``exp/*_id.txt`` (whitespace tolerated)."""
    tokens = [t for t in re.split(r"[,\s]+", text.strip()) if t]
    if not tokens:
        raise DataError(f"{source}: id list is empty (expected comma-separated ids such as 1,2,4)")
    bad = [t for t in tokens if not t.isdigit()]
    if bad:
        raise DataError(
            f"{source}: malformed id list, {bad[0]!r} is not a person id "
            "(expected one line of comma-separated integers such as 1,2,4)"
        )
    ids = [int(t) for t in tokens]
    if len(set(ids)) != len(ids):
        raise DataError(f"{source}: id list repeats an id")
    return ids


def read_id_list(path: Path) -> list[int]:
    if not path.is_file():
        raise DataError(f"missing id list {path} (SYSU-MM01 keeps train/val/test ids in exp/*_id.txt)")
    return parse_id_list(path.read_text(encoding="utf-8", errors="replace"), path)


def format_id_list(ids: list[int]) -> str:
    return ",".join(str(i) for i in ids)


# ----------------------------------------------------------------------------------------------
# the official permutation file


def bundled_perm_bytes() -> bytes:
    """The official permutation file shipped with the package (``pfanet_cli/resources/README.md``)."""
    return resources.files("pfanet_cli").joinpath(f"resources/{PERM_FILE}").read_bytes()


def find_perm_file(folder: str | Path) -> Path | None:
    """The permutation file of a raw tree or a prepared folder (``exp/rand_perm_cam.mat``, or one at
    the folder's top), None when there is none."""
    for candidate in (Path(folder) / EXP_DIR / PERM_FILE, Path(folder) / PERM_FILE):
        if candidate.is_file():
            return candidate
    return None


def load_rand_perm_cam(source: Path | bytes) -> RandPerm:
    """Read the official permutation file (a path, or the file's bytes); :class:`DataError` when it is
    not in that format."""
    name = "the permutation file" if isinstance(source, (bytes, bytearray)) else str(source)
    handle = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray)) else str(source)
    try:
        mat = scipy.io.loadmat(handle)
    except Exception as exc:  # noqa: BLE001 - scipy raises many types for a bad file
        raise DataError(f"{name}: not a readable MATLAB file ({exc})") from exc
    cells = mat.get("rand_perm_cam")
    if cells is None or cells.dtype != object or cells.size != len(ALL_CAMERAS):
        raise DataError(f"{name}: expected a 6x1 cell array named rand_perm_cam (one cell per camera)")
    return {cam_index + 1: _camera_permutations(name, cam_index + 1, camera_cell)
            for cam_index, camera_cell in enumerate(cells.reshape(-1))}


def _camera_permutations(name: str, camid: int, camera_cell: object) -> dict[int, np.ndarray]:
    if not isinstance(camera_cell, np.ndarray) or camera_cell.dtype != object:
        raise DataError(f"{name}: camera {camid} entry must be a cell array of per-person permutations")
    people = {}
    for pid_index, entry in enumerate(camera_cell.reshape(-1)):
        entry = np.asarray(entry)
        if entry.size == 0:
            continue
        if entry.ndim != 2 or entry.shape[0] != PERM_TRIALS:
            raise DataError(
                f"{name}: camera {camid} person {pid_index + 1} has shape {entry.shape}, expected {PERM_TRIALS} x n"
            )
        people[pid_index + 1] = entry.astype(np.int64)
    return people


def save_rand_perm_cam(path: Path, perm: RandPerm) -> None:
    """Write ``perm`` in the official format (cells sized by each camera's largest person id)."""
    cameras = np.empty((len(ALL_CAMERAS), 1), dtype=object)
    for cam_index, camid in enumerate(ALL_CAMERAS):
        people = perm.get(camid, {})
        size = max(people, default=0)
        cell = np.empty((size, 1), dtype=object)
        for pid in range(1, size + 1):
            entry = people.get(pid)
            if entry is None:
                cell[pid - 1, 0] = np.zeros((PERM_TRIALS, 0), dtype=np.uint8)
            else:
                dtype = np.uint8 if entry.max(initial=0) < 256 else np.uint16
                cell[pid - 1, 0] = np.asarray(entry, dtype=dtype)
        cameras[cam_index, 0] = cell
    scipy.io.savemat(str(path), {"rand_perm_cam": cameras}, do_compression=True)


# ----------------------------------------------------------------------------------------------
# scanning a raw tree


def scan_sysu(raw: Path, train_split: str = "trainval", skip_bad: bool = False) -> tuple[dict, list[str]]:
    """Index a SYSU-MM01 raw tree: ``{split: [ImageEntry]}`` plus the files skipped as bad.

    Train rows: ids ascending; per id cameras 1, 2, 4, 5 (RGB) then 3, 6 (IR); files sorted by name.
    Labels are 0..N-1 over the split's ids with images, in ascending pid order.
    """
    hint = "point RAW at the SYSU-MM01 folder holding cam1..cam6 and exp/, or render one with " \
           "'pfanet prepare-data synthetic DIR'"
    require_dir(raw, "SYSU-MM01 raw tree", hint)
    missing = [f"cam{c}" for c in ALL_CAMERAS if not (raw / f"cam{c}").is_dir()]
    if missing:
        raise DataError(f"partial SYSU-MM01 tree at {raw}: missing camera folder(s) {', '.join(missing)}")
    require_dir(raw / EXP_DIR, "SYSU-MM01 exp folder", "it holds train_id.txt, val_id.txt, test_id.txt")
    split_ids = _split_ids(raw, train_split)
    bad: list[str] = []
    splits = {name: _sysu_split(raw, sorted(pids), skip_bad, bad) for name, pids in split_ids.items()}
    return splits, bad


def protocol_files(raw: Path) -> list[Path]:
    """The ``exp/`` files a prepared folder copies (id lists and, when present, the permutation file)."""
    return [raw / EXP_DIR / name for name in ID_LIST_FILES + (PERM_FILE,)]


def _split_ids(raw: Path, train_split: str) -> dict[str, list[int]]:
    ids = {name: read_id_list(raw / EXP_DIR / f"{name}_id.txt") for name in ("train", "val", "test")}
    overlap = (set(ids["train"]) | set(ids["val"])) & set(ids["test"])
    if overlap:
        raise DataError(f"{raw / EXP_DIR}: test ids overlap train/val ids (e.g. {min(overlap)})")
    if train_split == "trainval":
        return {"train": ids["train"] + ids["val"], "test": ids["test"]}
    if train_split == "train":
        return {"train": ids["train"], "val": ids["val"], "test": ids["test"]}
    raise DataError(f"unknown train split {train_split!r} (use {' or '.join(TRAIN_SPLITS)})")


def _sysu_split(raw: Path, pids: list[int], skip_bad: bool, bad: list[str]) -> list[ImageEntry]:
    per_id: dict[int, list[tuple[str, int]]] = {}
    for pid in pids:
        for camid in TRAIN_CAMERA_ORDER:
            folder = raw / f"cam{camid}" / f"{pid:04d}"
            if folder.is_dir():
                files = list_person_folder(folder, raw, skip_bad, bad)
                per_id.setdefault(pid, []).extend((rel, camid) for rel in files)
            elif folder.exists():
                raise DataError(f"{folder.relative_to(raw).as_posix()} is a file, expected a person folder")
    labels = {pid: label for label, pid in enumerate(sorted(per_id))}
    return [
        ImageEntry(rel, pid, camid, modality_of_camera(camid), labels[pid])
        for pid in sorted(per_id)
        for rel, camid in per_id[pid]
    ]
