"""The optional extras: ``pfanet[export]`` (onnx, onnxscript, onnxruntime) and ``pfanet[search]`` (faiss-cpu).
Without them the commands that need them stop with one line naming the extra (exit 2)."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from pfanet_cli.errors import UsageError

EXTRAS = {"export": ("onnx", "onnxscript", "onnxruntime"), "search": ("faiss",)}
PIP_NAMES = {"faiss": "faiss-cpu"}


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    return importlib.util.find_spec(module) is not None


def missing_from(extra: str) -> list[str]:
    """The packages of ``extra`` that are not installed (pip names)."""
    return [PIP_NAMES.get(module, module) for module in EXTRAS[extra] if not installed(module)]


def require_extra(extra: str, purpose: str, modules: tuple[str, ...] | None = None) -> None:
    """:class:`UsageError` naming the extra when any of its packages (or of ``modules``) is missing."""
    missing = [PIP_NAMES.get(m, m) for m in modules if not installed(m)] if modules else missing_from(extra)
    if missing:
        raise UsageError(f"{purpose} needs the optional extra pfanet[{extra}] ({', '.join(missing)} not installed): "
                         f"pip install 'pfanet[{extra}]'")


def import_extra(module: str, extra: str, purpose: str) -> ModuleType:
    """``module`` imported, or the one-line error naming ``extra`` when it is not installed."""
    require_extra(extra, purpose, (module,))
    return importlib.import_module(module)
