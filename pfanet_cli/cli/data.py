"""prepare-data subcommands: sysu, regdb, synthetic."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from pfanet_cli.cli.common import guard_interrupt
from pfanet_cli.utils.console import console, progress_bar

app = typer.Typer(
    help="Index and resize a dataset into the prepared format, or render the synthetic dataset.",
    no_args_is_help=True,
)

HeightOption = Annotated[int, typer.Option("--height", help="output image height (multiple of 16)")]
WidthOption = Annotated[int, typer.Option("--width", help="output image width (multiple of 16)")]
WorkersOption = Annotated[Optional[int], typer.Option("--workers", help="decode processes (default: all cores)")]
SkipBadOption = Annotated[
    bool, typer.Option("--skip-bad", help="skip (and count) undecodable or non-image files instead of failing")
]
FastOption = Annotated[
    bool, typer.Option("--fast", help="JPEG draft decoding before the resize: faster, not pixel-exact")
]


def _run_with_progress(prepare: Callable, **kwargs) -> None:
    with progress_bar() as progress:
        tasks: dict[str, int] = {}

        def on_progress(split: str, done: int, total: int) -> None:
            if split not in tasks:
                tasks[split] = progress.add_task(f"decode {split}", total=total, info="")
            progress.advance(tasks[split], done)

        summary = prepare(on_progress=on_progress, **kwargs)
    counts = ", ".join(f"{name} {n:,}" for name, n in summary.counts.items())
    if summary.skipped_unchanged:
        console.print(f"{summary.out} is up to date with its source ({counts} images); nothing to do",
                      soft_wrap=True)
        return
    skipped = f"; skipped {len(summary.bad_files)} bad file(s)" if summary.bad_files else ""
    console.print(
        f"prepared {summary.dataset} into {summary.out}: {counts} images "
        f"in {summary.seconds:.1f} s ({summary.images_per_second:,.0f} images/s){skipped}", soft_wrap=True
    )


@app.command("sysu")
@guard_interrupt
def sysu_command(
    raw: Annotated[Path, typer.Argument(help="raw SYSU-MM01 tree (cam1..cam6, exp/)")] = Path("data/SYSU-MM01"),
    out: Annotated[Path, typer.Option("--out", help="prepared output folder")] = Path("data/prepared/sysu"),
    height: HeightOption = 288,
    width: WidthOption = 144,
    train_split: Annotated[
        str, typer.Option("--train-split", help="trainval (train ∪ val, the convention) or train (val kept apart)")
    ] = "trainval",
    workers: WorkersOption = None,
    skip_bad: SkipBadOption = False,
    fast: FastOption = False,
) -> None:
    """Index and resize SYSU-MM01 (or a synthetic tree in its layout)."""
    from pfanet_cli.data.prepare import prepare_sysu  # heavy: numpy and scipy, not needed for --help

    _run_with_progress(prepare_sysu, raw=raw, out=out, height=height, width=width, train_split=train_split,
                       workers=workers, skip_bad=skip_bad, fast=fast)


@app.command("regdb")
@guard_interrupt
def regdb_command(
    raw: Annotated[Path, typer.Argument(help="raw RegDB tree (idx/, Visible/, Thermal/)")] = Path("data/RegDB"),
    trial: Annotated[int, typer.Option("--trial", help="RegDB split 1..10")] = 1,
    out: Annotated[
        Optional[Path], typer.Option("--out", help="prepared output folder [default: data/prepared/regdb/trialT]")
    ] = None,
    height: HeightOption = 288,
    width: WidthOption = 144,
    workers: WorkersOption = None,
    skip_bad: SkipBadOption = False,
    fast: FastOption = False,
) -> None:
    """Index and resize one RegDB trial (visible camid 1, thermal camid 2)."""
    from pfanet_cli.data.prepare import prepare_regdb  # heavy: numpy and scipy, not needed for --help

    out = out or Path(f"data/prepared/regdb/trial{trial}")
    _run_with_progress(prepare_regdb, raw=raw, out=out, trial=trial, height=height, width=width,
                       workers=workers, skip_bad=skip_bad, fast=fast)


@app.command("synthetic")
@guard_interrupt
def synthetic_command(
    out: Annotated[Path, typer.Argument(help="folder to write the raw SYSU-layout tree into")],
    preset: Annotated[str, typer.Option("--preset", help="small (demo/tests) or sysu (real per-camera counts)")] = "small",
    ids: Annotated[Optional[int], typer.Option("--ids", help="number of identities (overrides the preset)")] = None,
    seed: Annotated[int, typer.Option("--seed", help="random seed")] = 0,
    height: Annotated[Optional[int], typer.Option("--height", help="raw image height")] = None,
    width: Annotated[Optional[int], typer.Option("--width", help="raw image width")] = None,
    workers: WorkersOption = None,
) -> None:
    """Render synthetic RGB/IR pedestrians in the exact SYSU-MM01 raw layout."""
    from pfanet_cli.data.synthetic import render_synthetic_sysu  # heavy: numpy and scipy, not needed for --help

    summary = render_synthetic_sysu(out, preset=preset, ids=ids, seed=seed, height=height, width=width,
                                    workers=workers, show_progress=True)
    console.print(f"rendered {summary.total_images:,} images into {summary.out} in {summary.seconds:.1f} s; "
                  f"next: pfanet prepare-data sysu {summary.out}", soft_wrap=True)
