"""Evaluation protocols of SYSU-MM01 and RegDB (SPEC §5), exact and vectorised.

What is computed (the community's rules, as in the AGW baseline's ``eval_metrics.py``):

* **SYSU-MM01.** Queries are every test IR image (cameras 3 and 6), fixed. The gallery is sampled per
  trial from the RGB cameras of the mode (``all``: 1, 2, 4, 5; ``indoor``: 1, 2): one image
  (single-shot) or ten (multi-shot) per (identity, camera) folder. A cam3 query never sees cam2
  gallery images (same room, :data:`~pfanet_cli.sysu_layout.SAME_ROOM`), whatever the identity;
  nothing else is removed. CMC: after removing that junk, each identity is kept only at its first
  occurrence in the ranked list, then cumulative match (R1, R5, R10, R20). mAP on the junk-filtered
  list *without* de-duplication. mINP = (number of positives) / (rank of the last positive).
  Queries with no positive in the gallery are left out of every average.
* **RegDB.** Visible queries (camid 1) against the thermal gallery (camid 2), or the reverse;
  nothing removed, image-level CMC, same mAP/mINP.

Ranking: cosine similarity of L2-normalised features, computed in float64 (as the AGW code does
with its float64 feature arrays), sorted in decreasing order; exact ties are broken by the gallery
order, which is the order of the rows in the features file.

How it is vectorised (no Python loop over queries; SPEC asks for at most one matrix product and one
sort per trial, this does one of each for all trials and settings together): the gallery candidates
are the union of every trial's gallery. One matrix product per block of queries and one integer sort
per chunk of queries give every query's order of all candidates. A trial gallery is a subset of the
candidates and the order of a subset is the restriction of the order, so a trial needs no new sort:
the ranks of the positives come from a prefix count of the trial's members along that order (all
trials at once, as bit-field counters packed in uint64 words, one ``cumsum`` per word), and the
de-duplicated CMC rank is one plus the number of other identities whose best member precedes the
first positive (a ``min`` per identity). The cam3/cam2 rule is applied by ranking cam3 queries
against the candidates outside cam2 (removing an item from a ranked list does not change the order
of the rest). Memory is bounded by working in blocks and chunks of queries (``memory_budget``),
chunks run on a few threads (numpy releases the GIL; ``$PFANET_EVAL_THREADS``).
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from pfanet_cli.atomic import write_text
from pfanet_cli.errors import DataError, UsageError
from pfanet_cli.features import validate_arrays
from pfanet_cli.sysu_layout import (
    ALL_CAMERAS,
    INDOOR_RGB_CAMERAS,
    IR_CAMERAS,
    PERM_TRIALS,
    PERM_FILE,
    RGB_CAMERAS,
    SAME_ROOM,
    RandPerm,
    load_rand_perm_cam,
)

METRIC_KEYS = ("r1", "r5", "r10", "r20", "mAP", "mINP")
CMC_RANKS = {"r1": 1, "r5": 5, "r10": 10, "r20": 20}
SYSU_MODES = ("all", "indoor")
SYSU_SHOTS = {"single": 1, "multi": 10}
SAMPLERS = ("auto", "official", "agw")
ALL_SYSU_SETTINGS = (("all", "single"), ("all", "multi"), ("indoor", "single"), ("indoor", "multi"))
REGDB_DIRECTIONS = ("v2t", "t2v")
REGDB_VISIBLE, REGDB_THERMAL = 1, 2
DEFAULT_MEMORY_BUDGET = 256 * 2**20
"""Bytes the block of similarities may take (queries x candidates x 8); each ranking thread also
holds about 20 bytes per candidate for each of its (at most 128) queries."""
NORM_EPS = 1e-12
THREADS_ENV = "PFANET_EVAL_THREADS"


def default_threads() -> int:
    """Worker threads for ranking (numpy releases the GIL): ``$PFANET_EVAL_THREADS`` or the usable cores."""
    value = os.environ.get(THREADS_ENV, "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


# ----------------------------------------------------------------------------------------------
# results


@dataclass
class EvalResult:
    """The outcome of one protocol setting over its trials (metrics in percent)."""

    dataset: str
    mode: str
    shot: str
    sampler: str
    trials: int
    num_query: int
    """Query images (SYSU: every test IR image, 3,803 on the real data)."""
    num_gallery: int | float
    """Gallery images per trial (the mean when it varies between trials)."""
    metrics: dict[str, float]
    std: dict[str, float]
    per_trial: list[dict[str, float]]
    cmc: np.ndarray
    """Mean CMC curve in percent, ranks 1..max_rank."""
    num_valid_query: int | float = 0
    """Queries with at least one positive in the gallery, the ones averaged (mean over trials)."""

    @property
    def setting(self) -> str:
        if self.dataset == "sysu":
            return f"{self.mode}/{self.shot}"
        return f"{self.dataset} {self.mode}"

    def to_json_dict(self) -> dict:
        """Exactly the evaluation JSON of SPEC §1."""
        return {
            "dataset": self.dataset,
            "mode": self.mode,
            "shot": self.shot,
            "sampler": self.sampler,
            "trials": int(self.trials),
            "num_query": int(self.num_query),
            "num_gallery": _plain_number(self.num_gallery),
            "metrics": {k: float(self.metrics[k]) for k in METRIC_KEYS},
            "std": {k: float(self.std[k]) for k in METRIC_KEYS},
            "per_trial": [{k: float(t[k]) for k in METRIC_KEYS} for t in self.per_trial],
        }


def _plain_number(value: float) -> int | float:
    value = float(value)
    return int(value) if value.is_integer() else value


def _mean_or_int(values: Sequence[float]) -> int | float:
    return _plain_number(float(np.mean(values)))


def summarise_trials(per_trial: Sequence[Mapping[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and standard deviation (population, ddof=0) of each metric over the trials."""
    table = np.array([[float(t[k]) for k in METRIC_KEYS] for t in per_trial], dtype=np.float64)
    mean = table.mean(axis=0)
    std = table.std(axis=0)
    return dict(zip(METRIC_KEYS, mean.tolist())), dict(zip(METRIC_KEYS, std.tolist()))


