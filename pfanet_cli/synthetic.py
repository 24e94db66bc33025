"""Synthetic RGB/IR pedestrians written in the exact SYSU-MM01 raw layout (SPEC §2).

Real SYSU-MM01 needs a signed request, so the toolkit ships this renderer. It writes
``cam1..cam6/<pid:04d>/<n:04d>.jpg``, ``exp/{train,val,test,available}_id.txt`` (one line of
comma-separated ids each) and ``exp/rand_perm_cam.mat`` in the official format, so data
preparation, training and evaluation run on it unchanged.

What an image shows
-------------------
* **Identity** (fixed per person, drawn from ``(seed, pid)``): height and body width, head size,
  leg length, garment layout (sleeveless / short / long sleeves, tucked / long top or coat,
  trousers / shorts / skirt), top pattern (solid, horizontal stripes, vertical stripes, checks,
  two-tone block, chest emblem), garment, shoe, bag and hair colours, bag (none, shoulder bag on the
  left or right, backpack), hair (buzz, short, long, ponytail) and an optional cap.
* **Camera nuisance** (per camera, per track of a person in a camera, per image): a scene per
  camera (cam1 lab, cam2 corridor, cam4 tree-lined road, cam5 building front; IR cam3 the corridor
  of cam2, IR cam6 outdoors), light level and colour cast, blur, sensor noise, position / scale /
  aspect jitter, walking pose, view (front, back, left or right side: an emblem only shows from
  the front, a backpack shows fully only from the back, a side view narrows the body and shows the
  stride) and partial occlusion by a pole or a box.
* **Modality gap**: IR cameras 3 and 6 render temperature, not colour. Each garment has a
  per-identity material emissivity drawn independently of its visible colour, skin is warm
  (bright), hair mid-grey, backgrounds cool with their own texture; the image is stored as a
  JPEG with three equal channels. Shape, layout, pattern geometry, bag and hair carry across
  modalities; colour never does.

Everything is drawn from seeded generators keyed by ``(seed, pid)``, ``(seed, pid, cam)`` and
``(seed, pid, cam, n)``, so the output is byte-identical for a seed whatever the number of worker
processes or the order they run in.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter

from pfanet_cli.atomic import write_text
from pfanet_cli.errors import DataError, UsageError
from pfanet_cli.sysu_layout import (
    ALL_CAMERAS,
    INDOOR_RGB_CAMERAS,
    IR_CAMERAS,
    PERM_FILE,
    PERM_TRIALS,
    format_id_list,
    save_rand_perm_cam,
)

__all__ = [
    "PRESETS",
    "MARKER_FILE",
    "SyntheticPlan",
    "SyntheticSummary",
    "plan_synthetic_sysu",
    "render_plan",
    "render_synthetic_sysu",
    "render_person_image",
    "draw_identity",
    "Identity",
    "load_sysu_counts",
]

MARKER_FILE = ".pfanet-synthetic.json"
"""Written at the root of every render; a folder holding it may be rendered over."""
MARKER_FORMAT = "pfanet-synthetic-sysu"
RENDERER_VERSION = 1
JPEG_QUALITY = 90

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

# Seed-sequence domains, so the generators of plan, identities, tracks, images and permutations
# never share a stream.
_PLAN, _IDENTITY, _TRACK, _IMAGE, _PERM = range(1, 6)


# --------------------------------------------------------------------------------------- plan


def load_sysu_counts() -> dict:
    """The real per-camera, per-person image counts and official splits (package data)."""
    text = resources.files("pfanet_cli").joinpath("resources/sysu_counts.json").read_text("utf-8")
    return json.loads(text)


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


def _image_size(preset: str, height: int | None, width: int | None) -> tuple[int, int]:
    default_h, default_w = PRESETS[preset]
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


def _proportional(total: int, weights: list[float]) -> list[int]:
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
                        height: int | None = None, width: int | None = None) -> SyntheticPlan:
    """Decide which images a render writes, without rendering any.

    ``small``: ``ids`` people (default 60) split 50/10/40 % into train/val/test at random, 4-10
    images per camera and person, 40 % of each split absent from the indoor RGB cameras 1 and 2,
    10 % seen by one IR camera only. ``sysu``: the real per-camera, per-person counts and the
    official id lists; ``ids=N`` keeps N available ids, spread evenly over each split in the
    real proportions.
    """
    if preset not in PRESETS:
        raise UsageError(f"unknown synthetic preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise UsageError(f"synthetic seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    h, w = _image_size(preset, height, width)
    if ids is not None and (not isinstance(ids, (int, np.integer)) or isinstance(ids, bool) or ids < 3):
        raise UsageError(f"--ids must be an integer >= 3 (one id per split at least), got {ids!r}")
    if preset == "small":
        return _plan_small(SMALL_DEFAULT_IDS if ids is None else int(ids), seed, h, w)
    return _plan_sysu(None if ids is None else int(ids), seed, h, w)


def _plan_small(n_ids: int, seed: int, height: int, width: int) -> SyntheticPlan:
    if n_ids > MAX_PID:
        raise UsageError(f"--ids must be at most {MAX_PID} (person folders have four digits), got {n_ids}")
    rng = np.random.default_rng([seed, _PLAN])
    n_train, n_val, n_test = _proportional(n_ids, list(SMALL_SPLIT_FRACTIONS.values()))
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
    data = load_sysu_counts()
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
    sizes = _proportional(n_ids, [len(splits[name]) for name in ("train", "val", "test")])
    keep: list[int] = []
    for name, k in zip(("train", "val", "test"), sizes):
        members = splits[name]
        picks = np.unique(np.linspace(0, len(members) - 1, k).round().astype(int))
        keep.extend(members[i] for i in picks)
    return plan.subset(keep)


# ------------------------------------------------------------------------------------ identity

# Label map values (the renderer paints labels, then colours them per modality).
BG, SKIN, HAIR, TOP, TOP_B, BOTTOM, SHOES, BAG, HAT, STRAP = range(10)
_N_LABELS = 10

_NEUTRALS = np.array(
    [[0.08, 0.08, 0.09], [0.18, 0.18, 0.2], [0.45, 0.45, 0.47], [0.75, 0.75, 0.74], [0.93, 0.93, 0.9],
     [0.12, 0.15, 0.32], [0.76, 0.68, 0.52], [0.35, 0.25, 0.18]],
    dtype=np.float32,
)
_HAIR_COLOURS = np.array(
    [[0.05, 0.04, 0.04], [0.16, 0.1, 0.06], [0.33, 0.21, 0.12], [0.72, 0.58, 0.32], [0.6, 0.6, 0.6]],
    dtype=np.float32,
)
_HAIR_COLOUR_P = np.array([0.42, 0.26, 0.16, 0.1, 0.06])


def _garment_colour(rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.3:
        base = _NEUTRALS[int(rng.integers(0, len(_NEUTRALS)))]
        return np.clip(base * rng.uniform(0.9, 1.1), 0, 1).astype(np.float32)
    hue = rng.random()
    sat = rng.uniform(0.45, 0.95)
    val = rng.uniform(0.35, 0.95)
    return np.array(colorsys.hsv_to_rgb(hue, sat, val), dtype=np.float32)


def _contrasting_colour(rng: np.random.Generator, other: np.ndarray) -> np.ndarray:
    """A colour clearly different from ``other`` (so a pattern is visible in RGB)."""
    best, best_d = None, -1.0
    for _ in range(8):
        c = _garment_colour(rng)
        d = float(np.abs(c - other).sum())
        if d > best_d:
            best, best_d = c, d
        if d > 0.6:
            break
    return best


def _emissivity(rng: np.random.Generator, lo: float = 0.15, hi: float = 0.78) -> float:
    return float(rng.uniform(lo, hi))


@dataclass(frozen=True, eq=False)
class Identity:
    """Everything that is fixed for one person (lengths in units of the person's height)."""

    pid: int
    height: float          # fraction of the image height the person fills
    shoulder: float        # shoulder half-width
    hip: float             # hip half-width
    head_ru: float
    head_rv: float
    hip_v: float           # hip line, from the top of the head
    top_end: float         # where the top garment ends (below the hip for long tops / coats)
    coat: bool
    sleeve: float          # sleeve length as a fraction of the arm (0 = sleeveless)
    bottom: str            # trousers | shorts | skirt
    bottom_len: float      # shorts / skirt length below the hip
    pattern: str           # solid | hstripes | vstripes | checks | block | logo
    period: float
    duty: float
    phase: float
    logo_shape: str
    logo_size: float
    logo_offset: float
    bag: str               # none | left | right | backpack
    bag_w: float
    bag_h: float
    hair: str              # buzz | short | long | ponytail
    hat: bool
    shoe_h: float
    rgb: np.ndarray = field(repr=False)   # (_N_LABELS, 3) colours
    ir: np.ndarray = field(repr=False)    # (_N_LABELS,) emissivities


def draw_identity(seed: int, pid: int) -> Identity:
    """The appearance of person ``pid`` (independent of preset, camera and image)."""
    rng = np.random.default_rng([seed, _IDENTITY, pid])
    height = rng.uniform(0.78, 0.95)
    shoulder = rng.uniform(0.085, 0.13)
    hip = shoulder * rng.uniform(0.78, 1.0)
    head_ru = rng.uniform(0.047, 0.058)
    head_rv = rng.uniform(0.062, 0.072)
    hip_v = rng.uniform(0.49, 0.55)
    coat = rng.random() < 0.12
    top_end = hip_v + (rng.uniform(0.2, 0.27) if coat else rng.uniform(-0.03, 0.07))
    sleeve = float(rng.choice([0.0, 0.4, 1.0], p=[0.15, 0.4, 0.45]))
    if coat:
        sleeve = 1.0
    bottom = str(rng.choice(["trousers", "shorts", "skirt"], p=[0.55, 0.22, 0.23]))
    bottom_len = rng.uniform(0.14, 0.2) if bottom == "shorts" else rng.uniform(0.17, 0.32)
    pattern = str(rng.choice(["solid", "hstripes", "vstripes", "checks", "block", "logo"],
                             p=[0.2, 0.18, 0.16, 0.14, 0.14, 0.18]))
    period = rng.uniform(0.075, 0.12)
    duty = rng.uniform(0.4, 0.55)
    phase = rng.random()
    logo_shape = str(rng.choice(["circle", "square", "diamond", "triangle"]))
    logo_size = rng.uniform(0.04, 0.058)
    logo_offset = float(rng.choice([0.0, -0.45, 0.45]))
    bag = str(rng.choice(["none", "left", "right", "backpack"], p=[0.3, 0.2, 0.2, 0.3]))
    bag_w = rng.uniform(0.09, 0.13)
    bag_h = rng.uniform(0.09, 0.14) if bag in ("left", "right") else rng.uniform(0.2, 0.27)
    hair = str(rng.choice(["buzz", "short", "long", "ponytail"], p=[0.15, 0.35, 0.3, 0.2]))
    hat = rng.random() < 0.18
    shoe_h = rng.uniform(0.028, 0.045)

    rgb = np.zeros((_N_LABELS, 3), dtype=np.float32)
    skin_t = rng.random()
    rgb[SKIN] = (1 - skin_t) * np.array([0.95, 0.78, 0.66]) + skin_t * np.array([0.42, 0.28, 0.2])
    rgb[HAIR] = _HAIR_COLOURS[int(rng.choice(len(_HAIR_COLOURS), p=_HAIR_COLOUR_P))] * rng.uniform(0.9, 1.1)
    rgb[TOP] = _garment_colour(rng)
    rgb[TOP_B] = _contrasting_colour(rng, rgb[TOP])
    rgb[BOTTOM] = _garment_colour(rng)
    rgb[SHOES] = _NEUTRALS[int(rng.choice([0, 1, 2, 4, 7]))] if rng.random() < 0.75 else _garment_colour(rng)
    rgb[BAG] = _garment_colour(rng)
    rgb[STRAP] = rgb[BAG] * 0.75
    rgb[HAT] = _garment_colour(rng)

    # Emissivities are drawn from their own generator: they cannot depend on the colours.
    erng = np.random.default_rng([seed, _IDENTITY, pid, 1])
    ir = np.zeros(_N_LABELS, dtype=np.float32)
    ir[SKIN] = erng.uniform(0.86, 0.98)
    ir[HAIR] = erng.uniform(0.3, 0.5)
    ir[TOP] = _emissivity(erng)
    second = _emissivity(erng)
    while abs(second - ir[TOP]) < 0.25:  # a pattern must show in both modalities
        second = _emissivity(erng)
    ir[TOP_B] = second
    ir[BOTTOM] = _emissivity(erng)
    ir[SHOES] = _emissivity(erng, 0.15, 0.5)
    ir[BAG] = _emissivity(erng, 0.12, 0.6)
    ir[STRAP] = ir[BAG]
    ir[HAT] = _emissivity(erng, 0.2, 0.6)
    return Identity(pid, height, shoulder, hip, head_ru, head_rv, hip_v, top_end, coat, sleeve, bottom,
                    bottom_len, pattern, period, duty, phase, logo_shape, logo_size, logo_offset, bag, bag_w,
                    bag_h, hair, hat, shoe_h, np.clip(rgb, 0, 1), ir)


# --------------------------------------------------------------------------------- per image

_VIEWS = ("front", "back", "left", "right")


@dataclass(frozen=True)
class _Track:
    """A person's pass in front of one camera: the images of it look alike, as in real data."""

    view: str
    x: float
    scale: float
    light: float


def _draw_track(seed: int, pid: int, cam: int) -> _Track:
    rng = np.random.default_rng([seed, _TRACK, pid, cam])
    view = str(rng.choice(_VIEWS, p=[0.35, 0.35, 0.15, 0.15]))
    return _Track(view, rng.uniform(0.44, 0.56), rng.uniform(0.94, 1.04), rng.uniform(0.88, 1.12))


@dataclass(frozen=True)
class _CameraStyle:
    ir: bool
    light: tuple[float, float]
    cast: tuple[float, float, float]
    blur: tuple[float, float]
    noise: tuple[float, float]


_CAMERAS: dict[int, _CameraStyle] = {
    1: _CameraStyle(False, (0.85, 1.1), (1.05, 1.0, 0.9), (0.3, 0.9), (2.0, 5.0)),
    2: _CameraStyle(False, (0.62, 0.88), (0.93, 1.0, 1.04), (0.5, 1.2), (4.0, 8.0)),
    3: _CameraStyle(True, (1.0, 1.0), (1.0, 1.0, 1.0), (0.8, 1.5), (4.0, 8.0)),
    4: _CameraStyle(False, (0.92, 1.22), (1.0, 1.0, 1.0), (0.3, 1.0), (2.0, 4.0)),
    5: _CameraStyle(False, (0.78, 1.12), (0.92, 0.98, 1.08), (0.4, 1.1), (2.0, 5.0)),
    6: _CameraStyle(True, (1.0, 1.0), (1.0, 1.0, 1.0), (0.8, 1.7), (4.0, 9.0)),
}


_NOISE_BANK_SIZE = 1 << 21
_noise_bank: np.ndarray | None = None


def _sensor_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Unit Gaussian noise of ``shape``: a window at a random offset into a fixed bank (the same
    in every process, so the output stays deterministic), much cheaper than fresh draws."""
    global _noise_bank
    size = int(np.prod(shape))
    if _noise_bank is None:
        _noise_bank = np.random.default_rng(20220607).standard_normal(_NOISE_BANK_SIZE, dtype=np.float32)
    if size > _NOISE_BANK_SIZE // 2:
        return rng.standard_normal(shape, dtype=np.float32)
    start = int(rng.integers(0, _NOISE_BANK_SIZE - size))
    return _noise_bank[start : start + size].reshape(shape)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells_h: int, cells_w: int) -> np.ndarray:
    """Zero-mean, roughly unit-variance noise smooth over ``height/cells_h`` pixels."""
    small = rng.standard_normal((cells_h, cells_w), dtype=np.float32)
    img = Image.fromarray(small, mode="F").resize((width, height), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def _background(cam: int, rng: np.random.Generator, height: int, width: int):
    """The scene behind the person.

    RGB cameras: ``(index, palette, brightness)`` -- an H x W uint8 map into a small palette of
    colours and an H x W brightness (texture) map, so the caller colours the whole frame with one
    lookup. IR cameras: an H x W temperature map.
    """
    y = ((np.arange(height, dtype=np.float32) + 0.5) / height)[:, None]
    x = ((np.arange(width, dtype=np.float32) + 0.5) / width)[None, :]
    off = np.float32(rng.uniform(0, 8))
    n1 = _smooth_noise(rng, height, width, 6, 4)
    n2 = _smooth_noise(rng, height, width, 24, 12)
    shape = (height, width)

    def pal(*colours) -> np.ndarray:
        return np.asarray(colours, dtype=np.float32)

    if cam == 1:  # lab: beige wall with a cabinet, tiled floor in perspective, dark skirting
        hz = rng.uniform(0.6, 0.7)
        palette = pal([0.8, 0.76, 0.66], [0.45, 0.33, 0.22], [0.56, 0.55, 0.58], [0.47, 0.47, 0.5],
                      [0.3, 0.28, 0.26])
        x0 = rng.uniform(-0.3, 0.8)
        cabinet = (x > x0) & (x < x0 + rng.uniform(0.25, 0.45)) & (y > 0.1) & (y < hz)
        depth = 1.0 / np.maximum(y - hz + 0.06, 0.02)
        checker = (np.floor(depth * 0.5 + off) + np.floor((x - 0.5) * depth * 0.9 + off)) % 2 > 0
        idx = np.where(y > hz, np.where(checker, 2, 3), np.where(cabinet, 1, 0))
        idx = np.where((y > hz - 0.025) & (y <= hz), 4, idx)
        bright = np.where(y > hz, 1 + 0.04 * n2, 1 + 0.05 * n1 + 0.02 * n2)
    elif cam == 2:  # corridor (room 2): panelled walls, a door, ceiling lights, glossy floor
        hz = rng.uniform(0.55, 0.65)
        palette = pal([0.55, 0.6, 0.64], [0.44, 0.48, 0.51], [0.3, 0.36, 0.42], [0.95, 0.95, 0.9],
                      [0.36, 0.34, 0.3])
        panels = ((x * 3.0 + off) % 1.0) < 0.07
        door_x = rng.uniform(-0.2, 0.9)
        door = (x > door_x) & (x < door_x + 0.28) & (y > 0.12) & (y < hz)
        idx = np.where(door, 2, np.where(panels, 1, 0))
        idx = np.where(y < 0.06, 3, idx)
        idx = np.where(y > hz, 4, idx)
        bright = np.where(y > hz, 1 + 0.175 * (1 - (y - hz) / (1 - hz)) + 0.05 * n2, 1 + 0.04 * n1)
    elif cam == 4:  # outdoor: sky, trees, road with a kerb
        sky_h = rng.uniform(0.03, 0.18)
        hz = rng.uniform(0.45, 0.58)
        palette = pal([0.72, 0.82, 0.95], [0.24, 0.4, 0.18], [0.52, 0.51, 0.5], [0.78, 0.78, 0.74])
        idx = np.where(y < sky_h, 0, np.where(y > hz, 2, 1)) + np.zeros(shape, dtype=np.int64)
        idx = np.where((y > hz) & (y < hz + 0.025), 3, idx)
        bright = np.where(y > hz, 1 + 0.06 * n1 + 0.08 * n2, 1 + 0.25 * n1 + 0.12 * n2)
        bright = np.where(y < sky_h, 1.0, bright)
    elif cam == 5:  # outdoor: building front with windows, brick pavement
        hz = rng.uniform(0.58, 0.7)
        palette = pal([0.72, 0.56, 0.44], [0.42, 0.42, 0.48], [0.56, 0.53, 0.5], [0.66, 0.61, 0.57])
        wx = (x * 3.5 + off) % 1.0
        wy = (y * 4.0 + off * 0.37) % 1.0
        window = (wx > 0.2) & (wx < 0.7) & (wy > 0.25) & (wy < 0.8)
        row = np.floor(y * 22 + off)
        grout = ((y * 22 + off) % 1.0 < 0.12) | (((x * 7 + 0.5 * row) % 1.0) < 0.06)
        idx = np.where(y > hz, np.where(grout, 2, 3), np.where(window, 1, 0))
        bright = np.where(y > hz, 1 + 0.04 * n2, 1 + 0.05 * n1 + 0.03 * n2)
    elif cam == 3:  # IR view of the corridor: cool walls, faint warm panels, a warm ceiling lamp
        hz = rng.uniform(0.55, 0.65)
        panels = ((x * 3.0 + off) % 1.0) < 0.07
        img = 0.22 + 0.035 * n1 + 0.015 * n2 + 0.05 * panels
        lamp_x = rng.uniform(0, 1)
        img = img + 0.35 * np.exp(-(((x - lamp_x) / 0.12) ** 2 + (y / 0.06) ** 2))
        floor = 0.27 + 0.06 * (y - hz) / (1 - hz) + 0.02 * n2
        return np.where(y > hz, floor, img).astype(np.float32)
    else:  # cam 6, IR outdoors: cold sky, trees a little warmer, warm ground, sometimes a warm object
        sky_h = rng.uniform(0.03, 0.2)
        hz = rng.uniform(0.45, 0.6)
        img = np.where(y < sky_h, 0.06, 0.17 + 0.07 * n1 + 0.04 * n2)
        ground = 0.3 + 0.1 * (y - hz) / (1 - hz) + 0.05 * n1 + 0.03 * n2
        img = np.where(y > hz, ground, img)
        if rng.random() < 0.3:
            bx, by = rng.uniform(0, 1), rng.uniform(hz, 1.0)
            img = img + 0.25 * np.exp(-(((x - bx) / 0.15) ** 2 + ((y - by) / 0.08) ** 2))
        return img.astype(np.float32)
    return (np.broadcast_to(idx, shape).astype(np.uint8), palette,
            np.broadcast_to(bright, shape).astype(np.float32))


class _Painter:
    """Paints shapes given in person coordinates (u across, v down, both in person heights) into a
    label map, touching only the rows a shape spans."""

    def __init__(self, u: np.ndarray, v: np.ndarray) -> None:
        self.u = u[None, :]
        self.v = v
        self.labels = np.zeros((len(v), len(u)), dtype=np.uint8)

    def rows(self, v0: float, v1: float) -> tuple[int, int]:
        return int(np.searchsorted(self.v, v0)), int(np.searchsorted(self.v, v1))

    def paint(self, label: int, v0: float, v1: float,
              fn: Callable[[np.ndarray, np.ndarray], np.ndarray], where: int | None = None) -> None:
        r0, r1 = self.rows(v0, v1)
        if r1 <= r0:
            return
        mask = fn(self.u, self.v[r0:r1, None])
        block = self.labels[r0:r1]
        if where is not None:
            mask = mask & (block == where)
        block[mask] = label

    def band(self, label: int, v0: float, v1: float, uc: float, hw0: float, hw1: float | None = None,
             tilt: float = 0.0, where: int | None = None) -> None:
        """A (possibly slanted, tapering) vertical band from v0 to v1 centred at uc at v0."""
        hw1 = hw0 if hw1 is None else hw1
        span = max(v1 - v0, 1e-6)

        def fn(u, v):
            t = (v - v0) / span
            return np.abs(u - (uc + (v - v0) * tilt)) <= hw0 + (hw1 - hw0) * t

        self.paint(label, v0, v1, fn, where)

    def ellipse(self, label: int, uc: float, vc: float, ru: float, rv: float,
                clip: tuple[float, float] | None = None) -> None:
        v0, v1 = vc - rv, vc + rv
        if clip is not None:
            v0, v1 = max(v0, clip[0]), min(v1, clip[1])
        self.paint(label, v0, v1, lambda u, v: ((u - uc) / ru) ** 2 + ((v - vc) / rv) ** 2 <= 1.0)

    def rect(self, label: int, u0: float, u1: float, v0: float, v1: float) -> None:
        self.paint(label, v0, v1, lambda u, v: (u >= u0) & (u <= u1) & (v >= v0))


def _paint_person(ident: Identity, view: str, pose: dict, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The label map of one person seen from ``view`` (painter's algorithm, back to front)."""
    p = _Painter(u, v)
    side = view in ("left", "right")
    # facing direction in the image for side views (+1: facing right)
    d = 1.0 if view == "right" else -1.0
    s = 0.6 if side else 1.0
    sw, hw = ident.shoulder * s, ident.hip * s
    arm = 0.2 * ident.shoulder + 0.009
    leg = 0.42 * ident.hip
    v_sh = 0.145 + ident.head_rv - 0.066
    vc, ru, rv = ident.head_rv, ident.head_ru, ident.head_rv
    v_hip, v_foot = ident.hip_v, 1.0 - ident.shoe_h * 0.6
    v_wrist = v_hip + 0.03
    swing, stride = pose["swing"], pose["stride"]

    # which image side a bag hangs on: the person's left is the image's right from the front
    bag_dir = 0.0
    if ident.bag in ("left", "right"):
        person_left = ident.bag == "left"
        if view == "front":
            bag_dir = 1.0 if person_left else -1.0
        elif view == "back":
            bag_dir = -1.0 if person_left else 1.0
    bag_near = side and ((ident.bag == "left") == (view == "left"))

    # --- behind the body
    if ident.hair == "long" and view == "front":
        p.rect(HAIR, -ru * 1.12, ru * 1.12, vc, vc + 0.16)
    if ident.hair == "long" and side:
        p.rect(HAIR, -d * ru * 1.1 if d > 0 else 0.0, 0.0 if d > 0 else ru * 1.1, vc, vc + 0.15)
    if ident.bag == "backpack":
        top = v_sh + 0.015
        if view == "front":
            p.rect(BAG, -ident.shoulder * 1.02, ident.shoulder * 1.02, top, top + ident.bag_h)
        elif side:
            u0 = -d * sw * 0.7
            u1 = -d * (sw + ident.bag_w * 0.75)
            p.rect(BAG, min(u0, u1), max(u0, u1), top, top + ident.bag_h)
    if side and ident.bag in ("left", "right") and not bag_near:
        bv = v_hip - 0.05
        p.rect(BAG, -d * 0.01 - ident.bag_w * 0.5, -d * 0.01 + ident.bag_w * 0.5, bv, bv + ident.bag_h)
    if side:  # far arm
        p.band(SKIN, v_sh + 0.01, v_wrist + 0.04, 0.0, arm * 0.9, tilt=-swing)
        if ident.sleeve > 0:
            p.band(TOP, v_sh + 0.01, v_sh + 0.01 + ident.sleeve * (v_wrist - v_sh), 0.0, arm * 1.05,
                   tilt=-swing)

    # --- legs, bottom garment, shoes
    if side:
        legs = [(0.0, stride), (0.0, -stride)]
    else:
        legs = [(-(hw - leg), -stride * 0.15), ((hw - leg), stride * 0.15)]
    for uc, tilt in legs:
        p.band(SKIN, v_hip - 0.02, v_foot, uc, leg, leg * 0.72, tilt=tilt)
        if ident.bottom == "trousers":
            p.band(BOTTOM, v_hip - 0.02, v_foot, uc, leg * 1.05, leg * 0.85, tilt=tilt)
        elif ident.bottom == "shorts":
            p.band(BOTTOM, v_hip - 0.02, v_hip + ident.bottom_len, uc, leg * 1.1, leg * 1.05, tilt=tilt)
        shoe_v = v_foot - 0.01
        foot_u = uc + (shoe_v - v_hip + 0.02) * tilt
        if side:
            p.rect(SHOES, min(foot_u - leg * 0.8, foot_u + d * 0.045), max(foot_u + leg * 0.8, foot_u + d * 0.045),
                   shoe_v, 1.0)
        else:
            p.rect(SHOES, foot_u - leg * 0.95, foot_u + leg * 0.95, shoe_v, 1.0)
    if ident.bottom in ("trousers", "shorts"):  # the seat joins the two legs
        p.band(BOTTOM, v_hip - 0.03, v_hip + 0.05, 0.0, hw, hw * 0.9)
    elif ident.bottom == "skirt":
        p.band(BOTTOM, v_hip - 0.03, v_hip + ident.bottom_len, 0.0, hw * 1.02, hw * 1.35)

    # --- torso (top garment) and neck
    p.band(SKIN, v_sh - 0.03, v_sh + 0.01, 0.0, 0.022)
    if ident.coat:
        p.band(TOP, v_sh, ident.top_end, 0.0, sw, hw * 1.3)
    else:
        p.band(TOP, v_sh, ident.top_end, 0.0, sw, hw)
    p.ellipse(TOP, -sw + arm * 0.6, v_sh + 0.022, arm * 1.3, 0.025)
    p.ellipse(TOP, sw - arm * 0.6, v_sh + 0.022, arm * 1.3, 0.025)

    # --- arms (front/back: both beside the torso; side: the near arm over it)
    arm_len = v_wrist - v_sh
    if side:
        arms = [(0.0, swing)]
    else:
        arms = [(-(sw + arm * 0.55), -swing * 0.3), ((sw + arm * 0.55), swing * 0.3)]
    for uc, tilt in arms:
        p.band(SKIN, v_sh + 0.01, v_wrist + 0.04, uc, arm * 0.85, arm * 0.75, tilt=tilt)
        if ident.sleeve > 0:
            p.band(TOP, v_sh + 0.005, v_sh + 0.01 + ident.sleeve * arm_len, uc, arm * 1.05, arm * 0.95, tilt=tilt)

    # --- head, hair, hat
    hair_top = vc - rv * (0.2 if ident.hair == "buzz" else 0.42)
    if view == "back":
        p.ellipse(SKIN, 0.0, vc, ru, rv)
        nape = vc + rv * (0.35 if ident.hair == "buzz" else 0.75)
        p.ellipse(HAIR, 0.0, vc, ru * 1.06, rv * 1.04, clip=(vc - rv * 1.1, nape))
    else:
        p.ellipse(SKIN, 0.0, vc, ru, rv)
        if side:
            p.paint(HAIR, vc - rv * 1.1, vc + rv * 0.7,
                    lambda uu, vv: (((uu / (ru * 1.06)) ** 2 + ((vv - vc) / (rv * 1.04)) ** 2) <= 1)
                    & ((uu * d < -ru * 0.15) | (vv < hair_top)))
        else:
            p.ellipse(HAIR, 0.0, vc, ru * 1.06, rv * 1.04, clip=(vc - rv * 1.1, hair_top))
            if ident.hair == "long":
                p.rect(HAIR, -ru * 1.1, -ru * 0.72, vc - rv * 0.5, vc + rv * 0.7)
                p.rect(HAIR, ru * 0.72, ru * 1.1, vc - rv * 0.5, vc + rv * 0.7)
    if ident.hair == "ponytail":
        if view == "back":
            p.band(HAIR, vc, vc + 0.13, 0.0, 0.017, 0.011)
        elif side:
            p.ellipse(HAIR, -d * (ru + 0.018), vc + 0.01, 0.022, 0.04)
    if ident.hair == "long" and view == "back":
        p.band(HAIR, vc, vc + 0.17, 0.0, ru * 1.12, ru * 1.02)
    if ident.hat:
        p.ellipse(HAT, 0.0, vc - rv * 0.35, ru * 1.12, rv * 0.72, clip=(vc - rv * 1.2, vc - rv * 0.3))
        if view == "front":
            p.rect(HAT, -ru * 1.1, ru * 1.1, vc - rv * 0.38, vc - rv * 0.24)
        elif side:
            u0, u1 = d * ru * 0.2, d * (ru + 0.04)
            p.rect(HAT, min(u0, u1), max(u0, u1), vc - rv * 0.38, vc - rv * 0.24)

    # --- over the body: backpack from behind, straps, shoulder bag
    if ident.bag == "backpack":
        top = v_sh + 0.015
        if view == "back":
            p.rect(BAG, -ident.bag_w * 0.5 - 0.03, ident.bag_w * 0.5 + 0.03, top, top + ident.bag_h)
            p.rect(STRAP, -ident.bag_w * 0.4, ident.bag_w * 0.4, top + ident.bag_h * 0.55, top + ident.bag_h * 0.62)
        elif view == "front":
            for uc in (-sw * 0.55, sw * 0.55):
                p.band(STRAP, v_sh, v_sh + 0.17, uc, 0.012)
    if ident.bag in ("left", "right") and (not side or bag_near):
        bv = v_hip - 0.05
        if side:
            bu = -d * 0.01
        else:
            bu = bag_dir * (sw + 2 * arm + ident.bag_w * 0.3)
        strap_from = -bag_dir * sw * 0.6 if not side else 0.0
        p.band(STRAP, v_sh, bv, strap_from, 0.01, tilt=(bu - strap_from) / max(bv - v_sh, 1e-3))
        p.rect(BAG, bu - ident.bag_w * 0.5, bu + ident.bag_w * 0.5, bv, bv + ident.bag_h)

    # --- top pattern (in garment coordinates, so it follows the body)
    if ident.pattern != "solid":
        r0, r1 = p.rows(v_sh - 0.02, max(ident.top_end, v_wrist) + 0.05)
        if r1 > r0:
            block = p.labels[r0:r1]
            uu = p.u / s
            vv = p.v[r0:r1, None]
            if ident.pattern == "hstripes":
                sec = ((vv - v_sh) / ident.period + ident.phase) % 1.0 < ident.duty
            elif ident.pattern == "vstripes":
                sec = (uu / ident.period + ident.phase) % 1.0 < ident.duty
            elif ident.pattern == "checks":
                a = ((vv - v_sh) / ident.period + ident.phase) % 1.0 < 0.5
                b = (uu / ident.period + ident.phase) % 1.0 < 0.5
                sec = a ^ b
            elif ident.pattern == "block":
                sec = np.broadcast_to(vv < v_sh + 0.35 * (ident.top_end - v_sh), block.shape)
            else:  # logo: a chest emblem, seen only from the front
                if view != "front":
                    sec = np.zeros(block.shape, dtype=bool)
                else:
                    cu = ident.logo_offset * ident.shoulder
                    cv = v_sh + 0.09
                    du, dv = np.abs(uu - cu), np.abs(vv - cv)
                    r = ident.logo_size
                    if ident.logo_shape == "circle":
                        sec = du * du + dv * dv <= r * r
                    elif ident.logo_shape == "square":
                        sec = (du <= r * 0.85) & (dv <= r * 0.85)
                    elif ident.logo_shape == "diamond":
                        sec = du + dv <= r * 1.2
                    else:
                        sec = (vv - cv >= -r) & (vv - cv <= r) & (du <= (vv - cv + r) * 0.6)
            block[np.broadcast_to(sec, block.shape) & (block == TOP)] = TOP_B
    return p.labels


def render_person_image(seed: int, pid: int, cam: int, n: int, height: int, width: int,
                        identity: Identity | None = None) -> np.ndarray:
    """Image ``n`` of person ``pid`` in camera ``cam``: uint8 H x W x 3 (R = G = B for IR cameras)."""
    if cam not in _CAMERAS:
        raise UsageError(f"camera must be one of {ALL_CAMERAS}, got {cam!r}")
    ident = identity if identity is not None else draw_identity(seed, pid)
    track = _draw_track(seed, pid, cam)
    style = _CAMERAS[cam]
    rng = np.random.default_rng([seed, _IMAGE, pid, cam, n])
    scale_px = height / 128.0

    view = track.view if rng.random() >= 0.25 else str(rng.choice(_VIEWS))
    ph = height * ident.height * track.scale * rng.uniform(0.96, 1.04)
    foot = height * rng.uniform(0.965, 1.0)
    top = foot - ph
    cx = width * (track.x + rng.uniform(-0.05, 0.05))
    aspect = rng.uniform(0.94, 1.06)
    u = ((np.arange(width, dtype=np.float32) + 0.5 - cx) / (ph * aspect)).astype(np.float32)
    v = ((np.arange(height, dtype=np.float32) + 0.5 - top) / ph).astype(np.float32)
    phase = rng.uniform(-1, 1)
    side = view in ("left", "right")
    pose = {"stride": phase * (0.22 if side else 0.1), "swing": -phase * (0.35 if side else 0.15)}
    labels = _paint_person(ident, view, pose, u, v)
    person = labels > 0
    bg = _background(cam, rng, height, width)

    # cylindrical shading across the body and a soft light from one side
    body_u = np.clip(u / (ident.shoulder * 1.8), -1, 1)
    light_side = rng.uniform(-0.12, 0.12)
    shade = (1.0 - 0.22 * body_u**2 + light_side * body_u)[None, :] * (1.04 - 0.08 * v.clip(0, 1))[:, None]
    texture = 1.0 + 0.05 * _smooth_noise(rng, height, width, 10, 5)

    occluder = None
    if rng.random() < 0.18:
        if rng.random() < 0.5:  # a pole
            x0 = rng.uniform(0.0, 0.9) * width
            occluder = (slice(0, height), slice(int(x0), int(x0 + rng.uniform(0.06, 0.12) * width) + 1))
        else:  # a box in front of the legs
            y0 = int(rng.uniform(0.7, 0.85) * height)
            x0 = int(rng.uniform(-0.4, 0.4) * width)
            x1 = int(x0 + rng.uniform(0.5, 1.0) * width)
            occluder = (slice(y0, height), slice(max(0, x0), max(0, min(width, x1))))
    occ_rgb = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0, 0.5), rng.uniform(0.25, 0.8)),
                       dtype=np.float32)
    occ_ir = np.float32(rng.uniform(0.1, 0.45))

    if style.ir:
        temp = ident.ir[labels] * (0.88 + 0.12 * shade) * (1.0 + 0.4 * (texture - 1.0))
        img = np.where(person, temp, bg)
        if occluder is not None:
            img[occluder] = occ_ir * (1.0 + 0.3 * (texture[occluder] - 1.0))
        lo, hi = rng.uniform(-0.02, 0.08), rng.uniform(0.88, 1.1)
        img8 = np.clip(img * np.float32(255.0 / (hi - lo)) + np.float32(0.5 - 255.0 * lo / (hi - lo)), 0, 255)
        pil = Image.fromarray(img8.astype(np.uint8), mode="L")
        channels = 1
    else:
        # one palette for person labels, scene labels and the occluder; one lookup colours the frame
        bg_idx, bg_palette, bg_bright = bg
        light = track.light * rng.uniform(*style.light)
        cast = np.asarray(style.cast, dtype=np.float32) * rng.uniform(0.96, 1.04, size=3).astype(np.float32)
        palette = np.concatenate([ident.rgb, bg_palette, occ_rgb[None, :]]) * (light * 255.0 * cast)
        index = np.where(person, labels, bg_idx + np.uint8(_N_LABELS))
        bright = np.where(person, shade * texture, bg_bright)
        if occluder is not None:
            index[occluder] = _N_LABELS + len(bg_palette)
            bright[occluder] = texture[occluder]
        img = palette.astype(np.float32)[index]
        img *= bright[..., None]
        np.clip(img, 0, 255, out=img)
        pil = Image.fromarray((img + np.float32(0.5)).astype(np.uint8), mode="RGB")
        channels = 3
    blur = rng.uniform(*style.blur) * scale_px
    pil = pil.filter(ImageFilter.GaussianBlur(radius=float(blur)))
    out = np.asarray(pil, dtype=np.float32)
    out += _sensor_noise(rng, out.shape) * np.float32(rng.uniform(*style.noise))
    np.clip(out, 0, 255, out=out)
    out = (out + np.float32(0.5)).astype(np.uint8)
    if channels == 1:
        out = np.repeat(out[..., None], 3, axis=2)
    return out


