"""prepare-data subcommands: sysu, regdb, llcm, synthetic."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from pfanet_cli.cli.common import IrResidualOption, guard_interrupt, ir_residual_kwargs
from pfanet_cli.errors import UsageError
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
        tasks: dict[str, list[int]] = {}

        def on_progress(split: str, done: int, total: int) -> None:
            if split not in tasks:
                tasks[split] = [progress.add_task(f"decode {split}", total=total, info=""), 0]
            progress.advance(tasks[split][0], done)
            tasks[split][1] += done
            if tasks[split][1] >= total:  # the next trial's split of that name gets its own bar
                del tasks[split]

        summaries = prepare(on_progress=on_progress, **kwargs)
    for summary in summaries if isinstance(summaries, list) else [summaries]:
        _report(summary)


def _report(summary) -> None:
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
    trial: Annotated[str, typer.Option("--trial", help="RegDB split 1..10, a list such as 1,2, or all")] = "1",
    out: Annotated[
        Optional[Path], typer.Option("--out", help="prepared output folder [default: data/prepared/regdb/trialT; "
                                                   "with several trials the parent of trial1..trial10]")
    ] = None,
    height: HeightOption = 288,
    width: WidthOption = 144,
    workers: WorkersOption = None,
    skip_bad: SkipBadOption = False,
    fast: FastOption = False,
) -> None:
    """Index and resize RegDB trials (visible camid 1, thermal camid 2); --trial all prepares the ten splits."""
    from pfanet_cli.data.prepare import prepare_regdb, prepare_regdb_trials  # heavy: numpy, not needed for --help
    from pfanet_cli.data.regdb import parse_trials  # heavy: numpy, not needed for --help

    trials = parse_trials(trial)
    options = dict(raw=raw, height=height, width=width, workers=workers, skip_bad=skip_bad, fast=fast)
    if len(trials) == 1 and trial.strip().lower() != "all":
        _run_with_progress(prepare_regdb, out=out or Path(f"data/prepared/regdb/trial{trials[0]}"), trial=trials[0],
                           **options)
    else:
        _run_with_progress(prepare_regdb_trials, out_root=out or Path("data/prepared/regdb"), trials=trials,
                           **options)


@app.command("llcm")
@guard_interrupt
def llcm_command(
    raw: Annotated[Path, typer.Argument(help="raw LLCM tree (idx/, train_vis/, train_nir/, test_vis/, test_nir/)")
                   ] = Path("data/LLCM"),
    out: Annotated[Path, typer.Option("--out", help="prepared output folder")] = Path("data/prepared/llcm"),
    height: HeightOption = 288,
    width: WidthOption = 144,
    workers: WorkersOption = None,
    skip_bad: SkipBadOption = False,
    fast: FastOption = False,
) -> None:
    """Index and resize LLCM (visible camid k, NIR camid 10 + k) from its idx/ lists (or a synthetic tree)."""
    from pfanet_cli.data.prepare import prepare_llcm  # heavy: numpy and scipy, not needed for --help

    _run_with_progress(prepare_llcm, raw=raw, out=out, height=height, width=width, workers=workers,
                       skip_bad=skip_bad, fast=fast)


@app.command("synthetic")
@guard_interrupt
def synthetic_command(
    out: Annotated[Path, typer.Argument(help="folder to write the raw tree into")],
    layout: Annotated[str, typer.Option("--layout", help="sysu (SYSU-MM01 raw layout) or llcm (LLCM's)")] = "sysu",
    preset: Annotated[str, typer.Option(
        "--preset", help="small (demo/tests); sysu (real per-camera counts) or llcm (published per-split sizes)")
    ] = "small",
    ids: Annotated[Optional[int], typer.Option("--ids", help="number of identities (overrides the preset)")] = None,
    seed: Annotated[int, typer.Option("--seed", help="random seed")] = 0,
    height: Annotated[Optional[int], typer.Option("--height", help="raw image height")] = None,
    width: Annotated[Optional[int], typer.Option("--width", help="raw image width")] = None,
    workers: WorkersOption = None,
    ir_residual: IrResidualOption = None,
) -> None:
    """Render synthetic RGB/IR pedestrians in the exact SYSU-MM01 raw layout, or in LLCM's (--layout llcm)."""
    from pfanet_cli.data import synthetic  # heavy: numpy and scipy, not needed for --help

    renderers = {"sysu": synthetic.render_synthetic_sysu, "llcm": synthetic.render_synthetic_llcm}
    if layout not in renderers:
        raise UsageError(f"unknown --layout {layout!r}: choose one of {', '.join(renderers)}")
    summary = renderers[layout](out, preset=preset, ids=ids, seed=seed, height=height, width=width,
                                workers=workers, show_progress=True, **ir_residual_kwargs(ir_residual))
    console.print(f"rendered {summary.total_images:,} images into {summary.out} in {summary.seconds:.1f} s; "
                  f"next: pfanet prepare-data {layout} {summary.out}", soft_wrap=True)
