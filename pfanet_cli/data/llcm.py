"""LLCM (Zhang & Wang, CVPR 2023: 1,064 identities, 9 cameras, low light): its raw layout, camera ids, the
scanner of a raw tree and the path pattern of its images. docs/protocols.md states where each fact comes from.

Raw layout, as the benchmark's reference code reads it (``ZYK100/LLCM``, ``DEEN/data_manager.py`` and
``DEEN/data_loader.py``): ``{train,test}_{vis,nir}/cam<k>/<pid:04d>/<file>`` for cameras k = 1..9;
``idx/train_vis.txt`` and ``idx/train_nir.txt`` list the training images (``<path relative to the root>
<label>``); ``idx/test_id.txt`` holds the test ids on one line, comma-separated. The test images are the
folders of those ids: visible cameras 1-9, near-infrared cameras 1, 2, 4-9 (the reference lists no NIR cam3).

Camera ids: the reference reads one camera number k from the path for both modalities, and its camera rule
compares those numbers. The toolkit keeps the modality in the id as well: a visible image of camera k has
camid k, a near-infrared one 10 + k; :func:`physical_camera` gives k back.
"""

from __future__ import annotations

import re
from pathlib import Path

from pfanet_cli.data.format import ImageEntry
from pfanet_cli.data.scan import list_person_folder, listed_image_exists, read_image_list, require_dir
from pfanet_cli.data.sysu import parse_id_list
from pfanet_cli.errors import DataError

NIR_OFFSET = 10
VIS_CAMERAS = tuple(range(1, 10))
NIR_CAMERAS = tuple(NIR_OFFSET + k for k in range(1, 10))
"""Camera ids of every near-infrared camera (10 + camera number)."""
TEST_NIR_CAMERAS = tuple(NIR_OFFSET + k for k in (1, 2, 4, 5, 6, 7, 8, 9))
"""The NIR cameras the reference code reads in the test split (it lists no cam3)."""
CAMERAS = VIS_CAMERAS + NIR_CAMERAS
TRAIN_CLASSES = 713
"""Identities of the training split (``n_class = 713`` in the reference ``test.py``)."""
DIRECTIONS = ("ir2vis", "vis2ir")
"""ir2vis: NIR queries, sampled visible gallery (the reference's default ``test_mode = [1, 2]``);
vis2ir: the reference's ``test_mode = [2, 1]``, scored with its role swap (docs/protocols.md)."""
IDX_DIR = "idx"
TRAIN_LISTS = {"rgb": "train_vis.txt", "ir": "train_nir.txt"}
TEST_ID_FILE = "test_id.txt"
PUBLISHED_COUNTS = {
    "train": {"ids": 713, "rgb": 16946, "ir": 13975},
    "test": {"ids": 351, "rgb": 8680, "ir": 7166},
}
"""Per-split identities and images per modality published with the dataset (46,767 images in all)."""

_FOLDERS = {"rgb": "vis", "ir": "nir"}
_PATH = re.compile(r"(?:^|/)(train|test)_(vis|nir)/cam([1-9])/(\d+)/[^/]+$")
_HINT = "point RAW at the LLCM folder holding idx/, train_vis/, train_nir/, test_vis/ and test_nir/"


def camera_id(modality: str, camera: int) -> int:
    """camid of camera number ``camera`` (1..9) in ``modality`` (``rgb`` = visible, ``ir`` = near-infrared)."""
    return camera + (NIR_OFFSET if modality == "ir" else 0)


def physical_camera(camid: int) -> int:
    """The camera number 1..9 of a camid (the number the reference's camera rule compares)."""
    return camid % NIR_OFFSET


def modality_of_camera(camid: int) -> str:
    return "ir" if camid > NIR_OFFSET else "rgb"


def parse_path(path: str) -> tuple[int, int] | None:
    """(pid, camid) of a path in the raw layout (``test_nir/cam4/0012/x.jpg`` -> (12, 14)), None otherwise."""
    match = _PATH.search(path)
    if not match:
        return None
    modality = "ir" if match.group(2) == "nir" else "rgb"
    return int(match.group(4)), camera_id(modality, int(match.group(3)))


def image_folder(split: str, modality: str, camid: int, pid: int) -> str:
    """Raw-relative folder of one person in one camera, e.g. ``test_vis/cam3/0012``."""
    return f"{split}_{_FOLDERS[modality]}/cam{physical_camera(camid)}/{pid:04d}"