# ------------------------------------------------------------------------------------- render


@dataclass(frozen=True)
class SyntheticSummary:
    """What a render wrote."""

    out: Path
    preset: str
    seed: int
    height: int
    width: int
    ids: dict[str, int]
    """Number of ids per split: train, val, test, available."""
    images_per_camera: dict[int, int]
    total_images: int
    seconds: float


def _render_person_job(job: tuple) -> tuple[int, int]:
    out, seed, pid, cams, height, width = job
    ident = draw_identity(seed, pid)
    written = 0
    for cam, n in cams:
        folder = Path(out) / f"cam{cam}" / f"{pid:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(1, n + 1):
            arr = render_person_image(seed, pid, cam, k, height, width, identity=ident)
            Image.fromarray(arr, mode="RGB").save(folder / f"{k:04d}.jpg", format="JPEG", quality=JPEG_QUALITY)
            written += 1
    return pid, written


def _permutations(plan: SyntheticPlan) -> dict[int, dict[int, np.ndarray]]:
    perm: dict[int, dict[int, np.ndarray]] = {}
    for cam in ALL_CAMERAS:
        perm[cam] = {}
        for pid, n in sorted(plan.counts.get(cam, {}).items()):
            rng = np.random.default_rng([plan.seed, _PERM, cam, pid])
            perm[cam][pid] = np.stack([rng.permutation(n) + 1 for _ in range(PERM_TRIALS)]).astype(np.int64)
    return perm


