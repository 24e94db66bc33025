"""Batched image handling: gather rows of a prepared N×H×W×3 uint8 array, flip and pad + crop them,
and convert between uint8 and the [-1, 1] range the networks use.

A batch's random flips and crop offsets are drawn first, as a :class:`CropPlan`, from a CPU
generator; either implementation then applies the same plan, so a batch does not depend on where it
was augmented:

- :func:`crop_rows_to_unit_range` (the CPU device): reads each crop window straight from the
  (memory-mapped) array with numpy and converts it to float, single-threaded and without torch's
  large-allocation page faults, so it runs well beside training on a background thread;
- :func:`gather_rows` + :func:`crop_and_flip` (an accelerator): only the uint8 rows are gathered on the
  host; the crop and flip are one indexed gather on the device, followed by :func:`to_unit_range`.

Images stay N×H×W×3 (channels last) until the end, so ``permute(0, 3, 1, 2)`` gives an N×3×H×W
tensor in the channels-last memory format without a copy.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

UNIT_SCALE = 127.5
"""uint8 -> [-1, 1]: ``x / 127.5 - 1`` (float32)."""


class CropPlan(NamedTuple):
    """Per sample of a batch: crop offsets into the zero-padded image and whether to flip."""

    top: torch.Tensor
    left: torch.Tensor
    flipped: torch.Tensor

    def to(self, device: torch.device) -> "CropPlan":
        return CropPlan(*(t.to(device, non_blocking=True) for t in self))


def draw_crop_plan(size: int, generator: torch.Generator, flip: bool = True, pad: int = 0) -> CropPlan:
    """Random horizontal flips and pad + crop offsets for ``size`` samples, drawn from ``generator``.

    The draws (top offsets, left offsets, then flips when ``flip``) are the same as before the input
    pipeline was made asynchronous, so checkpoints written then resume into the same batches."""
    top = torch.randint(0, 2 * pad + 1, (size,), generator=generator)
    left = torch.randint(0, 2 * pad + 1, (size,), generator=generator)
    flipped = torch.rand(size, generator=generator) < 0.5 if flip else torch.zeros(size, dtype=torch.bool)
    return CropPlan(top, left, flipped)


def _visible_span(offset: int, length: int) -> tuple[int, int]:
    """The source range [start, stop) a crop shifted by ``offset`` (offset into the padded image minus
    the padding) sees of an axis of ``length``."""
    return max(0, offset), min(length, length + offset)


def _as_pixels(image: np.ndarray) -> np.ndarray:
    """An H×W×C uint8 image viewed as H×W items of C bytes, so that reversing a row copies whole pixels
    (about 4x faster than reversing with a 3-byte stride)."""
    return image.view(f"V{image.shape[-1]}")[..., 0]


def crop_rows_to_unit_range(images: np.ndarray, rows: np.ndarray, plan: CropPlan, pad: int) -> np.ndarray:
    """Rows of an N×H×W×3 uint8 array, padded with ``pad`` zeros, cropped and flipped by ``plan`` and
    scaled to [-1, 1]: a B×H×W×3 float32 array (padding becomes -1)."""
    height, width = images.shape[1:3]
    crops = np.zeros((len(rows),) + images.shape[1:], dtype=np.uint8)
    for i, (row, top, left, flipped) in enumerate(zip(np.asarray(rows).tolist(), plan.top.tolist(),
                                                      plan.left.tolist(), plan.flipped.tolist())):
        dy, dx = top - pad, left - pad
        y0, y1 = _visible_span(dy, height)
        x0, x1 = _visible_span(dx, width)
        if y0 >= y1 or x0 >= x1:
            continue  # the crop is all padding
        if flipped:
            _as_pixels(crops[i])[y0 - dy:y1 - dy, width - (x1 - dx):width - (x0 - dx)] = \
                _as_pixels(images[row])[y0:y1, x0:x1][:, ::-1]
        else:
            crops[i, y0 - dy:y1 - dy, x0 - dx:x1 - dx] = images[row, y0:y1, x0:x1]
    unit = np.empty(crops.shape, dtype=np.float32)
    np.divide(crops, np.float32(UNIT_SCALE), out=unit, dtype=np.float32)
    np.subtract(unit, np.float32(1.0), out=unit)
    return unit


def gather_rows(images: np.ndarray, rows: np.ndarray, pin_memory: bool = False) -> torch.Tensor:
    """Rows of an N×H×W×3 uint8 (memory-mapped) array as a B×H×W×3 uint8 tensor, in page-locked
    memory when ``pin_memory`` (so the copy to a GPU can run asynchronously)."""
    batch = torch.empty((len(rows),) + images.shape[1:], dtype=torch.uint8, pin_memory=pin_memory)
    target = batch.numpy()
    for i, row in enumerate(np.asarray(rows).tolist()):
        target[i] = images[row]
    return batch


def crop_and_flip(batch: torch.Tensor, plan: CropPlan, pad: int) -> torch.Tensor:
    """Pad + crop and flip a B×H×W×3 batch (any dtype, any device) by ``plan`` in one indexed gather;
    pixels from the padding are 0. ``plan`` must be on the batch's device."""
    size, height, width, channels = batch.shape
    device = batch.device
    rows = plan.top[:, None] - pad + torch.arange(height, device=device)[None, :]
    cols = plan.left[:, None] - pad + torch.arange(width, device=device)[None, :]
    cols = torch.where(plan.flipped[:, None], cols.flip(1), cols)
    inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
    samples = torch.arange(size, device=device)[:, None, None]
    pixel = (samples * height + rows.clamp(0, height - 1)[:, :, None]) * width + cols.clamp(0, width - 1)[:, None, :]
    out = batch.reshape(-1, channels).index_select(0, pixel.reshape(-1)).reshape(batch.shape)
    return out * inside[..., None].to(out.dtype)


def defer_crop(plan: CropPlan, count: int, pad: int) -> tuple[CropPlan, CropPlan]:
    """Split ``plan`` for a batch whose first ``count`` samples are augmented later (``joint.f_step_translate:
    before_pad``: RGB images are translated first). Returns the plan to apply now, in which those samples are
    left as they are (no shift, no flip), and their own plan, to apply to what they become."""
    keep = torch.full((count,), pad, dtype=plan.top.dtype)
    now = CropPlan(torch.cat([keep, plan.top[count:]]), torch.cat([keep, plan.left[count:]]),
                   torch.cat([torch.zeros(count, dtype=torch.bool), plan.flipped[count:]]))
    return now, CropPlan(plan.top[:count], plan.left[:count], plan.flipped[:count])


def crop_and_flip_unit_range(batch: torch.Tensor, plan: CropPlan, pad: int) -> torch.Tensor:
    """Pad + crop and flip an N×3×H×W batch in [-1, 1] (e.g. G_I's output) by ``plan``; the padding is -1, what
    a zero uint8 pixel becomes, so the result is what :func:`crop_and_flip` gives for the same images in uint8."""
    nhwc = batch.permute(0, 2, 3, 1) + 1.0
    return (crop_and_flip(nhwc, plan.to(batch.device), pad) - 1.0).permute(0, 3, 1, 2)


def to_unit_range(batch: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return batch.float().div_(UNIT_SCALE).sub_(1.0)


def to_uint8(batch: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] (rounded, clamped)."""
    return batch.detach().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)
