"""Facts about the SYSU-MM01 raw layout shared by the renderer, data preparation and evaluation:
camera roles, the ``exp/*_id.txt`` id lists and the official ``rand_perm_cam.mat`` permutation file.

``rand_perm_cam.mat`` holds a 6x1 MATLAB cell (one per camera); cell ``c`` is an Nx1 cell indexed by
person id (1-based), each entry a 10 x n matrix whose row ``t`` is a permutation of the 1-based image
numbers of that person in that camera (trial ``t``); people absent from a camera have a 10x0 entry.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

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
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

RandPerm = dict[int, dict[int, np.ndarray]]
"""camera id -> person id -> (10, n) array of 1-based image numbers."""


def modality_of_camera(camid: int) -> str:
    return "ir" if camid in IR_CAMERAS else "rgb"


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


def load_rand_perm_cam(path: Path) -> RandPerm:
    """Read the official permutation file; raises :class:`DataError` when it is not in that format."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # noqa: BLE001 - scipy raises many types for a bad file
        raise DataError(f"{path}: not a readable MATLAB file ({exc})") from exc
    cells = mat.get("rand_perm_cam")
    if cells is None or cells.dtype != object or cells.size != len(ALL_CAMERAS):
        raise DataError(f"{path}: expected a 6x1 cell array named rand_perm_cam (one cell per camera)")
    perm: RandPerm = {}
    for cam_index, camera_cell in enumerate(cells.reshape(-1)):
        camid = cam_index + 1
        if not isinstance(camera_cell, np.ndarray) or camera_cell.dtype != object:
            raise DataError(f"{path}: camera {camid} entry must be a cell array of per-person permutations")
        perm[camid] = {}
        for pid_index, entry in enumerate(camera_cell.reshape(-1)):
            entry = np.asarray(entry)
            if entry.size == 0:
                continue
            if entry.ndim != 2 or entry.shape[0] != PERM_TRIALS:
                raise DataError(
                    f"{path}: camera {camid} person {pid_index + 1} has shape {entry.shape}, "
                    f"expected {PERM_TRIALS} x n"
                )
            perm[camid][pid_index + 1] = entry.astype(np.int64)
    return perm


def save_rand_perm_cam(path: Path, perm: RandPerm) -> None:
    """Write ``perm`` in the official format (cells sized by each camera's largest person id)."""
    import scipy.io

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