_MAT_HEADER_TEXT = b"MATLAB 5.0 MAT-file, Platform: posix, Created by: pfanet synthetic renderer"


def _fix_mat_header(path: Path) -> None:
    """Replace the creation time in the 116-byte descriptive text of a MAT-file header with a fixed
    text, so that a render is byte-identical for a seed (the header text is free-form; readers
    check only the version and byte-order fields after it)."""
    with open(path, "r+b") as fh:
        head = fh.read(128)
        if len(head) < 128 or not head.startswith(b"MATLAB 5.0 MAT-file"):
            raise DataError(f"{path}: unexpected MAT-file header written by scipy")
        fh.seek(0)
        fh.write(_MAT_HEADER_TEXT.ljust(116, b" "))


def _prepare_out(out: Path) -> None:
    """Refuse anything but a new/empty folder or a previous synthetic render (which is cleared)."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file, not a folder; give a new or empty folder for the synthetic dataset")
    if out.is_dir():
        entries = list(out.iterdir())
        if entries and not (out / MARKER_FILE).is_file():
            raise DataError(
                f"{out} is not empty and holds no synthetic render ({MARKER_FILE} missing); "
                "give a new or empty folder"
            )
        for name in [f"cam{c}" for c in ALL_CAMERAS] + ["exp"]:
            target = out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _marker_info(plan: SyntheticPlan, complete: bool) -> dict:
    return {
        "format": MARKER_FORMAT,
        "renderer_version": RENDERER_VERSION,
        "preset": plan.preset,
        "seed": plan.seed,
        "height": plan.height,
        "width": plan.width,
        "ids": {name: len(ids) for name, ids in plan.splits.items()},
        "images": plan.total_images,
        "complete": complete,
    }


def _write_marker(out: Path, plan: SyntheticPlan, complete: bool) -> None:
    write_text(out / MARKER_FILE, json.dumps(_marker_info(plan, complete), indent=1, sort_keys=True) + "\n")


def _already_rendered(out: Path, plan: SyntheticPlan) -> bool:
    """True when ``out`` holds a complete render of exactly ``plan`` (same preset, seed, size, ids)."""
    try:
        marker = json.loads((out / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return marker == json.loads(json.dumps(_marker_info(plan, complete=True)))


def _summary(plan: SyntheticPlan, out: Path, seconds: float) -> SyntheticSummary:
    return SyntheticSummary(
        out=out,
        preset=plan.preset,
        seed=plan.seed,
        height=plan.height,
        width=plan.width,
        ids={name: len(ids) for name, ids in plan.splits.items()},
        images_per_camera=plan.images_per_camera(),
        total_images=plan.total_images,
        seconds=seconds,
    )


def render_plan(plan: SyntheticPlan, out: Path, workers: int | None = None,
                show_progress: bool = False, reuse: bool = False) -> SyntheticSummary:
    """Write the images, id lists and permutation file of ``plan`` under ``out``; with ``reuse``, a
    complete earlier render of the same plan is kept as it is."""
    start = time.perf_counter()
    out = Path(out)
    if reuse and _already_rendered(out, plan):
        return _summary(plan, out, 0.0)
    empty = [name for name in ("train", "val", "test", "available") if not plan.splits.get(name)]
    if empty:
        raise UsageError(
            f"cannot render a plan whose {', '.join(empty)} id list is empty (SYSU-MM01 needs all four)"
        )
    if workers is None:
        workers = os.cpu_count() or 1
    if not isinstance(workers, (int, np.integer)) or isinstance(workers, bool) or workers < 1:
        raise UsageError(f"workers must be a positive integer, got {workers!r}")
    _prepare_out(out)
    _write_marker(out, plan, complete=False)
    exp = out / "exp"
    exp.mkdir(exist_ok=True)
    for name in ("train", "val", "test", "available"):
        (exp / f"{name}_id.txt").write_text(format_id_list(plan.splits[name]), encoding="utf-8")
    save_rand_perm_cam(exp / PERM_FILE, _permutations(plan))
    _fix_mat_header(exp / PERM_FILE)

    jobs = []
    for pid in plan.pids:
        cams = tuple((cam, plan.counts[cam][pid]) for cam in ALL_CAMERAS if pid in plan.counts.get(cam, {}))
        jobs.append((str(out), plan.seed, pid, cams, plan.height, plan.width))
    jobs.sort(key=lambda job: -sum(n for _, n in job[3]))  # biggest first: better balance
    total = plan.total_images
    workers = min(int(workers), max(1, len(jobs)))

    pool = None
    if workers > 1:
        import multiprocessing

        pool = multiprocessing.get_context().Pool(workers)
    try:
        results = pool.imap_unordered(_render_person_job, jobs) if pool else map(_render_person_job, jobs)
        if show_progress:
            from pfanet_cli.console import progress_bar

            with progress_bar() as bar:
                task = bar.add_task("rendering", total=total, info=f"{plan.preset}, {workers} worker(s)")
                for _, written in results:
                    bar.advance(task, written)
        else:
            for _ in results:
                pass
        if pool:
            pool.close()
            pool.join()
    finally:
        if pool:
            pool.terminate()
    _write_marker(out, plan, complete=True)
    return _summary(plan, out, time.perf_counter() - start)


def render_synthetic_sysu(out: Path, preset: str = "small", ids: int | None = None, seed: int = 0,
                          height: int | None = None, width: int | None = None,
                          workers: int | None = None, show_progress: bool = False,
                          reuse: bool = False) -> SyntheticSummary:
    """Render a synthetic RGB/IR person dataset in the SYSU-MM01 raw layout under ``out``.

    Presets: ``small`` (60 ids, 4-10 images per camera and person, 128x64) and ``sysu`` (the real
    per-camera, per-person counts and splits, 45,863 images, 256x128). ``ids`` overrides the number
    of people, ``height``/``width`` the image size. Same seed, same bytes, whatever ``workers``.
    ``reuse`` keeps a complete earlier render of the same plan instead of rendering it again.
    """
    plan = plan_synthetic_sysu(preset, ids=ids, seed=seed, height=height, width=width)
    return render_plan(plan, Path(out), workers=workers, show_progress=show_progress, reuse=reuse)
