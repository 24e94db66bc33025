"""The raw-pixel baseline features."""

import numpy as np
import pytest

from pfanet_cli.evaluation import baselines
from pfanet_cli.evaluation.baselines import raw_pixel_features


def test_raw_pixel_features(monkeypatch):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 8, 4, 3), dtype=np.uint8)
    images[3] = 0
    feats = raw_pixel_features(images)
    assert feats.dtype == np.float32 and feats.shape == (7, 96)
    norms = np.linalg.norm(feats, axis=1)
    assert np.allclose(np.delete(norms, 3), 1.0, atol=1e-5) and norms[3] == 0
    expected = images.reshape(7, -1).astype(np.float64)
    expected[[0, 1, 2, 4, 5, 6]] /= np.linalg.norm(expected[[0, 1, 2, 4, 5, 6]], axis=1, keepdims=True)
    assert np.allclose(feats, expected, atol=1e-6)
    monkeypatch.setattr(baselines, "_CHUNK_BYTES", 200)  # two rows a chunk
    assert np.array_equal(raw_pixel_features(images), feats)
    with pytest.raises(ValueError):
        raw_pixel_features(images[..., 0])
