"""demo subcommand."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pfanet_cli.cli.common import DeviceOption, IrResidualOption, OverridesArgument, ir_residual_kwargs


def demo_command(
    overrides: OverridesArgument = None,
    out: Annotated[Path, typer.Option("--out", help="demo folder (re-running resumes it)")] = Path("runs/demo"),
    device: DeviceOption = None,
    ids: Annotated[int, typer.Option("--ids", help="synthetic identities (half train, a tenth val, 40% test); 400 "
                                                   "renders the test split of benchmarks/ablation.py")] = 400,
    recipe: Annotated[str, typer.Option("--recipe", help="recipe file or bundled recipe name")] = "demo_cpu.yaml",
    seed: Annotated[int, typer.Option("--seed", help="random seed of the data and the training")] = 0,
    ir_residual: IrResidualOption = None,
) -> None:
    """Run the whole pipeline on built-in synthetic data (render, prepare, train-gan, train-joint,
    translate, extract, evaluate) and write report.html, report.md and results.json."""
    from pfanet_cli.demo.pipeline import run_demo  # heavy: torch, not needed for --help

    run_demo(out, device or "auto", ids, recipe, overrides or [], seed, **ir_residual_kwargs(ir_residual))