# ----------------------------------------------------------------------------------------------
# input checks


def cosine_normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, in float64 (all-zero rows stay zero); a new array."""
    feats = np.array(features, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", feats, feats))
    feats /= np.maximum(norms, NORM_EPS)[:, None]
    return feats


def _check_arrays(features, pids, camids, paths=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str] | None]:
    """The features-file checks (:func:`validate_arrays`), keeping the caller's float precision."""
    checked = validate_arrays(features, pids, camids, paths, keep_float_dtype=True)
    return checked.features, checked.pids, checked.camids, None if paths is None else checked.paths


def _check_cameras(camids: np.ndarray, allowed: Iterable[int], dataset: str) -> None:
    allowed = tuple(allowed)
    unknown = np.setdiff1d(np.unique(camids), np.asarray(allowed))
    if unknown.size:
        shown = ", ".join(str(int(c)) for c in unknown[:8])
        raise DataError(
            f"unknown {dataset} camera ids {shown} in the features file "
            f"({dataset} cameras are {', '.join(map(str, allowed))})"
        )


def check_choice(name: str, value: str, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise UsageError(f"unknown {name} {value!r}: choose one of {', '.join(choices)}")


def gallery_cameras(mode: str) -> tuple[int, ...]:
    """RGB cameras of the gallery: all-search 1, 2, 4, 5; indoor-search 1, 2."""
    check_choice("mode", mode, SYSU_MODES)
    return RGB_CAMERAS if mode == "all" else INDOOR_RGB_CAMERAS


def shot_count(shot: str) -> int:
    check_choice("shot", shot, SYSU_SHOTS)
    return SYSU_SHOTS[shot]


# ----------------------------------------------------------------------------------------------
# SYSU gallery samplers


def sysu_gallery_folders(pids, camids, paths, cameras: Iterable[int]) -> dict[tuple[int, int], np.ndarray]:
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
    k = shot_count(shot)
    _check_trials(trials)
    folders = sysu_gallery_folders(pids, camids, paths, cams)
    ids = sorted({pid for (_, pid) in folders})
    galleries = []
    for trial in range(trials):
        rng = random.Random(trial)
        rows: list[int] = []
        for pid in ids:
            for cam in cams:
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
    _check_trials(trials)
    folders = sysu_gallery_folders(pids, camids, paths, cams)
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


def _check_trials(trials: int) -> None:
    if int(trials) < 1:
        raise UsageError(f"--trials must be at least 1, got {trials}")


def load_perm(perm: RandPerm | str | Path | bytes | None) -> RandPerm | None:
    """A permutation given as a parsed dict, a path to ``rand_perm_cam.mat`` or the file's bytes."""
    if perm is None or isinstance(perm, dict):
        return perm
    if isinstance(perm, (bytes, bytearray, memoryview, np.ndarray)):
        data = bytes(np.asarray(perm, dtype=np.uint8).tobytes()) if isinstance(perm, np.ndarray) else bytes(perm)
        with tempfile.TemporaryDirectory(prefix="pfanet-perm-") as tmp:
            path = Path(tmp) / "rand_perm_cam.mat"
            path.write_bytes(data)
            try:
                return load_rand_perm_cam(path)
            except DataError as exc:
                raise DataError(f"the permutation carried in the features file is unusable: {exc}") from exc
    path = Path(perm)
    if not path.is_file():
        raise DataError(f"permutation file {path} not found (the official SYSU-MM01 exp/rand_perm_cam.mat)")
    return load_rand_perm_cam(path)


def find_perm(perm_file: str | Path | None = None, carried: bytes | None = None,
              data_dir: str | Path | None = None) -> RandPerm | None:
    """The official permutation: ``perm_file`` when given, else the copy carried by the features file,
    else ``<data_dir>/exp/rand_perm_cam.mat`` (or ``<data_dir>/rand_perm_cam.mat``) when present."""
    if perm_file is not None:
        return load_perm(Path(perm_file))
    if carried is not None:
        return load_perm(carried)
    if data_dir is not None:
        for candidate in (Path(data_dir) / "exp" / PERM_FILE, Path(data_dir) / PERM_FILE):
            if candidate.is_file():
                return load_perm(candidate)
    return None


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


# ----------------------------------------------------------------------------------------------
# the vectorised ranking engine


@dataclass
class _TrialOutcome:
    """Per-query results of one trial (or of a setting's trials, with a leading trial axis)."""

    valid: np.ndarray       # bool: the query has a positive in the gallery
    cmc_rank: np.ndarray    # int64: rank of the first match in the (de-duplicated) list
    ap: np.ndarray          # float64
    inp: np.ndarray         # float64

    @classmethod
    def empty(cls, *shape: int) -> "_TrialOutcome":
        return cls(np.zeros(shape, bool), np.zeros(shape, np.int64), np.zeros(shape), np.zeros(shape))

    def trials(self) -> list["_TrialOutcome"]:
        """One outcome per trial (views) of a setting's outcome."""
        return [type(self)(self.valid[t], self.cmc_rank[t], self.ap[t], self.inp[t]) for t in range(len(self.valid))]

    @classmethod
    def concat(cls, parts: Sequence["_TrialOutcome"]) -> "_TrialOutcome":
        return cls(*(np.concatenate([getattr(p, name) for p in parts]) for name in ("valid", "cmc_rank", "ap", "inp")))


@dataclass
class _TrialPlan:
    by_identity: np.ndarray | None = None  # intp: the members grouped by identity
    identity_starts: np.ndarray | None = None  # intp: where each identity's group starts


@dataclass
class _SettingPlan:
    dedup: bool
    is_member: np.ndarray              # bool (T, C + 1): trial membership, the last column (sentinel) False
    mask: np.uint64
    tables: list[np.ndarray] = field(default_factory=list)  # uint64 (C,) per word: membership bits of its trials
    shifts: list[np.ndarray] = field(default_factory=list)  # uint64: bit offsets of each word's trials, in order
    trials: list[_TrialPlan] = field(default_factory=list)


class RankingEngine:
    """Ranks every query against every gallery candidate once, then scores any number of trials.

    ``queries`` and ``candidates`` are L2-normalised float64 feature rows (see
    :func:`cosine_normalise`); the candidates' order is the tie order. A trial gallery is a set of
    candidate indices: its ranking is the restriction of the candidates' ranking, so a trial needs
    no new sort. Queries are processed in blocks for the matrix product (``block_rows``, bounded by
    ``memory_budget``) and in chunks of at most 128 queries for ranking and scoring, whose working
    arrays (about 40 bytes per query and candidate) stay in cache; chunks run on ``threads`` threads
    (numpy releases the GIL) and write disjoint rows, so results do not depend on the threads.
    """

    TOP_RANKS = 256  # ranks searched directly for the identities before a query's first positive

    def __init__(self, queries: np.ndarray, query_pids: np.ndarray, candidates: np.ndarray,
                 candidate_pids: np.ndarray, *, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                 chunk_rows: int | None = None, threads: int | None = None) -> None:
        self.queries = queries
        self.candidates = candidates
        self.qpids = np.asarray(query_pids, dtype=np.int64)
        self.cpids = np.asarray(candidate_pids, dtype=np.int64)
        self.num_candidates = c = len(candidates)
        if c == 0:
            raise ValueError("the engine needs at least one candidate")
        self.index_dtype = np.int16 if c + 1 <= np.iinfo(np.int16).max else np.int32
        self.idx_bits = max(1, (c - 1).bit_length())
        budget = max(1, int(memory_budget))
        self.chunk_rows = max(1, min(128, budget // (48 * c))) if chunk_rows is None else max(1, int(chunk_rows))
        self.block_rows = max(self.chunk_rows, budget // (8 * c))
        self.threads = max(1, int(threads)) if threads else default_threads()
        self._identity_blocks()

    def _identity_blocks(self) -> None:
        """For each query, the candidates of its identity (its possible positives), padded with C."""
        c = self.num_candidates
        ids, inverse, counts = np.unique(self.cpids, return_inverse=True, return_counts=True)
        width = int(counts.max())
        by_id = np.argsort(inverse, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        blocks = np.full((len(ids) + 1, width), c, dtype=np.intp)       # last row: identity absent
        blocks[inverse[by_id], np.arange(c) - np.repeat(starts, counts)] = by_id
        where = np.minimum(np.searchsorted(ids, self.qpids), len(ids) - 1)
        present = ids[where] == self.qpids
        self.query_blocks = blocks[np.where(present, where, len(ids))]  # (Q, width)
        self.candidate_ids = inverse                                    # identity index per candidate
        self.num_identities = len(ids)

    # -- planning ---------------------------------------------------------------------------------

    def _plan(self, galleries: Sequence[np.ndarray], dedup: bool) -> _SettingPlan:
        c = self.num_candidates
        members = [np.unique(np.asarray(gal, dtype=np.int64)) for gal in galleries]
        bits = max(1, int(max(len(m) for m in members)).bit_length())
        per_word = max(1, 64 // bits)
        plan = _SettingPlan(dedup=dedup, is_member=np.zeros((len(members), c + 1), dtype=bool),
                            mask=np.uint64((1 << bits) - 1))
        for t, gal in enumerate(members):
            word, slot = divmod(t, per_word)
            if slot == 0:
                plan.tables.append(np.zeros(c, dtype=np.uint64))
                plan.shifts.append(np.zeros(0, dtype=np.uint64))
            shift = np.uint64(bits * slot)
            plan.tables[word][gal] |= np.uint64(1) << shift
            plan.shifts[word] = np.append(plan.shifts[word], shift)
            plan.is_member[t, gal] = True
            trial = _TrialPlan()
            if dedup and gal.size:
                ident = self.candidate_ids[gal]
                sort = np.argsort(ident, kind="stable")
                _, starts = np.unique(ident[sort], return_index=True)
                trial.by_identity, trial.identity_starts = gal[sort], starts
            plan.trials.append(trial)
        return plan

    # -- scoring ----------------------------------------------------------------------------------

    def evaluate(self, settings: Sequence[tuple[Sequence[np.ndarray], bool]]) -> list[list[_TrialOutcome]]:
        """Outcomes of each setting's trials; a setting is (galleries as candidate indices, dedup)."""
        q, c = len(self.queries), self.num_candidates
        outcomes = [_TrialOutcome.empty(len(gals), q) for gals, _ in settings]
        if q == 0:
            return [setting.trials() for setting in outcomes]
        plans = [self._plan(gals, dedup) for gals, dedup in settings]
        b = self.chunk_rows
        block = min(self.block_rows, q)
        sims_buffer = np.empty((block, c))
        local = threading.local()

        def run_chunk(start: int, stop: int, chunk_sims: np.ndarray) -> None:
            if not hasattr(local, "buffers"):
                flat = np.empty(b * c + 1, dtype=np.uint64)
                local.buffers = {
                    "work": np.empty((b, c)), "flat": flat, "counts": flat[: b * c].reshape(b, c),
                    "flags": np.empty((b, c), dtype=bool), "posrank": np.empty((b, c + 1), dtype=self.index_dtype),
                }
            order, posrank = self._rank_chunk(chunk_sims, local.buffers)
            cands = self.query_blocks[start:stop]
            positions = np.take_along_axis(posrank, cands, axis=1).astype(np.intp)
            sort = np.argsort(positions, axis=1, kind="stable")
            cands = np.take_along_axis(cands, sort, axis=1)          # possible positives, in rank order
            positions = np.take_along_axis(positions, sort, axis=1)  # their positions (C: absent)
            for plan, out in zip(plans, outcomes):
                self._score_chunk(plan, out, slice(start, stop), order, posrank, cands, positions,
                                  local.buffers["flat"])

        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            for block_start in range(0, q, block):
                block_stop = min(q, block_start + block)
                sims = sims_buffer[: block_stop - block_start]
                np.matmul(self.queries[block_start:block_stop], self.candidates.T, out=sims)
                jobs = [
                    pool.submit(run_chunk, start, min(block_stop, start + b),
                                sims[start - block_start: min(block_stop, start + b) - block_start])
                    for start in range(block_start, block_stop, b)
                ]
                for job in jobs:
                    job.result()
        return [setting.trials() for setting in outcomes]

    def _rank_chunk(self, sims: np.ndarray, buffers: dict) -> tuple[np.ndarray, np.ndarray]:
        """Order of the candidates for a chunk of queries (decreasing similarity, ties by index) and
        its inverse, the position of each candidate (plus a sentinel column C holding C)."""
        b, c = sims.shape
        # Sort key: 1.5 - s/2 lies in [1, 2], where the bit pattern of a positive double orders like
        # its value; the lowest idx_bits of the mantissa are replaced by the candidate index, so one
        # integer sort orders by decreasing similarity with ties in candidate order.
        work = buffers["work"][:b]
        np.multiply(sims, -0.5, out=work)
        work += 1.5
        keys = work.view(np.int64)
        low = np.int64((1 << self.idx_bits) - 1)
        keys &= ~low
        keys |= np.arange(c, dtype=np.int64)
        keys.sort(axis=1)
        # Neighbours that share a truncated key: exact ties are already in index order, but two
        # different similarities closer than the key's resolution (2**(idx_bits - 51), 4e-12 on
        # SYSU-MM01) would be too; those rare rows are sorted again, exactly.
        same = None
        if c > 1:
            scratch = buffers["counts"][:b, : c - 1].view(np.int64)
            np.bitwise_xor(keys[:, 1:], keys[:, :-1], out=scratch)
            np.less_equal(scratch, low, out=buffers["flags"][:b, : c - 1])
            if buffers["flags"][:b, : c - 1].any():
                same = np.nonzero(buffers["flags"][:b, : c - 1])
        keys &= low
        order = keys
        if same is not None:
            rows, cols = same
            differ = sims[rows, order[rows, cols]] != sims[rows, order[rows, cols + 1]]
            redo = np.unique(rows[differ])
            if redo.size:
                order[redo] = np.argsort(-sims[redo], axis=1, kind="stable")
        posrank = buffers["posrank"][:b]
        posrank[:, c] = c
        np.put_along_axis(posrank[:, :c], order, np.broadcast_to(np.arange(c, dtype=self.index_dtype), (b, c)),
                          axis=1)
        return order, posrank

    @staticmethod
    def _members_up_to(table: np.ndarray, order: np.ndarray, positions: np.ndarray, flat: np.ndarray) -> np.ndarray:
        """Members ranked at or above each of a row's (ascending) ``positions``, all trials at once: each
        trial owns a bit field of a uint64 word per candidate (1 = member), summed along the query's order.

        One segment sum per position (``np.add.reduceat``) instead of a running sum over every rank.
        ``flat`` holds the B x C gathered rows plus one zero, so the last row's last segment stays in bounds.
        """
        b, c = order.shape
        np.take(table, order, out=flat[: b * c].reshape(b, c), mode="clip")  # "raise" would buffer the output
        flat[b * c] = 0
        bounds = np.zeros((b, positions.shape[1] + 1), dtype=np.intp)
        bounds[:, 1:] = np.minimum(positions, c - 1) + 1
        sums = np.add.reduceat(flat[: b * c + 1], (bounds + (np.arange(b) * c)[:, None]).ravel())
        sums = sums.reshape(b, -1)[:, :-1]  # the last segment of a row runs into the next row
        sums[bounds[:, 1:] == bounds[:, :-1]] = 0  # reduceat gives one element for an empty segment
        return np.cumsum(sums, axis=1)

    def _identities_before(self, plan: _SettingPlan, order: np.ndarray, posrank: np.ndarray,
                           first: np.ndarray) -> np.ndarray:
        """Per trial and query, how many of the trial's identities have a member ranked before ``first``.

        Queries whose first positive lies within the top ``TOP_RANKS`` read exactly their ranks before
        it (all trials flattened into one ragged list, so the work follows the first positives, not a
        fixed depth); deeper ones take each identity's best member over the whole trial gallery.
        """
        trials, b = first.shape
        k = min(self.TOP_RANKS, self.num_candidates)
        lengths = np.where(first <= k, first, 0).ravel()
        rows = np.repeat(np.arange(trials * b), lengths)                    # trial * b + query
        cols = np.arange(rows.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        ranked = order[rows % b, cols]
        members = plan.is_member[rows // b, ranked]
        pairs = np.unique(rows[members] * self.num_identities + self.candidate_ids[ranked[members]])
        before = np.bincount(pairs // self.num_identities, minlength=trials * b).reshape(trials, b)
        for t, trial in enumerate(plan.trials):
            deep = np.flatnonzero((first[t] > k) & (first[t] < np.iinfo(np.int64).max))
            if deep.size and trial.by_identity is not None:
                best = np.minimum.reduceat(np.take(posrank[deep], trial.by_identity, axis=1),
                                           trial.identity_starts, axis=1)
                before[t, deep] = (best < first[t, deep, None]).sum(axis=1)
        return before

    def _score_chunk(self, plan: _SettingPlan, out: _TrialOutcome, rows: slice, order: np.ndarray,
                     posrank: np.ndarray, cands: np.ndarray, positions: np.ndarray, flat: np.ndarray) -> None:
        """Scores every trial of a setting at once: arrays are (trials, queries, possible positives)."""
        ranks = np.concatenate([
            (self._members_up_to(table, order, positions, flat)[None] >> shifts[:, None, None]) & plan.mask
            for table, shifts in zip(plan.tables, plan.shifts)
        ]).astype(np.int64)
        positive = plan.is_member[:, cands]                           # in rank order
        npos = positive.sum(axis=2)
        valid = npos > 0
        ordinal = np.cumsum(positive, axis=2)
        ap = np.where(positive, ordinal / np.maximum(ranks, 1), 0.0).sum(axis=2) / np.maximum(npos, 1)
        inp = npos / np.maximum(np.where(positive, ranks, 0).max(axis=2), 1)
        big = np.iinfo(np.int64).max
        if plan.dedup:
            # one plus the identities whose best member precedes the first positive
            first = np.where(positive, positions, big).min(axis=2)
            cmc_rank = 1 + self._identities_before(plan, order, posrank, first)
        else:
            cmc_rank = np.where(positive, ranks, big).min(axis=2)
        out.valid[:, rows] = valid
        out.cmc_rank[:, rows] = np.where(valid, cmc_rank, 0)
        out.ap[:, rows] = np.where(valid, ap, 0.0)
        out.inp[:, rows] = np.where(valid, inp, 0.0)


# ----------------------------------------------------------------------------------------------
# aggregation


def _trial_summary(outcome: _TrialOutcome, max_rank: int) -> tuple[dict[str, float], np.ndarray, int]:
    valid = outcome.valid
    nvalid = int(valid.sum())
    if nvalid == 0:
        raise DataError("no query has a positive in the gallery (query and gallery identities do not overlap)")
    ranks = outcome.cmc_rank[valid]
    longest = max(max_rank, max(CMC_RANKS.values()))
    hist = np.bincount(np.minimum(ranks, longest + 1) - 1, minlength=longest + 1)[:longest]
    cmc = np.cumsum(hist) / nvalid
    metrics = {key: float(cmc[r - 1] * 100.0) for key, r in CMC_RANKS.items()}
    metrics["mAP"] = float(outcome.ap[valid].mean() * 100.0)
    metrics["mINP"] = float(outcome.inp[valid].mean() * 100.0)
    return metrics, cmc[:max_rank] * 100.0, nvalid


def _result(dataset: str, mode: str, shot: str, sampler: str, outcomes: Sequence[_TrialOutcome],
            num_query: int, gallery_sizes: Sequence[int], max_rank: int) -> EvalResult:
    per_trial, curves, valid_counts = [], [], []
    for outcome in outcomes:
        metrics, curve, nvalid = _trial_summary(outcome, max_rank)
        per_trial.append(metrics)
        curves.append(curve)
        valid_counts.append(nvalid)
    mean, std = summarise_trials(per_trial)
    return EvalResult(
        dataset=dataset, mode=mode, shot=shot, sampler=sampler, trials=len(outcomes), num_query=num_query,
        num_gallery=_mean_or_int(gallery_sizes), metrics=mean, std=std, per_trial=per_trial,
        cmc=np.mean(curves, axis=0), num_valid_query=_mean_or_int(valid_counts),
    )


def _check_max_rank(max_rank: int) -> int:
    if int(max_rank) < 1:
        raise UsageError(f"--max-rank must be at least 1, got {max_rank}")
    return int(max_rank)


# ----------------------------------------------------------------------------------------------
# public entry points


def sysu_query_rows(camids: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.isin(camids, np.asarray(IR_CAMERAS)))


def evaluate_sysu_settings(features, pids, camids, paths, settings: Sequence[tuple[str, str]] = ALL_SYSU_SETTINGS,
                           *, trials: int = 10, sampler: str = "auto", perm: RandPerm | str | Path | None = None,
                           max_rank: int = 20, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> list[EvalResult]:
    """Several SYSU-MM01 settings ((mode, shot) pairs) sharing one ranking of the candidates."""
    feats, pids, camids, paths = _check_arrays(features, pids, camids, paths)
    if paths is None:
        raise DataError("the SYSU-MM01 protocol needs the image paths to sample the gallery")
    _check_cameras(camids, ALL_CAMERAS, "SYSU-MM01")
    if len(set(paths)) != len(paths):
        raise DataError("the features file lists an image path twice; each test image must appear once")
    max_rank = _check_max_rank(max_rank)
    _check_trials(trials)
    perm = load_perm(perm)
    for mode, shot in settings:
        gallery_cameras(mode)
        shot_count(shot)
    queries = sysu_query_rows(camids)
    if queries.size == 0:
        raise DataError("the features file holds no IR query images (SYSU-MM01 cameras 3 and 6)")
    plans = []
    for mode, shot in settings:
        used, galleries = sample_sysu_galleries(pids, camids, paths, mode=mode, shot=shot, trials=trials,
                                                sampler=sampler, perm=perm)
        plans.append((mode, shot, used, galleries))
    candidates = np.unique(np.concatenate([g for *_, gals in plans for g in gals]))
    parts: list[list[list[_TrialOutcome]]] = [[[] for _ in gals] for *_, gals in plans]
    unit_candidates = cosine_normalise(feats[candidates])
    # One engine per query camera group: a cam3 query never sees cam2 (same room), so its candidates
    # are the others; removing them before ranking is the same as filtering each ranked list.
    for hidden, rows in _junk_groups(camids, queries):
        shown = slice(None) if hidden is None else camids[candidates] != hidden
        visible = candidates[shown]
        if visible.size == 0:
            for setting in parts:
                for trial in setting:
                    trial.append(_TrialOutcome.empty(len(rows)))
            continue
        engine = RankingEngine(cosine_normalise(feats[rows]), pids[rows], unit_candidates[shown],
                               pids[visible], memory_budget=memory_budget)
        jobs = [([np.searchsorted(visible, g if hidden is None else g[camids[g] != hidden]) for g in gals], True)
                for *_, gals in plans]
        for setting, outs in zip(parts, engine.evaluate(jobs)):
            for trial, out in zip(setting, outs):
                trial.append(out)
        del engine
    return [
        _result("sysu", mode, shot, used, [_TrialOutcome.concat(t) for t in setting], len(queries),
                [len(g) for g in gals], max_rank)
        for (mode, shot, used, gals), setting in zip(plans, parts)
    ]


def _junk_groups(camids: np.ndarray, queries: np.ndarray) -> list[tuple[int | None, np.ndarray]]:
    """Queries grouped by the gallery camera they must not see (SAME_ROOM), None for none."""
    hidden = np.array([SAME_ROOM.get(int(c), -1) for c in camids[queries]])
    return [(None if h < 0 else int(h), queries[hidden == h]) for h in np.unique(hidden)]


def evaluate_sysu(features, pids, camids, paths, *, mode: str = "all", shot: str = "single", trials: int = 10,
                  sampler: str = "auto", perm: RandPerm | str | Path | None = None, max_rank: int = 20,
                  memory_budget: int = DEFAULT_MEMORY_BUDGET) -> EvalResult:
    """The SYSU-MM01 protocol for one setting; ``features`` holds every test image of both modalities."""
    return evaluate_sysu_settings(features, pids, camids, paths, [(mode, shot)], trials=trials, sampler=sampler,
                                  perm=perm, max_rank=max_rank, memory_budget=memory_budget)[0]


def regdb_rows(camids: np.ndarray, direction: str) -> tuple[np.ndarray, np.ndarray]:
    """Query and gallery rows of a RegDB direction (v2t: visible queries, thermal gallery)."""
    check_choice("direction", direction, REGDB_DIRECTIONS)
    qcam, gcam = (REGDB_VISIBLE, REGDB_THERMAL) if direction == "v2t" else (REGDB_THERMAL, REGDB_VISIBLE)
    return np.flatnonzero(camids == qcam), np.flatnonzero(camids == gcam)


def evaluate_regdb(features, pids, camids, *, direction: str = "v2t", max_rank: int = 20,
                   memory_budget: int = DEFAULT_MEMORY_BUDGET) -> EvalResult:
    """The RegDB protocol for one split: nothing removed, image-level CMC, mAP, mINP."""
    feats, pids, camids, _ = _check_arrays(features, pids, camids)
    _check_cameras(camids, (REGDB_VISIBLE, REGDB_THERMAL), "RegDB")
    max_rank = _check_max_rank(max_rank)
    queries, gallery = regdb_rows(camids, direction)
    names = {REGDB_VISIBLE: "visible (camid 1)", REGDB_THERMAL: "thermal (camid 2)"}
    if queries.size == 0 or gallery.size == 0:
        missing = "query" if queries.size == 0 else "gallery"
        cam = (REGDB_VISIBLE if (direction == "v2t") == (missing == "query") else REGDB_THERMAL)
        raise DataError(f"RegDB {direction}: empty {missing} set (no {names[cam]} images in the features file)")
    engine = RankingEngine(cosine_normalise(feats[queries]), pids[queries], cosine_normalise(feats[gallery]),
                           pids[gallery], memory_budget=memory_budget)
    outcomes = engine.evaluate([([np.arange(len(gallery))], False)])[0]
    return _result("regdb", direction, "all", "none", outcomes, len(queries), [len(gallery)], max_rank)


# ----------------------------------------------------------------------------------------------
# ranked lists for pictures


def top_k_gallery(features, camids, query_rows, gallery_rows, *, k: int = 10,
                  junk: Mapping[int, int] | None = None) -> list[np.ndarray]:
    """For a few queries, the first ``k`` gallery rows of the ranked list (junk removed)."""
    feats = np.asarray(features)
    camids = np.asarray(camids)
    gallery_rows = np.sort(np.asarray(gallery_rows, dtype=np.int64))
    query_rows = np.asarray(query_rows, dtype=np.int64)
    if query_rows.size == 0:
        return []
    sims = cosine_normalise(feats[query_rows]) @ cosine_normalise(feats[gallery_rows]).T
    keep = np.ones(sims.shape, dtype=bool)
    for qcam, gcam in (junk or {}).items():
        keep &= ~((camids[query_rows] == qcam)[:, None] & (camids[gallery_rows] == gcam)[None, :])
    order = np.argsort(np.where(keep, -sims, np.inf), axis=1, kind="stable")
    kept = np.take_along_axis(keep, order, axis=1)
    return [gallery_rows[o[m]][:k] for o, m in zip(order, kept)]


def pick_example_queries(pids, camids, query_rows, gallery_rows, count: int,
                         junk: Mapping[int, int] | None = None) -> np.ndarray:
    """Up to ``count`` queries of different identities with a positive in the gallery (deterministic)."""
    pids = np.asarray(pids)
    camids = np.asarray(camids)
    query_rows = np.asarray(query_rows, dtype=np.int64)
    gallery_rows = np.asarray(gallery_rows, dtype=np.int64)
    valid = np.zeros(len(query_rows), dtype=bool)
    for qcam in np.unique(camids[query_rows]):
        hidden = (junk or {}).get(int(qcam))
        seen = gallery_rows if hidden is None else gallery_rows[camids[gallery_rows] != hidden]
        here = camids[query_rows] == qcam
        valid[here] = np.isin(pids[query_rows[here]], pids[seen])
    valid_rows = query_rows[valid]
    if valid_rows.size == 0 or count <= 0:
        return np.zeros(0, dtype=np.int64)
    # identities spread evenly over the valid ones, the first valid query (in row order) of each
    ids, first = np.unique(pids[valid_rows], return_index=True)
    take = np.unique(np.linspace(0, ids.size - 1, min(count, ids.size)).round().astype(np.int64))
    return valid_rows[first[take]]


def sysu_ranked_examples(features, pids, camids, paths, *, mode: str = "all", shot: str = "single",
                         sampler: str = "auto", perm: RandPerm | None = None, trial: int = 0,
                         num_queries: int = 4, k: int = 10) -> list[tuple[int, np.ndarray]]:
    """(query row, top-k gallery rows) for a few queries of one trial, for the ranked-list picture."""
    feats, pids, camids, paths = _check_arrays(features, pids, camids, paths)
    _, galleries = sample_sysu_galleries(pids, camids, paths, mode=mode, shot=shot, trials=trial + 1,
                                         sampler=sampler, perm=perm)
    gallery = galleries[trial]
    queries = pick_example_queries(pids, camids, sysu_query_rows(camids), gallery, num_queries, junk=SAME_ROOM)
    tops = top_k_gallery(feats, camids, queries, gallery, k=k, junk=SAME_ROOM)
    return list(zip(queries.tolist(), tops))


def ranked_examples(features, pids, camids, paths, result: EvalResult, *, perm: RandPerm | None = None,
                    num_queries: int = 4, k: int = 10) -> list[tuple[int, np.ndarray]]:
    """Examples for the ranked-list picture of the setting an :class:`EvalResult` describes (trial 0)."""
    if result.dataset == "sysu":
        return sysu_ranked_examples(features, pids, camids, paths, mode=result.mode, shot=result.shot,
                                    sampler=result.sampler, perm=perm, num_queries=num_queries, k=k)
    return regdb_ranked_examples(features, pids, camids, direction=result.mode, num_queries=num_queries, k=k)


def write_results_json(path: str | Path, results: Sequence[EvalResult], *, as_list: bool = False) -> Path:
    """Write the SPEC §1 evaluation JSON (atomically): one object, or a list when ``as_list``."""
    path = Path(path)
    payload = [r.to_json_dict() for r in results] if as_list else results[0].to_json_dict()
    write_text(path, json.dumps(payload, indent=2) + "\n")
    return path


def regdb_ranked_examples(features, pids, camids, *, direction: str = "v2t", num_queries: int = 4,
                          k: int = 10) -> list[tuple[int, np.ndarray]]:
    feats, pids, camids, _ = _check_arrays(features, pids, camids)
    queries, gallery = regdb_rows(camids, direction)
    picked = pick_example_queries(pids, camids, queries, gallery, num_queries)
    tops = top_k_gallery(feats, camids, picked, gallery, k=k)
    return list(zip(picked.tolist(), tops))
