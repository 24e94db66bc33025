"""Which images a synthetic render writes (the ``small`` and ``sysu`` presets): the id splits and, per
camera, the number of images of every person."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from pfanet_cli.data.synthetic.nir import DEFAULT_IR_RESIDUAL, check_ir_residual
from pfanet_cli.data.sysu import ALL_CAMERAS, INDOOR_RGB_CAMERAS, IR_CAMERAS, real_counts
from pfanet_cli.errors import UsageError

PRESETS: dict[str, tuple[int, int]] = {"small": (128, 64), "sysu": (256, 128)}
"""Preset name -> default raw image size (height, width)."""

SMALL_DEFAULT_IDS = 60
SMALL_SPLIT_FRACTIONS = {"train": 0.5, "val": 0.1, "test": 0.4}
SMALL_IMAGES_PER_CAMERA = (4, 10)
"""Inclusive range of images per (camera, person) in the ``small`` preset."""
SMALL_OUTDOOR_ONLY_FRACTION = 0.4
"""Share of ids (per split) absent from the indoor RGB cameras 1 and 2, as in the real data."""
SMALL_ONE_IR_CAMERA_FRACTION = 0.1
"""Share of ids seen by only one of the two IR cameras (never by none)."""
MAX_PID = 9999

STREAM_PLAN, STREAM_IDENTITY, STREAM_TRACK, STREAM_IMAGE, STREAM_PERM, STREAM_LLCM_PLAN = range(1, 7)
"""Seed-sequence domains, so the generators of plan, identities, tracks, images, permutations and the LLCM
layout's plan never share a stream."""



@dataclass(frozen=True)
class SyntheticPlan:
    """Which images a render writes: the splits and, per camera, the image count of every person."""

    preset: str
    seed: int
    height: int
    width: int
    splits: dict[str, list[int]]
    """``train``, ``val``, ``test``, ``available``: ascending person ids."""
    counts: dict[int, dict[int, int]]
    """camera id -> person id -> number of images (people absent from a camera are left out)."""
    ir_residual: float = DEFAULT_IR_RESIDUAL
    """Share of each material's IR intensity unrelated to its colour (``nir.py``)."""

    @property
    def pids(self) -> list[int]:
        """Every person with a folder in some camera (the real data has a few outside ``available``)."""
        return sorted({pid for people in self.counts.values() for pid in people})

    def images_per_camera(self) -> dict[int, int]:
        return {cam: sum(self.counts.get(cam, {}).values()) for cam in ALL_CAMERAS}

    @property
    def total_images(self) -> int:
        return sum(self.images_per_camera().values())

    def subset(self, pids: list[int] | set[int]) -> "SyntheticPlan":
        """The same plan restricted to ``pids`` (images keep their numbers and their pixels)."""
        keep = set(int(p) for p in pids)
        unknown = keep - set(self.pids)
        if unknown:
            raise UsageError(f"subset: person ids {sorted(unknown)[:5]} are not in the plan")
        splits = {name: [p for p in ids if p in keep] for name, ids in self.splits.items()}
        counts = {cam: {p: n for p, n in people.items() if p in keep} for cam, people in self.counts.items()}
        return replace(self, splits=splits, counts=counts)


def image_size(defaults: tuple[int, int], height: int | None, width: int | None) -> tuple[int, int]:
    """(height, width) of a render: the preset's ``defaults``, or the size asked for (one side given: the
    other keeps the preset's aspect ratio)."""
    default_h, default_w = defaults
    if height is None and width is None:
        return default_h, default_w
    if height is None:
        height = int(round(width * default_h / default_w))
    if width is None:
        width = int(round(height * default_w / default_h))
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, (int, np.integer)) or not 16 <= value <= 4096:
            raise UsageError(f"synthetic image {name} must be an integer in 16..4096, got {value!r}")
    return int(height), int(width)


def proportional(total: int, weights: list[float]) -> list[int]:
    """Split ``total`` into parts proportional to ``weights``, each at least 1 (largest remainder)."""
    s = float(sum(weights))
    raw = [total * w / s for w in weights]
    parts = [max(1, int(math.floor(r))) for r in raw]
    while sum(parts) > total:
        i = max(range(len(parts)), key=lambda k: (parts[k] - raw[k], parts[k]))
        parts[i] -= 1
    order = sorted(range(len(parts)), key=lambda k: raw[k] - parts[k], reverse=True)
    i = 0
    while sum(parts) < total:
        parts[order[i % len(parts)]] += 1
        i += 1
    return parts


