"""Writing a synthetic dataset in the exact SYSU-MM01 raw layout (SPEC §2): each image composed from a
person (``person.py``) in a camera's scene (``scene.py``), the id lists, the permutation file in the
official format, and a marker that lets a render be resumed or replaced.

Everything is drawn from seeded generators keyed by ``(seed, pid)``, ``(seed, pid, cam)`` and
``(seed, pid, cam, n)``, so the output is byte-identical for a seed whatever the number of worker
processes or the order they run in.
"""

from __future__ import annotations

import colorsys
import json
import multiprocessing
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter

from pfanet_cli.data.synthetic.nir import DEFAULT_IR_RESIDUAL
from pfanet_cli.data.synthetic.person import N_LABELS, Identity, draw_identity, paint_person
from pfanet_cli.data.synthetic.plan import STREAM_IMAGE, STREAM_PERM, SyntheticPlan, plan_synthetic_sysu
from pfanet_cli.data.synthetic.scene import (
    CAMERAS,
    VIEWS,
    CameraStyle,
    Track,
    background,
    draw_track,
    sensor_noise,
    smooth_noise,
)
from pfanet_cli.data.sysu import ALL_CAMERAS, PERM_FILE, PERM_TRIALS, format_id_list, save_rand_perm_cam
from pfanet_cli.errors import DataError, UsageError
from pfanet_cli.utils.atomic import write_text
from pfanet_cli.utils.console import progress_bar

MARKER_FILE = ".pfanet-synthetic.json"
"""Written at the root of every render; a folder holding it may be rendered over."""
MARKER_FORMAT = "pfanet-synthetic-sysu"
RENDERER_VERSION = 2
"""2: near-infrared model (``nir.py``); version 1 is version 2 with ``ir_residual`` 1."""
JPEG_QUALITY = 90


def render_person_image(seed: int, pid: int, cam: int, n: int, height: int, width: int,
                        identity: Identity | None = None, stream: int | None = None,
                        ir_residual: float = DEFAULT_IR_RESIDUAL) -> np.ndarray:
    """Image ``n`` of person ``pid`` in camera ``cam``: uint8 H x W x 3 (R = G = B for IR cameras).

    ``cam`` picks the look and the scene (SYSU-MM01 cameras 1..6); ``stream`` (default ``cam``) keys the
    person's pass and the image's random draws, so another layout can reuse a look for several cameras.
    ``ir_residual`` (used when ``identity`` is not given) is the near-infrared model's residual share."""
    frame = _Frame.draw(seed, pid, cam, n, height, width, identity, stream, ir_residual)
    ident, labels, person, rng = frame.identity, frame.labels, frame.labels > 0, frame.rng
    if frame.style.ir:
        pil = _infrared_image(ident, labels, person, frame.shade, frame.texture, frame.bg, frame.occluder, rng)
    else:
        pil = _colour_image(ident, labels, person, frame.shade, frame.texture, frame.bg, frame.occluder, frame.track,
                            frame.style, rng)
    return _camera_effects(pil, frame.style, rng, height / 128.0)


def visible_labels(seed: int, pid: int, cam: int, n: int, height: int, width: int, identity: Identity | None = None,
                   stream: int | None = None, ir_residual: float = DEFAULT_IR_RESIDUAL) -> np.ndarray:
    """The ground truth of :func:`render_person_image` (same arguments): uint8 H x W label map of the person's
    parts (``person.py``: ``BG``, ``SKIN``, ``TOP``, ...) as the image shows them, ``BG`` where the scene or an
    occluder is in front. Replays the same random draws without colouring anything."""
    frame = _Frame.draw(seed, pid, cam, n, height, width, identity, stream, ir_residual)
    labels = frame.labels.copy()
    if frame.occluder.where is not None:
        labels[frame.occluder.where] = 0
    return labels


