"""The two sides of ``pfanet search``: the images of a folder (or one image), each with its modality and camera.

Modality (``--gallery-modality``, ``--query-modality``): ``rgb`` or ``ir`` for every image; ``auto``, read off
dataset-style paths (SYSU-MM01's ``cam3/...``, RegDB's ``Thermal/...``, LLCM's ``test_nir/...``); or a map from the
first folder below the root to a modality, ``visible=rgb,thermal=ir``. Camera: the first folder below the root
(for one image, the folder it is in), so ``gallery/cam1/...`` and ``query/cam1/...`` are the same camera.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pfanet_cli.data.datasets import identity_from_path
from pfanet_cli.errors import DataError, UsageError
from pfanet_cli.utils.images import IMAGE_SUFFIXES, is_image_file, list_images

MODALITIES = ("rgb", "ir")


@dataclass(frozen=True)
class SideImage:
    """One image of a search side."""

    path: str
    """Relative to the side's root (the file name for a single image), with ``/``."""
    file: Path
    modality: str
    camera: str | None
    size: int
    mtime_ns: int


def modality_rule(spec: str, option: str) -> Callable[[Path, str | None], str | None]:
    """The modality of an image (its file, and the first folder below the root) under ``spec`` (see the module
    docstring); None: cannot tell."""
    spec = spec.strip()
    if spec in MODALITIES:
        return lambda file, folder: spec
    if spec == "auto":
        return lambda file, folder: identity_from_path(file.absolute().as_posix())[2]
    mapping = {}
    for item in spec.split(","):
        name, _, modality = item.partition("=")
        if not name.strip() or modality.strip() not in MODALITIES:
            raise UsageError(f"{option} must be rgb, ir, auto or a map such as visible=rgb,thermal=ir; got {spec!r}")
        mapping[name.strip()] = modality.strip()
    return lambda file, folder: mapping.get(folder or "")


def scan_side(root: Path, modality: str, option: str, what: str) -> list[SideImage]:
    """Every image under the folder ``root`` (recursive, sorted), or the single image ``root``."""
    root = Path(root)
    if root.is_file():
        if not is_image_file(root):
            raise DataError(f"{what} {root} is not an image ({', '.join(IMAGE_SUFFIXES)})")
        files = [root]
    elif root.is_dir():
        files = list_images(root)
        if not files:
            raise DataError(f"{what} folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    else:
        raise DataError(f"{what} {root} does not exist")
    rule = modality_rule(modality, option)
    images = []
    for file in files:
        relative = file.name if file == root else file.relative_to(root).as_posix()
        folder = file.parent.name if file == root else (relative.split("/")[0] if "/" in relative else None)
        found = rule(file, folder)
        if found is None:
            raise UsageError(f"cannot tell the modality of {file}; pass {option} rgb or ir, or a map by first "
                             "folder such as visible=rgb,thermal=ir")
        stat = file.stat()
        images.append(SideImage(relative, file, found, folder, stat.st_size, stat.st_mtime_ns))
    return images
