"""Exact nearest and farthest neighbours of every node of a re-ranking pool, computed once and read by
every trial drawn from it (k-reciprocal re-ranking, ``rerank.py``).

The nodes are the query rows, then the pool of gallery rows, each in the caller's order (the features
file's, which is the tie order). A trial takes a subset of each and keeps that order. Distances are
d(i, j) = max(2 - 2 cos, 0) of L2-normalised float64 features, neighbours ordered by distance with ties by
node index: exactly what a trial computed on its own gives, without computing it again for every trial.

Kept per pool (all bounded): each node's ``depth`` nearest nodes of the whole pool with their distances; its
``far`` farthest nodes on its own side (queries for a query, pool for a gallery node) with their
distances; the query x pool similarities (float64), when they fit twice the working budget (else a trial
computes its query x gallery block again). A trial's nearest nodes of a node are the first trial members of
its list (restricting an ordered list to a subset keeps the order); a node whose list holds fewer members
than the trial needs is computed again over the trial's nodes, exactly. A trial's largest distance of a
node (re-ranking's normalisation) is the larger of its largest query x gallery distance and the first
trial member of its farthest list; only when no member is listed and the unlisted ones could be larger is
it computed over the trial.

How the lists are found: the products of a side with itself are symmetric, so each pair is computed once,
in tiles (a block of rows with itself, then with the rest of its side after it; the queries with the whole
pool), and each tile is read twice, along its rows and along its columns. What a node keeps from a tile are
its candidates: the similarities at least a lower bound of its depth-th largest (the depth-th largest of
the first tile it meets, its own block's, which holds its likeliest neighbours), and for the farthest
list at most an upper bound of its far-th smallest. Every true neighbour passes that test, whichever tile
it lies in; the candidates, a few more than needed, are ordered exactly on the host. The products and the
tests run with numpy, or with torch on a ``device`` (a GPU) (``array_ops.py``): the lists are the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pfanet_cli.evaluation.array_ops import NumpyOps, array_ops
from pfanet_cli.evaluation.ranking import cosine_normalise

FAR = 16
"""Farthest nodes kept per node (its own side)."""
MARGIN = 2.0**-50
"""Similarities this far below a cut may still round to the cut's distance: they are candidates too."""
CROSS_BUDGETS = 2
"""The query x pool similarities are kept when they take at most this many working budgets."""


def distances(similarities: np.ndarray) -> np.ndarray:
    """d = max(2 - 2 s, 0), in place."""
    similarities *= -2.0
    similarities += 2.0
    return np.maximum(similarities, 0.0, out=similarities)


