"""translate and extract subcommands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pfanet_cli.errors import PfanetError


def translate_command(
    rgb_dir: Annotated[Path, typer.Argument(help="folder of RGB images (searched recursively)")],
    out_dir: Annotated[Path, typer.Argument(help="output folder for the fake IR images")],
) -> None:
    """Translate RGB images to fake IR images with G_I."""
    raise PfanetError("translate is not built yet (issue #4)")


def extract_command() -> None:
    """Extract test features into a features .npz file."""
    raise PfanetError("extract is not built yet (issue #4)")
