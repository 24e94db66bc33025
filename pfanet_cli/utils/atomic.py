"""Atomic file writes: write beside the target, then rename over it, so a crash, a full disk or a
Ctrl-C leaves either the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

from PIL import Image


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path: str | Path, binary: bool = True, durable: bool = False) -> Iterator[IO]:
    """Yield a handle on a temporary file next to ``path``; on success it replaces ``path`` (with the
    permissions a plain ``open`` would give). ``durable`` also fsyncs the file and its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | Path, text: str) -> None:
    """``text`` written atomically as UTF-8."""
    with atomic_write(path, binary=False) as handle:
        handle.write(text)


def save_image(image: Image.Image, path: str | Path) -> Path:
    """A PIL image written atomically, in the format its file name says (PNG when it says none PIL knows)."""
    path = Path(path)
    with atomic_write(path) as handle:
        image.save(handle, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
    return path
