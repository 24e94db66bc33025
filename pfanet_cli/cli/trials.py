"""regdb-all: one model per RegDB trial, trained, extracted and evaluated, resumable per trial."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pfanet_cli.cli.common import DeviceOption, OverridesArgument, SeedOption


def regdb_all_command(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML with data.dataset regdb")] = Path("regdb_pfanet.yaml"),
    overrides: OverridesArgument = None,
    trial: Annotated[str, typer.Option("--trial", help="RegDB trials: all or a list such as 1,2")] = "all",
    data: Annotated[Path, typer.Option(
        "--data", help="parent of the prepared trials trial1..trial10 (pfanet prepare-data regdb RAW --trial all)")
    ] = Path("data/prepared/regdb"),
    out: Annotated[Path, typer.Option(
        "--out", help="run folder: trial<T>/{gan,joint,features.npz,results.json} and results.json")
    ] = Path("runs/regdb_all"),
    device: DeviceOption = None,
    seed: SeedOption = None,
) -> None:
    """Train and evaluate one model per RegDB trial (train-gan, train-joint, extract, both directions), then
    report each trial and the mean ± std over trials. Re-running resumes: finished trials are kept."""
    from pfanet_cli.data.regdb import parse_trials  # heavy: numpy, not needed for --help
    from pfanet_cli.regdb_all import run_regdb_all  # heavy: torch, not needed for --help

    extra = list(overrides or [])
    if device is not None:
        extra.append(f"train.device={device}")
    if seed is not None:
        extra.append(f"train.seed={seed}")
    run_regdb_all(recipe, extra, parse_trials(trial), data_root=data, out=out)
