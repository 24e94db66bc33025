"""``pfanet export``: the test feature of a checkpoint as ONNX graphs, verified against PyTorch.

Each path's graph is :class:`~pfanet_cli.modeling.test_feature.TestFeature` (pixels -> [-1, 1] -> G_I for the
RGB path -> F with its input normalisation -> flip-sum -> L2), recorded with ``torch.onnx.export(dynamo=True)``
and a dynamic batch dimension. (TorchScript-based export cannot record G's InstanceNorm with running statistics
for an unknown batch size; the dynamo exporter can.) Weights go to ``<graph>.data`` beside each graph. Before
the folder is put in place, onnxruntime runs the graphs on N images and the result is compared with what
``extract`` computes from the checkpoint (``parity.py``); over tolerance, nothing is written and the command
fails. The folder is built beside its target and swapped in whole, so a killed export leaves the previous one.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pfanet_cli import __version__
from pfanet_cli.errors import CheckpointError, DataError, PfanetError, UsageError
from pfanet_cli.evaluation.card import checkpoint_choice
from pfanet_cli.evaluation.history import RECORDED_KEYS, last_evaluation
from pfanet_cli.inference.extras import require_extra
from pfanet_cli.inference.feature_model import CheckpointModel
from pfanet_cli.inference.onnx_model import (
    EXPORT_FORMAT,
    EXPORT_VERSION,
    INPUT_NAME,
    MODEL_JSON,
    OUTPUT_NAME,
    PATHS,
    OnnxModel,
    graph_file,
)
from pfanet_cli.inference.parity import ParityImages, parity_images, parity_report
from pfanet_cli.modeling.extractor import IMAGENET_MEAN, IMAGENET_STD
from pfanet_cli.modeling.test_feature import TestFeature
from pfanet_cli.utils.atomic import (
    check_writable_folder,
    recover_interrupted_folder,
    replace_folder,
    temporary_folder,
    write_text,
)
from pfanet_cli.utils.digest import file_sha256

PATH_CHOICES = ("ir", "rgb", "both")
MIN_TORCH = (2, 6)
"""The torch.export-based ONNX exporter is documented for PyTorch 2.6 and newer (docs.pytorch.org, torch.onnx)."""
MIN_OPSET = 18
"""The oldest opset the dynamo exporter writes natively (older ones go through ONNX's version converter)."""
DEFAULT_TOLERANCE = 1e-4
"""Largest absolute difference allowed between a feature entry from onnxruntime and from PyTorch (features are
unit vectors; float32 reordering differences are about 1e-7)."""
COMPUTES = {"ir": "F (IR images as they are)", "rgb": "G_I (RGB -> fake IR, test mode), then F"}


class ParityFailed(PfanetError):
    """The exported graphs do not reproduce PyTorch's features within tolerance (exit 1)."""


@dataclass
class ExportSummary:
    out: Path
    paths: list[str]
    files: dict[str, int]
    """File name -> bytes."""
    parity: dict[str, dict]
    seconds: float


def export_paths(path: str) -> list[str]:
    """``both`` -> ir and rgb; ``ir``, ``rgb`` as they are."""
    if path not in PATH_CHOICES:
        raise UsageError(f"--path must be one of {', '.join(PATH_CHOICES)}, got {path!r}")
    return list(PATHS) if path == "both" else [path]


def export_model(checkpoint: Path, out: Path, path: str = "both", *, opset: int = MIN_OPSET, data: Path | None = None,
                 split: str = "test", num_images: int = 32, tolerance: float = DEFAULT_TOLERANCE,
                 results: Path | None = None, on_stage: Callable[[str], None] | None = None) -> ExportSummary:
    """Export ``checkpoint``'s test feature into the folder ``out`` (see the module docstring)."""
    require_extra("export", "pfanet export")
    if tuple(int(part) for part in torch.__version__.split(".")[:2]) < MIN_TORCH:
        raise UsageError(f"pfanet export needs torch {'.'.join(map(str, MIN_TORCH))} or newer (its torch.export-based "
                         f"ONNX exporter); this is torch {torch.__version__}")
    started = time.perf_counter()
    paths = export_paths(path)
    _check_options(opset, num_images, tolerance)
    out = Path(out)
    _check_out(out)
    model = CheckpointModel(checkpoint, translate="rgb" in paths, device="cpu", purpose="export")
    if model.is_agw:
        raise CheckpointError(f"{checkpoint} is an AGW checkpoint (train-agw); pfanet export records PFANet's test "
                              "feature (F, and G_I for RGB): use a train-joint checkpoint")
    evaluation = _evaluation_record(model, results)
    images = parity_images(model.image_size, num_images, data, split)
    recover_interrupted_folder(out)
    tmp = temporary_folder(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        graphs = {name: _export_graph(model, name, tmp, opset, on_stage) for name in paths}
        meta = _model_json(model, graphs, opset, evaluation)
        write_text(tmp / MODEL_JSON, json.dumps(meta, indent=2) + "\n")
        parity = _check_parity(model, tmp, paths, images, tolerance, on_stage)
        meta["parity"] = parity
        write_text(tmp / MODEL_JSON, json.dumps(meta, indent=2) + "\n")
        replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    return ExportSummary(out, paths, files, parity, time.perf_counter() - started)


def _check_options(opset: int, num_images: int, tolerance: float) -> None:
    if opset < MIN_OPSET:
        raise UsageError(f"--opset must be at least {MIN_OPSET} (the dynamo exporter's oldest native opset), "
                         f"got {opset}")
    if num_images < 2:
        raise UsageError(f"--parity-images must be at least 2 (rankings need two images), got {num_images}")
    if not tolerance > 0:
        raise UsageError(f"--tolerance must be positive, got {tolerance}")


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} is a file, expected a folder for the export")
    if out.is_dir() and any(out.iterdir()) and not (out / MODEL_JSON).is_file():
        raise UsageError(f"output folder {out} is not empty and holds no pfanet export; choose another --out")
    check_writable_folder(out.parent if not out.exists() else out)


def _export_graph(model: CheckpointModel, path: str, folder: Path, opset: int,
                  on_stage: Callable[[str], None] | None) -> dict[str, Any]:
    if on_stage:
        on_stage(f"exporting the {path} graph ({COMPUTES[path]})")
    module = TestFeature(model.extractor.cpu(), model.generator.cpu() if path == "rgb" else None)
    example = torch.rand(2, 3, *model.image_size) * 255
    target = folder / graph_file(path)
    batch = torch.export.Dim("batch", min=1)
    try:
        torch.onnx.export(module, (example,), str(target), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_shapes={"pixels": {0: batch}}, dynamo=True, external_data=True,
                          opset_version=opset, verbose=False)
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types; one line names the graph
        reason = " ".join(str(exc).split())[:300]
        raise PfanetError(f"exporting the {path} graph failed ({type(exc).__name__}: {reason})") from exc
    files = sorted(p.name for p in folder.iterdir() if p.name.startswith(target.name))
    return {"file": target.name, "computes": COMPUTES[path],
            "files": {name: {"bytes": (folder / name).stat().st_size, "sha256": file_sha256(folder / name)}
                      for name in files}}


def _model_json(model: CheckpointModel, graphs: dict[str, dict], opset: int, evaluation: dict) -> dict[str, Any]:
    payload = model.payload
    height, width = model.image_size
    input_norm = payload["architecture"].get("input_norm", "none")
    return {
        "format": EXPORT_FORMAT, "format_version": EXPORT_VERSION, "toolkit": f"pfanet {__version__}",
        "exported_with": {"torch": torch.__version__, "opset": opset},
        "input": {"name": INPUT_NAME, "dtype": "float32", "layout": "NCHW", "channels": "RGB",
                  "value_range": [0, 255], "height": height, "width": width, "batch": "dynamic",
                  "preprocessing": f"decode to RGB and resize to {width}x{height} with PIL's LANCZOS (what "
                                   "prepare-data and extract --images do); nothing else: the graph scales to "
                                   "[-1, 1] and applies F's input normalisation"},
        "normalisation_in_graph": {"unit_range": "pixels / 127.5 - 1",
                                   "input_norm": input_norm,
                                   **({"mean": IMAGENET_MEAN, "std": IMAGENET_STD} if input_norm == "imagenet"
                                      else {})},
        "generator_test_norm": model.generator_norm,
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "dim": model.extractor.feature_channels,
                   "feature": "v(image) + v(horizontal flip), L2-normalised (pooled v of F)"},
        "graphs": graphs,
        "checkpoint": {"path": str(model.checkpoint), "sha256": model.sha256,
                       "stage": payload.get("stage"), "iteration": payload.get("iteration"),
                       "chosen": checkpoint_choice(payload), "selection": payload.get("selection")},
        "recipe": payload.get("recipe"), "architecture": payload.get("architecture"),
        "evaluation": evaluation,
    }


