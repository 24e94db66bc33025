"""Helpers shared by the raw-dataset scanners: folder checks and the image files of one person folder."""

from __future__ import annotations

from pathlib import Path

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
