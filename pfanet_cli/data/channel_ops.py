"""The per-image operations of the VI-ReID augmentations beyond crop and flip, applied in place to a
B×H×W×3 batch on whatever device it is on (the host path and the CUDA path run the same code):

- :func:`greyscale_pixels_`: DEEN's ``RandomGrayscale`` (torchvision on a PIL image, so PIL's integer
  ``convert("L")``), on the uint8 pixels;
- :func:`erase_boxes_`: random erasing (Zhong et al.; CAJ's ``ChannelRandomErasing``), a box filled with the
  reference's constants;
- :func:`mix_channels_`: CAJ's channel operations (a channel copied to all three, or ITU greyscale).

The references run erasing and the channel operations on the tensor *after* ``Normalize(ImageNet mean, std)``,
so the fill values and the channel copies are defined there; these functions work on [-1, 1] images and apply
the same operation expressed in that range (each channel operation is a 3x3 matrix and an offset), so a network
that normalises its input with the ImageNet statistics (``model.input_norm: imagenet``, AGW) sees what the
reference's network sees.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pfanet_cli.modeling.extractor import IMAGENET_MEAN, IMAGENET_STD

ERASE_FILL = (0.4914, 0.4822, 0.4465)
"""The erased box's value per channel in the normalised tensor (Zhong et al.'s and CAJ's default ``mean``)."""
PIL_GREY_WEIGHTS = (19595, 38470, 7471)
"""PIL's ``convert("L")``: ``(R * 19595 + G * 38470 + B * 7471 + 32768) >> 16`` (ITU-R 601-2 in 16-bit fixed point)."""
ITU_GREY = (0.2989, 0.5870, 0.1140)
"""CAJ's ``ChannelAdapGray`` greyscale weights, applied to the normalised channels."""

IDENTITY, COPY_R, COPY_G, COPY_B, GREY = range(5)
"""Channel operation codes of a plan: leave the image, copy channel R / G / B to all three, ITU greyscale."""


def greyscale_pixels_(batch: Tensor, rows: Tensor) -> None:
    """Replace the uint8 B×H×W×3 images selected by the bool vector ``rows`` by PIL's greyscale of them, in all
    three channels (exactly ``Image.convert("L")``; equal channels stay as they are)."""
    for index in torch.nonzero(rows).flatten().tolist():
        image = batch[index].to(torch.int32)
        grey = (image[..., 0] * PIL_GREY_WEIGHTS[0] + image[..., 1] * PIL_GREY_WEIGHTS[1]
                + image[..., 2] * PIL_GREY_WEIGHTS[2] + 32768) >> 16
        batch[index] = grey.to(torch.uint8).unsqueeze(-1)


def _normalisation() -> tuple[Tensor, Tensor]:
    """(a, b) with ``normalised = a * x + b`` per channel for x in [-1, 1]: ((x + 1) / 2 - mean) / std."""
    mean, std = torch.tensor(IMAGENET_MEAN, dtype=torch.float64), torch.tensor(IMAGENET_STD, dtype=torch.float64)
    return 0.5 / std, (0.5 - mean) / std


def erase_fill() -> Tensor:
    """:data:`ERASE_FILL` of the normalised tensor, as the [-1, 1] values that normalise to it (float32, 3)."""
    scale, shift = _normalisation()
    return ((torch.tensor(ERASE_FILL, dtype=torch.float64) - shift) / scale).float()


def erase_boxes_(batch: Tensor, boxes: Tensor, fill: Tensor) -> None:
    """Fill the box (top, left, height, width) of each row of ``boxes`` in the float B×H×W×3 ``batch`` with
    ``fill`` (3 values); rows of height 0 are not erased."""
    fill = fill.to(batch.device, batch.dtype)
    for index, (top, left, height, width) in enumerate(boxes.tolist()):
        if height:
            batch[index, top:top + height, left:left + width] = fill


def _normalised_mixing(code: int) -> Tensor:
    """The 3x3 matrix of a channel operation on the normalised channels (output channel = row)."""
    if code == GREY:
        return torch.tensor(ITU_GREY, dtype=torch.float64).expand(3, 3).clone()
    if code in (COPY_R, COPY_G, COPY_B):
        matrix = torch.zeros(3, 3, dtype=torch.float64)
        matrix[:, code - COPY_R] = 1.0
        return matrix
    return torch.eye(3, dtype=torch.float64)


def channel_operation(code: int) -> tuple[Tensor, Tensor]:
    """The operation ``code`` on [-1, 1] images as (3x3 matrix M, offset o): ``x' = x @ M.T + o`` equals
    normalising, applying the operation to the normalised channels and mapping back."""
    scale, shift = _normalisation()
    mixing = _normalised_mixing(code)
    matrix = mixing * scale[None, :] / scale[:, None]
    offset = (mixing @ shift - shift) / scale
    return matrix.float(), offset.float()


def mix_channels_(batch: Tensor, codes: Tensor) -> None:
    """Apply each row's channel operation (``codes``, one per image) to the float B×H×W×3 ``batch``."""
    operations = {code: channel_operation(code) for code in set(codes.tolist()) if code != IDENTITY}
    for index, code in enumerate(codes.tolist()):
        if code != IDENTITY:
            matrix, offset = operations[code]
            image = batch[index]
            image.copy_(image @ matrix.to(image.device).t() + offset.to(image.device))
