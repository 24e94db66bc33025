"""Gallery samplers (SPEC §5): which RGB images form the SYSU-MM01 gallery of each trial, by the official
permutation file (``official``) or exactly as the AGW baseline code draws them (``agw``); which images
LLCM's reference code draws per trial (``llcm-seeded``); and where the official permutation comes from."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from pfanet_cli.data import llcm
from pfanet_cli.data.sysu import (
    INDOOR_RGB_CAMERAS,
    PERM_TRIALS,
    RGB_CAMERAS,
    RandPerm,
    load_rand_perm_cam,
)
from pfanet_cli.errors import DataError, UsageError

SYSU_MODES = ("all", "indoor")
SYSU_SHOTS = {"single": 1, "multi": 10}
SAMPLERS = ("auto", "official", "agw")


def check_choice(name: str, value: str, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise UsageError(f"unknown {name} {value!r}: choose one of {', '.join(choices)}")


def gallery_cameras(mode: str) -> tuple[int, ...]:
    """RGB cameras of the gallery: all-search 1, 2, 4, 5; indoor-search 1, 2."""
    check_choice("mode", mode, SYSU_MODES)
    return RGB_CAMERAS if mode == "all" else INDOOR_RGB_CAMERAS


def one_image_per_folder(pids: np.ndarray, camids: np.ndarray, mode: str) -> bool:
    """Every (identity, camera) folder of the mode's gallery cameras holds one image, so a multi-shot gallery is
    the single-shot one (an export of one trial's gallery, for instance)."""
    rows = np.isin(camids, gallery_cameras(mode))
    if not rows.any():
        return False
    _, counts = np.unique(np.stack([pids[rows], camids[rows]]), axis=1, return_counts=True)
    return bool(counts.max() == 1)


def shot_count(shot: str) -> int:
    check_choice("shot", shot, SYSU_SHOTS)
    return SYSU_SHOTS[shot]


# ----------------------------------------------------------------------------------------------
# SYSU gallery samplers


def camera_folders(pids, camids, paths, cameras: Iterable[int]) -> dict[tuple[int, int], np.ndarray]:
    """(camera, person) -> feature rows of that folder's images, sorted by file name.

    Only folders that hold images in the features file exist (what ``os.path.isdir`` plus a
    non-empty listing means for the raw tree)."""
    pids = np.asarray(pids)
    camids = np.asarray(camids)
    wanted = np.isin(camids, np.asarray(tuple(cameras)))
    folders: dict[tuple[int, int], list[int]] = {}
    for row in np.flatnonzero(wanted).tolist():
        folders.setdefault((int(camids[row]), int(pids[row])), []).append(row)
    out = {}
    for key, rows in folders.items():
        rows.sort(key=lambda r: (paths[r].rsplit("/", 1)[-1], paths[r]))
        out[key] = np.asarray(rows, dtype=np.int64)
    return out


def sample_gallery_agw(pids, camids, paths, *, mode: str = "all", shot: str = "single",
                       trials: int = 10) -> list[np.ndarray]:
    """Gallery rows per trial, identical to the AGW baseline's ``process_gallery_sysu``.

    What that code does (``mangye16/Cross-Modal-Re-ID-baseline``, ``data_manager.py``), and what
    this function reproduces:

    * the trial's RNG is seeded with the trial number, ``random.seed(trial)``, trial = 0..9, at the
      top of the gallery function, called once per trial by the test script (one revision of the
      root ``data_manager.py`` has that line commented out, which makes the galleries depend on the
      global RNG state; the repository's later copies have it). Here a private
      ``random.Random(trial)`` gives the same stream without touching the global RNG;
    * ids ascending (the zero-padded ``%04d`` folder names sorted as strings, i.e. numerically);
      for each id the cameras in the fixed order ``cam1, cam2, cam4, cam5`` (all-search) or
      ``cam1, cam2`` (indoor); a folder is used when it exists (``os.path.isdir``): every
      (id, camera) folder that exists is sampled, and ids missing from a camera consume no random
      numbers;
    * the folder's files sorted by name, then ``random.choice(files)`` (single-shot); the
      multi-shot variant used by the derived code calls ``random.sample(files, 10)`` at the same
      place of the same loop, and extends the gallery in the sampled order;
    * a multi-shot folder with fewer than 10 files makes ``random.sample`` raise ``ValueError`` in
      that code (the official MATLAB code fails the same way). No real SYSU-MM01 test folder is that
      small (the smallest holds 13 images); here such a folder contributes all its files in
      ``random.sample(files, len(files))`` order, so every other folder's draw is unchanged.

    Rows are returned in the order the AGW code lists the gallery.
    """
    cams = gallery_cameras(mode)
    check_trials(trials)
    return seeded_draws(camera_folders(pids, camids, paths, cams), cams, shot_count(shot), trials)


def seeded_draws(folders: dict[tuple[int, int], np.ndarray], cameras: Sequence[int], k: int,
                 trials: int) -> list[np.ndarray]:
    """The AGW-style draw of each trial: ``random.seed(trial)``, ids ascending, ``cameras`` in order,
    ``random.choice`` over a folder's sorted files (``random.sample(files, k)`` for k > 1). A private
    ``random.Random(trial)`` gives the same stream without touching the global RNG."""
    ids = sorted({pid for (_, pid) in folders})
    galleries = []
    for trial in range(trials):
        rng = random.Random(trial)
        rows: list[int] = []
        for pid in ids:
            for cam in cameras:
                files = folders.get((cam, pid))
                if files is None:
                    continue
                files = files.tolist()
                if k == 1:
                    rows.append(rng.choice(files))
                else:
                    rows.extend(rng.sample(files, min(k, len(files))))
        galleries.append(np.asarray(rows, dtype=np.int64))
    return galleries


def sample_llcm(pids, camids, paths, *, direction: str = "ir2vis", trials: int = 10) -> list[np.ndarray]:
    """The images LLCM's reference code draws in each trial, rows in its order.

    ``process_gallery_llcm`` (``ZYK100/LLCM``, ``DEEN/data_manager.py``): ``random.seed(trial)``, trial =
    0..9, at its top; test ids ascending; the cameras in order (visible ``test_vis/cam1..cam9`` for
    ir2vis; near-infrared ``test_nir/cam1, cam2, cam4..cam9`` for vis2ir); a folder used when it exists;
    ``random.choice`` over its files sorted by name. ir2vis draws the visible gallery; vis2ir draws the NIR
    images, which the reference then scores as the queries (docs/protocols.md).
    """
    check_choice("direction", direction, llcm.DIRECTIONS)
    check_trials(trials)
    cams = llcm.VIS_CAMERAS if direction == "ir2vis" else llcm.TEST_NIR_CAMERAS
    return seeded_draws(camera_folders(pids, camids, paths, cams), cams, 1, trials)


def sample_gallery_official(pids, camids, paths, perm: RandPerm, *, mode: str = "all", shot: str = "single",
                            trials: int = 10) -> list[np.ndarray]:
    """Gallery rows per trial from the official ``rand_perm_cam.mat`` permutations.

    Trial ``t`` (0-based; MATLAB's ``run_time = t + 1``) takes the first 1 or 10 entries of row ``t``
    of the (camera, person) permutation; entries are 1-based image numbers, image ``n`` being the
    n-th file of that folder sorted by name (``0001.jpg`` ... on the real data). Rows are listed
    camera by camera, persons ascending within a camera, as in the official ``get_testing_set.m``.
    A folder with fewer than 10 images gives all of them in multi-shot (the MATLAB code would fail).

    Raises :class:`DataError` when the permutation has no entry for a gallery folder, holds fewer
    rows than ``trials``, or its length differs from the folder's number of images.
    """
    cams = gallery_cameras(mode)
    k = shot_count(shot)
    check_trials(trials)
    folders = camera_folders(pids, camids, paths, cams)
    plan: list[tuple[np.ndarray, np.ndarray]] = []
    for cam in cams:
        for pid in sorted(p for (c, p) in folders if c == cam):
            files = folders[(cam, pid)]
            entry = perm.get(cam, {}).get(pid)
            where = f"cam{cam}/{pid:04d}"
            if entry is None:
                raise DataError(
                    f"the permutation file has no entry for gallery folder {where} "
                    f"({len(files)} images in the features file); it does not belong to this dataset"
                )
            entry = np.asarray(entry)
            if entry.ndim != 2 or entry.shape[0] < trials:
                raise DataError(
                    f"the permutation entry of {where} has shape {entry.shape}, expected {trials} trial rows "
                    f"(the official file holds {PERM_TRIALS}; use --trials {PERM_TRIALS} or fewer)"
                )
            if entry.shape[1] != len(files):
                raise DataError(
                    f"the permutation entry of {where} covers {entry.shape[1]} images but the features file "
                    f"holds {len(files)} for that folder; the permutation file does not match these features"
                )
            picks = entry[:trials, : min(k, entry.shape[1])].astype(np.int64)
            if picks.size and (picks.min() < 1 or picks.max() > len(files)):
                raise DataError(
                    f"the permutation entry of {where} refers to image numbers outside 1..{len(files)}"
                )
            plan.append((files, picks))
    return [
        np.concatenate([files[picks[t] - 1] for files, picks in plan]) if plan else np.zeros(0, np.int64)
        for t in range(trials)
    ]


def check_trials(trials: int) -> None:
    if int(trials) < 1:
        raise UsageError(f"--trials must be at least 1, got {trials}")


def load_perm(perm: RandPerm | str | Path | bytes | None) -> RandPerm | None:
    """A permutation given as a parsed dict, a path to ``rand_perm_cam.mat`` or the file's bytes."""
    if perm is None or isinstance(perm, dict):
        return perm
    if isinstance(perm, (bytes, bytearray)):
        return load_rand_perm_cam(bytes(perm))
    path = Path(perm)
    if not path.is_file():
        raise DataError(f"permutation file {path} not found (the official SYSU-MM01 exp/rand_perm_cam.mat)")
    return load_rand_perm_cam(path)


def resolve_sampler(sampler: str, perm: RandPerm | None) -> str:
    """``auto`` is the official sampler when a permutation is available, else the AGW one."""
    check_choice("sampler", sampler, SAMPLERS)
    if sampler == "auto":
        return "official" if perm is not None else "agw"
    if sampler == "official" and perm is None:
        raise DataError(
            "the official sampler needs the permutation file rand_perm_cam.mat: pass --perm-file "
            "(or use --sampler agw)"
        )
    return sampler


def sample_sysu_galleries(pids, camids, paths, *, mode: str = "all", shot: str = "single", trials: int = 10,
                          sampler: str = "auto", perm: RandPerm | None = None) -> tuple[str, list[np.ndarray]]:
    """The resolved sampler name and the gallery rows of each trial (in the sampler's own order)."""
    used = resolve_sampler(sampler, perm)
    if used == "official":
        galleries = sample_gallery_official(pids, camids, paths, perm, mode=mode, shot=shot, trials=trials)
    else:
        galleries = sample_gallery_agw(pids, camids, paths, mode=mode, shot=shot, trials=trials)
    for t, rows in enumerate(galleries):
        if rows.size == 0:
            cams = ", ".join(f"cam{c}" for c in gallery_cameras(mode))
            raise DataError(
                f"trial {t}: empty gallery for {mode}-search (the features file holds no images of {cams})"
            )
    return used, galleries
