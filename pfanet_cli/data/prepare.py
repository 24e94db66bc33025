"""``prepare-data``: index a raw dataset tree, decode every image once, convert to 3-channel RGB,
resize with LANCZOS and store per split ``<split>_images.npy`` (uint8 N×H×W×3, memory-mapped
later) with ``<split>_index.csv`` and ``manifest.json`` (SPEC §2, ``data/format.py``).

Decoding runs in worker processes that write straight into the output ``.npy`` file, so pixels
never travel between processes. Output is built in a temporary sibling folder and swapped in at the
end: an interrupted run leaves the previous prepared data intact.
"""

from __future__ import annotations

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

from pfanet_cli import __version__
from pfanet_cli.data import llcm, regdb, sysu
from pfanet_cli.data.format import (
    EXP_DIR,
    PREPARED_FORMAT,
    PREPARED_FORMAT_VERSION,
    ImageEntry,
    images_file,
    index_file,
    read_manifest,
    write_index,
    write_manifest,
)
from pfanet_cli.errors import DataError, UsageError
from pfanet_cli.utils.atomic import (
    raise_disk_full,
    recover_interrupted_folder,
    replace_folder,
    reserve_space,
    temporary_folder,
)
from pfanet_cli.utils.images import BadImage, load_rgb

CHUNK_SIZE = 256


@dataclass
class PrepareSummary:
    out: Path
    dataset: str
    skipped_unchanged: bool
    counts: dict[str, int]
    bad_files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    images_per_second: float = 0.0


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


def _is_up_to_date(out: Path, fingerprint: str) -> bool:
    manifest = read_manifest(out)
    if not manifest or manifest.get("fingerprint") != fingerprint:
        return False
    return all(images_file(out, split).is_file() and index_file(out, split).is_file()
               for split in manifest.get("splits", {}))


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
    data_offset = _new_array_file(npy, (len(files), size[0], size[1], 3))
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


def _new_array_file(npy: Path, shape: tuple[int, ...]) -> int:
    """Create a uint8 ``.npy`` of ``shape`` with its space allocated on the disk; returns the data offset."""
    array = np.lib.format.open_memmap(npy, mode="w+", dtype=np.uint8, shape=shape)
    data_offset = array.offset
    del array
    with open(npy, "r+b") as handle:
        reserve_space(handle, data_offset + int(np.prod(shape)))
    return data_offset


def _drop_rows(npy: Path, rows: list[int]) -> None:
    """Rewrite ``npy`` without ``rows`` (only used when --skip-bad skipped undecodable files)."""
    source = np.load(npy, mmap_mode="r")
    keep = np.setdiff1d(np.arange(len(source)), rows)
    compact = npy.with_suffix(".compact.npy")
    _new_array_file(compact, (len(keep),) + source.shape[1:])
    target = np.load(compact, mmap_mode="r+")
    for start in range(0, len(keep), CHUNK_SIZE):
        target[start:start + CHUNK_SIZE] = source[keep[start:start + CHUNK_SIZE]]
    target.flush()
    del source, target
    os.replace(compact, npy)


