"""``extract``: the test feature of every image of a prepared split or an image folder.

PFANet (a train-joint checkpoint): F's GAP vector of the image plus that of its horizontal flip,
L2-normalised (SPEC §3); RGB images are first translated to fake IR by G_I (eval mode, its InstanceNorm as
``model.generator_test_norm`` says) unless ``translate`` is off; IR images go in as they are. AGW (a
train-agw checkpoint): RGB images go through the visible stem and IR images through the thermal stem, and the
feature is AGW's fc or pool vector, L2-normalised, flipped or not (``agw.test_feature``, ``agw.test_flip``).
Images are read in batches from the memory-mapped prepared array. The model is a checkpoint run with PyTorch
(``inference/feature_model.py``, G_I in test mode), or an ONNX export of a PFANet checkpoint run with
onnxruntime: the same numbers either way, to the export's parity tolerance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pfanet_cli.data.datasets import identity_from_path
from pfanet_cli.data.prepared import PreparedData, open_prepared
from pfanet_cli.errors import DataError, UsageError
from pfanet_cli.evaluation.card import prepared_split
from pfanet_cli.evaluation.features import FeatureSet, validate_arrays
from pfanet_cli.inference.feature_model import Progress
from pfanet_cli.inference.models import open_feature_model
from pfanet_cli.utils.console import console
from pfanet_cli.utils.images import BadImage, list_images, load_rgb


def extract_split(checkpoint: Path | None, data: PreparedData | str | Path, split: str = "test",
                  translate: bool = True, batch_size: int = 64, device: str = "cpu", runs_root: Path = Path("runs"),
                  on_progress: Progress | None = None, feature: str | None = None,
                  onnx: Path | None = None, generator_norm: str | None = None) -> FeatureSet:
    """Features of every image of a prepared split (for SYSU's test split: queries and gallery), with
    the prepared data's official permutation file when it has one. ``data``: an opened prepared folder
    or its path. ``feature``: AGW's test vector instead of its recipe's (``fc`` or ``pool``). ``onnx``: an
    export folder of ``pfanet export`` run with onnxruntime instead of a checkpoint. ``generator_norm``
    overrides the checkpoint's ``model.generator_test_norm`` (checkpoints only)."""
    model = open_feature_model(checkpoint, onnx, translate=translate, device=device, runs_root=runs_root,
                               feature=feature, generator_norm=generator_norm)
    if not isinstance(data, PreparedData):
        data = open_prepared(data)
    rows = data.split(split)
    if model.image_size != rows.image_size:
        height, width = model.image_size
        console.print(f"note: {data.root} is {rows.image_size[0]}x{rows.image_size[1]}, the model was trained at "
                      f"{height}x{width}; images are resized on the fly")
    features = model.features(rows.images, ~rows.is_ir, batch_size, on_progress)
    result = validate_arrays(features, rows.pids, rows.camids, rows.paths, dataset=data.dataset)
    perm = data.perm_file()
    result.perm_mat_bytes = perm.read_bytes() if perm else None
    result.provenance = model.provenance(prepared_split(data.dataset, data.manifest, str(data.root), split))
    return result


def extract_folder(checkpoint: Path | None, image_dir: Path, modality: str = "auto", translate: bool = True,
                   batch_size: int = 64, device: str = "cpu", runs_root: Path = Path("runs"),
                   on_progress: Progress | None = None, feature: str | None = None,
                   onnx: Path | None = None, generator_norm: str | None = None) -> FeatureSet:
    """Features of every image under ``image_dir`` (recursive). Identities and cameras are read from
    SYSU- or RegDB-style paths when present (-1 otherwise); ``modality`` says which images are RGB
    (``auto``: from the camera in the path); ``onnx`` and ``generator_norm`` as in :func:`extract_split`."""
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
    model = open_feature_model(checkpoint, onnx, translate=translate, device=device, runs_root=runs_root,
                               feature=feature, generator_norm=generator_norm)
    images = np.empty((len(files), *model.image_size, 3), dtype=np.uint8)
    for row, path in enumerate(files):
        try:
            images[row] = load_rgb(path, model.image_size)
        except BadImage as exc:
            raise DataError(f"cannot decode {path}: {exc}") from exc
    features = model.features(images, is_rgb, batch_size, on_progress)
    datasets = {parts[3] for parts in parsed}
    dataset = datasets.pop() if len(datasets) == 1 and None not in datasets else "sysu"
    result = validate_arrays(features, np.array([p[0] for p in parsed], np.int64),
                             np.array([p[1] for p in parsed], np.int64), relative, dataset=dataset)
    result.provenance = model.provenance(f"the images under {image_dir}")
    return result
