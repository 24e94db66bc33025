"""The ``pfanet`` command line: a thin Typer layer over the library.

Each subcommand lives in a small module of this package and only parses options before calling
library functions. ``main`` turns library errors into one line and the exit codes of SPEC §1.
"""

from __future__ import annotations

import sys
import traceback
from typing import Annotated, Optional

import typer
from rich.markup import escape

from pfanet_cli import __version__
from pfanet_cli.cli import common, data, demo, deploy, evaluate, inference, train, trials
from pfanet_cli.errors import EXIT_OTHER, PfanetError
from pfanet_cli.utils.atomic import disk_full, is_out_of_space
from pfanet_cli.utils.console import error_console

app = typer.Typer(
    name="pfanet",
    help="PFANet toolkit for RGB-infrared person re-identification.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"pfanet {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_print_version, is_eager=True, help="print the version and exit"),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks on errors")] = False,
) -> None:
    """PFANet: RGB -> fake IR translation, joint image/feature discriminator and a ResNet-50 with
    BNG attention and MMM, trained and evaluated with the SYSU-MM01, RegDB and LLCM protocols."""
    common.set_debug(debug)


app.add_typer(data.app, name="prepare-data")
common.register(app, "train-gan", train.train_gan_command)
common.register(app, "train-joint", train.train_joint_command)
common.register(app, "train-agw", train.train_agw_command)
common.register(app, "translate", inference.translate_command)
common.register(app, "extract", inference.extract_command)
common.register(app, "export", deploy.export_command)
common.register(app, "search", deploy.search_command)
common.register(app, "evaluate", evaluate.evaluate_command)
common.register(app, "convert-features", evaluate.convert_features_command)
common.register(app, "regdb-all", trials.regdb_all_command)
common.register(app, "demo", demo.demo_command)


def _report(exc: BaseException, message: str, code: int) -> int:
    if common.debug_enabled():
        traceback.print_exception(exc)
    error_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, markup=True)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (0 ok, 2 usage, 3 data, 4 checkpoint, 1 other)."""
    args = sys.argv[1:] if argv is None else list(argv)
    common.set_debug("--debug" in args)
    try:
        app(args=args, prog_name="pfanet", standalone_mode=True)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        return _report(exc, str(exc.code), EXIT_OTHER)
    except PfanetError as exc:
        return _report(exc, str(exc).replace("\n", " "), exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - the CLI boundary reports everything on one line
        if is_out_of_space(exc):  # a writer without its own disk-full message (e.g. the synthetic renderer)
            where = getattr(exc, "filename", None) or "."
            return _report(exc, str(disk_full(where, previous_kept=False)), EXIT_OTHER)
        hint = "" if common.debug_enabled() else " (run with --debug for the traceback)"
        return _report(exc, f"{type(exc).__name__}: {exc}{hint}", EXIT_OTHER)
    return 0
