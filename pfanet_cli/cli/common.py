"""Options shared by several subcommands and the error-to-exit-code policy of SPEC §1."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from pfanet_cli.errors import Interrupted

DEBUG_ENV = "PFANET_DEBUG"

DeviceOption = Annotated[
    Optional[str], typer.Option("--device", help="auto (CUDA when available), cpu or cuda [default: the recipe's]")
]
SeedOption = Annotated[Optional[int], typer.Option("--seed", help="random seed (overrides the recipe)")]
OutOption = Annotated[Optional[Path], typer.Option("--out", help="output directory")]
ResumeOption = Annotated[
    Optional[str], typer.Option("--resume", help="'auto' (newest checkpoint of --out) or a checkpoint path")
]
IrResidualOption = Annotated[
    Optional[float], typer.Option(
        "--ir-residual", help="share of each material's IR intensity unrelated to its colour, in [0, 1]: 0 fully "
                              "predictable from colour and material, 1 the data of pfanet 0.1 (docs/synthetic.md) "
                              "[default: 0.3]")
]
OverridesArgument = Annotated[
    Optional[list[str]], typer.Argument(help="recipe overrides as dotted key=value, e.g. joint.iterations=100")
]


_debug = False


def ir_residual_kwargs(ir_residual: float | None) -> dict[str, float]:
    """``--ir-residual`` as renderer keyword arguments: none when it was not given (the renderer's default)."""
    return {} if ir_residual is None else {"ir_residual": ir_residual}


def debug_enabled() -> bool:
    """``--debug`` was given to this invocation, or PFANET_DEBUG is set in the environment."""
    return _debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def set_debug(enabled: bool) -> None:
    global _debug
    _debug = enabled


def guard_interrupt(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn Ctrl-C inside a command into :class:`Interrupted` (exit 130, one line) instead of the
    framework's bare 'Aborted!'; the wrapped signature is what Typer reads."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt as exc:
            raise Interrupted(
                "interrupted; completed outputs and the last complete checkpoint are kept"
            ) from exc

    return wrapper


def register(app: typer.Typer, name: str, func: Callable[..., Any]) -> None:
    app.command(name)(guard_interrupt(func))
