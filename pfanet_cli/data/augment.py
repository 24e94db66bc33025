"""Batched image handling: gather rows of a prepared N×H×W×3 uint8 array, flip and pad + crop them,
optionally greyscale, erase and mix their channels (:class:`Augmentation`), and convert between uint8
and the [-1, 1] range the networks use.

A batch's random draws are made first, as a :class:`CropPlan` (flips and crop offsets) inside an
:class:`AugmentPlan` (greyscale flags, erased boxes, channel operations), from the batch source's CPU
generator; either implementation then applies the same plan, so a batch does not depend on where it was
augmented:

- :func:`augment_on_host` (the CPU device): reads each crop window straight from the (memory-mapped) array
  with numpy and converts it to float, single-threaded and without torch's large-allocation page faults, so
  it runs well beside training on a background thread;
- :func:`gather_rows` + :func:`augment_on_device` (an accelerator): only the uint8 rows are gathered on the
  host; the crop and flip are one indexed gather on the device, then the same operations.

The operations beyond crop and flip are in :mod:`pfanet_cli.data.channel_ops`; both paths call them.

Images stay N×H×W×3 (channels last) until the end, so ``permute(0, 3, 1, 2)`` gives an N×3×H×W
tensor in the channels-last memory format without a copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from pfanet_cli.config import DataConfig
from pfanet_cli.data.channel_ops import (
    COPY_R,
    GREY,
    IDENTITY,
    erase_boxes_,
    erase_fill,
    greyscale_pixels_,
    mix_channels_,
)

ERASE_AREA = (0.02, 0.4)
"""Random erasing: the box's area as a fraction of the image's, uniform in this range (Zhong et al.'s sl, sh)."""
ERASE_ASPECT = 0.3
"""Random erasing: the box's height / width, uniform in [0.3, 1 / 0.3] (Zhong et al.'s r1)."""
ERASE_ATTEMPTS = 100
"""Random erasing: boxes drawn until one fits inside the image (both sides strictly smaller), as the reference."""
ADAPTIVE_GREY_P = 0.5
"""CAJ's ChannelAdapGray(probability=0.5): its fourth case is greyscale with this probability, else nothing."""

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


def crop_rows(images: np.ndarray, rows: np.ndarray, plan: CropPlan, pad: int) -> np.ndarray:
    """Rows of an N×H×W×3 uint8 array, padded with ``pad`` zeros, cropped and flipped by ``plan``: a B×H×W×3
    uint8 array."""
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
    return crops


def uint8_to_unit_range(crops: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1] with numpy, without torch's large-allocation page faults."""
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


@dataclass(frozen=True)
class Augmentation:
    """What a batch source does beyond flip and pad + crop (the recipe's ``data`` keys of the same names)."""

    erasing: float = 0.0
    grayscale: float = 0.0
    channel_exchange: float = 0.0
    ir_adaptive_gray: bool = False
    rgb_views: int = 1

    @classmethod
    def from_config(cls, data: DataConfig) -> "Augmentation":
        return cls(data.erasing, data.grayscale, data.channel_exchange, data.ir_adaptive_gray, data.rgb_views)

    @property
    def changes_channels(self) -> bool:
        return self.channel_exchange > 0 or self.ir_adaptive_gray


NONE = Augmentation()
"""Flip and pad + crop only (the draws of a batch are exactly those of the code before :class:`Augmentation`)."""


class AugmentPlan(NamedTuple):
    """Every random draw of a batch, rows in the batch's order (RGB, IR, then the second RGB views): the crop
    plan and, for the augmentations in force, greyscale flags, erased boxes (top, left, height, width; height 0:
    none) and channel operation codes (:mod:`pfanet_cli.data.channel_ops`). Only ``crop`` ever goes to a device."""

    crop: CropPlan
    grey: torch.Tensor | None = None
    erase: torch.Tensor | None = None
    channel: torch.Tensor | None = None


def draw_augment_plan(rgb_count: int, ir_count: int, image_size: tuple[int, int], generator: torch.Generator,
                      flip: bool, pad: int, augmentation: Augmentation = NONE) -> AugmentPlan:
    """The draws of one batch of ``rgb_count`` RGB and ``ir_count`` IR images (and ``rgb_count`` second RGB views
    when ``augmentation.rgb_views`` is 2), in a fixed order: crops and flips, greyscale, erasing, channels. An
    augmentation that is off draws nothing, so with :data:`NONE` the generator moves exactly as before."""
    total = rgb_count * augmentation.rgb_views + ir_count
    crop = draw_crop_plan(total, generator, flip, pad)
    grey = torch.rand(total, generator=generator) < augmentation.grayscale if augmentation.grayscale > 0 else None
    erase = _draw_erase_boxes(total, image_size, augmentation.erasing, generator) if augmentation.erasing > 0 else None
    channel = None
    if augmentation.changes_channels:
        channel = _draw_channel_operations(rgb_count, ir_count, augmentation, generator)
    return AugmentPlan(crop, grey, erase, channel)


def _draw_erase_boxes(count: int, image_size: tuple[int, int], probability: float,
                      generator: torch.Generator) -> torch.Tensor:
    """Zhong et al.'s draw per image: erase with ``probability``; then up to :data:`ERASE_ATTEMPTS` (area, aspect)
    pairs until the box ``h = round(sqrt(area * aspect))``, ``w = round(sqrt(area / aspect))`` is smaller than the
    image on both sides (none fits: not erased); its corner uniform over the positions that keep it inside."""
    height, width = image_size
    erased = torch.rand(count, generator=generator) < probability
    shape = (count, ERASE_ATTEMPTS)
    area = torch.empty(shape, dtype=torch.float64).uniform_(*ERASE_AREA, generator=generator) * (height * width)
    aspect = torch.empty(shape, dtype=torch.float64).uniform_(ERASE_ASPECT, 1 / ERASE_ASPECT, generator=generator)
    heights, widths = (area * aspect).sqrt().round().long(), (area / aspect).sqrt().round().long()
    fits = (heights < height) & (widths < width)
    first = fits.long().argmax(dim=1, keepdim=True)
    box_h, box_w = heights.gather(1, first)[:, 0], widths.gather(1, first)[:, 0]
    erased &= fits.any(dim=1)
    top = (torch.rand(count, generator=generator, dtype=torch.float64) * (height - box_h + 1)).floor().long()
    left = (torch.rand(count, generator=generator, dtype=torch.float64) * (width - box_w + 1)).floor().long()
    box = torch.stack([top, left, box_h, box_w], dim=1)
    return torch.where(erased[:, None], box, torch.zeros_like(box))


def _draw_channel_operations(rgb_count: int, ir_count: int, augmentation: Augmentation,
                             generator: torch.Generator) -> torch.Tensor:
    """Per row: CAJ's ChannelExchange(gray=2) with probability ``channel_exchange`` on the RGB view it concerns
    (the only view, or the second of two), one channel copied to all three; ChannelAdapGray(0.5) on IR images:
    copy R, G or B (1/4 each), else greyscale with probability 1/2."""
    views = augmentation.rgb_views
    codes = torch.full((rgb_count * views + ir_count,), IDENTITY, dtype=torch.int64)
    if augmentation.channel_exchange > 0:
        start = 0 if views == 1 else rgb_count + ir_count
        exchanged = torch.rand(rgb_count, generator=generator) < augmentation.channel_exchange
        channel = torch.randint(0, 3, (rgb_count,), generator=generator)
        codes[start:start + rgb_count] = torch.where(exchanged, COPY_R + channel, IDENTITY)
    if augmentation.ir_adaptive_gray:
        case = torch.randint(0, 4, (ir_count,), generator=generator)
        grey = torch.rand(ir_count, generator=generator) < ADAPTIVE_GREY_P
        codes[rgb_count:rgb_count + ir_count] = torch.where(
            case < 3, COPY_R + case, torch.where(grey, torch.full_like(case, GREY), IDENTITY))
    return codes


def _finish(batch: torch.Tensor, plan: AugmentPlan) -> None:
    """The operations on the float [-1, 1] batch, in the references' order: erasing, then channels."""
    if plan.erase is not None:
        erase_boxes_(batch, plan.erase, erase_fill())
    if plan.channel is not None:
        mix_channels_(batch, plan.channel)


def augment_on_host(images: np.ndarray, rows: np.ndarray, plan: AugmentPlan, pad: int) -> np.ndarray:
    """The batch of ``plan`` on the CPU, straight from the (memory-mapped) array: a B×H×W×3 float32 array."""
    crops = crop_rows(images, rows, plan.crop, pad)
    if plan.grey is not None:
        greyscale_pixels_(torch.from_numpy(crops), plan.grey)
    unit = uint8_to_unit_range(crops)
    _finish(torch.from_numpy(unit), plan)
    return unit


def augment_on_device(batch: torch.Tensor, plan: AugmentPlan, pad: int) -> torch.Tensor:
    """The batch of ``plan`` from a gathered uint8 B×H×W×3 batch on its device; ``plan.crop`` must be there too."""
    crops = crop_and_flip(batch, plan.crop, pad)
    if plan.grey is not None:
        greyscale_pixels_(crops, plan.grey)
    unit = to_unit_range(crops)
    _finish(unit, plan)
    return unit