def _check_parity(model: CheckpointModel, folder: Path, paths: list[str], images: ParityImages, tolerance: float,
                  on_stage: Callable[[str], None] | None) -> dict[str, dict]:
    """onnxruntime against PyTorch (the ``extract`` computation) on the parity images, per path."""
    exported = OnnxModel(folder, translate="rgb" in paths, require_rgb=False)
    report = {}
    for path in paths:
        pixels = images.by_path[path]
        if on_stage:
            on_stage(f"checking the {path} graph against PyTorch on {len(pixels)} images")
        is_rgb = np.full(len(pixels), path == "rgb")
        report[path] = parity_report(model.features(pixels, is_rgb), exported.features(pixels, is_rgb), tolerance,
                                     images.source)
    failed = [f"{path}: largest difference {r['max_abs_difference']:.3g}" for path, r in report.items()
              if not r["passed"]]
    if failed:
        raise ParityFailed(f"the exported graphs differ from PyTorch by more than {tolerance:g} ({'; '.join(failed)})"
                           "; nothing was written")
    return report


def _evaluation_record(model: CheckpointModel, results: Path | None) -> dict[str, Any]:
    """What is known of the checkpoint's evaluation: its recorded selection (best.pt) and the metrics and protocol
    cards of an evaluation JSON computed with this checkpoint (``results``), or else of the newest evaluation of
    this checkpoint file in its run's log (``evaluation/history.py``); ``from`` says which."""
    record: dict[str, Any] = {"selection": model.payload.get("selection"), "results": None, "from": None}
    if results is None:
        logged = last_evaluation(model.checkpoint, model.sha256)
        if logged is not None:
            record["results"] = logged["results"]
            record["from"] = f"{logged['log']} (pfanet evaluate, {logged['evaluated_at']})"
        return record
    try:
        loaded = json.loads(Path(results).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"--results {results}: not a readable evaluation JSON ({exc})") from exc
    entries = loaded if isinstance(loaded, list) else [loaded]
    for entry in entries:
        used = ((entry.get("card") or {}).get("checkpoint") or {}) if isinstance(entry, dict) else {}
        if not isinstance(used, dict) or Path(str(used.get("path"))).resolve() != model.checkpoint.resolve():
            raise UsageError(f"--results {results} was not computed with {model.checkpoint} (its card names "
                             f"{used.get('path') if isinstance(used, dict) else used}); pass the JSON of "
                             f"`pfanet evaluate --checkpoint {model.checkpoint} --json ...`")
    record["results"] = [{key: entry.get(key) for key in RECORDED_KEYS} for entry in entries]
    record["from"] = f"--results {results}"
    return record


def describe_parity(report: dict[str, dict]) -> list[str]:
    """One line per path for the screen."""
    return [f"{path}: {r['images']} images ({r['source']}), largest difference {r['max_abs_difference']:.2e} "
            f"(tolerance {r['tolerance']:g}), nearest neighbour agrees {r['rank1_agreement']:.0%}, top-"
            f"{r['top_k']} overlap {r['top_k_overlap']:.0%}" for path, r in report.items()]

