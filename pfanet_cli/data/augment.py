"""Batched image handling on tensors: gather rows of a prepared array, flip and pad + crop in one
indexing operation, and convert between uint8 and the [-1, 1] range the networks use."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def gather_uint8(images: np.ndarray, rows: np.ndarray) -> torch.Tensor:
    """Rows of an N×H×W×3 uint8 (memory-mapped) array as a B×3×H×W uint8 tensor."""
    order = np.argsort(rows, kind="stable")
    batch = np.empty((len(rows),) + images.shape[1:], dtype=np.uint8)
    batch[order] = images[np.asarray(rows)[order]]
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()


def flip_and_crop(batch: torch.Tensor, generator: torch.Generator, flip: bool = True, pad: int = 0) -> torch.Tensor:
    """Random horizontal flip and zero-pad + random crop per sample, done as one gather."""
    size, _, height, width = batch.shape
    if pad:
        batch = F.pad(batch, (pad, pad, pad, pad))
    top = torch.randint(0, 2 * pad + 1, (size,), generator=generator)
    left = torch.randint(0, 2 * pad + 1, (size,), generator=generator)
    rows = top[:, None] + torch.arange(height)[None, :]
    cols = left[:, None] + torch.arange(width)[None, :]
    if flip:
        flipped = torch.rand(size, generator=generator) < 0.5
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    samples = torch.arange(size)[:, None, None]
    out = batch.permute(0, 2, 3, 1)[samples, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def to_unit_range(batch: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return batch.float().div_(127.5).sub_(1.0)


def to_uint8(batch: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] (rounded, clamped)."""
    return batch.detach().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)
