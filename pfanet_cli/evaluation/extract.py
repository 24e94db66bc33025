"""``extract``: the test feature of every image of a prepared split or an image folder.

PFANet (a train-joint checkpoint): F's GAP vector of the image plus that of its horizontal flip,
L2-normalised (SPEC §3); RGB images are first translated to fake IR by G_I (eval mode) unless ``translate``
is off; IR images go in as they are. AGW (a train-agw checkpoint): RGB images go through the visible stem
and IR images through the thermal stem, and the feature is AGW's fc or pool vector, L2-normalised, flipped
or not (``agw.test_feature``, ``agw.test_flip``). Images are read in batches from the memory-mapped
prepared array.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pfanet_cli.data.augment import to_unit_range
from pfanet_cli.data.datasets import identity_from_path
from pfanet_cli.data.prepared import PreparedData, open_prepared
from pfanet_cli.engine.checkpoint import FEATURE_STAGES, load_checkpoint, rebuild_networks
from pfanet_cli.engine.rundir import newest_checkpoint
from pfanet_cli.errors import DataError, UsageError
from pfanet_cli.evaluation.card import extraction_provenance, prepared_split
from pfanet_cli.evaluation.features import FeatureSet, validate_arrays
from pfanet_cli.modeling.build import AGW, EXTRACTOR, GENERATOR_RGB2IR
from pfanet_cli.utils.console import console
from pfanet_cli.utils.images import BadImage, list_images, load_rgb

Progress = Callable[[int, int], None]


def load_feature_networks(checkpoint: Path, translate: bool,
                          feature: str | None = None) -> tuple[nn.Module, nn.Module | None, dict]:
    """The feature network of a checkpoint in eval mode, with G_I when RGB images are to be translated (PFANet's
    F), or AGW's network set to its recipe's test feature (``feature``, ``fc`` or ``pool``, overrides it); and
    the checkpoint's payload."""
    payload = load_checkpoint(checkpoint)
    if payload.get("stage") == "train-agw":
        net = rebuild_networks(payload, Path(checkpoint), [AGW], "extract")[AGW]
        options = (payload.get("recipe") or {}).get("agw") or {}
        net.configure_test(feature or options.get("test_feature", "fc"), bool(options.get("test_flip", False)))
        return net, None, payload
    if feature not in (None, "pool"):
        raise UsageError(f"--feature {feature}: {checkpoint} is PFANet's ({payload.get('stage')}), whose test feature "
                         "is F's pooled vector v (pool); fc is AGW's BN-neck")
    keys = [EXTRACTOR, GENERATOR_RGB2IR] if translate else [EXTRACTOR]
    networks = rebuild_networks(payload, Path(checkpoint), keys, "extract")
    return networks[EXTRACTOR], networks.get(GENERATOR_RGB2IR), payload


@torch.inference_mode()
def compute_features(extractor: nn.Module, generator: nn.Module | None, images: np.ndarray, is_rgb: np.ndarray,
                     model_size: tuple[int, int], batch_size: int = 64, device: str | torch.device = "cpu",
                     on_progress: Progress | None = None) -> np.ndarray:
    """Features (float32 N×D) of ``images`` (N×H×W×3 uint8, may be memory-mapped): the network's
    ``test_features`` (PFANet's F or AGW's network; AGW sends the rows marked ``is_rgb`` through its
    visible stem).

    Rows marked ``is_rgb`` pass through ``generator`` first when one is given. Images of another
    size than the model's are resized (bilinear, antialiased) on the fly.
    """
    extractor.eval()
    if generator is not None:
        generator.eval()
    chunks = []
    for start in range(0, len(images), batch_size):
        rows = slice(start, start + batch_size)
        batch = torch.from_numpy(np.array(images[rows])).permute(0, 3, 1, 2).to(device)
        batch = to_unit_range(batch)
        if tuple(batch.shape[2:]) != tuple(model_size):
            batch = F.interpolate(batch, size=model_size, mode="bilinear", antialias=True, align_corners=False)
        rgb = torch.from_numpy(np.asarray(is_rgb[rows], dtype=bool)).to(device)
        if generator is not None and bool(rgb.any()):
            batch[rgb] = generator(batch[rgb])
        batch = batch.contiguous(memory_format=torch.channels_last)  # oneDNN: F runs ~1.5x faster on CPU
        chunks.append(extractor.test_features(batch, rgb).cpu().numpy().astype(np.float32))
        if on_progress:
            on_progress(min(batch_size, len(images) - start), len(images))
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


def _resolve_checkpoint(checkpoint: Path | None, runs_root: Path, purpose: str) -> Path:
    return Path(checkpoint) if checkpoint else newest_checkpoint(runs_root, FEATURE_STAGES, purpose)


