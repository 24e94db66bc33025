"""Safe file writes: write beside the target, then rename over it, so a crash, a full disk or a
Ctrl-C leaves either the old file or the new one, never half of either.

A full disk is reported as :class:`DiskFull` (one line naming the file, the space it needed and the
space left). Temporary files carry the writer's process id, so the next writer of the same file
removes those a killed process left behind, and never those of a process still writing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

from PIL import Image

from pfanet_cli.errors import DiskFull, UsageError

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""Disk full, quota exceeded, file too large for the file system or the process's size limit."""
READ_ONLY_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _size(value: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value} bytes"


def free_space(path: str | Path) -> int | None:
    """Bytes available to this user on the file system holding ``path`` (or its nearest existing parent)."""
    path = Path(path).absolute()
    for folder in (path, *path.parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return None


def is_out_of_space(exc: BaseException | None) -> bool:
    """True when ``exc`` or an exception it was raised from or during is a full-disk ``OSError``."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full(path: str | Path, needed: int | None = None, written: int | None = None,
              previous_kept: bool = True) -> DiskFull:
    """The one-line error of a write to ``path`` that ran out of space."""
    path = Path(path)
    free = free_space(path.parent)
    if needed is not None:
        need = f"needs about {_size(needed)}"
    elif written:
        need = f"needs more than {_size(written)}"
    else:
        need = "needs more space"
    left = f", {_size(free)} free" if free is not None else ""
    kept = f"; the previous {path.name} is unchanged" if previous_kept and path.exists() else ""
    return DiskFull(f"no space left on the device writing {path}: it {need}{left}{kept}; "
                    "free some space and run the same command again")


@contextlib.contextmanager
def raise_disk_full(path: str | Path, needed: int | None = None) -> Iterator[None]:
    """Turn a full-disk error inside the block (however a library wrapped it) into :class:`DiskFull`."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as exc:
        if is_out_of_space(exc):
            raise disk_full(path, needed) from exc
        raise


class _TrackedFile:
    """A file handle that remembers a full-disk error of its writes, so that one is recognised even when
    the writing library (torch, numpy, PIL) re-raises it as another error, and how many bytes it was
    asked to write.
    It offers no ``fileno``: writers must go through ``write``."""

    def __init__(self, handle: IO) -> None:
        self._handle = handle
        self.error: OSError | None = None
        self.written = 0

    def write(self, data: Any) -> int:
        self.written += len(data) if isinstance(data, str) else memoryview(data).nbytes
        try:
            return self._handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str) -> Any:
        if name == "fileno":
            raise AttributeError(name)
        return getattr(self._handle, name)


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


_STALE = re.compile(r"\.(?P<pid>\d+)\.[^.]+\.tmp$")


def remove_stale_temporaries(folder: str | Path, target: str | None = None) -> list[Path]:
    """Remove the temporary files of atomic writes (of ``target``, or of any file) in ``folder`` whose
    writing process no longer exists; returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    prefix = f".{target}." if target else "."
    for entry in folder.iterdir():
        name = entry.name
        match = _STALE.search(name)
        if not name.startswith(prefix) or not match or process_alive(int(match["pid"])):
            continue
        entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_write(path: str | Path, binary: bool = True, durable: bool = False,
                 size_hint: int | None = None) -> Iterator[IO]:
    """Yield a handle on a temporary file next to ``path``; on success it replaces ``path`` (with the
    permissions a plain ``open`` would give). ``durable`` also fsyncs the file and its folder.
    A full disk raises :class:`DiskFull` (``size_hint``: the expected size, for its message) and leaves
    ``path`` as it was; a folder that cannot be written is a :class:`UsageError`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent, path.name)
        fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if exc.errno in READ_ONLY_ERRNOS:
            raise UsageError(f"cannot write {path} ({exc.strerror}); choose a writable location") from exc
        raise
    tracked = None
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
            tracked = _TrackedFile(handle)
            yield tracked
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if is_out_of_space(exc) or (tracked is not None and is_out_of_space(tracked.error)):
            raise disk_full(path, size_hint, tracked.written if tracked else None) from exc
        raise
    if durable:
        _fsync_dir(path.parent)


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


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
    with atomic_write(path, binary=False, size_hint=len(text.encode("utf-8"))) as handle:
        handle.write(text)


def save_image(image: Image.Image, path: str | Path) -> Path:
    """A PIL image written atomically, in the format its file name says (PNG when it says none PIL knows)."""
    path = Path(path)
    with atomic_write(path) as handle:
        image.save(handle, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
    return path


def append_line(path: str | Path, line: str) -> None:
    """Append one line to a log file in one write; on a failure (a full disk: :class:`DiskFull`) the file is
    cut back to where it was, so it never ends in half a line."""
    path = Path(path)
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    with open(path, "ab", buffering=0) as handle:
        start = handle.seek(0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[handle.write(view):]
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.truncate(path, start)
            if is_out_of_space(exc):
                raise disk_full(path, len(data), previous_kept=False) from exc
            raise


def reserve_space(handle: IO, size: int) -> None:
    """Allocate the first ``size`` bytes of an open file on the disk now (where the file system can), so a
    full disk fails here, with ``OSError`` ENOSPC, instead of in the middle of the work (or as a crash
    when the file is written through a memory map)."""
    try:
        os.posix_fallocate(handle.fileno(), 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise


def check_writable_folder(folder: str | Path, what: str = "output folder") -> None:
    """Exit-2 error when no file can be created in ``folder`` (read-only disk, no permission), found by
    creating and removing a probe file in it, or in its nearest existing parent when it does not exist yet."""
    folder = Path(folder)
    existing = next((f for f in (folder, *folder.absolute().parents) if f.is_dir()), folder)
    try:
        fd, probe = tempfile.mkstemp(prefix=_temporary_prefix(existing / "write-probe"), suffix=".tmp", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        if exc.errno in READ_ONLY_ERRNOS:
            raise UsageError(f"cannot write into the {what} {folder} ({exc.strerror}); choose a writable folder") \
                from exc
        if exc.errno in NO_SPACE_ERRNOS:
            raise disk_full(folder, previous_kept=False) from exc
        raise


def temporary_folder(out: Path) -> Path:
    """Where a folder ``out`` is built before :func:`replace_folder` swaps it in: ``.NAME.tmp-PID`` beside it."""
    return out.parent / f".{out.name}.tmp-{os.getpid()}"


def recover_interrupted_folder(out: Path) -> None:
    """Undo what a killed writer of the folder ``out`` left beside it: its half-built ``.NAME.tmp-PID`` folder,
    and the previous version moved aside as ``.NAME.old-PID`` in the instant before the new one took its place
    (put back when ``out`` is missing)."""
    for entry in sorted(out.parent.glob(f".{out.name}.*-*")):
        kind, _, pid = entry.name[len(out.name) + 2:].rpartition("-")
        if kind not in ("tmp", "old") or not pid.isdigit() or process_alive(int(pid)):
            continue
        if kind == "old" and not out.exists():
            os.replace(entry, out)
        else:
            shutil.rmtree(entry, ignore_errors=True)


def replace_folder(tmp: Path, out: Path) -> None:
    """Swap the folder ``tmp`` in as ``out``; the old ``out`` is removed only after the swap succeeded."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
