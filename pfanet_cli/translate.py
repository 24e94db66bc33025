"""``translate``: RGB images to fake IR images with G_I, keeping the folder tree and file names.

Every image under the input folder (recursive) is converted to RGB, resized to the model's input
size, translated in batches, and written under the output folder at the same relative path —
resized back to its original size by default (``keep_size``), or at the model size. G_I runs in eval
mode, its InstanceNorm as ``model.generator_test_norm`` says (or ``generator_norm``). A manifest
records the checkpoint, that normalisation and every file written. Existing outputs are never
overwritten unless asked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from pfanet_cli.data.augment import to_uint8, to_unit_range
from pfanet_cli.engine.checkpoint import GENERATOR_STAGES, restore_networks
from pfanet_cli.engine.rundir import newest_checkpoint
from pfanet_cli.errors import DataError, DiskFull, UsageError
from pfanet_cli.modeling.build import GENERATOR_RGB2IR
from pfanet_cli.modeling.gan import generator_test_norm
from pfanet_cli.modeling.test_feature import set_generator_test_mode
from pfanet_cli.utils.atomic import READ_ONLY_ERRNOS, check_writable_folder, save_image, write_text
from pfanet_cli.utils.images import IMAGE_SUFFIXES, BadImage, list_images, load_rgb_and_size

MANIFEST_NAME = "translate_manifest.json"


@dataclass
class TranslateSummary:
    out_dir: Path
    checkpoint: Path
    written: int
    skipped: list[str]
    manifest: Path
    links_not_followed: list[str]
    """Links to files outside the input folder, left alone (no --follow-links)."""


def _check_folders(rgb_dir: Path, out_dir: Path) -> list[Path]:
    if not rgb_dir.is_dir():
        raise DataError(f"input folder {rgb_dir} does not exist or is not a folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"output {out_dir} is a file, expected a folder")
    source, target = rgb_dir.resolve(), out_dir.resolve()
    if target == source or target.is_relative_to(source):
        raise UsageError(f"output folder {out_dir} is inside the input folder {rgb_dir}; choose another")
    images = list_images(rgb_dir)
    if not images:
        has_files = any(p.is_file() for p in rgb_dir.rglob("*"))
        what = "no image files (only other files)" if has_files else "no files"
        raise DataError(f"{rgb_dir} holds {what}; expected {', '.join(IMAGE_SUFFIXES)} images")
    return images


def _outside_links(images: list[Path], rgb_dir: Path) -> list[Path]:
    """The images that are links to files outside ``rgb_dir`` (a link inside the tree is fine)."""
    root = rgb_dir.resolve()
    return [image for image in images if image.is_symlink() and not image.resolve().is_relative_to(root)]


def _targets(images: list[Path], rgb_dir: Path, out_dir: Path, overwrite: bool) -> list[Path]:
    root = out_dir.resolve()
    targets = []
    for image in images:
        target = out_dir / image.relative_to(rgb_dir)
        resolved = target.parent.resolve() / target.name
        if not resolved.is_relative_to(root):
            raise DataError(f"{image.relative_to(rgb_dir)} would be written outside {out_dir} (through a link)")
        if target.exists() and not overwrite:
            raise DataError(f"{target} already exists; pass --overwrite to replace earlier outputs")
        targets.append(target)
    return targets


def _write_image(pixels: np.ndarray, target: Path, size: tuple[int, int] | None, written: int) -> None:
    image = Image.fromarray(pixels)
    if size is not None and image.size != size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    try:
        save_image(image, target)
    except DiskFull as exc:
        raise DiskFull(f"{exc} with --overwrite (the {written} image(s) written before stay)") from exc
    except OSError as exc:
        if exc.errno in READ_ONLY_ERRNOS:
            raise UsageError(f"cannot write {target} ({exc.strerror}); choose a writable output folder") from exc
        raise


def translate_folder(rgb_dir: Path, out_dir: Path, checkpoint: Path | None = None, runs_root: Path = Path("runs"),
                     keep_size: bool = True, batch_size: int = 32, device: str = "cpu", overwrite: bool = False,
                     on_progress: Callable[[int, int], None] | None = None,
                     follow_links: bool = False, generator_norm: str | None = None) -> TranslateSummary:
    """Translate every image under ``rgb_dir`` into ``out_dir`` (see the module docstring). Links to files
    outside ``rgb_dir`` are skipped (and listed) unless ``follow_links``. G_I's InstanceNorm uses what the
    checkpoint's ``model.generator_test_norm`` says, or ``generator_norm`` when given."""
    rgb_dir, out_dir = Path(rgb_dir), Path(out_dir)
    images = _check_folders(rgb_dir, out_dir)
    outside = [] if follow_links else _outside_links(images, rgb_dir)
    images = [image for image in images if image not in outside]
    if not images:
        raise DataError(f"every image under {rgb_dir} is a link to a file outside it; links are not followed out "
                        "of the input folder unless you pass --follow-links")
    targets = _targets(images, rgb_dir, out_dir, overwrite)
    checkpoint = Path(checkpoint) if checkpoint else newest_checkpoint(runs_root, GENERATOR_STAGES, "translate")
    networks, payload = restore_networks(checkpoint, [GENERATOR_RGB2IR], "translate")
    generator = networks[GENERATOR_RGB2IR].to(device)
    set_generator_test_mode(generator, generator_norm)
    height, width = (int(v) for v in payload["image_size"])
    check_writable_folder(out_dir)
    records, skipped = [], []
    for start in range(0, len(images), batch_size):
        chunk = list(zip(images[start:start + batch_size], targets[start:start + batch_size]))
        loaded = []
        for source, target in chunk:
            try:
                pixels, original = load_rgb_and_size(source, (height, width))
                loaded.append((source, target, original, pixels))
            except BadImage as exc:
                skipped.append(f"{source.relative_to(rgb_dir).as_posix()}: {exc}")
        if loaded:
            batch = torch.from_numpy(np.stack([item[3] for item in loaded])).permute(0, 3, 1, 2)
            with torch.inference_mode():
                fake = to_uint8(generator(to_unit_range(batch.to(device)))).permute(0, 2, 3, 1).cpu().numpy()
            for (source, target, original, _), pixels in zip(loaded, fake):
                _write_image(pixels, target, original if keep_size else None, len(records))
                records.append({"source": source.relative_to(rgb_dir).as_posix(),
                                "output": target.relative_to(out_dir).as_posix(),
                                "size": list(original if keep_size else (width, height))})
        if on_progress:
            on_progress(len(chunk), len(images))
    if not records:
        raise DataError(f"none of the {len(images)} image files under {rgb_dir} could be decoded "
                        f"(first: {skipped[0]})")
    links = [link.relative_to(rgb_dir).as_posix() for link in outside]
    manifest = out_dir / MANIFEST_NAME
    write_text(manifest, json.dumps({
        "checkpoint": str(checkpoint), "stage": payload["stage"], "model_size": [height, width],
        "generator_test_norm": generator_test_norm(generator), "keep_size": keep_size, "source": str(rgb_dir),
        "images": records, "skipped": skipped, "links_not_followed": links,
    }, indent=2))
    return TranslateSummary(out_dir, checkpoint, len(records), skipped, manifest, links)
