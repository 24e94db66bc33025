"""evaluate and convert-features subcommands: the SYSU-MM01, RegDB and LLCM protocols (SPEC §5,
docs/protocols.md) on a features file or a checkpoint, and other codebases' feature exports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Iterable, Optional

import typer

from pfanet_cli.cli import common
from pfanet_cli.utils.console import console

# Click's ParameterSource names for a value the user did not give (typer vendors Click privately)
DEFAULT_SOURCES = ("DEFAULT", "DEFAULT_MAP")
RerankOption = Annotated[str, typer.Option(
    "--rerank", help="re-ranking of each trial's distances: off or kreciprocal (Zhong et al. 2017)")]
K1Option = Annotated[Optional[int], typer.Option("--k1", help="k-reciprocal: k1 \\[default: 20]")]
K2Option = Annotated[Optional[int], typer.Option("--k2", help="k-reciprocal: k2, query expansion \\[default: 6]")]
SameModalityOption = Annotated[bool, typer.Option(
    "--same-modality", help="SYSU: also the same-modality diagnostic (IR->IR, RGB->RGB; not the protocol, printed "
                            "and written apart: <json name>_same_modality.json)")]
LambdaOption = Annotated[Optional[float], typer.Option(
    "--lambda", help="k-reciprocal: weight of the original distance, 0..1 \\[default: 0.3]")]


def evaluate_command(
    ctx: typer.Context,
    features: Annotated[Optional[Path], typer.Option(
        "--features", help="features .npz written by `pfanet extract` or `pfanet convert-features` (every test "
                           "image of both modalities); with --all-trials a template holding {trial}")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(
        "--checkpoint",
        help="extract features with this checkpoint first \\[default: the newest train-joint or train-agw one]; "
             "with --all-trials a template holding {trial}")] = None,
    data: Annotated[Optional[Path], typer.Option(
        "--data", help="prepared dataset dir (extraction, permutation file, ranked-list images) "
                       "\\[default: data/prepared/<dataset>; with --all-trials the parent of trial1..trial10]")] = None,
    dataset: Annotated[Optional[str], typer.Option(
        "--dataset", help="sysu, regdb or llcm \\[default: the features file's, else sysu]")] = None,
    mode: Annotated[str, typer.Option("--mode", help="SYSU search mode: all or indoor")] = "all",
    shot: Annotated[str, typer.Option(
        "--shot", help="SYSU gallery: single (1 image) or multi (10) per id and camera")] = "single",
    all_settings: Annotated[bool, typer.Option(
        "--all-settings", help="SYSU: all/indoor x single/multi in one go; RegDB, LLCM: both directions")] = False,
    trials: Annotated[int, typer.Option("--trials", help="SYSU, LLCM gallery trials (metrics are averaged)")] = 10,
    sampler: Annotated[str, typer.Option(
        "--sampler", help="SYSU gallery sampler: official (rand_perm_cam.mat), agw (AGW code) or auto "
                          "(official when a permutation file fits the features)")] = "auto",
    perm_file: Annotated[Optional[Path], typer.Option(
        "--perm-file", help="official rand_perm_cam.mat \\[default: the features file's copy, else "
                            "<data>/exp/rand_perm_cam.mat when --data is given or features are extracted "
                            "from it, else the copy shipped with pfanet]")] = None,
    direction: Annotated[Optional[str], typer.Option(
        "--direction", help="RegDB: v2t, t2v or both \\[v2t]; LLCM: ir2vis, vis2ir or both \\[ir2vis]")] = None,
    all_trials: Annotated[bool, typer.Option(
        "--all-trials", help="RegDB: evaluate every trial of --trial (one model per trial) in --direction (both "
                             "by default), and report the mean ± std over trials")] = False,
    trial: Annotated[str, typer.Option(
        "--trial", help="with --all-trials: the RegDB trials, all or a list such as 1,2")] = "all",
    rerank: RerankOption = "off",
    k1: K1Option = None,
    k2: K2Option = None,
    lambda_value: LambdaOption = None,
    json_out: Annotated[Optional[Path], typer.Option(
        "--json", help="write the results as JSON (one object; a list with several settings or directions; "
                       "with --all-trials also <name>_trial<T>.json per trial)")] = None,
    cmc_plot: Annotated[Optional[Path], typer.Option(
        "--cmc-plot", help="CMC curve PNG \\[default: <json name>_cmc.png when --json is given]")] = None,
    ranks_image: Annotated[Optional[Path], typer.Option(
        "--ranks-image", help="picture of a few queries and their top-10 gallery images (trial 0)")] = None,
    image_root: Annotated[Optional[Path], typer.Option(
        "--image-root",
        help="raw dataset root for the ranked-list images \\[default: the prepared arrays of --data]")] = None,
    max_rank: Annotated[int, typer.Option("--max-rank", help="length of the CMC curve")] = 20,
    same_modality: SameModalityOption = False,
    device: common.DeviceOption = None,
) -> None:
    """Evaluate features with the SYSU-MM01, RegDB or LLCM protocol: R1/R5/R10/R20, mAP, mINP, and the
    protocol card (every choice behind the numbers)."""
    from pfanet_cli.data.regdb import parse_trials  # heavy: numpy, not needed for --help
    from pfanet_cli.evaluation import run  # heavy: numpy, scipy and matplotlib, not needed for --help
    from pfanet_cli.evaluation import trials as regdb_trials  # heavy: numpy, not needed for --help
    from pfanet_cli.evaluation.rerank import command_rerank  # heavy: numpy and scipy, not needed for --help

    reranking = command_rerank(rerank, k1, k2, lambda_value, device)
    given = options_on_command_line(ctx, run.OPTION_DATASETS)
    if all_trials:
        run.refuse_options_for_other_datasets("regdb", given)
        per_trial = regdb_trials.evaluate_regdb_trials(
            parse_trials(trial), features=features, checkpoint=checkpoint, dataset=dataset,
            data_root=data or run.DEFAULT_DATA_ROOT / "regdb", device=device, max_rank=max_rank, rerank=reranking,
            direction=direction)
        regdb_trials.report_regdb_trials(per_trial, json_out=json_out, cmc_plot=cmc_plot)
        return
    source = run.open_evaluation(features, checkpoint, data, dataset, device, options_given=given)
    permutation = run.official_permutation(source, sampler, perm_file) if source.dataset == "sysu" else \
        run.Permutation()
    results = run.evaluate_source(source, all_settings=all_settings, mode=mode, shot=shot, direction=direction,
                                  trials=trials, sampler=sampler, permutation=permutation, max_rank=max_rank,
                                  rerank=reranking)
    run.print_results(results)
    run.write_outputs(source, results, permutation.perm, json_out=json_out, as_list=len(results) > 1,
                      cmc_plot=cmc_plot, ranks_image=ranks_image, image_root=image_root, log=features is None)
    if same_modality:
        run.report_same_modality(source, trials=trials, max_rank=max_rank, json_out=json_out)


def options_on_command_line(ctx: typer.Context, options: Iterable[str]) -> list[str]:
    """Which of ``options`` (``--perm-file`` style) the user gave, as Click records it (not by comparing
    values with their defaults, so an explicit default counts as given)."""
    sources = {option: ctx.get_parameter_source(option.lstrip("-").replace("-", "_")) for option in options}
    return [option for option, source in sources.items() if source is not None and source.name not in DEFAULT_SOURCES]


def convert_features_command(
    export: Annotated[Path, typer.Argument(
        help="another codebase's export: a .mat (query_f, query_label, query_cam, gallery_f, ...), a .npz or a "
             "folder of .npy files (query_feat, query_label, query_cam, gall_feat, gall_label, gall_cam)")],
    out: Annotated[Path, typer.Option("--out", help="features .npz to write")] = Path("features.npz"),
    dataset: Annotated[str, typer.Option("--dataset", help="sysu, regdb or llcm")] = "sysu",
    fmt: Annotated[str, typer.Option("--format", help="auto (by the file), mat or npy")] = "auto",
    query_modality: Annotated[Optional[str], typer.Option(
        "--query-modality", help="modality of the export's query arrays: ir or rgb \\[default: ir for SYSU-MM01 "
                                 "and LLCM; RegDB: required, AGW's test.py exports visible queries (rgb), DEEN's "
                                 "thermal ones (ir)]")] = None,
    variant: Annotated[Optional[str], typer.Option(
        "--variant", help="npy: which feature arrays: pool for query_feat_pool / gall_feat_pool, 1 for DEEN's "
                          "query_feat1 / gall_feat1, all to join every variant")] = None,
    paths: Annotated[Optional[Path], typer.Option(
        "--paths", help="text file of the rows' raw-relative image paths, query rows then gallery rows "
                        "\\[default: the n-th image of a folder is named as its n-th file]")] = None,
) -> None:
    """Convert another codebase's query/gallery feature export into a features file for `pfanet evaluate`."""
    from pfanet_cli.evaluation.convert import convert_export  # heavy: numpy and scipy, not needed for --help
    from pfanet_cli.evaluation.features import save_feature_set  # heavy: numpy, not needed for --help

    converted, notes = convert_export(export, dataset, fmt=fmt, query_modality=query_modality, variant=variant,
                                      paths_file=paths)
    save_feature_set(out, converted)
    for note in notes:
        console.print(f"note: {note}")
    console.print(f"wrote {len(converted):,} features of size {converted.dim} ({dataset}) to {out}; next: "
                  f"pfanet evaluate --features {out}")
