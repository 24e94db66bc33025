"""``prepare-data``: index a raw dataset tree, decode every image once, convert to 3-channel RGB,
resize with LANCZOS and store per split ``<split>_images.npy`` (uint8 N×H×W×3, memory-mapped
later) with ``<split>_index.csv`` and ``manifest.json`` (SPEC §2).

Decoding runs in worker processes that write straight into the output ``.npy`` memory map, so
pixels never travel between processes. Output is built in a temporary sibling folder and swapped in
at the end: an interrupted run leaves the previous prepared data intact.
"""

from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image

from pfanet_cli import __version__
from pfanet_cli.errors import DataError, UsageError
from pfanet_cli.sysu_layout import (
    ALL_CAMERAS,
    IMAGE_SUFFIXES,
    ID_LIST_FILES,
    PERM_FILE,
    TRAIN_CAMERA_ORDER,
    modality_of_camera,
    read_id_list,
)

PREPARED_FORMAT = "pfanet-prepared"
PREPARED_FORMAT_VERSION = 1
INDEX_COLUMNS = ("path", "pid", "camid", "modality", "label")
CHUNK_SIZE = 256
_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


@dataclass(frozen=True)
class ImageEntry:
    """One image of a split: ``path`` relative to the raw root (POSIX separators)."""

    path: str
    pid: int
    camid: int
    modality: str
    label: int


@dataclass
class PrepareSummary:
    out: Path
    dataset: str
    skipped_unchanged: bool
    counts: dict[str, int]
    bad_files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    images_per_second: float = 0.0


class BadImage(Exception):
    """An image file that cannot be decoded (raised in workers, reported with its path)."""


def load_rgb(path: Path, size: tuple[int, int] | None = None, fast: bool = False) -> np.ndarray:
    """Decode ``path`` to an H×W×3 uint8 array, resized to ``size`` = (height, width) with LANCZOS.

    Grayscale, palette and RGBA images are converted to RGB; 16-bit and float images are scaled
    linearly from their own min..max to 0..255. ``fast`` lets the JPEG decoder produce a reduced
    image directly (draft mode) before resizing; it is not pixel-exact.
    """
    return load_rgb_and_size(path, size, fast)[0]


def load_rgb_and_size(path: Path, size: tuple[int, int] | None = None,
                      fast: bool = False) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`load_rgb` plus the file's own (width, height)."""
    try:
        with Image.open(path) as image:
            original = image.size
            if fast and size is not None:
                image.draft("RGB", (size[1], size[0]))
            image = _to_rgb(image)
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.LANCZOS)
            return np.asarray(image, dtype=np.uint8), original
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadImage(f"{exc}") from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _HIGH_DEPTH_MODES:
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        image = Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


# ----------------------------------------------------------------------------------------------
# Scanning raw trees


def _require_dir(path: Path, what: str, hint: str) -> None:
    if not path.exists():
        raise DataError(f"{what} not found at {path} ({hint})")
    if not path.is_dir():
        raise DataError(f"{what} at {path} is a file, expected a folder ({hint})")


def _list_person_folder(folder: Path, raw: Path, skip_bad: bool, bad: list[str]) -> list[str]:
    """Image files of one person folder, sorted by name, as paths relative to ``raw``."""
    files = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        rel = entry.relative_to(raw).as_posix()
        if not entry.is_file() or entry.suffix.lower() not in IMAGE_SUFFIXES:
            if not skip_bad:
                raise DataError(
                    f"{rel}: not an image file (expected {', '.join(IMAGE_SUFFIXES)}); "
                    "remove it or pass --skip-bad to skip such files"
                )
            bad.append(rel)
            continue
        files.append(rel)
    if not files and not skip_bad:
        raise DataError(
            f"{folder.relative_to(raw).as_posix()}: person folder has no images "
            "(remove the empty folder or pass --skip-bad to ignore it)"
        )
    return files