def plan_synthetic_sysu(preset: str = "small", ids: int | None = None, seed: int = 0,
                        height: int | None = None, width: int | None = None,
                        ir_residual: float = DEFAULT_IR_RESIDUAL) -> SyntheticPlan:
    """Decide which images a render writes, without rendering any.

    ``small``: ``ids`` people (default 60) split 50/10/40 % into train/val/test at random, 4-10
    images per camera and person, 40 % of each split absent from the indoor RGB cameras 1 and 2,
    10 % seen by one IR camera only. ``sysu``: the real per-camera, per-person counts and the
    official id lists; ``ids=N`` keeps N available ids, spread evenly over each split in the
    real proportions. ``ir_residual`` is the near-infrared model's residual share, in [0, 1].
    """
    if preset not in PRESETS:
        raise UsageError(f"unknown synthetic preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise UsageError(f"synthetic seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    h, w = image_size(PRESETS[preset], height, width)
    if ids is not None and (not isinstance(ids, (int, np.integer)) or isinstance(ids, bool) or ids < 3):
        raise UsageError(f"--ids must be an integer >= 3 (one id per split at least), got {ids!r}")
    share = check_ir_residual(ir_residual)
    if preset == "small":
        plan = _plan_small(SMALL_DEFAULT_IDS if ids is None else int(ids), seed, h, w)
    else:
        plan = _plan_sysu(None if ids is None else int(ids), seed, h, w)
    return replace(plan, ir_residual=share)


def _plan_small(n_ids: int, seed: int, height: int, width: int) -> SyntheticPlan:
    if n_ids > MAX_PID:
        raise UsageError(f"--ids must be at most {MAX_PID} (person folders have four digits), got {n_ids}")
    rng = np.random.default_rng([seed, STREAM_PLAN])
    n_train, n_val, n_test = proportional(n_ids, list(SMALL_SPLIT_FRACTIONS.values()))
    order = rng.permutation(np.arange(1, n_ids + 1))
    splits = {
        "train": sorted(int(p) for p in order[:n_train]),
        "val": sorted(int(p) for p in order[n_train : n_train + n_val]),
        "test": sorted(int(p) for p in order[n_train + n_val :]),
    }
    splits["available"] = list(range(1, n_ids + 1))
    outdoor_only: set[int] = set()
    for name in ("train", "val", "test"):
        members = splits[name]
        k = int(round(SMALL_OUTDOOR_ONLY_FRACTION * len(members)))
        outdoor_only.update(int(p) for p in rng.choice(members, size=k, replace=False))
    lo, hi = SMALL_IMAGES_PER_CAMERA
    counts: dict[int, dict[int, int]] = {cam: {} for cam in ALL_CAMERAS}
    for pid in splits["available"]:
        draws = rng.integers(lo, hi + 1, size=len(ALL_CAMERAS))
        one_ir = rng.random() < SMALL_ONE_IR_CAMERA_FRACTION
        missing_ir = IR_CAMERAS[int(rng.integers(0, len(IR_CAMERAS)))]
        for cam, n in zip(ALL_CAMERAS, draws):
            if cam in INDOOR_RGB_CAMERAS and pid in outdoor_only:
                continue
            if one_ir and cam == missing_ir:
                continue
            counts[cam][pid] = int(n)
    return SyntheticPlan("small", seed, height, width, splits, counts)


def _plan_sysu(n_ids: int | None, seed: int, height: int, width: int) -> SyntheticPlan:
    data = real_counts()
    counts = {
        cam: {int(pid): int(n) for pid, n in data["counts"][f"cam{cam}"].items() if int(n) > 0}
        for cam in ALL_CAMERAS
    }
    splits = {name: sorted(int(p) for p in data["splits"][name]) for name in ("train", "val", "test", "available")}
    plan = SyntheticPlan("sysu", seed, height, width, splits, counts)
    if n_ids is None:
        return plan
    available = len(splits["available"])
    if n_ids > available:
        raise UsageError(f"--ids for the sysu preset must be at most {available} (the real available ids), got {n_ids}")
    sizes = proportional(n_ids, [len(splits[name]) for name in ("train", "val", "test")])
    keep: list[int] = []
    for name, k in zip(("train", "val", "test"), sizes):
        members = splits[name]
        picks = np.unique(np.linspace(0, len(members) - 1, k).round().astype(int))
        keep.extend(members[i] for i in picks)
    return plan.subset(keep)