@dataclass(frozen=True)
class _Frame:
    """Everything drawn for one image before it is coloured: the person, where they stand, the scene, the
    shading and texture, the occluder, and the image's generator (positioned for the colouring draws)."""

    identity: Identity
    style: CameraStyle
    track: Track
    rng: np.random.Generator
    labels: np.ndarray
    bg: object
    shade: np.ndarray
    texture: np.ndarray
    occluder: "_Occluder"

    @classmethod
    def draw(cls, seed: int, pid: int, cam: int, n: int, height: int, width: int, identity: Identity | None,
             stream: int | None, ir_residual: float) -> "_Frame":
        if cam not in CAMERAS:
            raise UsageError(f"camera must be one of {ALL_CAMERAS}, got {cam!r}")
        key = cam if stream is None else stream
        ident = identity if identity is not None else draw_identity(seed, pid, ir_residual)
        track = draw_track(seed, pid, key)
        rng = np.random.default_rng([seed, STREAM_IMAGE, pid, key, n])
        u, v, labels = _place_person(ident, track, rng, height, width)
        bg = background(cam, rng, height, width)
        # cylindrical shading across the body and a soft light from one side
        body_u = np.clip(u / (ident.shoulder * 1.8), -1, 1)
        light_side = rng.uniform(-0.12, 0.12)
        shade = (1.0 - 0.22 * body_u**2 + light_side * body_u)[None, :] * (1.04 - 0.08 * v.clip(0, 1))[:, None]
        texture = 1.0 + 0.05 * smooth_noise(rng, height, width, 10, 5)
        occluder = _Occluder.draw(rng, height, width)
        return cls(ident, CAMERAS[cam], track, rng, labels, bg, shade, texture, occluder)


def _place_person(ident: Identity, track: Track, rng: np.random.Generator, height: int,
                  width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The view, position, scale and pose of the person in this image; returns the pixel columns and rows
    in person coordinates (u across, v down, in person heights) and the person's label map."""
    view = track.view if rng.random() >= 0.25 else str(rng.choice(VIEWS))
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
    return u, v, paint_person(ident, view, pose, u, v)


@dataclass(frozen=True)
class _Occluder:
    """A pole or a box in front of the person (``where`` None: nothing in front), and its colour and IR intensity."""

    where: tuple[slice, slice] | None
    rgb: np.ndarray
    ir: np.float32

    @classmethod
    def draw(cls, rng: np.random.Generator, height: int, width: int) -> "_Occluder":
        where = None
        if rng.random() < 0.18:
            if rng.random() < 0.5:  # a pole
                x0 = rng.uniform(0.0, 0.9) * width
                where = (slice(0, height), slice(int(x0), int(x0 + rng.uniform(0.06, 0.12) * width) + 1))
            else:  # a box in front of the legs
                y0 = int(rng.uniform(0.7, 0.85) * height)
                x0 = int(rng.uniform(-0.4, 0.4) * width)
                x1 = int(x0 + rng.uniform(0.5, 1.0) * width)
                where = (slice(y0, height), slice(max(0, x0), max(0, min(width, x1))))
        rgb = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0, 0.5), rng.uniform(0.25, 0.8)),
                       dtype=np.float32)
        return cls(where, rgb, np.float32(rng.uniform(0.1, 0.45)))


def _infrared_image(ident: Identity, labels: np.ndarray, person: np.ndarray, shade: np.ndarray,
                   texture: np.ndarray, bg: np.ndarray, occluder: _Occluder, rng: np.random.Generator) -> Image.Image:
    """IR: the near-infrared intensity of the person's materials (``ident.ir``) over the scene's, mapped to grey
    levels by the frame's own exposure (``lo``, ``hi``)."""
    temp = ident.ir[labels] * (0.88 + 0.12 * shade) * (1.0 + 0.4 * (texture - 1.0))
    img = np.where(person, temp, bg)
    if occluder.where is not None:
        img[occluder.where] = occluder.ir * (1.0 + 0.3 * (texture[occluder.where] - 1.0))
    lo, hi = rng.uniform(-0.02, 0.08), rng.uniform(0.88, 1.1)
    img8 = np.clip(img * np.float32(255.0 / (hi - lo)) + np.float32(0.5 - 255.0 * lo / (hi - lo)), 0, 255)
    return Image.fromarray(img8.astype(np.uint8), mode="L")