def _provenance(checkpoint: Path, payload: dict, extractor: nn.Module, translate: bool, split: str) -> dict:
    """The card's source half for features of ``extractor`` (AGW's: with the test vector and flip it used)."""
    agw = (extractor.test_vector, extractor.test_flip) if payload.get("stage") == "train-agw" else None
    return extraction_provenance(str(checkpoint), payload, translate and agw is None, split, agw_test=agw)


def extract_split(checkpoint: Path | None, data: PreparedData | str | Path, split: str = "test",
                  translate: bool = True, batch_size: int = 64, device: str = "cpu", runs_root: Path = Path("runs"),
                  on_progress: Progress | None = None, feature: str | None = None) -> FeatureSet:
    """Features of every image of a prepared split (for SYSU's test split: queries and gallery), with
    the prepared data's official permutation file when it has one. ``data``: an opened prepared folder
    or its path. ``feature``: AGW's test vector instead of its recipe's (``fc`` or ``pool``)."""
    checkpoint = _resolve_checkpoint(checkpoint, runs_root, "extract")
    extractor, generator, payload = load_feature_networks(checkpoint, translate, feature)
    if not isinstance(data, PreparedData):
        data = open_prepared(data)
    rows = data.split(split)
    model_size = tuple(int(v) for v in payload["image_size"])
    if model_size != rows.image_size:
        console.print(f"note: {data.root} is {rows.image_size[0]}x{rows.image_size[1]}, the model was trained at "
                      f"{model_size[0]}x{model_size[1]}; images are resized on the fly")
    extractor.to(device)
    if generator is not None:
        generator.to(device)
    features = compute_features(extractor, generator, rows.images, ~rows.is_ir, model_size, batch_size, device,
                                on_progress)
    result = validate_arrays(features, rows.pids, rows.camids, rows.paths, dataset=data.dataset)
    perm = data.perm_file()
    result.perm_mat_bytes = perm.read_bytes() if perm else None
    result.provenance = _provenance(checkpoint, payload, extractor, translate,
                                    prepared_split(data.dataset, data.manifest, str(data.root), split))
    return result


def extract_folder(checkpoint: Path | None, image_dir: Path, modality: str = "auto", translate: bool = True,
                   batch_size: int = 64, device: str = "cpu", runs_root: Path = Path("runs"),
                   on_progress: Progress | None = None, feature: str | None = None) -> FeatureSet:
    """Features of every image under ``image_dir`` (recursive). Identities and cameras are read from
    SYSU- or RegDB-style paths when present (-1 otherwise); ``modality`` says which images are RGB
    (``auto``: from the camera in the path)."""
    if modality not in ("auto", "rgb", "ir"):
        raise UsageError(f"--modality must be auto, rgb or ir, got {modality!r}")
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise DataError(f"image folder {image_dir} does not exist or is not a folder")
    files = list_images(image_dir)
    if not files:
        raise DataError(f"{image_dir} holds no image files")
    relative = [p.relative_to(image_dir).as_posix() for p in files]
    parsed = [identity_from_path(rel) for rel in relative]
    if modality == "auto":
        unknown = [rel for rel, parts in zip(relative, parsed) if parts[2] is None]
        if unknown:
            raise UsageError(f"cannot tell the modality of {unknown[0]} from its path; pass --modality rgb or ir")
        is_rgb = np.array([parts[2] == "rgb" for parts in parsed])
    else:
        is_rgb = np.full(len(files), modality == "rgb")
    checkpoint = _resolve_checkpoint(checkpoint, runs_root, "extract")
    extractor, generator, payload = load_feature_networks(checkpoint, translate, feature)
    model_size = tuple(int(v) for v in payload["image_size"])
    images = np.empty((len(files), *model_size, 3), dtype=np.uint8)
    for row, path in enumerate(files):
        try:
            images[row] = load_rgb(path, model_size)
        except BadImage as exc:
            raise DataError(f"cannot decode {path}: {exc}") from exc
    extractor.to(device)
    if generator is not None:
        generator.to(device)
    features = compute_features(extractor, generator, images, is_rgb, model_size, batch_size, device, on_progress)
    datasets = {parts[3] for parts in parsed}
    dataset = datasets.pop() if len(datasets) == 1 and None not in datasets else "sysu"
    result = validate_arrays(features, np.array([p[0] for p in parsed], np.int64),
                             np.array([p[1] for p in parsed], np.int64), relative, dataset=dataset)
    result.provenance = _provenance(checkpoint, payload, extractor, translate, f"the images under {image_dir}")
    return result
