"""The synthetic dataset written in the LLCM raw layout (``data/llcm.py``): ``{train,test}_{vis,nir}/cam<k>/
<pid:04d>/<n:04d>.jpg``, ``idx/train_vis.txt``, ``idx/train_nir.txt`` and ``idx/test_id.txt``.

The people are the SYSU-layout renderer's (``person.py``); each LLCM camera borrows the look of a SYSU-MM01
camera of its modality (visible camera k: RGB cameras 1, 2, 4, 5 in turn; NIR camera k: IR cameras 3, 6 in
turn) and keys its own random stream, so no two LLCM cameras show the same pass. Presets: ``small`` (120 ids,
40 of them test ids, 2-6 images per person and camera) and ``llcm``, the published per-split sizes: 713 training ids with 16,946
visible and 13,975 NIR images, 351 test ids with 8,680 visible and 7,166 NIR images (46,767 in all). The
per-camera counts of the real dataset are not published; the ``llcm`` preset spreads each split's totals
over 2-5 visible and 2-4 NIR cameras per person. NIR camera 3 is never used (the reference code's test
split lists none).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pfanet_cli.data import llcm
from pfanet_cli.data.synthetic.nir import DEFAULT_IR_RESIDUAL, check_ir_residual
from pfanet_cli.data.synthetic.person import draw_identity
from pfanet_cli.data.synthetic.plan import STREAM_LLCM_PLAN, image_size, proportional
from pfanet_cli.data.synthetic.render import (
    JPEG_QUALITY,
    MARKER_FILE,
    prepare_out,
    render_person_image,
    run_render_jobs,
)
from pfanet_cli.data.sysu import format_id_list
from pfanet_cli.errors import UsageError
from pfanet_cli.utils.atomic import write_text

LLCM_PRESETS: dict[str, tuple[int, int]] = {"small": (128, 64), "llcm": (256, 128)}
SMALL_DEFAULT_IDS = 120
"""80 training and 40 test ids (the published train/test ratio): twice the deepest rank reported (R20), so
R20 still separates models."""
TRAIN_FRACTION = 713 / 1064
VIS_CAMERAS_PER_ID = (2, 5)
NIR_CAMERAS_PER_ID = (2, 4)
SMALL_IMAGES_PER_CAMERA = (2, 6)
"""Inclusive ranges: cameras that see a person (per modality), images per person and camera (``small``)."""
MARKER_FORMAT = "pfanet-synthetic-llcm"
RENDERER_VERSION = 2
"""2: the near-infrared model (``nir.py``); version 1 is version 2 with ``ir_residual`` 1."""
STYLE_CAMERAS = {"rgb": (1, 2, 4, 5), "ir": (3, 6)}
"""SYSU-MM01 cameras whose look the LLCM cameras of each modality borrow, in turn."""
STREAM_BASE = 100
"""Random-stream key of an LLCM camera: 100 + camid, apart from the SYSU cameras' 1..6."""
SPLITS = ("train", "test")


@dataclass(frozen=True)
class LlcmPlan:
    """Which images an LLCM-layout render writes."""

    preset: str
    seed: int
    height: int
    width: int
    splits: dict[str, list[int]]
    """``train`` and ``test``: ascending person ids."""
    counts: dict[str, dict[int, dict[int, int]]]
    """split -> camid (visible k, NIR 10 + k) -> person id -> number of images."""
    ir_residual: float = DEFAULT_IR_RESIDUAL
    """Share of each material's NIR intensity unrelated to its colour (``nir.py``)."""

    def images(self) -> list[tuple[str, str, int, int]]:
        """Every image as (split, raw-relative path, pid, camid), in the scanner's order: per split, ids
        ascending, visible then NIR cameras, images by number."""
        rows = []
        for split in SPLITS:
            for pid in self.splits[split]:
                for camid in llcm.VIS_CAMERAS + llcm.NIR_CAMERAS:
                    for n in range(1, self.counts[split].get(camid, {}).get(pid, 0) + 1):
                        folder = llcm.image_folder(split, llcm.modality_of_camera(camid), camid, pid)
                        rows.append((split, f"{folder}/{n:04d}.jpg", pid, camid))
        return rows

    def totals(self) -> dict[str, dict[str, int]]:
        """Per split: ids and images per modality (the numbers :data:`llcm.PUBLISHED_COUNTS` states)."""
        out = {}
        for split in SPLITS:
            cams = self.counts[split]
            out[split] = {"ids": len(self.splits[split]),
                          "rgb": sum(sum(cams.get(c, {}).values()) for c in llcm.VIS_CAMERAS),
                          "ir": sum(sum(cams.get(c, {}).values()) for c in llcm.NIR_CAMERAS)}
        return out

    @property
    def total_images(self) -> int:
        return sum(n for split in self.totals().values() for key, n in split.items() if key != "ids")