def protocol_files(raw: Path) -> list[Path]:
    """The ``idx/`` files a prepared folder copies into its ``exp/``."""
    return [raw / IDX_DIR / name for name in (*TRAIN_LISTS.values(), TEST_ID_FILE)]


def read_test_ids(raw: Path) -> list[int]:
    path = raw / IDX_DIR / TEST_ID_FILE
    if not path.is_file():
        raise DataError(f"LLCM tree at {raw} has no {IDX_DIR}/{TEST_ID_FILE} (the test ids; {_HINT})")
    return parse_id_list(path.read_text(encoding="utf-8", errors="replace"), path)


def scan_llcm(raw: Path, skip_bad: bool = False) -> tuple[dict, list[str]]:
    """Index an LLCM raw tree: ``{"train": [...], "test": [...]}`` plus the files skipped as bad.

    Train: the images of ``idx/train_vis.txt`` and ``idx/train_nir.txt``. Test: the folders of the ids in
    ``idx/test_id.txt`` (visible cameras 1-9, NIR cameras 1, 2, 4-9), as the reference code walks them.
    Rows: ids ascending; per id the visible images, then the NIR ones, by camera, files sorted by name.
    Labels are 0..N-1 over each split's ids in ascending order.
    """
    require_dir(raw, "LLCM raw tree", _HINT)
    require_dir(raw / IDX_DIR, "LLCM idx folder", _HINT)
    missing = [name for name in (*TRAIN_LISTS.values(), TEST_ID_FILE) if not (raw / IDX_DIR / name).is_file()]
    if missing:
        raise DataError(f"LLCM tree at {raw} is missing {', '.join(f'{IDX_DIR}/{m}' for m in missing)} ({_HINT})")
    for modality in _FOLDERS.values():
        require_dir(raw / f"test_{modality}", f"LLCM test_{modality} folder", _HINT)
    bad: list[str] = []
    train = []
    for modality, name in TRAIN_LISTS.items():
        train.extend(_read_train_list(raw, raw / IDX_DIR / name, modality, skip_bad, bad))
    test = _scan_test(raw, read_test_ids(raw), skip_bad, bad)
    return {"train": _relabel(train), "test": _relabel(test)}, bad


def _read_train_list(raw: Path, path: Path, modality: str, skip_bad: bool,
                     bad: list[str]) -> list[tuple[str, int, int, str]]:
    rows = []
    labels: dict[int, int] = {}
    for where, rel, label in read_image_list(path):
        rel = rel.lstrip("./")
        parsed = parse_path(rel)
        if parsed is None or modality_of_camera(parsed[1]) != modality or not rel.startswith("train_"):
            folder = f"train_{_FOLDERS[modality]}/cam<k>/<pid>/<file>"
            raise DataError(f"{where}: {rel!r} is not an image path of the form {folder}")
        pid, camid = parsed
        if labels.setdefault(pid, label) != label:
            raise DataError(f"{where}: person {pid} has label {label} here and {labels[pid]} before")
        if listed_image_exists(raw, rel, where, skip_bad, bad):
            rows.append((rel, pid, camid, modality))
    return rows


def _scan_test(raw: Path, ids: list[int], skip_bad: bool, bad: list[str]) -> list[tuple[str, int, int, str]]:
    rows = []
    for pid in sorted(ids):
        for camid in VIS_CAMERAS + TEST_NIR_CAMERAS:
            modality = modality_of_camera(camid)
            folder = raw / image_folder("test", modality, camid, pid)
            if folder.is_dir():
                rows.extend((rel, pid, camid, modality) for rel in list_person_folder(folder, raw, skip_bad, bad))
            elif folder.exists():
                raise DataError(f"{folder.relative_to(raw).as_posix()} is a file, expected a person folder")
    return rows


def _relabel(rows: list[tuple[str, int, int, str]]) -> list[ImageEntry]:
    """Entries ordered by id, modality (visible first), camera and path, labelled 0..N-1 by id."""
    rows = sorted(rows, key=lambda r: (r[1], r[3] == "ir", r[2], r[0]))
    labels = {pid: label for label, pid in enumerate(sorted({r[1] for r in rows}))}
    return [ImageEntry(rel, pid, camid, modality, labels[pid]) for rel, pid, camid, modality in rows]
