"""Top-k search: exact search against numpy, in any block size, with the same-camera rule; FAISS's IVF index
visiting every list equals exact search; and which backend ``auto`` picks."""

from __future__ import annotations

import numpy as np
import pytest

from pfanet_cli.errors import UsageError
from pfanet_cli.inference import extras, topk
from pfanet_cli.inference.topk import FaissIndex, choose_backend, exact_top_k
from tests.inference.conftest import needs_faiss


def unit_vectors(count: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def numpy_top_k(query, gallery, k, cameras=None):
    similarity = query.astype(np.float64) @ gallery.T.astype(np.float64)
    if cameras is not None:
        similarity[cameras[0][:, None] == cameras[1][None, :]] = -np.inf
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(similarity, order, axis=1)


@pytest.mark.parametrize("block_bytes", [topk.BLOCK_BYTES, 4 * 300 * 3])
def test_exact_top_k_equals_numpy_in_any_block_size(monkeypatch, block_bytes):
    monkeypatch.setattr(topk, "BLOCK_BYTES", block_bytes)
    query, gallery = unit_vectors(23, 16, 0), unit_vectors(300, 16, 1)
    indices, scores = exact_top_k(query, gallery, 7)
    expected, expected_scores = numpy_top_k(query, gallery, 7)
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-6)
    cameras = (np.arange(23) % 3, np.arange(300) % 3)
    indices, scores = exact_top_k(query, gallery, 7, cameras=cameras)
    expected, expected_scores = numpy_top_k(query, gallery, 7, cameras)
    np.testing.assert_array_equal(indices, expected)
    assert (cameras[1][indices] != cameras[0][:, None]).all()


def test_fewer_allowed_gallery_images_than_k_are_padded_with_minus_one():
    query, gallery = unit_vectors(2, 8, 2), unit_vectors(5, 8, 3)
    indices, scores = exact_top_k(query, gallery, 10, cameras=(np.array([0, 1]), np.array([0, 0, 0, 1, 1])))
    assert indices.shape == (2, 5)
    assert sorted(indices[0][indices[0] >= 0]) == [3, 4] and (indices[0][2:] == -1).all()
    assert sorted(indices[1][indices[1] >= 0]) == [0, 1, 2] and np.isneginf(scores[1][3:]).all()


def test_auto_picks_faiss_only_for_large_searches_when_installed(monkeypatch):
    assert choose_backend("auto", 10_000, 10_000) == "exact"
    large = (topk.FAISS_MIN_GALLERY, topk.FAISS_MIN_QUERIES)
    monkeypatch.setattr(extras, "installed", lambda module: True)
    monkeypatch.setattr(topk, "installed", lambda module: True)
    assert choose_backend("auto", *large) == "faiss"
    assert choose_backend("auto", large[0], large[1] - 1) == "exact"
    assert choose_backend("exact", *large) == "exact"
    monkeypatch.setattr(topk, "installed", lambda module: False)
    assert choose_backend("auto", *large) == "exact"
    with pytest.raises(UsageError, match="--backend must be one of auto, exact, faiss"):
        choose_backend("hnsw", 1, 1)


@needs_faiss
def test_faiss_visiting_every_list_equals_exact_search():
    query, gallery = unit_vectors(40, 32, 4), unit_vectors(2_000, 32, 5)
    index = FaissIndex(gallery)
    assert index.nlist == 44 and index.nprobe == 3 and "IVF-Flat" in index.describe()
    index.nprobe = index.nlist
    expected, expected_scores = numpy_top_k(query, gallery, 10)
    indices, scores = index.search(query, 10)
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    cameras = (np.arange(40) % 4, np.arange(2_000) % 4)
    indices, _ = index.search(query, 10, cameras)
    np.testing.assert_array_equal(indices, numpy_top_k(query, gallery, 10, cameras)[0])
    index.nprobe = 3
    approximate, _ = index.search(query, 10)
    recall = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(approximate, expected)])
    assert 0 < recall <= 1