def plan_synthetic_llcm(preset: str = "small", ids: int | None = None, seed: int = 0, height: int | None = None,
                        width: int | None = None, ir_residual: float = DEFAULT_IR_RESIDUAL) -> LlcmPlan:
    """Decide which images an LLCM-layout render writes, without rendering any (see the module docstring)."""
    if preset not in LLCM_PRESETS:
        raise UsageError(f"unknown LLCM synthetic preset {preset!r}; choose one of {', '.join(LLCM_PRESETS)}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise UsageError(f"synthetic seed must be a non-negative integer, got {seed!r}")
    if preset == "llcm" and ids is not None:
        raise UsageError("--ids applies to the small preset; the llcm preset has the published 1,064 ids")
    if ids is not None and (not isinstance(ids, (int, np.integer)) or isinstance(ids, bool) or not 2 <= ids <= 9999):
        raise UsageError(f"--ids must be an integer in 2..9999 (one id per split at least), got {ids!r}")
    h, w = image_size(LLCM_PRESETS[preset], height, width)
    share = check_ir_residual(ir_residual)
    rng = np.random.default_rng([int(seed), STREAM_LLCM_PLAN])
    if preset == "llcm":
        sizes = {split: llcm.PUBLISHED_COUNTS[split]["ids"] for split in SPLITS}
    else:
        total = SMALL_DEFAULT_IDS if ids is None else int(ids)
        train = min(total - 1, max(1, round(total * TRAIN_FRACTION)))
        sizes = {"train": train, "test": total - train}
    order = rng.permutation(np.arange(1, sizes["train"] + sizes["test"] + 1))
    splits = {"train": sorted(int(p) for p in order[: sizes["train"]]),
              "test": sorted(int(p) for p in order[sizes["train"]:])}
    counts = {split: _split_counts(rng, splits[split], preset, split) for split in SPLITS}
    return LlcmPlan(preset, int(seed), h, w, splits, counts, share)


def _split_counts(rng: np.random.Generator, pids: list[int], preset: str, split: str) -> dict[int, dict[int, int]]:
    counts: dict[int, dict[int, int]] = {}
    for modality, cameras, (lo, hi) in (("rgb", llcm.VIS_CAMERAS, VIS_CAMERAS_PER_ID),
                                        ("ir", llcm.TEST_NIR_CAMERAS, NIR_CAMERAS_PER_ID)):
        cells = [(int(camid), pid) for pid in pids
                 for camid in sorted(rng.choice(cameras, size=int(rng.integers(lo, hi + 1)), replace=False))]
        if preset == "llcm":
            sizes = proportional(llcm.PUBLISHED_COUNTS[split][modality], rng.uniform(0.5, 1.5, len(cells)).tolist())
        else:
            sizes = rng.integers(SMALL_IMAGES_PER_CAMERA[0], SMALL_IMAGES_PER_CAMERA[1] + 1, len(cells)).tolist()
        for (camid, pid), n in zip(cells, sizes):
            counts.setdefault(camid, {})[pid] = int(n)
    return counts


@dataclass(frozen=True)
class LlcmSummary:
    out: Path
    preset: str
    seed: int
    totals: dict[str, dict[str, int]]
    total_images: int
    seconds: float


def render_synthetic_llcm(out: Path, preset: str = "small", ids: int | None = None, seed: int = 0,
                          height: int | None = None, width: int | None = None, workers: int | None = None,
                          show_progress: bool = False, reuse: bool = False,
                          ir_residual: float = DEFAULT_IR_RESIDUAL) -> LlcmSummary:
    """Render a synthetic RGB/NIR person dataset in the LLCM raw layout under ``out``."""
    plan = plan_synthetic_llcm(preset, ids=ids, seed=seed, height=height, width=width, ir_residual=ir_residual)
    return render_llcm_plan(plan, Path(out), workers, show_progress, reuse)


def render_llcm_plan(plan: LlcmPlan, out: Path, workers: int | None = None, show_progress: bool = False,
                     reuse: bool = False) -> LlcmSummary:
    """Write the images and idx files of ``plan``; with ``reuse``, a complete render of the same plan is kept."""
    start = time.perf_counter()
    workers = (os.cpu_count() or 1) if workers is None else workers
    if not isinstance(workers, (int, np.integer)) or isinstance(workers, bool) or workers < 1:
        raise UsageError(f"workers must be a positive integer, got {workers!r}")
    if not (reuse and _marker(out) == _marker_info(plan, complete=True)):
        prepare_out(out)
        _write_marker(out, plan, complete=False)
        write_idx_files(out / llcm.IDX_DIR, plan)
        jobs = _person_jobs(out, plan)
        run_render_jobs(_render_llcm_person, jobs, plan.total_images, int(workers), show_progress, "llcm")
        _write_marker(out, plan, complete=True)
    return LlcmSummary(out, plan.preset, plan.seed, plan.totals(), plan.total_images, time.perf_counter() - start)


def write_idx_files(idx: Path, plan: LlcmPlan) -> None:
    """``train_vis.txt`` and ``train_nir.txt`` (path and label, labels 0..N-1 by ascending id) and
    ``test_id.txt``."""
    idx.mkdir(parents=True, exist_ok=True)
    labels = {pid: label for label, pid in enumerate(plan.splits["train"])}
    lines: dict[str, list[str]] = {name: [] for name in llcm.TRAIN_LISTS.values()}
    for split, rel, pid, camid in plan.images():
        if split == "train":
            lines[llcm.TRAIN_LISTS[llcm.modality_of_camera(camid)]].append(f"{rel} {labels[pid]}")
    for name, rows in lines.items():
        (idx / name).write_text("\n".join(rows) + "\n", encoding="utf-8")
    (idx / llcm.TEST_ID_FILE).write_text(format_id_list(plan.splits["test"]), encoding="utf-8")


def _person_jobs(out: Path, plan: LlcmPlan) -> list[tuple]:
    per_person: dict[int, list[tuple[str, int, int, int]]] = {}
    for split in SPLITS:
        for camid, people in plan.counts[split].items():
            modality = llcm.modality_of_camera(camid)
            styles = STYLE_CAMERAS[modality]
            style = styles[(llcm.physical_camera(camid) - 1) % len(styles)]
            for pid, n in people.items():
                per_person.setdefault(pid, []).append((llcm.image_folder(split, modality, camid, pid), style,
                                                       STREAM_BASE + camid, n))
    jobs = [(str(out), plan.seed, pid, tuple(sorted(cells)), plan.height, plan.width, plan.ir_residual)
            for pid, cells in per_person.items()]
    return sorted(jobs, key=lambda job: -sum(cell[3] for cell in job[3]))


def _render_llcm_person(job: tuple) -> tuple[int, int]:
    out, seed, pid, cells, height, width, ir_residual = job
    ident = draw_identity(seed, pid, ir_residual)
    written = 0
    for folder, style, stream, n in cells:
        target = Path(out) / folder
        target.mkdir(parents=True, exist_ok=True)
        for k in range(1, n + 1):
            pixels = render_person_image(seed, pid, style, k, height, width, identity=ident, stream=stream)
            Image.fromarray(pixels, mode="RGB").save(target / f"{k:04d}.jpg", format="JPEG", quality=JPEG_QUALITY)
            written += 1
    return pid, written


def _marker_info(plan: LlcmPlan, complete: bool) -> dict:
    return {"format": MARKER_FORMAT, "renderer_version": RENDERER_VERSION, "preset": plan.preset, "seed": plan.seed,
            "height": plan.height, "width": plan.width, "ir_residual": plan.ir_residual,
            "ids": {s: len(plan.splits[s]) for s in SPLITS},
            "images": plan.total_images, "complete": complete}


def _marker(out: Path) -> dict | None:
    try:
        return json.loads((Path(out) / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_marker(out: Path, plan: LlcmPlan, complete: bool) -> None:
    write_text(out / MARKER_FILE, json.dumps(_marker_info(plan, complete), indent=1, sort_keys=True) + "\n")
