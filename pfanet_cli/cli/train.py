"""train-gan and train-joint subcommands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pfanet_cli.cli.common import OverridesArgument
from pfanet_cli.errors import PfanetError


def train_gan_command(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML, e.g. recipes/sysu_pfanet.yaml")],
    overrides: OverridesArgument = None,
) -> None:
    """Pixel-alignment warm-up: train G_I, G_R with plain discriminators (CycleGAN part)."""
    raise PfanetError("train-gan is not built yet (issue #4)")


def train_joint_command(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML, e.g. recipes/sysu_pfanet.yaml")],
    overrides: OverridesArgument = None,
) -> None:
    """Feature warm-up, then joint PFANet training of F, G and the joint discriminator."""
    raise PfanetError("train-joint is not built yet (issue #4)")
