"""evaluate subcommand: the SYSU-MM01 and RegDB protocols (SPEC §5) on a features file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pfanet_cli.cli import common


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
    from pfanet_cli.evaluation import run  # heavy: numpy, scipy and matplotlib, not needed for --help

    source = run.open_evaluation(features, checkpoint, data, dataset, device)
    perm = run.official_permutation(source, sampler, perm_file) if source.dataset == "sysu" else None
    results = run.evaluate_source(source, all_settings=all_settings, mode=mode, shot=shot, direction=direction,
                                  trials=trials, sampler=sampler, perm=perm, max_rank=max_rank)
    run.print_results(results)
    run.write_outputs(source, results, perm, json_out=json_out, as_list=all_settings, cmc_plot=cmc_plot,
                      ranks_image=ranks_image, image_root=image_root)
