"""Reading a file written by ``torch.save`` safely: ``torch.load(weights_only=True)``, so a file whose
unpickling would run code is refused and nothing in it runs; every failure is one line (exit 4) that
says what is wrong with the file in the user's terms, never torch's advice to load it unsafely, and
torch's warnings about the file (e.g. its pickle protocol) do not reach the user."""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from pfanet_cli.errors import CheckpointError

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_OPCODE = re.compile(r"Unsupported operand (\d+)")
_ENFORCE = re.compile(r"\[enforce fail at [^\]]*\][ .]*")


def safe_torch_load(path: Path, what: str, advice: str) -> Any:
    """The tensors and plain values in ``path`` (a ``what``, e.g. "checkpoint"), loaded on the CPU;
    :class:`CheckpointError` ending with ``advice`` when the file is empty, unreadable, damaged or holds
    Python objects."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise CheckpointError(f"{what} {path} is empty (0 bytes), an interrupted copy or download; {advice}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as exc:
        if not _is_pickle(path):
            raise _corrupt(path, what, advice, exc) from None
        raise CheckpointError(
            f"{what} {path} holds Python objects that a safe load refuses ({_refusal(exc)}); nothing in it was "
            f"run, and pfanet never loads such files; {advice}"
        ) from None
    except OSError as exc:
        if not isinstance(exc, zipfile.BadZipFile) and exc.errno is not None:
            raise CheckpointError(f"cannot read {what} {path}: {exc.strerror}") from None
        raise _corrupt(path, what, advice, exc) from None
    except Exception as exc:  # noqa: BLE001 - whatever a damaged file makes the reader raise
        raise _corrupt(path, what, advice, exc) from None


def _is_pickle(path: Path) -> bool:
    """A file torch.save wrote (a zip archive) or a bare pickle (it starts with a protocol opcode)."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    return head.startswith((b"PK\x03\x04", b"\x80"))


def _refusal(exc: BaseException) -> str:
    """What the safe unpickler refused, in words."""
    text = str(exc)
    if found := _GLOBAL.search(text):
        return f"it asks for {found.group(1)}"
    if found := _OPCODE.search(text):
        return f"pickle instruction {found.group(1)} is outside the safe subset"
    return "a Python object or pickle instruction outside the safe subset"


def _corrupt(path: Path, what: str, advice: str, exc: BaseException) -> CheckpointError:
    if isinstance(exc, EOFError):
        detail = "it ends too early"
    elif isinstance(exc, (RuntimeError, OSError)):
        lines = [line.strip() for line in _ENFORCE.sub("", str(exc)).splitlines()
                 if line.strip() and "weights_only" not in line and "Weights only" not in line]
        detail = lines[0].split(". ")[0][:160] if lines else type(exc).__name__
    else:
        detail = "not a file that torch.save wrote"
    return CheckpointError(f"{what} {path} is truncated or corrupt and cannot be loaded ({detail}); {advice}")
