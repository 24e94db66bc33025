"""prepare-data subcommands: sysu, regdb, synthetic."""

from __future__ import annotations

import typer

app = typer.Typer(help="Index and resize a dataset, or render the synthetic one.", no_args_is_help=True)
