"""evaluate subcommand: the SYSU-MM01 and RegDB protocols (SPEC §5) on a features file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table

from pfanet_cli import protocols
from pfanet_cli.cli import common
from pfanet_cli.console import console
from pfanet_cli.errors import CheckpointError
from pfanet_cli.features import FeatureSet, load_features
from pfanet_cli.plots import (
    prepared_image_loader,
    ranked_list_rows,
    raw_image_loader,
    save_cmc_plot,
    save_ranked_lists,
)

DEFAULT_DATA = Path("data/prepared")


def _features_from_checkpoint(checkpoint: Path | None, data_dir: Path, device: str | None) -> FeatureSet:
    """Test features extracted with a checkpoint (the newest train-joint one under runs/ when None)."""
    from pfanet_cli.extract import extract_split
    from pfanet_cli.training import resolve_device

    try:
        return extract_split(checkpoint, data_dir, "test", device=str(resolve_device(device or "auto")))
    except CheckpointError as exc:
        if checkpoint is None:  # nothing was named: say how to evaluate without a checkpoint too
            raise CheckpointError(f"{exc}; or evaluate a features file with --features F.npz") from exc
        raise


def _metric_cell(result: protocols.EvalResult, key: str) -> str:
    mean, std = result.metrics[key], result.std[key]
    return f"{mean:.2f} ± {std:.2f}" if result.trials > 1 else f"{mean:.2f}"


def _print_table(results: list[protocols.EvalResult]) -> None:
    """Metrics as rows, settings as columns (fits 80 columns with the four SYSU settings)."""
    first = results[0]
    if first.dataset == "sysu":
        title = f"SYSU-MM01, {first.sampler} gallery sampler, {first.trials} trial{'s' * (first.trials > 1)}"
    else:
        title = "RegDB (one split)"
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("", no_wrap=True)
    for result in results:
        table.add_column(result.setting, justify="right", no_wrap=True)
    for key in protocols.METRIC_KEYS:
        table.add_row(key if key.startswith("m") else key.upper(), *(_metric_cell(r, key) for r in results))
    table.add_section()
    table.add_row("queries", *(f"{r.num_query:,}" for r in results))
    if any(r.num_valid_query != r.num_query for r in results):
        table.add_row("valid queries", *(_count(r.num_valid_query) for r in results))
    table.add_row("gallery", *(_count(r.num_gallery) for r in results))
    console.print(table)
    note = "percent"
    if any(r.trials > 1 for r in results):
        note += ", mean ± std over trials; gallery = images per trial"
    console.print(f"{note}; valid queries (with a positive in the gallery) are the ones averaged", style="dim")


def _count(value: int | float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"


def evaluate_command(
    features: Annotated[Optional[Path], typer.Option(
        "--features", help="features .npz written by `pfanet extract` (every test image of both modalities)")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(
        "--checkpoint",
        help="extract features with this checkpoint first \\[default: the newest train-joint one]")] = None,
    data: Annotated[Optional[Path], typer.Option(
        "--data", help="prepared dataset dir (extraction, permutation file, ranked-list images) "
                       "\\[default: data/prepared/<dataset>]")] = None,
    dataset: Annotated[Optional[str], typer.Option(
        "--dataset", help="sysu or regdb \\[default: the features file's, else sysu]")] = None,
    mode: Annotated[str, typer.Option("--mode", help="SYSU search mode: all or indoor")] = "all",
    shot: Annotated[str, typer.Option(
        "--shot", help="SYSU gallery: single (1 image) or multi (10) per id and camera")] = "single",
    all_settings: Annotated[bool, typer.Option(
        "--all-settings", help="SYSU: all/indoor x single/multi in one go; RegDB: both directions")] = False,
    trials: Annotated[int, typer.Option("--trials", help="SYSU gallery trials (metrics are averaged)")] = 10,
    sampler: Annotated[str, typer.Option(
        "--sampler", help="SYSU gallery sampler: official (rand_perm_cam.mat), agw (AGW code) or auto "
                          "(official when a permutation file is available)")] = "auto",
    perm_file: Annotated[Optional[Path], typer.Option(
        "--perm-file", help="official rand_perm_cam.mat \\[default: the features file's copy, else "
                            "<data>/exp/rand_perm_cam.mat when --data is given or features are extracted "
                            "from it]")] = None,
    direction: Annotated[str, typer.Option("--direction", help="RegDB: v2t (visible queries) or t2v")] = "v2t",
    json_out: Annotated[Optional[Path], typer.Option(
        "--json", help="write the results as JSON (one object; a list of objects with --all-settings)")] = None,
    cmc_plot: Annotated[Optional[Path], typer.Option(
        "--cmc-plot", help="CMC curve PNG \\[default: <json name>_cmc.png when --json is given]")] = None,
    ranks_image: Annotated[Optional[Path], typer.Option(
        "--ranks-image", help="picture of a few queries and their top-10 gallery images (trial 0)")] = None,
    image_root: Annotated[Optional[Path], typer.Option(
        "--image-root",
        help="raw dataset root for the ranked-list images \\[default: the prepared arrays of --data]")] = None,
    max_rank: Annotated[int, typer.Option("--max-rank", help="length of the CMC curve")] = 20,
    device: common.DeviceOption = None,
) -> None:
    """Evaluate features with the SYSU-MM01 (10 trials) or RegDB protocol: R1/R5/R10/R20, mAP, mINP."""
    data_given = data is not None
    if features is not None:
        fs = load_features(features)
    else:
        fs = _features_from_checkpoint(checkpoint, data or DEFAULT_DATA / (dataset or "sysu"), device)
    name = dataset or fs.dataset or "sysu"
    protocols.check_choice("dataset", name, ("sysu", "regdb"))
    data_dir = data or DEFAULT_DATA / name

    if name == "sysu":
        settings = list(protocols.ALL_SYSU_SETTINGS) if all_settings else [(mode, shot)]
        perm = None
        if sampler != "agw":
            # the prepared dir's copy only when that dir is the features' source or was named
            perm_dir = data_dir if (data_given or features is None) else None
            perm = protocols.find_perm(perm_file, fs.perm_mat_bytes, perm_dir)
        results = protocols.evaluate_sysu_settings(fs.features, fs.pids, fs.camids, fs.paths, settings,
                                                   trials=trials, sampler=sampler, perm=perm, max_rank=max_rank)
    else:
        directions = list(protocols.REGDB_DIRECTIONS) if all_settings else [direction]
        results = [protocols.evaluate_regdb(fs.features, fs.pids, fs.camids, direction=d, max_rank=max_rank)
                   for d in directions]
        perm = None

    _print_table(results)
    if json_out is not None:
        protocols.write_results_json(json_out, results, as_list=all_settings)
        console.print(f"results written to {json_out}")
        if cmc_plot is None:
            cmc_plot = json_out.with_name(json_out.stem + "_cmc.png")
    if cmc_plot is not None:
        save_cmc_plot(cmc_plot, {r.setting: r.cmc for r in results}, title=f"CMC ({results[0].dataset})")
        console.print(f"CMC curve written to {cmc_plot}")
    if ranks_image is not None:
        first = results[0]
        loader = raw_image_loader(image_root) if image_root is not None else prepared_image_loader(data_dir)
        if loader is None:
            console.print(f"note: ranked-list picture skipped: no images (pass --image-root RAW or --data with "
                          f"test_images.npy; {data_dir} has none)")
            return
        examples = protocols.ranked_examples(fs.features, fs.pids, fs.camids, fs.paths, first, perm=perm)
        drawn = save_ranked_lists(ranks_image, ranked_list_rows(examples, fs.paths, fs.pids), loader, title=f"{first.setting}, trial 0")
        if drawn:
            console.print(f"ranked lists of {drawn} queries written to {ranks_image}")
        else:
            console.print("note: ranked-list picture skipped: the features' image paths do not resolve against "
                          f"{image_root if image_root is not None else data_dir}")