def scan_sysu(raw: Path, train_split: str = "trainval", skip_bad: bool = False) -> tuple[dict, list[str]]:
    """Index a SYSU-MM01 raw tree: ``{split: [ImageEntry]}`` plus the files skipped as bad.

    Train rows: ids ascending; per id cameras 1, 2, 4, 5 (RGB) then 3, 6 (IR); files sorted by name.
    Labels are 0..N-1 over the split's ids with images, in ascending pid order.
    """
    hint = "point RAW at the SYSU-MM01 folder holding cam1..cam6 and exp/, or render one with " \
           "'pfanet prepare-data synthetic DIR'"
    _require_dir(raw, "SYSU-MM01 raw tree", hint)
    missing = [f"cam{c}" for c in ALL_CAMERAS if not (raw / f"cam{c}").is_dir()]
    if missing:
        raise DataError(f"partial SYSU-MM01 tree at {raw}: missing camera folder(s) {', '.join(missing)}")
    _require_dir(raw / "exp", "SYSU-MM01 exp folder", "it holds train_id.txt, val_id.txt, test_id.txt")
    ids = {name: read_id_list(raw / "exp" / f"{name}_id.txt") for name in ("train", "val", "test")}
    overlap = (set(ids["train"]) | set(ids["val"])) & set(ids["test"])
    if overlap:
        raise DataError(f"{raw / 'exp'}: test ids overlap train/val ids (e.g. {min(overlap)})")
    if train_split == "trainval":
        split_ids = {"train": ids["train"] + ids["val"], "test": ids["test"]}
    elif train_split == "train":
        split_ids = {"train": ids["train"], "val": ids["val"], "test": ids["test"]}
    else:
        raise DataError(f"unknown train split {train_split!r} (use trainval or train)")
    bad: list[str] = []
    splits = {name: _sysu_split(raw, sorted(pids), skip_bad, bad) for name, pids in split_ids.items()}
    return splits, bad


def _sysu_split(raw: Path, pids: list[int], skip_bad: bool, bad: list[str]) -> list[ImageEntry]:
    per_id: dict[int, list[tuple[str, int]]] = {}
    for pid in pids:
        for camid in TRAIN_CAMERA_ORDER:
            folder = raw / f"cam{camid}" / f"{pid:04d}"
            if folder.is_dir():
                files = _list_person_folder(folder, raw, skip_bad, bad)
                per_id.setdefault(pid, []).extend((rel, camid) for rel in files)
            elif folder.exists():
                raise DataError(f"{folder.relative_to(raw).as_posix()} is a file, expected a person folder")
    labels = {pid: label for label, pid in enumerate(sorted(per_id))}
    return [
        ImageEntry(rel, pid, camid, modality_of_camera(camid), labels[pid])
        for pid in sorted(per_id)
        for rel, camid in per_id[pid]
    ]


def scan_regdb(raw: Path, trial: int, skip_bad: bool = False) -> tuple[dict, list[str]]:
    """Index RegDB for one trial from ``idx/{train,test}_{visible,thermal}_{trial}.txt``.

    Visible images get camid 1 (``rgb``), thermal camid 2 (``ir``); the label is the idx file's.
    """
    hint = "point RAW at the RegDB folder holding idx/, Visible/ and Thermal/"
    _require_dir(raw, "RegDB raw tree", hint)
    _require_dir(raw / "idx", "RegDB idx folder", hint)
    if not 1 <= trial <= 10:
        raise DataError(f"RegDB trial must be 1..10, got {trial}")
    splits = {}
    bad: list[str] = []
    for split in ("train", "test"):
        rows = []
        for modality, camid in (("visible", 1), ("thermal", 2)):
            rows.extend(_read_regdb_idx(raw, raw / "idx" / f"{split}_{modality}_{trial}.txt", camid, skip_bad, bad))
        rows.sort(key=lambda e: (e.label, e.camid, e.path))
        splits[split] = rows
    return splits, bad


def _read_regdb_idx(raw: Path, path: Path, camid: int, skip_bad: bool, bad: list[str]) -> list[ImageEntry]:
    if not path.is_file():
        raise DataError(f"missing RegDB index file {path}")
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DataError(f"{path}:{number}: expected '<relative path> <label>', got {line.strip()!r}")
        rel = parts[0].replace("\\", "/")
        folder = Path(rel).parent.name
        if not folder.isdigit():
            raise DataError(f"{path}:{number}: cannot read the person id from {rel!r}")
        if not (raw / rel).is_file():
            if not skip_bad:
                raise DataError(f"{path}:{number}: image {rel} does not exist (pass --skip-bad to skip it)")
            bad.append(rel)
            continue
        entries.append(ImageEntry(rel, int(folder), camid, "rgb" if camid == 1 else "ir", int(parts[1])))
    return entries


# ----------------------------------------------------------------------------------------------
# Fingerprint and manifest