def _first_per_row(rows: np.ndarray, cols: np.ndarray, dist: np.ndarray, count: int, row_ids: np.ndarray,
                   descending: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``row_ids``, its first ``count`` candidates by distance (descending: largest first), ties
    by column; each of those rows has at least ``count`` candidates."""
    key = -dist if descending else dist
    order = np.argsort(key)
    # then a stable sort by row (radix for 16-bit rows): by row, then distance; equal distances in a row
    # (duplicated features) take the exact three-key sort
    order = order[np.argsort(rows[order].astype(np.uint16 if rows.max(initial=0) < 2**16 else np.int64),
                             kind="stable")]
    sorted_rows, sorted_keys = rows[order], key[order]
    if np.any((sorted_rows[1:] == sorted_rows[:-1]) & (sorted_keys[1:] == sorted_keys[:-1])):
        order = np.lexsort((cols, key, rows))
        sorted_rows = rows[order]
    starts = np.searchsorted(sorted_rows, row_ids)
    pick = order[(starts[:, None] + np.arange(count)).ravel()]
    return cols[pick].reshape(len(row_ids), count), dist[pick].reshape(len(row_ids), count)


def smallest_in_block(dist: np.ndarray, count: int) -> np.ndarray:
    """Each row's ``count`` smallest columns of a block of distances, ties by column."""
    cut = NumpyOps.kth_smallest(dist, count)
    rows, cols = NumpyOps.nonzero(dist <= cut[:, None])
    return _first_per_row(rows, cols, dist[rows, cols], count, np.arange(len(dist)))[0]


@dataclass
class NeighbourIndex:
    """The lists of one pool: ``num_queries`` query nodes, then the gallery nodes (see the module)."""

    feats: np.ndarray          # (n, dim) float64 unit rows
    num_queries: int
    nearest: np.ndarray        # (n, depth) node indices, by distance, ties by index
    nearest_dist: np.ndarray   # (n, depth)
    farthest: np.ndarray       # (n, far) node indices of the node's own side, farthest first (n: none)
    farthest_dist: np.ndarray  # (n, far)
    unlisted: np.ndarray       # (n,) the largest distance a node of its side has outside the list
    cross: np.ndarray | None   # (Q, P) query x pool similarities, or None: computed per trial
    memory_budget: int

    def __post_init__(self) -> None:
        n = len(self.feats)
        keys = (np.arange(n)[:, None] * n + self.nearest).ravel()
        order = np.argsort(keys, kind="stable")
        self._keys, self._key_dist = keys[order], self.nearest_dist.ravel()[order]

    @property
    def size(self) -> int:
        return len(self.feats)

    def listed_distances(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which (row, col) node pairs are in the row's nearest list, and their distances there (0 elsewhere)."""
        keys = rows * self.size + cols
        where = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        found = self._keys[where] == keys
        return found, np.where(found, self._key_dist[where], 0.0)

    def similarities(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Similarities of query nodes ``rows`` and gallery nodes ``cols`` (numbered within the pool)."""
        if self.cross is not None:
            picked = self.cross if len(rows) == self.num_queries else self.cross[rows]     # rows: ascending
            return np.take(picked, cols, axis=1)
        return self.feats[rows] @ self.feats[self.num_queries + cols].T


def _split(start: int, stop: int, block: int) -> list[tuple[int, int]]:
    """[start, stop) in nearly equal blocks of at most ``block``."""
    count = max(1, -(-(stop - start) // block))
    bounds = start + (stop - start) * np.arange(count + 1) // count
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def build_index(queries: np.ndarray, pool: np.ndarray, depth: int, *, memory_budget: int,
                device: str | None = None, far: int | None = None) -> NeighbourIndex:
    """The lists of ``queries`` (rows, the first nodes) and ``pool`` (the gallery rows every trial draws
    from): ``depth`` nearest and ``far`` (default :data:`FAR`) farthest per node, by tiles of similarities
    of about ``memory_budget`` bytes with their masks (blocks of at least 2 x depth rows; see the module)."""
    feats = cosine_normalise(np.concatenate([np.asarray(queries), np.asarray(pool)]))
    num_queries, n = len(queries), len(feats)
    ops = array_ops(device)
    unit = ops.asarray(feats)
    found = _Candidates(ops, n, min(depth, n), FAR if far is None else far, num_queries)
    block = max(2 * depth, memory_budget // (24 * n))
    sides = [side for side in ((0, num_queries), (num_queries, n)) if side[1] > side[0]]
    blocks = [(start, stop, side[1]) for side in sides for start, stop in _split(*side, block)]
    for start, stop, _ in blocks:
        found.add(unit[start:stop] @ unit[start:stop].T, start, start, diagonal=True)
    keep_cross = num_queries * (n - num_queries) * 8 <= CROSS_BUDGETS * memory_budget
    cross = ops.empty(num_queries, n - num_queries) if keep_cross and 0 < num_queries < n else None
    for start, stop in _split(0, num_queries, block) if num_queries < n else []:
        tile = unit[start:stop] @ unit[num_queries:].T
        if cross is not None:
            cross[start:stop] = tile
        found.add(tile, start, num_queries)
    for start, stop, end in blocks:
        if stop < end:
            found.add(unit[start:stop] @ unit[stop:end].T, start, stop)
    return NeighbourIndex(feats, num_queries, *found.lists(), None if cross is None else ops.host(cross),
                          memory_budget)


class _Candidates:
    """What each node keeps of the tiles it meets (see the module), on the host, and its bounds (on the
    device): ``low``, at most its depth-th largest similarity; ``high``, at least its far-th smallest on its
    own side."""

    def __init__(self, ops, n: int, depth: int, far: int, num_queries: int) -> None:
        self.ops, self.n, self.depth, self.num_queries = ops, n, depth, num_queries
        self.far = {True: min(far, num_queries), False: min(far, n - num_queries)}   # by side: is a query
        self.low, self.high = ops.full(n, -np.inf), ops.full(n, np.inf)
        self.near: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.farther: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, tile, row_start: int, col_start: int, diagonal: bool = False) -> None:
        """A tile of similarities (rows from ``row_start``, columns from ``col_start``): a block with itself
        (``diagonal``, read along its rows: it holds both orders of each pair), else read both ways. The
        bounds of its nodes are tightened first."""
        rows = slice(row_start, row_start + tile.shape[0])
        cols = slice(col_start, col_start + tile.shape[1])
        own_side = (row_start < self.num_queries) == (col_start < self.num_queries)
        for axis, nodes in ((1, rows),) if diagonal else ((1, rows), (0, cols)):
            self._tighten(tile, nodes, axis, own_side)
            self._keep(tile, rows, cols, own_side, along_rows=axis == 1)

    def _tighten(self, tile, nodes: slice, axis: int, own_side: bool) -> None:
        ops, length = self.ops, tile.shape[axis]
        if length >= self.depth:
            self.low[nodes] = ops.maximum(self.low[nodes], ops.kth_largest(tile, self.depth, axis))
        far = self.far[nodes.start < self.num_queries]
        if own_side and 0 < far <= length:
            self.high[nodes] = ops.minimum(self.high[nodes], ops.kth_smallest(tile, far, axis))

    def _keep(self, tile, rows: slice, cols: slice, own_side: bool, along_rows: bool) -> None:
        ops = self.ops
        mine = rows if along_rows else cols
        shape = (-1, 1) if along_rows else (1, -1)
        tests = [(self.near, tile >= (ops.cap(self.low[mine], 1.0) - MARGIN).reshape(shape))]
        if own_side:
            tests.append((self.farther, tile <= self.high[mine].reshape(shape)))
        for kept, mask in tests:
            i, j = ops.nonzero(mask)
            values = ops.host(tile[i, j])
            i, j = ops.host(i) + rows.start, ops.host(j) + cols.start
            kept.append((i, j, values) if along_rows else (j, i, values))

    def _final(self, kept: list, near: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The candidates that pass the final (tightest) bounds, with their distances."""
        rows, cols, sims = (np.concatenate(part) for part in zip(*kept))
        if near:
            passed = sims >= np.minimum(self.ops.host(self.low), 1.0)[rows] - MARGIN
        else:
            passed = sims <= self.ops.host(self.high)[rows]
        return rows[passed], cols[passed], distances(sims[passed])

    def lists(self) -> tuple[np.ndarray, ...]:
        """nearest, nearest_dist, farthest, farthest_dist, unlisted (see :class:`NeighbourIndex`)."""
        nearest, nearest_dist = _first_per_row(*self._final(self.near, True), self.depth, np.arange(self.n))
        width = max(self.far.values())
        farthest, farthest_dist = np.full((self.n, width), self.n), np.full((self.n, width), -np.inf)
        unlisted = np.full(self.n, -np.inf)
        rows, cols, dist = self._final(self.farther, False)
        sides = ((True, np.arange(self.num_queries), self.num_queries),
                 (False, np.arange(self.num_queries, self.n), self.n - self.num_queries))
        for is_query, ids, size in sides:
            count = self.far[is_query]
            if count == 0:
                continue
            farthest[ids, :count], farthest_dist[ids, :count] = _first_per_row(rows, cols, dist, count, ids,
                                                                               descending=True)
            if size > count:
                unlisted[ids] = farthest_dist[ids, count - 1]
        return nearest, nearest_dist, farthest, farthest_dist, unlisted


class Trial:
    """One trial's view of an index: its nodes (``query_rows`` of the queries, then ``gallery_rows`` of the
    pool, both ascending), each node's ``width`` nearest trial nodes and its largest distance to a trial node
    (trial numbering: queries first), and the query x gallery distances."""

    def __init__(self, index: NeighbourIndex, query_rows: np.ndarray, gallery_rows: np.ndarray, width: int) -> None:
        self.index = index
        self.num_queries = len(query_rows)
        self.nodes = np.concatenate([query_rows, index.num_queries + np.asarray(gallery_rows)]).astype(np.int64)
        self.local = np.full(index.size + 1, -1, dtype=np.int64)       # node -> trial number; sentinel n: -1
        self.local[self.nodes] = np.arange(len(self.nodes))
        self.query_gallery = distances(index.similarities(query_rows, gallery_rows))
        qg = self.query_gallery
        cross_max = np.concatenate([qg.max(axis=1) if qg.shape[1] else np.zeros(len(qg)),
                                    qg.max(axis=0) if qg.shape[0] else np.zeros(qg.shape[1])])
        self.row_max = np.maximum(cross_max, self._own_side_max(cross_max))
        self.nearest = self._nearest(min(width, len(self.nodes)))

    def _blocks(self, rows: np.ndarray, cols: int):
        step = max(1, self.index.memory_budget // (24 * max(cols, 1)))
        return (rows[start:start + step] for start in range(0, len(rows), step))

    def _own_side(self, rows: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """``rows`` (trial numbers) split into queries and gallery nodes, each with its side's trial nodes."""
        nq = self.num_queries
        return [(rows[rows < nq], self.nodes[:nq]), (rows[rows >= nq], self.nodes[nq:])]

    def _own_side_max(self, cross_max: np.ndarray) -> np.ndarray:
        """Each node's largest distance to a trial node of its own side: the first member of its farthest
        list; computed when none is listed and an unlisted one could exceed ``cross_max``."""
        index = self.index
        farthest = index.farthest[self.nodes]
        member = self.local[farthest] >= 0
        listed = member.any(axis=1)
        first = member.argmax(axis=1)[:, None]
        best = np.where(listed, np.take_along_axis(index.farthest_dist[self.nodes], first, axis=1)[:, 0], -np.inf)
        unknown = np.flatnonzero(~listed & (index.unlisted[self.nodes] > cross_max))
        for rows, side in self._own_side(unknown):
            for chunk in self._blocks(rows, len(side)):
                best[chunk] = distances(index.feats[self.nodes[chunk]] @ index.feats[side].T).max(axis=1)
        return best

    def _nearest(self, width: int) -> np.ndarray:
        """Each node's ``width`` nearest trial nodes (trial numbers): its list's first members, or computed
        over the trial when the list holds fewer."""
        lists = self.index.nearest[self.nodes]
        member = self.local[lists] >= 0
        first = np.argsort(~member, axis=1, kind="stable")[:, :width]
        nearest = self.local[np.take_along_axis(lists, first, axis=1)]
        short = np.flatnonzero(member.sum(axis=1) < width)
        for rows, side in self._own_side(short):
            for chunk in self._blocks(rows, len(self.nodes)):
                nearest[chunk] = smallest_in_block(self._trial_distances(chunk, side), width)
        return nearest

    def _trial_distances(self, rows: np.ndarray, side: np.ndarray) -> np.ndarray:
        """Distances of trial nodes ``rows``, all of one side (``side``: its trial nodes), to every trial node,
        queries first; those to the other side from the query x gallery block, as everywhere in the trial."""
        nq = self.num_queries
        own = distances(self.index.feats[self.nodes[rows]] @ self.index.feats[side].T)
        if rows.size and rows[0] < nq:
            return np.concatenate([own, self.query_gallery[rows]], axis=1)
        return np.concatenate([self.query_gallery[:, rows - nq].T, own], axis=1)

    def pair_distances(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Distances of trial node pairs: from the nearest lists, the query x gallery block, or computed."""
        nq = self.num_queries
        found, dist = self.index.listed_distances(self.nodes[rows], self.nodes[cols])
        query_gallery = ~found & (rows < nq) & (cols >= nq)
        dist[query_gallery] = self.query_gallery[rows[query_gallery], cols[query_gallery] - nq]
        gallery_query = ~found & (rows >= nq) & (cols < nq)
        dist[gallery_query] = self.query_gallery[cols[gallery_query], rows[gallery_query] - nq]
        rest = np.flatnonzero(~found & ~query_gallery & ~gallery_query)
        feats = self.index.feats
        chunk = max(1, self.index.memory_budget // (64 * feats.shape[1]))       # gathered rows: a quarter
        for start in range(0, len(rest), chunk):
            at = rest[start:start + chunk]
            a, b = feats[self.nodes[rows[at]]], feats[self.nodes[cols[at]]]
            dist[at] = np.maximum(2.0 - 2.0 * np.einsum("ij,ij->i", a, b), 0.0)
        return dist