# ----------------------------------------------------------------------------------------------
# The prepare pipeline


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
    if out.parent.is_dir():
        recover_interrupted_folder(out)
    _check_output_dir(out)
    fingerprint = source_fingerprint(raw, splits, extra_files, settings)
    counts = {name: len(entries) for name, entries in splits.items()}
    if _is_up_to_date(out, fingerprint):
        return PrepareSummary(out, dataset, True, counts, bad_listing)
    for name, entries in splits.items():
        if not entries:
            raise DataError(f"the {name} split of {raw} has no images")
    decode = _Decode(raw, (settings["height"], settings["width"]), workers or os.cpu_count() or 1, fast, skip_bad,
                     on_progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_folder(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    bad_files = list(bad_listing)
    needed = sum(len(entries) for entries in splits.values()) * decode.size[0] * decode.size[1] * 3
    try:
        with raise_disk_full(out, needed):
            final_splits = {name: decode.split(tmp, name, entries, bad_files) for name, entries in splits.items()}
            _copy_exp(tmp, extra_files)
            seconds = time.perf_counter() - started
            write_manifest(tmp, {
                "format": PREPARED_FORMAT,
                "format_version": PREPARED_FORMAT_VERSION,
                "dataset": dataset,
                "size": list(decode.size),
                "settings": settings,
                "source": str(raw.resolve()),
                "fingerprint": fingerprint,
                "splits": {name: _split_counts(entries) for name, entries in final_splits.items()},
                "num_classes": len({e.label for e in final_splits["train"]}),
                "skipped_files": bad_files,
                "toolkit_version": __version__,
                "seconds": round(seconds, 3),
            })
            replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = sum(len(e) for e in final_splits.values())
    return PrepareSummary(out, dataset, False, {n: len(e) for n, e in final_splits.items()}, bad_files,
                          seconds, total / seconds if seconds else 0.0)


@dataclass
class _Decode:
    """How the splits of one run are decoded (source, size, workers, options)."""

    raw: Path
    size: tuple[int, int]
    workers: int
    fast: bool
    skip_bad: bool
    on_progress: Callable[[str, int, int], None] | None

    def split(self, folder: Path, name: str, entries: list[ImageEntry], bad_files: list[str]) -> list[ImageEntry]:
        """Decode one split into ``folder`` and write its index; returns the entries kept (undecodable
        files are an error, or with ``skip_bad`` dropped and added to ``bad_files``)."""
        progress = None
        if self.on_progress:
            def progress(n: int) -> None:
                self.on_progress(name, n, len(entries))
        npy = images_file(folder, name)
        bad_rows = decode_images(self.raw, [e.path for e in entries], npy, self.size, self.workers, self.fast,
                                 progress)
        if bad_rows and not self.skip_bad:
            raise DataError(f"cannot decode {bad_rows[0][1]} (pass --skip-bad to skip undecodable files)")
        if bad_rows:
            _drop_rows(npy, [row for row, _ in bad_rows])
            bad_files.extend(message.split(":", 1)[0] for _, message in bad_rows)
            dropped = {row for row, _ in bad_rows}
            entries = [e for i, e in enumerate(entries) if i not in dropped]
        write_index(index_file(folder, name), entries)
        return entries


def _copy_exp(out: Path, extra_files: list[Path]) -> None:
    exp = out / EXP_DIR
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
    splits, bad = sysu.scan_sysu(raw, train_split, skip_bad)
    settings = {"height": height, "width": width, "train_split": train_split, "fast": fast,
                "format_version": PREPARED_FORMAT_VERSION}
    return prepare_splits(raw, Path(out), "sysu", splits, bad, settings, sysu.protocol_files(raw), workers,
                          skip_bad, fast, on_progress)


def prepare_regdb(raw: Path, out: Path, trial: int = 1, height: int = 288, width: int = 144,
                  workers: int | None = None, skip_bad: bool = False, fast: bool = False,
                  on_progress: Callable[[str, int, int], None] | None = None) -> PrepareSummary:
    """Prepare one RegDB trial (the idx files name the split and the labels)."""
    raw = Path(raw)
    _check_size(height, width)
    splits, bad = regdb.scan_regdb(raw, trial, skip_bad)
    settings = {"height": height, "width": width, "trial": trial, "fast": fast,
                "format_version": PREPARED_FORMAT_VERSION}
    return prepare_splits(raw, Path(out), "regdb", splits, bad, settings, regdb.idx_files(raw, trial), workers,
                          skip_bad, fast, on_progress)


def prepare_regdb_trials(raw: Path, out_root: Path, trials: list[int], height: int = 288, width: int = 144,
                         workers: int | None = None, skip_bad: bool = False, fast: bool = False,
                         on_progress: Callable[[str, int, int], None] | None = None) -> list[PrepareSummary]:
    """Prepare several RegDB trials into ``<out_root>/trial<T>``; every trial's index files are checked
    before the first one is decoded, so a missing file stops the run before any work."""
    raw = Path(raw)
    _check_size(height, width)
    for trial in trials:
        regdb.check_trial(trial)
        missing = [path for path in regdb.idx_files(raw, trial) if not path.is_file()]
        if missing:
            raise DataError(f"missing RegDB index file {missing[0]} (trial {trial}); nothing was prepared")
    return [prepare_regdb(raw, Path(out_root) / f"trial{trial}", trial, height, width, workers, skip_bad, fast,
                          on_progress) for trial in trials]


def prepare_llcm(raw: Path, out: Path, height: int = 288, width: int = 144, workers: int | None = None,
                 skip_bad: bool = False, fast: bool = False,
                 on_progress: Callable[[str, int, int], None] | None = None) -> PrepareSummary:
    """Prepare LLCM: the train split from ``idx/train_{vis,nir}.txt``, the test split from the folders of
    the ids in ``idx/test_id.txt`` (``data/llcm.py``); the idx files are copied into ``exp/``."""
    raw = Path(raw)
    _check_size(height, width)
    splits, bad = llcm.scan_llcm(raw, skip_bad)
    settings = {"height": height, "width": width, "fast": fast, "format_version": PREPARED_FORMAT_VERSION}
    return prepare_splits(raw, Path(out), "llcm", splits, bad, settings, llcm.protocol_files(raw), workers,
                          skip_bad, fast, on_progress)


def _check_size(height: int, width: int) -> None:
    if height <= 0 or width <= 0 or height % 16 or width % 16:
        raise UsageError(f"image size {height}x{width} must be positive multiples of 16 (default 288x144)")
