"""The neighbour search of re-ranking against brute force (one float64 product, a stable argsort): every
node's nearest and farthest lists over the pool, and each trial's nearest nodes, largest distances and pair
distances read off them, whatever the tiling, the list depths (short lists make nodes fall back to an exact
computation over the trial), exact ties, and the backend (numpy, or torch on the CPU)."""

from __future__ import annotations

import numpy as np
import pytest

from pfanet_cli.evaluation.array_ops import NumpyOps, TorchOps
from pfanet_cli.evaluation.neighbours import Trial, build_index


def features(seed: int, n: int, dim: int = 8, exact_ties: bool = False) -> np.ndarray:
    """Clustered rows; with ``exact_ties`` a few vectors with entries 0 and +-0.5 (unit norm, every product
    exact), repeated, so that distances tie exactly."""
    rng = np.random.default_rng(seed)
    if exact_ties:
        pool = np.zeros((5, dim))
        for row in pool:
            row[rng.choice(dim, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
        return pool[rng.integers(0, len(pool), n)]
    centres = rng.standard_normal((n // 6 + 1, dim))
    return centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal((n, dim))


def brute_distances(feats: np.ndarray) -> np.ndarray:
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    return np.maximum(2.0 - 2.0 * unit @ unit.T, 0.0)


@pytest.mark.parametrize("budget", [3_000, 10**8])            # many small tiles, or one per side
@pytest.mark.parametrize("exact_ties", [False, True])
def test_lists_are_the_exact_nearest_and_farthest(budget, exact_ties):
    feats = features(1, 130, exact_ties=exact_ties)
    num_queries, depth, far = 50, 9, 4
    index = build_index(feats[:num_queries], feats[num_queries:], depth, memory_budget=budget, far=far)
    dist = brute_distances(feats)
    order = np.argsort(dist, axis=1, kind="stable")                 # ties by index
    np.testing.assert_array_equal(index.nearest, order[:, :depth])
    np.testing.assert_allclose(index.nearest_dist, np.take_along_axis(dist, order[:, :depth], 1), atol=1e-12)
    for rows in (np.arange(num_queries), np.arange(num_queries, len(feats))):
        own = dist[np.ix_(rows, rows)]
        np.testing.assert_allclose(index.farthest_dist[rows], -np.sort(-own, axis=1)[:, :far], atol=1e-12)
        np.testing.assert_allclose(index.unlisted[rows], -np.sort(-own, axis=1)[:, far - 1], atol=1e-12)
        assert np.all(index.farthest[rows] >= rows[0]) and np.all(index.farthest[rows] <= rows[-1])
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    if budget > 10**6:
        np.testing.assert_allclose(index.cross, unit[:num_queries] @ unit[num_queries:].T, atol=1e-12)
    else:
        assert index.cross is None                                    # too large to keep: computed per trial


@pytest.mark.parametrize("exact_ties", [False, True])
def test_trials_read_their_neighbours_off_the_lists(exact_ties):
    """Short lists (depth 6 for 5 neighbours) and farthest lists (2) leave many nodes to the exact fallback."""
    feats = features(2, 150, exact_ties=exact_ties)
    num_queries, width = 40, 5
    index = build_index(feats[:num_queries], feats[num_queries:], 6, memory_budget=10**8, far=2)
    rng = np.random.default_rng(3)
    fell_back = 0
    for _ in range(4):
        queries = np.sort(rng.choice(num_queries, 25, replace=False))
        gallery = np.sort(rng.choice(len(feats) - num_queries, 40, replace=False))
        trial = Trial(index, queries, gallery, width)
        nodes = np.concatenate([queries, num_queries + gallery])
        dist = brute_distances(feats[nodes])
        np.testing.assert_array_equal(trial.nearest, np.argsort(dist, axis=1, kind="stable")[:, :width])
        np.testing.assert_allclose(trial.row_max, dist.max(axis=1), atol=1e-12)
        np.testing.assert_allclose(trial.query_gallery, dist[: len(queries), len(queries):], atol=1e-12)
        rows, cols = rng.integers(0, len(nodes), 300), rng.integers(0, len(nodes), 300)
        np.testing.assert_allclose(trial.pair_distances(rows, cols), dist[rows, cols], atol=1e-12)
        fell_back += int(((trial.local[index.nearest[nodes]] >= 0).sum(axis=1) < width).sum())
    assert fell_back > 0


def test_torch_finds_the_same_lists_as_numpy():
    feats = features(4, 120)
    numpy_index = build_index(feats[:45], feats[45:], 10, memory_budget=4_000, far=3)
    torch_index = build_index(feats[:45], feats[45:], 10, memory_budget=4_000, far=3, device="cpu")
    for name in ("nearest", "farthest"):
        np.testing.assert_array_equal(getattr(torch_index, name), getattr(numpy_index, name))
    for name in ("nearest_dist", "farthest_dist", "unlisted"):
        np.testing.assert_allclose(getattr(torch_index, name), getattr(numpy_index, name), atol=1e-12)


@pytest.mark.parametrize("axis", [0, 1])
def test_order_statistic_bounds_hold(axis):
    """numpy's bounds: at least k entries reach the k-th largest bound (so every true top-k entry passes it)
    and it is at most the exact k-th largest; torch's are exact."""
    block = np.random.default_rng(5).standard_normal((70, 300))
    block = block if axis == 1 else block.T.copy()
    lines = block if axis == 1 else block.T
    exact_large = -np.sort(-lines, axis=1)[:, 6]
    exact_small = np.sort(lines, axis=1)[:, 6]
    low, high = NumpyOps.kth_largest(block, 7, axis), NumpyOps.kth_smallest(block, 7, axis)
    assert np.all(low <= exact_large) and np.all(high >= exact_small)
    assert np.all((lines >= low[:, None]).sum(axis=1) >= 7) and np.all((lines <= high[:, None]).sum(axis=1) >= 7)
    torch_ops = TorchOps("cpu")
    np.testing.assert_array_equal(torch_ops.host(torch_ops.kth_largest(torch_ops.asarray(block), 7, axis)),
                                  exact_large)
