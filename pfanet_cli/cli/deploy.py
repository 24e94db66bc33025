"""export and search subcommands: using a trained model outside the benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pfanet_cli.cli.common import DeviceOption
from pfanet_cli.cli.inference import BatchOption, CheckpointOption, RunsRootOption, device_name, progress_callback
from pfanet_cli.utils.console import console, progress_bar

ModalityHelp = ("rgb, ir, auto (SYSU-MM01, RegDB or LLCM paths) or a map by first folder such as "
                "visible=rgb,thermal=ir")


def export_command(
    checkpoint: CheckpointOption = None,
    out: Annotated[Path, typer.Option("--out", help="export folder: feature_<path>.onnx (+ .data), model.json")
                   ] = Path("export"),
    path: Annotated[str, typer.Option(
        "--path", help="ir (F), rgb (G_I then F) or both")] = "both",
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset (18 or newer)")] = 18,
    data: Annotated[Optional[Path], typer.Option(
        "--data", help="prepared folder whose test images the parity check uses \\[default: synthetic images]")
    ] = None,
    parity_images: Annotated[int, typer.Option(
        "--parity-images", help="images per path compared between onnxruntime and PyTorch")] = 32,
    tolerance: Annotated[float, typer.Option(
        "--tolerance", help="largest allowed absolute difference of a feature entry")] = 1e-4,
    results: Annotated[Optional[Path], typer.Option(
        "--results", help="an evaluation JSON of this checkpoint (pfanet evaluate --json) to record in model.json")
    ] = None,
    runs_root: RunsRootOption = Path("runs"),
) -> None:
    """Export the test feature (flip-summed, L2-normalised; RGB through G_I) as ONNX graphs with a dynamic batch,
    checked against PyTorch with onnxruntime (needs the optional extra pfanet\\[export])."""
    from pfanet_cli.engine.rundir import newest_checkpoint  # heavy: torch, not needed for --help
    from pfanet_cli.inference.export import describe_parity, export_model  # heavy: torch, not needed for --help

    checkpoint = checkpoint or newest_checkpoint(runs_root, ("train-joint",), "export")
    summary = export_model(checkpoint, out, path, opset=opset, data=data, num_images=parity_images,
                           tolerance=tolerance, results=results,
                           on_stage=lambda line: console.print(line, style="dim"))
    for line in describe_parity(summary.parity):
        console.print(f"parity {line}", soft_wrap=True)
    sizes = ", ".join(f"{name} {size / 2**20:.1f} MiB" for name, size in summary.files.items())
    console.print(f"exported {' and '.join(summary.paths)} of {checkpoint} to {summary.out} in {summary.seconds:.0f} s "
                  f"({sizes}); every file of the folder travels together", soft_wrap=True)


def search_command(
    gallery: Annotated[Path, typer.Option("--gallery", help="folder of gallery images (searched recursively)")],
    query: Annotated[Path, typer.Option("--query", help="a query image, or a folder of them")],
    checkpoint: CheckpointOption = None,
    onnx: Annotated[Optional[Path], typer.Option(
        "--onnx", help="an export folder of `pfanet export`, run with onnxruntime, instead of --checkpoint")] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="matches per query")] = 10,
    out: Annotated[Path, typer.Option(
        "--out", help="results.json, index.html, thumbs/ and the gallery cache")] = Path("search-results"),
    gallery_modality: Annotated[str, typer.Option("--gallery-modality", help=ModalityHelp)] = "auto",
    query_modality: Annotated[str, typer.Option("--query-modality", help=ModalityHelp)] = "auto",
    same_camera: Annotated[str, typer.Option(
        "--same-camera", help="keep, or skip gallery images from the query's camera (the first folder below each "
                              "root)")] = "keep",
    backend: Annotated[str, typer.Option(
        "--backend", help="exact (torch), faiss (approximate, pfanet[search]) or auto (faiss only for large "
                          "searches, when installed)")] = "auto",
    cache: Annotated[Optional[Path], typer.Option(
        "--cache", help="gallery features cache \\[default: <out>/gallery_features.npz]")] = None,
    translate: Annotated[
        bool, typer.Option("--translate/--no-translate", help="translate RGB images with G_I first")
    ] = True,
    batch_size: BatchOption = 64,
    device: DeviceOption = None,
    runs_root: RunsRootOption = Path("runs"),
) -> None:
    """Rank a folder of gallery images for each query image (cosine similarity of the test features), with a
    gallery cache that later searches only update; writes results.json and an HTML page of thumbnails."""
    from pfanet_cli.inference.models import open_feature_model  # heavy: torch, not needed for --help
    from pfanet_cli.inference.search import SearchOptions, run_search  # heavy: torch, not needed for --help

    resolved = device_name(device)
    options = SearchOptions(gallery=gallery, query=query, out=out, top_k=top_k, gallery_modality=gallery_modality,
                            query_modality=query_modality, same_camera=same_camera, backend=backend,
                            batch_size=batch_size, cache=cache, device=resolved)

    def open_model():
        return open_feature_model(checkpoint, onnx, translate=translate, device=resolved, runs_root=runs_root,
                                  purpose="search", require_rgb=False)

    with progress_bar() as progress:
        summary = run_search(open_model, options, lambda description: progress_callback(progress, description))
    stats = summary.stats
    if stats.note:
        console.print(f"note: {stats.note}", soft_wrap=True)
    console.print(f"{summary.queries:,} quer{'y' if summary.queries == 1 else 'ies'} against {summary.gallery:,} "
                  f"gallery images ({stats.embedded:,} embedded, {stats.reused:,} from the cache, {stats.removed:,} "
                  f"removed; {summary.backend}) in {summary.seconds:.1f} s: {summary.results}, {summary.page}",
                  soft_wrap=True)
