"""The vectorised ranking engine of the evaluation protocols: every query ranked against every gallery
candidate once, then any number of trial galleries scored from that one ranking.

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

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

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


def cosine_normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, in float64 (all-zero rows stay zero); a new array."""
    feats = np.array(features, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", feats, feats))
    feats /= np.maximum(norms, NORM_EPS)[:, None]
    return feats


@dataclass
class TrialOutcome:
    """Per-query results of one trial (or of a setting's trials, with a leading trial axis)."""

    valid: np.ndarray       # bool: the query has a positive in the gallery
    cmc_rank: np.ndarray    # int64: rank of the first match in the (de-duplicated) list
    ap: np.ndarray          # float64
    inp: np.ndarray         # float64

    @classmethod
    def empty(cls, *shape: int) -> "TrialOutcome":
        return cls(np.zeros(shape, bool), np.zeros(shape, np.int64), np.zeros(shape), np.zeros(shape))

    def select(self, rows: np.ndarray) -> "TrialOutcome":
        """The outcomes of some queries (an index or mask along the query axis)."""
        return type(self)(self.valid[..., rows], self.cmc_rank[..., rows], self.ap[..., rows], self.inp[..., rows])

    def place(self, rows: np.ndarray, part: "TrialOutcome") -> None:
        """Write ``part``'s outcomes at queries ``rows``."""
        for name in ("valid", "cmc_rank", "ap", "inp"):
            getattr(self, name)[..., rows] = getattr(part, name)

    def trials(self) -> list["TrialOutcome"]:
        """One outcome per trial (views) of a setting's outcome."""
        return [type(self)(self.valid[t], self.cmc_rank[t], self.ap[t], self.inp[t]) for t in range(len(self.valid))]

    @classmethod
    def concat(cls, parts: Sequence["TrialOutcome"]) -> "TrialOutcome":
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
    :func:`cosine_normalise`), or :meth:`from_scores` takes the similarities themselves (re-ranked
    distances); the candidates' order is the tie order. With ``query_cameras`` and
    ``candidate_cameras``, a candidate of the query's identity seen by the query's camera is junk (LLCM's
    rule): removed from the query's list, neither a positive nor counted in any rank. A trial gallery is a set of
    candidate indices: its ranking is the restriction of the candidates' ranking, so a trial needs
    no new sort. Queries are processed in blocks for the matrix product (``block_rows``, bounded by
    ``memory_budget``) and in chunks of at most 128 queries for ranking and scoring, whose working
    arrays (about 40 bytes per query and candidate) stay in cache; chunks run on ``threads`` threads
    (numpy releases the GIL) and write disjoint rows, so results do not depend on the threads.
    """

    TOP_RANKS = 256  # ranks searched directly for the identities before a query's first positive

    def __init__(self, queries: np.ndarray | None, query_pids: np.ndarray, candidates: np.ndarray | None,
                 candidate_pids: np.ndarray, *, scores: np.ndarray | None = None,
                 query_cameras: np.ndarray | None = None, candidate_cameras: np.ndarray | None = None,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, chunk_rows: int | None = None,
                 threads: int | None = None) -> None:
        self.queries, self.candidates, self.scores = queries, candidates, scores
        self.qpids = np.asarray(query_pids, dtype=np.int64)
        self.cpids = np.asarray(candidate_pids, dtype=np.int64)
        self.num_queries = len(self.qpids)
        self.num_candidates = c = len(self.cpids)
        if c == 0:
            raise ValueError("the engine needs at least one candidate")
        self.index_dtype = np.int16 if c + 1 <= np.iinfo(np.int16).max else np.int32
        self.idx_bits = max(1, (c - 1).bit_length())
        budget = max(1, int(memory_budget))
        self.chunk_rows = max(1, min(128, budget // (48 * c))) if chunk_rows is None else max(1, int(chunk_rows))
        self.block_rows = max(self.chunk_rows, budget // (8 * c))
        self.threads = max(1, int(threads)) if threads else default_threads()
        self._identity_blocks()
        self.query_junk = None
        if query_cameras is not None:
            cams = np.append(np.asarray(candidate_cameras, dtype=np.int64), np.iinfo(np.int64).min)  # C: padding
            self.query_junk = cams[self.query_blocks] == np.asarray(query_cameras, dtype=np.int64)[:, None]

    @classmethod
    def from_scores(cls, scores: np.ndarray, query_pids: np.ndarray, candidate_pids: np.ndarray,
                    **options) -> "RankingEngine":
        """An engine over precomputed similarities (queries x candidates, larger is better, within [-1, 1]
        as the sort key needs); ``options`` as for the constructor."""
        scores = np.ascontiguousarray(scores, dtype=np.float64)
        if scores.shape != (len(query_pids), len(candidate_pids)):
            raise ValueError(f"scores of shape {scores.shape} for {len(query_pids)} queries and "
                             f"{len(candidate_pids)} candidates")
        if scores.size and not (-1.0 <= scores.min() and scores.max() <= 1.0):
            raise ValueError("scores must lie within [-1, 1]")
        return cls(None, query_pids, None, candidate_pids, scores=scores, **options)

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

    def evaluate(self, settings: Sequence[tuple[Sequence[np.ndarray], bool]]) -> list[list[TrialOutcome]]:
        """Outcomes of each setting's trials; a setting is (galleries as candidate indices, dedup)."""
        q, c = self.num_queries, self.num_candidates
        outcomes = [TrialOutcome.empty(len(gals), q) for gals, _ in settings]
        if q == 0:
            return [setting.trials() for setting in outcomes]
        plans = [self._plan(gals, dedup) for gals, dedup in settings]
        b = self.chunk_rows
        block = min(self.block_rows, q)
        sims_buffer = np.empty((block, c)) if self.scores is None else None
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
            junk = None if self.query_junk is None else np.take_along_axis(self.query_junk[start:stop], sort, 1)
            for plan, out in zip(plans, outcomes):
                self._score_chunk(plan, out, slice(start, stop), order, posrank, cands, positions, junk,
                                  local.buffers["flat"])

        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            for block_start in range(0, q, block):
                block_stop = min(q, block_start + block)
                if self.scores is not None:
                    sims = self.scores[block_start:block_stop]
                else:
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

    def _score_chunk(self, plan: _SettingPlan, out: TrialOutcome, rows: slice, order: np.ndarray,
                     posrank: np.ndarray, cands: np.ndarray, positions: np.ndarray, junk: np.ndarray | None,
                     flat: np.ndarray) -> None:
        """Scores every trial of a setting at once: arrays are (trials, queries, possible positives).
        ``junk`` marks the possible positives that are junk for their query (in the same rank order)."""
        ranks = np.concatenate([
            (self._members_up_to(table, order, positions, flat)[None] >> shifts[:, None, None]) & plan.mask
            for table, shifts in zip(plan.tables, plan.shifts)
        ]).astype(np.int64)
        positive = plan.is_member[:, cands]                           # in rank order
        junk_members = None
        if junk is not None:
            junk_members = positive & junk[None]
            positive = positive & ~junk[None]
            ranks -= np.cumsum(junk_members, axis=2)                  # junk ranked above does not count
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
            if junk_members is not None:  # the query's own identity, seen before first only through junk
                cmc_rank -= (junk_members & (positions[None] < first[..., None])).any(axis=2)
        else:
            cmc_rank = np.where(positive, ranks, big).min(axis=2)
        out.valid[:, rows] = valid
        out.cmc_rank[:, rows] = np.where(valid, cmc_rank, 0)
        out.ap[:, rows] = np.where(valid, ap, 0.0)
        out.inp[:, rows] = np.where(valid, inp, 0.0)