def _colour_image(ident: Identity, labels: np.ndarray, person: np.ndarray, shade: np.ndarray,
                  texture: np.ndarray, bg: tuple, occluder: _Occluder, track: Track, style: CameraStyle,
                  rng: np.random.Generator) -> Image.Image:
    """RGB: one palette for person labels, scene labels and the occluder; one lookup colours the frame."""
    bg_idx, bg_palette, bg_bright = bg
    light = track.light * rng.uniform(*style.light)
    cast = np.asarray(style.cast, dtype=np.float32) * rng.uniform(0.96, 1.04, size=3).astype(np.float32)
    palette = np.concatenate([ident.rgb, bg_palette, occluder.rgb[None, :]]) * (light * 255.0 * cast)
    index = np.where(person, labels, bg_idx + np.uint8(N_LABELS))
    bright = np.where(person, shade * texture, bg_bright)
    if occluder.where is not None:
        index[occluder.where] = N_LABELS + len(bg_palette)
        bright[occluder.where] = texture[occluder.where]
    img = palette.astype(np.float32)[index]
    img *= bright[..., None]
    np.clip(img, 0, 255, out=img)
    return Image.fromarray((img + np.float32(0.5)).astype(np.uint8), mode="RGB")


def _camera_effects(pil: Image.Image, style: CameraStyle, rng: np.random.Generator, scale_px: float) -> np.ndarray:
    """The camera's blur and sensor noise; grey (IR) images come back with three equal channels."""
    blur = rng.uniform(*style.blur) * scale_px
    pil = pil.filter(ImageFilter.GaussianBlur(radius=float(blur)))
    out = np.asarray(pil, dtype=np.float32)
    out += sensor_noise(rng, out.shape) * np.float32(rng.uniform(*style.noise))
    np.clip(out, 0, 255, out=out)
    out = (out + np.float32(0.5)).astype(np.uint8)
    if pil.mode == "L":
        out = np.repeat(out[..., None], 3, axis=2)
    return out


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
    out, seed, pid, cams, height, width, ir_residual = job
    ident = draw_identity(seed, pid, ir_residual)
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
            rng = np.random.default_rng([plan.seed, STREAM_PERM, cam, pid])
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


RENDER_FOLDERS = tuple(f"cam{c}" for c in ALL_CAMERAS) + ("exp", "train_vis", "train_nir", "test_vis", "test_nir",
                                                          "idx")
"""What a render of either layout (SYSU-MM01's, LLCM's) writes besides its marker: cleared before rendering over it."""


