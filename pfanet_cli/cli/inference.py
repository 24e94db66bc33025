"""translate and extract subcommands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pfanet_cli.cli.common import DeviceOption
from pfanet_cli.utils.console import console, progress_bar

CheckpointOption = Annotated[
    Optional[Path], typer.Option("--checkpoint", help="checkpoint file [default: the newest one under runs/]")
]
BatchOption = Annotated[int, typer.Option("--batch-size", min=1, help="images per forward pass")]
RunsRootOption = Annotated[Path, typer.Option("--runs-root", help="where to look for the newest checkpoint")]
GeneratorNormOption = Annotated[
    Optional[str], typer.Option(
        "--generator-norm",
        help="G_I's InstanceNorm at test time: 'running' (its running statistics) or 'instance' (each image's own) "
             "\\[default: the checkpoint's model.generator_test_norm]")
]


def device_name(device: str | None) -> str:
    """``--device`` resolved (auto: CUDA when available)."""
    from pfanet_cli.engine.runtime import resolve_device  # heavy: torch, not needed for --help

    return str(resolve_device(device or "auto"))


def progress_callback(progress, description: str):
    """A ``(done, total)`` callback that advances one task of a progress bar (created on the first call)."""
    task = None

    def advance(done: int, total: int) -> None:
        nonlocal task
        if task is None:
            task = progress.add_task(description, total=total, info="")
        progress.advance(task, done)

    return advance


def translate_command(
    rgb_dir: Annotated[Path, typer.Argument(help="folder of RGB images (searched recursively)")],
    out_dir: Annotated[Path, typer.Argument(help="output folder: same relative paths and file names")],
    checkpoint: CheckpointOption = None,
    keep_size: Annotated[
        bool, typer.Option("--keep-size/--model-size",
                           help="write each output at its input's size (default) or at the model's input size")
    ] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace outputs that already exist")] = False,
    follow_links: Annotated[bool, typer.Option(
        "--follow-links", help="also read links to files outside RGB_DIR (skipped and listed by default)")] = False,
    batch_size: BatchOption = 32,
    device: DeviceOption = None,
    runs_root: RunsRootOption = Path("runs"),
    generator_norm: GeneratorNormOption = None,
) -> None:
    """Translate RGB images to fake IR images with G_I (train-gan or train-joint checkpoint)."""
    from pfanet_cli.translate import translate_folder  # heavy: torch, not needed for --help

    with progress_bar() as progress:
        summary = translate_folder(rgb_dir, out_dir, checkpoint, runs_root, keep_size, batch_size,
                                   device_name(device), overwrite, progress_callback(progress, "translate"),
                                   follow_links, generator_norm)
    skipped = f"; skipped {len(summary.skipped)} undecodable file(s)" if summary.skipped else ""
    if summary.links_not_followed:
        skipped += (f"; skipped {len(summary.links_not_followed)} link(s) to files outside {rgb_dir} "
                    "(--follow-links reads them)")
    console.print(f"translated {summary.written} image(s) into {summary.out_dir} with {summary.checkpoint}"
                  f"{skipped}; manifest {summary.manifest}", soft_wrap=True)


def extract_command(
    checkpoint: CheckpointOption = None,
    onnx: Annotated[Optional[Path], typer.Option(
        "--onnx", help="an export folder of `pfanet export`, run with onnxruntime instead of --checkpoint (to check "
                       "that the exported graphs give the checkpoint's protocol numbers)")] = None,
    data: Annotated[Path, typer.Option("--data", help="prepared data folder")] = Path("data/prepared/sysu"),
    split: Annotated[str, typer.Option("--split", help="prepared split to extract")] = "test",
    images: Annotated[
        Optional[Path], typer.Option("--images", help="extract an image folder (recursive) instead of --data")
    ] = None,
    modality: Annotated[
        str, typer.Option("--modality", help="with --images: auto (camera in the path), rgb or ir")
    ] = "auto",
    out: Annotated[Path, typer.Option("--out", help="features .npz to write")] = Path("features.npz"),
    translate: Annotated[
        bool, typer.Option("--translate/--no-translate", help="translate RGB images with G_I first (PFANet)")
    ] = True,
    feature: Annotated[
        Optional[str], typer.Option("--feature", help="AGW checkpoints: fc (BN-neck) or pool \\[default: the "
                                                      "recipe's agw.test_feature]; PFANet's is always pool (v)")
    ] = None,
    batch_size: BatchOption = 64,
    device: DeviceOption = None,
    runs_root: RunsRootOption = Path("runs"),
    generator_norm: GeneratorNormOption = None,
) -> None:
    """Extract test features into a features .npz file: PFANet's flip-summed, L2-normalised GAP vectors (RGB
    through G_I), or AGW's fc or pool vectors (RGB through its visible stem)."""
    from pfanet_cli.evaluation.extract import extract_folder, extract_split  # heavy: torch, not needed for --help
    from pfanet_cli.evaluation.features import save_feature_set  # heavy: numpy, not needed for --help

    with progress_bar() as progress:
        advance = progress_callback(progress, "extract")
        if images is not None:
            result = extract_folder(checkpoint, images, modality, translate, batch_size, device_name(device),
                                    runs_root, advance, feature, onnx=onnx, generator_norm=generator_norm)
        else:
            result = extract_split(checkpoint, data, split, translate, batch_size, device_name(device), runs_root,
                                   advance, feature, onnx=onnx, generator_norm=generator_norm)
    save_feature_set(out, result)
    console.print(f"wrote {len(result):,} features of size {result.dim} to {out}")
