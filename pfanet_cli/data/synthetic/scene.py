"""The camera side of a synthetic image: a person's pass in front of a camera (view, position, scale,
light), each camera's look (light, colour cast, blur, noise) and scene (the background behind the person)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from pfanet_cli.data.synthetic.plan import STREAM_TRACK

VIEWS = ("front", "back", "left", "right")


@dataclass(frozen=True)
class Track:
    """A person's pass in front of one camera: the images of it look alike, as in real data."""

    view: str
    x: float
    scale: float
    light: float


def draw_track(seed: int, pid: int, cam: int) -> Track:
    rng = np.random.default_rng([seed, STREAM_TRACK, pid, cam])
    view = str(rng.choice(VIEWS, p=[0.35, 0.35, 0.15, 0.15]))
    return Track(view, rng.uniform(0.44, 0.56), rng.uniform(0.94, 1.04), rng.uniform(0.88, 1.12))


@dataclass(frozen=True)
class CameraStyle:
    ir: bool
    light: tuple[float, float]
    cast: tuple[float, float, float]
    blur: tuple[float, float]
    noise: tuple[float, float]


CAMERAS: dict[int, CameraStyle] = {
    1: CameraStyle(False, (0.85, 1.1), (1.05, 1.0, 0.9), (0.3, 0.9), (2.0, 5.0)),
    2: CameraStyle(False, (0.62, 0.88), (0.93, 1.0, 1.04), (0.5, 1.2), (4.0, 8.0)),
    3: CameraStyle(True, (1.0, 1.0), (1.0, 1.0, 1.0), (0.8, 1.5), (4.0, 8.0)),
    4: CameraStyle(False, (0.92, 1.22), (1.0, 1.0, 1.0), (0.3, 1.0), (2.0, 4.0)),
    5: CameraStyle(False, (0.78, 1.12), (0.92, 0.98, 1.08), (0.4, 1.1), (2.0, 5.0)),
    6: CameraStyle(True, (1.0, 1.0), (1.0, 1.0, 1.0), (0.8, 1.7), (4.0, 9.0)),
}


_NOISE_BANK_SIZE = 1 << 21
_noise_bank: np.ndarray | None = None


def sensor_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
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


