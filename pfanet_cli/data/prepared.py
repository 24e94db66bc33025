"""Reading prepared data: the manifest, and per split the memory-mapped image array and its index."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pfanet_cli.data import sysu
from pfanet_cli.data.format import (
    PREPARED_FORMAT,
    PREPARED_FORMAT_VERSION,
    images_file,
    index_file,
    is_current_format,
    read_index,
    read_manifest,
)
from pfanet_cli.errors import DataError
from pfanet_cli.utils.images import ImageLoader


@dataclass
class PreparedSplit:
    """One split: ``images`` is a read-only memory map (N×H×W×3 uint8), the rest are per-row arrays."""

    name: str
    images: np.ndarray
    paths: np.ndarray
    pids: np.ndarray
    camids: np.ndarray
    is_ir: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    def image_loader(self) -> ImageLoader:
        """The split's images looked up by raw-relative path (None for a path it does not hold)."""
        row_of = {path: row for row, path in enumerate(self.paths)}

        def load(path: str) -> np.ndarray | None:
            row = row_of.get(str(path).replace("\\", "/"))
            return None if row is None else np.asarray(self.images[row])

        return load


@dataclass
class PreparedData:
    root: Path
    manifest: dict

    @property
    def dataset(self) -> str:
        return self.manifest["dataset"]

    @property
    def image_size(self) -> tuple[int, int]:
        height, width = self.manifest["size"]
        return int(height), int(width)

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def perm_file(self) -> Path | None:
        """The copy of SYSU-MM01's official permutation file, when the raw tree had one."""
        return sysu.find_perm_file(self.root)

    def split(self, name: str) -> PreparedSplit:
        if name not in self.manifest["splits"]:
            raise DataError(f"prepared data {self.root} has no '{name}' split (it has {', '.join(self.splits)})")
        return _load_split(self.root, name)


def open_prepared(root: str | Path) -> PreparedData:
    """Open a prepared directory written by ``prepare-data``; errors say how to create one."""
    root = Path(root)
    if not root.is_dir():
        if any(root.parent.glob(f".{root.name}.old-*")):
            raise DataError(f"prepared data not found at {root}: an interrupted prepare-data left the previous "
                            "version beside it; run the same prepare-data command again to put it back")
        raise DataError(f"prepared data not found at {root} (run 'pfanet prepare-data sysu' or pass --data)")
    manifest = read_manifest(root)
    if manifest is None:
        raise DataError(f"{root} has no readable manifest.json; re-run 'pfanet prepare-data'")
    if not is_current_format(manifest):
        raise DataError(
            f"{root}: prepared format {manifest.get('format')} v{manifest.get('format_version')} is not "
            f"{PREPARED_FORMAT} v{PREPARED_FORMAT_VERSION}; re-run 'pfanet prepare-data'"
        )
    return PreparedData(root, manifest)


def _map_images(npy: Path) -> np.ndarray:
    """The image array, memory-mapped read-only; a file shorter than its header says is an error here,
    not a crash when a missing row is read."""
    try:
        images = np.load(npy, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{npy}: unreadable or truncated image array ({exc}); re-run 'pfanet prepare-data'") \
            from exc
    if not isinstance(images, np.memmap):
        raise DataError(f"{npy} is not an .npy image array; re-run 'pfanet prepare-data'")
    return images


def _load_split(root: Path, name: str) -> PreparedSplit:
    npy, index = images_file(root, name), index_file(root, name)
    for path in (npy, index):
        if not path.is_file():
            raise DataError(f"prepared data is incomplete: {path} is missing; re-run 'pfanet prepare-data'")
    images = _map_images(npy)
    rows = read_index(index)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise DataError(f"{npy}: shape {images.shape} {images.dtype} is not N×H×W×3 uint8; "
                        "re-run 'pfanet prepare-data'")
    if len(images) != len(rows):
        relation = "fewer" if len(images) < len(rows) else "more"
        raise DataError(f"{npy} holds {len(images)} images, {relation} than the {len(rows)} rows of {index.name}; "
                        "re-run 'pfanet prepare-data'")
    return PreparedSplit(
        name=name,
        images=images,
        paths=np.array([r[0] for r in rows], dtype=str),
        pids=np.array([int(r[1]) for r in rows], dtype=np.int64),
        camids=np.array([int(r[2]) for r in rows], dtype=np.int64),
        is_ir=np.array([r[3] == "ir" for r in rows], dtype=bool),
        labels=np.array([int(r[4]) for r in rows], dtype=np.int64),
    )
