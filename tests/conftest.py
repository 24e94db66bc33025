"""Shared fixtures: small hand-made raw trees in the SYSU-MM01 and RegDB layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared"


def write_image(path: Path, rng: np.random.Generator, size: tuple[int, int] = (40, 24), mode: str = "RGB") -> None:
    """A random JPEG (or PNG for modes JPEG cannot hold) of ``size`` = (height, width)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, size=size + (3,), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path)


def make_sysu_tree(root: Path, layout: dict[int, dict[int, int]], splits: dict[str, list[int]],
                   seed: int = 0, sizes: tuple[tuple[int, int], ...] = ((40, 24), (52, 20), (37, 30))) -> Path:
    """Write ``layout[camid][pid] = number of images`` as random JPEGs of varying sizes plus exp/*.txt."""
    rng = np.random.default_rng(seed)
    for camid in range(1, 7):
        (root / f"cam{camid}").mkdir(parents=True, exist_ok=True)
        for pid, count in layout.get(camid, {}).items():
            for n in range(1, count + 1):
                size = sizes[int(rng.integers(len(sizes)))]
                write_image(root / f"cam{camid}" / f"{pid:04d}" / f"{n:04d}.jpg", rng, size)
    exp = root / "exp"
    exp.mkdir(parents=True, exist_ok=True)
    for name, ids in splits.items():
        (exp / f"{name}_id.txt").write_text(",".join(str(i) for i in ids))
    available = sorted(set().union(*splits.values()))
    (exp / "available_id.txt").write_text(",".join(str(i) for i in available))
    return root


SMALL_SPLITS = {"train": [1, 4, 7], "val": [2], "test": [3, 5]}


def small_layout() -> dict[int, dict[int, int]]:
    """Six ids over six cameras with uneven counts; id 5 is absent from the indoor cameras 1, 2."""
    layout: dict[int, dict[int, int]] = {c: {} for c in range(1, 7)}
    for pid in (1, 2, 3, 4, 5, 7):
        for camid in range(1, 7):
            if pid == 5 and camid in (1, 2):
                continue
            if pid == 4 and camid == 6:
                continue
            layout[camid][pid] = 1 + (pid + camid) % 3
    return layout


@pytest.fixture
def sysu_tree(tmp_path: Path) -> Path:
    return make_sysu_tree(tmp_path / "SYSU-MM01", small_layout(), SMALL_SPLITS)


def make_regdb_tree(root: Path, ids: int = 4, per_modality: int = 3, trial: int = 1, seed: int = 0) -> Path:
    """A RegDB-layout tree: half the ids train, half test, idx files for ``trial``."""
    rng = np.random.default_rng(seed)
    idx = root / "idx"
    idx.mkdir(parents=True, exist_ok=True)
    lines = {(s, m): [] for s in ("train", "test") for m in ("visible", "thermal")}
    for pid in range(1, ids + 1):
        split = "train" if pid <= ids // 2 else "test"
        label = pid - 1 if split == "train" else pid - 1 - ids // 2
        for modality, folder, tag in (("visible", "Visible", "v"), ("thermal", "Thermal", "t")):
            for n in range(per_modality):
                rel = f"{folder}/{pid}/person_{tag}_{n:05d}_{pid}.bmp"
                write_image(root / rel, rng, (36, 20), mode="L" if modality == "thermal" else "RGB")
                lines[(split, modality)].append(f"{rel} {label}")
    for (split, modality), rows in lines.items():
        (idx / f"{split}_{modality}_{trial}.txt").write_text("\n".join(rows) + "\n")
    return root
