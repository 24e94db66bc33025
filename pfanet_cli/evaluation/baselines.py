"""Learning-free reference features.

``raw_pixel_features`` is the raw-pixel baseline of SPEC §2: every image flattened and L2-normalised,
so that a dot product is the cosine similarity of the pixels. On the synthetic dataset it matches
people well within one modality and near chance across modalities, which is what makes the
synthetic task one that has to be learned.
"""

from __future__ import annotations

import numpy as np

_CHUNK_BYTES = 64 * 1024 * 1024
"""Upper bound on the float32 working set of one chunk."""


def raw_pixel_features(images: np.ndarray) -> np.ndarray:
    """uint8 ``N x H x W x 3`` images -> float32 ``N x (H*W*3)`` rows of unit L2 norm.

    Works chunk by chunk, so a memory-mapped image array is never converted to float all at once.
    An all-black image (zero norm) gives a zero row rather than NaNs.
    """
    images = np.asarray(images) if not isinstance(images, np.ndarray) else images
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected images of shape N x H x W x 3, got {images.shape}")
    n = images.shape[0]
    dim = int(np.prod(images.shape[1:]))
    out = np.empty((n, dim), dtype=np.float32)
    chunk = max(1, _CHUNK_BYTES // max(1, dim * 4))
    for start in range(0, n, chunk):
        block = np.asarray(images[start : start + chunk]).reshape(-1, dim).astype(np.float32)
        norms = np.sqrt(np.einsum("ij,ij->i", block, block, dtype=np.float64)).astype(np.float32)
        norms[norms == 0] = 1.0
        block /= norms[:, None]
        out[start : start + len(block)] = block
    return out
