"""train-gan, train-joint and train-agw subcommands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from pfanet_cli.cli.common import DeviceOption, OutOption, OverridesArgument, ResumeOption, SeedOption
from pfanet_cli.config import Recipe, load_recipe
from pfanet_cli.utils.console import console

RecipeArgument = Annotated[Path, typer.Argument(help="recipe YAML, e.g. recipes/sysu_pfanet.yaml")]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="build every network and print parameter counts; no data, no training")
]
JsonOption = Annotated[bool, typer.Option("--json", help="with --dry-run: print the counts as JSON")]


def _load(recipe: Path, overrides: list[str] | None, device: str | None,
          seed: int | None) -> tuple[Recipe, list[str]]:
    overrides = list(overrides or [])
    if device is not None:
        overrides.append(f"train.device={device}")
    if seed is not None:
        overrides.append(f"train.seed={seed}")
    return load_recipe(recipe, overrides), overrides


def _dry_run(recipe: Recipe, stage: str, as_json: bool) -> None:
    from pfanet_cli.engine.trainer import stage_parameter_counts  # heavy: torch, not needed for --help

    counts = stage_parameter_counts(recipe, stage)
    if as_json:
        typer.echo(json.dumps({"recipe": recipe.name, "stage": stage, "parameters": counts}))
        return
    table = Table(title=f"{recipe.name}: {stage} networks")
    table.add_column("network")
    table.add_column("parameters", justify="right")
    for name, count in counts.items():
        table.add_row(name, f"{count:,}")
    console.print(table)


def _train(trainer_class: type, loaded: tuple[Recipe, list[str]], out: Path | None, resume: str | None,
           dry_run: bool, as_json: bool, **stage_options: Any) -> None:
    """Print parameter counts (``--dry-run``) or run the stage of ``trainer_class``."""
    from pfanet_cli.engine.trainer import run_stage  # heavy: torch, not needed for --help

    recipe, overrides = loaded
    if dry_run:
        _dry_run(recipe, trainer_class.stage, as_json)
        return
    result = run_stage(trainer_class, recipe, overrides, out, resume, **stage_options)
    if result.checkpoint is not None:  # rank 0 under torchrun
        console.print(f"{trainer_class.stage} finished: {result.checkpoint}")


def train_gan_command(
    recipe: RecipeArgument,
    overrides: OverridesArgument = None,
    out: OutOption = None,
    resume: ResumeOption = None,
    device: DeviceOption = None,
    seed: SeedOption = None,
    dry_run: DryRunOption = False,
    as_json: JsonOption = False,
) -> None:
    """Pixel-alignment warm-up: G_I and G_R against plain PatchGAN discriminators (CycleGAN part)."""
    from pfanet_cli.engine.train_gan import GanTrainer  # heavy: torch, not needed for --help

    _train(GanTrainer, _load(recipe, overrides, device, seed), out, resume, dry_run, as_json)


def train_joint_command(
    recipe: RecipeArgument,
    overrides: OverridesArgument = None,
    init_gan: Annotated[
        Optional[str], typer.Option(
            "--init-gan", help="train-gan checkpoint to start G_I and G_R from, or 'none' for random generators "
                               "(warned) \\[default: the newest finished train-gan run of the recipe on the same "
                               "prepared data and image size]")
    ] = None,
    init_gan_any: Annotated[
        bool, typer.Option("--init-gan-any", help="accept an --init-gan checkpoint trained on other prepared data "
                                                  "or at another image size (refused otherwise)")
    ] = False,
    out: OutOption = None,
    resume: ResumeOption = None,
    device: DeviceOption = None,
    seed: SeedOption = None,
    dry_run: DryRunOption = False,
    as_json: JsonOption = False,
) -> None:
    """Feature warm-up, then joint PFANet training of F, G_I/G_R and the joint discriminator."""
    from pfanet_cli.engine.train_joint import JointTrainer  # heavy: torch, not needed for --help

    _train(JointTrainer, _load(recipe, overrides, device, seed), out, resume, dry_run, as_json, init_gan=init_gan,
           init_gan_any=init_gan_any)


def train_agw_command(
    recipe: RecipeArgument,
    overrides: OverridesArgument = None,
    out: OutOption = None,
    resume: ResumeOption = None,
    device: DeviceOption = None,
    seed: SeedOption = None,
    dry_run: DryRunOption = False,
    as_json: JsonOption = False,
) -> None:
    """AGW (model.method=agw): its two-stream network trained in one stage, no GAN (sysu_agw.yaml, sysu_caj.yaml)."""
    from pfanet_cli.engine.train_agw import AgwTrainer  # heavy: torch, not needed for --help

    _train(AgwTrainer, _load(recipe, overrides, device, seed), out, resume, dry_run, as_json)
