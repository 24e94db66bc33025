"""Helpers shared by the raw-dataset scanners: folder checks, the image files of one person folder, and
the image lists (``<relative path> <label>`` per line) that RegDB and LLCM ship."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from pfanet_cli.errors import DataError
from pfanet_cli.utils.images import IMAGE_SUFFIXES, is_image_file


def require_dir(path: Path, what: str, hint: str) -> None:
    """:class:`DataError` unless ``path`` is a folder (``hint`` says where it should come from)."""
    if not path.exists():
        raise DataError(f"{what} not found at {path} ({hint})")
    if not path.is_dir():
        raise DataError(f"{what} at {path} is a file, expected a folder ({hint})")


def list_person_folder(folder: Path, raw: Path, skip_bad: bool, bad: list[str]) -> list[str]:
    """Image files of one person folder, sorted by name, as paths relative to ``raw``.

    Non-image files and an empty folder are errors, or (``skip_bad``) skipped and listed in ``bad``."""
    files = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        rel = entry.relative_to(raw).as_posix()
        if not entry.is_file() or not is_image_file(entry):
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


def read_image_list(path: Path) -> Iterator[tuple[str, str, int]]:
    """The rows of an image list (RegDB's ``idx/`` files, LLCM's train lists): ``(where, relative path with
    forward slashes, label)``, ``where`` being ``file:line`` for messages. Blank lines are skipped; any other
    line that is not ``<relative path> <integer label>`` is a :class:`DataError` naming its place."""
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DataError(f"{path}:{number}: expected '<relative path> <label>', got {line.strip()!r}")
        yield f"{path}:{number}", parts[0].replace("\\", "/"), int(parts[1])


def listed_image_exists(raw: Path, rel: str, where: str, skip_bad: bool, bad: list[str]) -> bool:
    """Whether the image a list names exists under ``raw``; a missing one is an error, or (``skip_bad``)
    listed in ``bad``."""
    if (raw / rel).is_file():
        return True
    if not skip_bad:
        raise DataError(f"{where}: image {rel} does not exist (pass --skip-bad to skip it)")
    bad.append(rel)
    return False