def smooth_noise(rng: np.random.Generator, height: int, width: int, cells_h: int, cells_w: int) -> np.ndarray:
    """Zero-mean, roughly unit-variance noise smooth over ``height/cells_h`` pixels."""
    small = rng.standard_normal((cells_h, cells_w), dtype=np.float32)
    img = Image.fromarray(small, mode="F").resize((width, height), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def background(cam: int, rng: np.random.Generator, height: int, width: int):
    """The scene behind the person.

    RGB cameras: ``(index, palette, brightness)`` -- an H x W uint8 map into a small palette of
    colours and an H x W brightness (texture) map, so the caller colours the whole frame with one
    lookup. IR cameras: an H x W near-infrared intensity map.
    """
    y = ((np.arange(height, dtype=np.float32) + 0.5) / height)[:, None]
    x = ((np.arange(width, dtype=np.float32) + 0.5) / width)[None, :]
    off = np.float32(rng.uniform(0, 8))
    n1 = smooth_noise(rng, height, width, 6, 4)
    n2 = smooth_noise(rng, height, width, 24, 12)
    scene = _Scene(rng, x, y, off, n1, n2)
    if cam in _IR_SCENES:
        return _IR_SCENES[cam](scene)
    idx, palette, bright = _RGB_SCENES[cam](scene)
    shape = (height, width)
    return (np.broadcast_to(idx, shape).astype(np.uint8), palette,
            np.broadcast_to(bright, shape).astype(np.float32))


@dataclass(frozen=True)
class _Scene:
    """What every scene is drawn from: the image's generator, pixel coordinates in [0, 1], a pattern
    offset and two smooth noise fields (coarse and fine)."""

    rng: np.random.Generator
    x: np.ndarray
    y: np.ndarray
    off: np.float32
    n1: np.ndarray
    n2: np.ndarray


def _palette(*colours) -> np.ndarray:
    return np.asarray(colours, dtype=np.float32)


def _lab(sc: _Scene):
    """cam1, lab: beige wall with a cabinet, tiled floor in perspective, dark skirting."""
    x, y, off, rng = sc.x, sc.y, sc.off, sc.rng
    hz = rng.uniform(0.6, 0.7)
    palette = _palette([0.8, 0.76, 0.66], [0.45, 0.33, 0.22], [0.56, 0.55, 0.58], [0.47, 0.47, 0.5],
                       [0.3, 0.28, 0.26])
    x0 = rng.uniform(-0.3, 0.8)
    cabinet = (x > x0) & (x < x0 + rng.uniform(0.25, 0.45)) & (y > 0.1) & (y < hz)
    depth = 1.0 / np.maximum(y - hz + 0.06, 0.02)
    checker = (np.floor(depth * 0.5 + off) + np.floor((x - 0.5) * depth * 0.9 + off)) % 2 > 0
    idx = np.where(y > hz, np.where(checker, 2, 3), np.where(cabinet, 1, 0))
    idx = np.where((y > hz - 0.025) & (y <= hz), 4, idx)
    bright = np.where(y > hz, 1 + 0.04 * sc.n2, 1 + 0.05 * sc.n1 + 0.02 * sc.n2)
    return idx, palette, bright


def _corridor(sc: _Scene):
    """cam2, corridor (room 2): panelled walls, a door, ceiling lights, glossy floor."""
    x, y, off, rng = sc.x, sc.y, sc.off, sc.rng
    hz = rng.uniform(0.55, 0.65)
    palette = _palette([0.55, 0.6, 0.64], [0.44, 0.48, 0.51], [0.3, 0.36, 0.42], [0.95, 0.95, 0.9],
                       [0.36, 0.34, 0.3])
    panels = ((x * 3.0 + off) % 1.0) < 0.07
    door_x = rng.uniform(-0.2, 0.9)
    door = (x > door_x) & (x < door_x + 0.28) & (y > 0.12) & (y < hz)
    idx = np.where(door, 2, np.where(panels, 1, 0))
    idx = np.where(y < 0.06, 3, idx)
    idx = np.where(y > hz, 4, idx)
    bright = np.where(y > hz, 1 + 0.175 * (1 - (y - hz) / (1 - hz)) + 0.05 * sc.n2, 1 + 0.04 * sc.n1)
    return idx, palette, bright


def _road(sc: _Scene):
    """cam4, outdoors: sky, trees, road with a kerb."""
    y, rng = sc.y, sc.rng
    sky_h = rng.uniform(0.03, 0.18)
    hz = rng.uniform(0.45, 0.58)
    palette = _palette([0.72, 0.82, 0.95], [0.24, 0.4, 0.18], [0.52, 0.51, 0.5], [0.78, 0.78, 0.74])
    idx = np.where(y < sky_h, 0, np.where(y > hz, 2, 1)) + np.zeros((len(y), sc.x.shape[1]), dtype=np.int64)
    idx = np.where((y > hz) & (y < hz + 0.025), 3, idx)
    bright = np.where(y > hz, 1 + 0.06 * sc.n1 + 0.08 * sc.n2, 1 + 0.25 * sc.n1 + 0.12 * sc.n2)
    bright = np.where(y < sky_h, 1.0, bright)
    return idx, palette, bright


def _building(sc: _Scene):
    """cam5, outdoors: building front with windows, brick pavement."""
    x, y, off, rng = sc.x, sc.y, sc.off, sc.rng
    hz = rng.uniform(0.58, 0.7)
    palette = _palette([0.72, 0.56, 0.44], [0.42, 0.42, 0.48], [0.56, 0.53, 0.5], [0.66, 0.61, 0.57])
    wx = (x * 3.5 + off) % 1.0
    wy = (y * 4.0 + off * 0.37) % 1.0
    window = (wx > 0.2) & (wx < 0.7) & (wy > 0.25) & (wy < 0.8)
    row = np.floor(y * 22 + off)
    grout = ((y * 22 + off) % 1.0 < 0.12) | (((x * 7 + 0.5 * row) % 1.0) < 0.06)
    idx = np.where(y > hz, np.where(grout, 2, 3), np.where(window, 1, 0))
    bright = np.where(y > hz, 1 + 0.04 * sc.n2, 1 + 0.05 * sc.n1 + 0.03 * sc.n2)
    return idx, palette, bright


def _ir_corridor(sc: _Scene) -> np.ndarray:
    """cam3, IR view of the corridor: walls beyond most of the illuminator's light (dark), faintly brighter panels,
    a lamp whose light includes near infrared, the lit floor in front of the camera."""
    x, y, off, rng = sc.x, sc.y, sc.off, sc.rng
    hz = rng.uniform(0.55, 0.65)
    panels = ((x * 3.0 + off) % 1.0) < 0.07
    img = 0.22 + 0.035 * sc.n1 + 0.015 * sc.n2 + 0.05 * panels
    lamp_x = rng.uniform(0, 1)
    img = img + 0.35 * np.exp(-(((x - lamp_x) / 0.12) ** 2 + (y / 0.06) ** 2))
    floor = 0.27 + 0.06 * (y - hz) / (1 - hz) + 0.02 * sc.n2
    return np.where(y > hz, floor, img).astype(np.float32)


def _ir_outdoors(sc: _Scene) -> np.ndarray:
    """cam6, IR outdoors: dark sky, distant trees little lit, the lit ground brightening towards the camera,
    sometimes a bright object (a lamp, a reflector)."""
    x, y, rng = sc.x, sc.y, sc.rng
    sky_h = rng.uniform(0.03, 0.2)
    hz = rng.uniform(0.45, 0.6)
    img = np.where(y < sky_h, 0.06, 0.17 + 0.07 * sc.n1 + 0.04 * sc.n2)
    ground = 0.3 + 0.1 * (y - hz) / (1 - hz) + 0.05 * sc.n1 + 0.03 * sc.n2
    img = np.where(y > hz, ground, img)
    if rng.random() < 0.3:
        bx, by = rng.uniform(0, 1), rng.uniform(hz, 1.0)
        img = img + 0.25 * np.exp(-(((x - bx) / 0.15) ** 2 + ((y - by) / 0.08) ** 2))
    return img.astype(np.float32)


_RGB_SCENES = {1: _lab, 2: _corridor, 4: _road, 5: _building}
_IR_SCENES = {3: _ir_corridor, 6: _ir_outdoors}
