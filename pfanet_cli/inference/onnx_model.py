"""An ONNX export of the test feature (``pfanet export``) read back and run with onnxruntime.

The export folder holds one graph per path -- ``feature_ir.onnx`` (F) and ``feature_rgb.onnx`` (G_I, then F),
each with its weights in ``<graph>.data`` beside it -- and ``model.json``, which says what the graphs take and
give and where they come from. Every graph takes ``images``: float32 N×3×H×W RGB pixels in 0..255 (decoded and
resized to H×W, nothing else: the graph scales them and applies F's normalisation), any N, and gives
``features``: float32 N×D, flip-summed and L2-normalised, as ``pfanet extract`` computes them.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pfanet_cli.errors import CheckpointError, UsageError
from pfanet_cli.evaluation.card import extraction_provenance
from pfanet_cli.inference.extras import import_extra
from pfanet_cli.inference.feature_model import FeatureModel, Progress
from pfanet_cli.modeling.test_feature import pixel_batch
from pfanet_cli.utils.digest import file_sha256

EXPORT_FORMAT = "pfanet-onnx-export"
EXPORT_VERSION = 1
MODEL_JSON = "model.json"
INPUT_NAME, OUTPUT_NAME = "images", "features"
PATHS = ("ir", "rgb")
"""The exported paths: ``ir`` (F alone) and ``rgb`` (G_I, then F)."""


def graph_file(path: str) -> str:
    """The file name of a path's graph (its weights are ``<name>.data`` beside it)."""
    return f"feature_{path}.onnx"


def read_export(folder: Path, check_hashes: bool = True) -> dict[str, Any]:
    """``model.json`` of an export folder, checked: its format, and every graph file present with the size and
    (``check_hashes``) content recorded at export time. Every problem is a :class:`CheckpointError` (exit 4)."""
    folder = Path(folder)
    meta_file = folder / MODEL_JSON
    if not meta_file.is_file():
        raise CheckpointError(f"{folder} is not a pfanet ONNX export (no {MODEL_JSON}); write one with pfanet export")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{meta_file}: unreadable ({exc}); export the model again") from exc
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{meta_file} is not a pfanet ONNX export's model.json (no '{EXPORT_FORMAT}' format)")
    if meta.get("format_version") != EXPORT_VERSION:
        raise CheckpointError(f"{meta_file} has export format version {meta.get('format_version')}; this pfanet "
                              f"reads version {EXPORT_VERSION}: export the model again")
    for path, graph in meta.get("graphs", {}).items():
        for name, record in graph.get("files", {}).items():
            _check_file(folder / name, record, check_hashes, path)
    return meta


def _check_file(file: Path, record: dict, check_hash: bool, path: str) -> None:
    if not file.is_file():
        raise CheckpointError(f"{file} is missing: the {path} graph needs every file of its export folder "
                              "(the .onnx file and its .data weights travel together)")
    if file.stat().st_size != record.get("bytes") or (check_hash and file_sha256(file) != record.get("sha256")):
        raise CheckpointError(f"{file} is not the file exported with its model.json (size or content differs); "
                              "export the model again")


def session_providers(ort: Any, device: str) -> list[str]:
    """onnxruntime's CUDA provider for a CUDA ``device`` when this onnxruntime has it, else the CPU's."""
    if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxModel(FeatureModel):
    """The graphs of an export folder, run with onnxruntime: RGB rows through the ``rgb`` graph (with
    ``translate``; else through ``ir``), the other rows through ``ir``."""

    def __init__(self, folder: Path, translate: bool = True, device: str = "cpu", require_rgb: bool = True) -> None:
        self.ort = import_extra("onnxruntime", "export", "running an ONNX export")
        self.folder = Path(folder)
        self.meta = read_export(self.folder)
        self.translate = translate
        self.device = device
        size = self.meta["input"]
        self.image_size = (int(size["height"]), int(size["width"]))
        self._sessions: dict[str, Any] = {}
        if translate and require_rgb and not self.has_rgb_path:
            raise CheckpointError(f"{self.folder} holds no rgb graph (exported with --path ir): export with --path "
                                  "both, or pass --no-translate to put RGB images through F alone")

    @property
    def has_rgb_path(self) -> bool:
        return "rgb" in self.meta["graphs"]

    def session(self, path: str) -> Any:
        """The onnxruntime session of a path's graph (opened once)."""
        if path not in self.meta["graphs"]:
            other = "rgb" if path == "ir" else "ir"
            raise UsageError(f"{self.folder} holds no {path} graph (exported with --path {other}); export with "
                             f"--path both to embed {path.upper()} images")
        if path not in self._sessions:
            file = self.folder / self.meta["graphs"][path]["file"]
            self._sessions[path] = self.ort.InferenceSession(str(file), providers=session_providers(self.ort,
                                                                                                    self.device))
        return self._sessions[path]

    def run(self, path: str, pixels: np.ndarray) -> np.ndarray:
        """One graph on float32 N×3×H×W pixels."""
        return self.session(path).run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(pixels, np.float32)})[0]

    def features(self, images: np.ndarray, is_rgb: np.ndarray, batch_size: int = 64,
                 on_progress: Progress | None = None) -> np.ndarray:
        chunks = []
        for start in range(0, len(images), batch_size):
            rows = slice(start, start + batch_size)
            pixels = pixel_batch(torch.from_numpy(np.array(images[rows])))
            if tuple(pixels.shape[2:]) != self.image_size:
                pixels = F.interpolate(pixels, size=self.image_size, mode="bilinear", antialias=True,
                                       align_corners=False)
            pixels = pixels.numpy()
            rgb = np.asarray(is_rgb[rows], dtype=bool) & self.translate
            out = np.empty((len(pixels), int(self.meta["output"]["dim"])), np.float32)
            for path, mask in (("rgb", rgb), ("ir", ~rgb)):
                if mask.any():
                    out[mask] = self.run(path, pixels[mask])
            chunks.append(out)
            if on_progress:
                on_progress(len(pixels), len(images))
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)

    def provenance(self, split: str | None = None) -> dict[str, Any]:
        checkpoint = self.meta["checkpoint"]
        payload = {**checkpoint, "recipe": self.meta.get("recipe")}
        source = extraction_provenance(checkpoint["path"], payload, self.translate, split,
                                       generator_norm=self.meta.get("generator_test_norm") or "running")
        source["checkpoint"]["onnx_export"] = f"{self.folder} (onnxruntime {self.ort.__version__})"
        return source

    @cached_property
    def fingerprint(self) -> str:
        return f"onnx export sha256 {file_sha256(self.folder / MODEL_JSON)}"

    @property
    def description(self) -> str:
        return f"ONNX export {self.folder} (of {self.meta['checkpoint']['path']})"