def source_fingerprint(raw: Path, splits: dict[str, list[ImageEntry]], extra_files: Iterable[Path],
                       settings: dict) -> str:
    """Hash of every indexed file's path, size and mtime, the extra files' contents and the settings."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for name in sorted(splits):
        for entry in splits[name]:
            stat = (raw / entry.path).stat()
            digest.update(f"{name}|{entry.path}|{entry.label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    for path in extra_files:
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def read_manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_up_to_date(out: Path, fingerprint: str) -> bool:
    manifest = read_manifest(out)
    if not manifest or manifest.get("fingerprint") != fingerprint:
        return False
    return all(
        (out / f"{split}_images.npy").is_file() and (out / f"{split}_index.csv").is_file()
        for split in manifest.get("splits", {})
    )


def _split_counts(entries: list[ImageEntry]) -> dict:
    return {
        "images": len(entries),
        "ids": len({e.pid for e in entries}),
        "rgb": sum(e.modality == "rgb" for e in entries),
        "ir": sum(e.modality == "ir" for e in entries),
        "per_camera": {str(c): n for c, n in sorted(Counter(e.camid for e in entries).items())},
    }


# ----------------------------------------------------------------------------------------------
# Decoding


def _decode_chunk(task: tuple[str, int, str, int, list[str], tuple[int, int], bool]) -> list[tuple[int, str]]:
    """Worker: decode ``files`` into rows ``start..`` of the ``.npy`` at ``npy``; return bad rows.

    The chunk is decoded into one buffer and written with a single positioned write: much cheaper
    than faulting in the pages of a shared memory map one row at a time. Bad rows stay zero.
    """
    npy, data_offset, raw, start, files, size, fast = task
    rows = np.zeros((len(files), size[0], size[1], 3), dtype=np.uint8)
    bad = []
    for offset, rel in enumerate(files):
        try:
            rows[offset] = load_rgb(Path(raw) / rel, size, fast)
        except BadImage as exc:
            bad.append((start + offset, f"{rel}: {exc}"))
    with open(npy, "r+b") as handle:
        handle.seek(data_offset + start * rows[0].nbytes)
        handle.write(rows.data)
    return bad


def _pool_context() -> multiprocessing.context.BaseContext:
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return multiprocessing.get_context(method)


def decode_images(raw: Path, files: list[str], npy: Path, size: tuple[int, int], workers: int,
                  fast: bool = False, on_progress: Callable[[int], None] | None = None) -> list[tuple[int, str]]:
    """Decode ``files`` into a new ``.npy`` of shape N×H×W×3; returns ``(row, message)`` of bad files."""
    array = np.lib.format.open_memmap(npy, mode="w+", dtype=np.uint8, shape=(len(files), size[0], size[1], 3))
    data_offset = array.offset
    del array
    tasks = [
        (str(npy), data_offset, str(raw), start, files[start:start + CHUNK_SIZE], size, fast)
        for start in range(0, len(files), CHUNK_SIZE)
    ]
    bad: list[tuple[int, str]] = []
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            bad.extend(_decode_chunk(task))
            if on_progress:
                on_progress(len(task[4]))
        return sorted(bad)
    with _pool_context().Pool(workers) as pool:
        for task, chunk_bad in zip(tasks, pool.imap(_decode_chunk, tasks)):
            bad.extend(chunk_bad)
            if on_progress:
                on_progress(len(task[4]))
    return sorted(bad)


def _drop_rows(npy: Path, rows: list[int]) -> None:
    """Rewrite ``npy`` without ``rows`` (only used when --skip-bad skipped undecodable files)."""
    source = np.load(npy, mmap_mode="r")
    keep = np.setdiff1d(np.arange(len(source)), rows)
    compact = npy.with_suffix(".compact.npy")
    target = np.lib.format.open_memmap(compact, mode="w+", dtype=np.uint8, shape=(len(keep),) + source.shape[1:])
    for start in range(0, len(keep), CHUNK_SIZE):
        target[start:start + CHUNK_SIZE] = source[keep[start:start + CHUNK_SIZE]]
    target.flush()
    del source, target
    os.replace(compact, npy)


def write_index(path: Path, entries: list[ImageEntry]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(INDEX_COLUMNS)
        for e in entries:
            writer.writerow((e.path, e.pid, e.camid, e.modality, e.label))


# ----------------------------------------------------------------------------------------------
# The prepare pipeline


def _replace_dir(tmp: Path, out: Path) -> None:
    """Swap ``tmp`` in as ``out``; the old ``out`` is removed only after the swap succeeded."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _check_output_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} is a file, expected a folder for the prepared data")
    if out.is_dir() and any(out.iterdir()) and read_manifest(out) is None:
        raise DataError(f"output folder {out} is not empty and holds no prepared data; choose another --out")