def prepare_out(out: Path) -> None:
    """Refuse anything but a new/empty folder or a previous synthetic render (whose folders are cleared)."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file, not a folder; give a new or empty folder for the synthetic dataset")
    if out.is_dir():
        entries = list(out.iterdir())
        if entries and not (out / MARKER_FILE).is_file():
            raise DataError(
                f"{out} is not empty and holds no synthetic render ({MARKER_FILE} missing); "
                "give a new or empty folder"
            )
        for name in RENDER_FOLDERS:
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
        "ir_residual": plan.ir_residual,
        "ids": {name: len(ids) for name, ids in plan.splits.items()},
        "images": plan.total_images,
        "complete": complete,
    }


def _write_marker(out: Path, plan: SyntheticPlan, complete: bool) -> None:
    write_text(out / MARKER_FILE, json.dumps(_marker_info(plan, complete), indent=1, sort_keys=True) + "\n")


def _read_marker(out: Path) -> dict | None:
    try:
        marker = json.loads((out / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _already_rendered(out: Path, plan: SyntheticPlan) -> bool:
    """True when ``out`` holds a complete render of exactly ``plan`` (same preset, seed, size, ids)."""
    return _read_marker(out) == json.loads(json.dumps(_marker_info(plan, complete=True)))


def other_render(out: Path, plan: SyntheticPlan) -> str | None:
    """How the render already in ``out`` differs from ``plan`` (None when there is none, or it is ``plan``'s,
    complete or not): which of preset, seed, size, identities per split and IR residual share differ."""
    marker = _read_marker(out)
    if marker is None:
        return None
    wanted = json.loads(json.dumps(_marker_info(plan, complete=True)))
    keys = ("renderer_version", "preset", "seed", "height", "width", "ids", "ir_residual")
    differing = [key for key in keys if marker.get(key) != wanted[key]]
    return ", ".join(f"{key} {_shown(marker.get(key))} there, {_shown(wanted[key])} asked for"
                     for key in differing) or None


def _shown(value: object) -> str:
    """A marker value in a message; the ``ids`` per split as the number of identities rendered."""
    if isinstance(value, dict):
        return str(value.get("available", "?"))
    return str(value)


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
    prepare_out(out)
    _write_marker(out, plan, complete=False)
    _write_protocol_files(out / "exp", plan)
    _render_images(out, plan, int(workers), show_progress)
    _write_marker(out, plan, complete=True)
    return _summary(plan, out, time.perf_counter() - start)


def _write_protocol_files(exp: Path, plan: SyntheticPlan) -> None:
    """The id lists and the permutation file of ``exp/``."""
    exp.mkdir(exist_ok=True)
    for name in ("train", "val", "test", "available"):
        (exp / f"{name}_id.txt").write_text(format_id_list(plan.splits[name]), encoding="utf-8")
    save_rand_perm_cam(exp / PERM_FILE, _permutations(plan))
    _fix_mat_header(exp / PERM_FILE)


def _render_images(out: Path, plan: SyntheticPlan, workers: int, show_progress: bool) -> None:
    """Every image of ``plan``, one job per person, biggest jobs first (better balance over the workers)."""
    jobs = []
    for pid in plan.pids:
        cams = tuple((cam, plan.counts[cam][pid]) for cam in ALL_CAMERAS if pid in plan.counts.get(cam, {}))
        jobs.append((str(out), plan.seed, pid, cams, plan.height, plan.width, plan.ir_residual))
    jobs.sort(key=lambda job: -sum(n for _, n in job[3]))
    run_render_jobs(_render_person_job, jobs, plan.total_images, workers, show_progress, plan.preset)


def run_render_jobs(function: Callable[[tuple], tuple[int, int]], jobs: list[tuple], total: int, workers: int,
                    show_progress: bool, label: str) -> None:
    """Run render jobs (each returns ``(pid, images written)``) on ``workers`` processes."""
    workers = min(workers, max(1, len(jobs)))
    pool = multiprocessing.get_context().Pool(workers) if workers > 1 else None
    try:
        results = pool.imap_unordered(function, jobs) if pool else map(function, jobs)
        if show_progress:
            with progress_bar() as bar:
                task = bar.add_task("rendering", total=total, info=f"{label}, {workers} worker(s)")
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


def render_synthetic_sysu(out: Path, preset: str = "small", ids: int | None = None, seed: int = 0,
                          height: int | None = None, width: int | None = None,
                          workers: int | None = None, show_progress: bool = False,
                          reuse: bool = False, ir_residual: float = DEFAULT_IR_RESIDUAL) -> SyntheticSummary:
    """Render a synthetic RGB/IR person dataset in the SYSU-MM01 raw layout under ``out``.

    Presets: ``small`` (60 ids, 4-10 images per camera and person, 128x64) and ``sysu`` (the real
    per-camera, per-person counts and splits, 45,863 images, 256x128). ``ids`` overrides the number
    of people, ``height``/``width`` the image size. Same seed, same bytes, whatever ``workers``.
    ``reuse`` keeps a complete earlier render of the same plan instead of rendering it again. ``ir_residual``
    is the near-infrared model's residual share (``nir.py``; 1 renders the data of versions up to 0.1).
    """
    plan = plan_synthetic_sysu(preset, ids=ids, seed=seed, height=height, width=width, ir_residual=ir_residual)
    return render_plan(plan, Path(out), workers=workers, show_progress=show_progress, reuse=reuse)