def prepare_splits(raw: Path, out: Path, dataset: str, splits: dict[str, list[ImageEntry]],
                   bad_listing: list[str], settings: dict, extra_files: list[Path],
                   workers: int | None = None, skip_bad: bool = False, fast: bool = False,
                   on_progress: Callable[[str, int, int], None] | None = None) -> PrepareSummary:
    """Decode and write every split of ``splits``; a no-op when ``out`` already matches the source."""
    started = time.perf_counter()
    out = Path(out)
    _check_output_dir(out)
    fingerprint = source_fingerprint(raw, splits, extra_files, settings)
    counts = {name: len(entries) for name, entries in splits.items()}
    if _is_up_to_date(out, fingerprint):
        return PrepareSummary(out, dataset, True, counts, bad_listing)
    for name, entries in splits.items():
        if not entries:
            raise DataError(f"the {name} split of {raw} has no images")
    size = (settings["height"], settings["width"])
    workers = workers or os.cpu_count() or 1
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    bad_files = list(bad_listing)
    try:
        final_splits = {}
        for name, entries in splits.items():
            progress = (lambda n, name=name, total=len(entries): on_progress(name, n, total)) if on_progress else None
            npy = tmp / f"{name}_images.npy"
            bad_rows = decode_images(raw, [e.path for e in entries], npy, size, workers, fast, progress)
            if bad_rows and not skip_bad:
                raise DataError(f"cannot decode {bad_rows[0][1]} (pass --skip-bad to skip undecodable files)")
            if bad_rows:
                _drop_rows(npy, [row for row, _ in bad_rows])
                bad_files.extend(message.split(":", 1)[0] for _, message in bad_rows)
                dropped = {row for row, _ in bad_rows}
                entries = [e for i, e in enumerate(entries) if i not in dropped]
            write_index(tmp / f"{name}_index.csv", entries)
            final_splits[name] = entries
        _copy_exp(raw, tmp, extra_files)
        seconds = time.perf_counter() - started
        manifest = {
            "format": PREPARED_FORMAT,
            "format_version": PREPARED_FORMAT_VERSION,
            "dataset": dataset,
            "size": [size[0], size[1]],
            "settings": settings,
            "source": str(raw.resolve()),
            "fingerprint": fingerprint,
            "splits": {name: _split_counts(entries) for name, entries in final_splits.items()},
            "num_classes": len({e.label for e in final_splits["train"]}),
            "skipped_files": bad_files,
            "toolkit_version": __version__,
            "seconds": round(seconds, 3),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = sum(len(e) for e in final_splits.values())
    return PrepareSummary(out, dataset, False, {n: len(e) for n, e in final_splits.items()}, bad_files,
                          seconds, total / seconds if seconds else 0.0)


def _copy_exp(raw: Path, out: Path, extra_files: list[Path]) -> None:
    exp = out / "exp"
    exp.mkdir()
    for path in extra_files:
        if path.is_file():
            shutil.copy2(path, exp / path.name)


def prepare_sysu(raw: Path, out: Path, height: int = 288, width: int = 144, train_split: str = "trainval",
                 workers: int | None = None, skip_bad: bool = False, fast: bool = False,
                 on_progress: Callable[[str, int, int], None] | None = None) -> PrepareSummary:
    """Prepare SYSU-MM01 (or a synthetic tree in its layout); see the module docstring."""
    raw = Path(raw)
    _check_size(height, width)
    splits, bad = scan_sysu(raw, train_split, skip_bad)
    exp_files = [raw / "exp" / name for name in ID_LIST_FILES + (PERM_FILE,)]
    settings = {"height": height, "width": width, "train_split": train_split, "fast": fast,
                "format_version": PREPARED_FORMAT_VERSION}
    return prepare_splits(raw, Path(out), "sysu", splits, bad, settings, exp_files, workers, skip_bad,
                          fast, on_progress)


def prepare_regdb(raw: Path, out: Path, trial: int = 1, height: int = 288, width: int = 144,
                  workers: int | None = None, skip_bad: bool = False, fast: bool = False,
                  on_progress: Callable[[str, int, int], None] | None = None) -> PrepareSummary:
    """Prepare one RegDB trial (the idx files name the split and the labels)."""
    raw = Path(raw)
    _check_size(height, width)
    splits, bad = scan_regdb(raw, trial, skip_bad)
    idx_files = [raw / "idx" / f"{s}_{m}_{trial}.txt" for s in ("train", "test") for m in ("visible", "thermal")]
    settings = {"height": height, "width": width, "trial": trial, "fast": fast,
                "format_version": PREPARED_FORMAT_VERSION}
    return prepare_splits(raw, Path(out), "regdb", splits, bad, settings, idx_files, workers, skip_bad,
                          fast, on_progress)


def _check_size(height: int, width: int) -> None:
    if height <= 0 or width <= 0 or height % 16 or width % 16:
        raise UsageError(f"image size {height}x{width} must be positive multiples of 16 (default 288x144)")
