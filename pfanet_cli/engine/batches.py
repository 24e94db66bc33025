"""Training batches: identity-aligned P x K batches of RGB and IR images from a prepared split,
augmented on tensors and moved to the device, and CycleGAN's pool of earlier fakes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pfanet_cli.data.augment import flip_and_crop, gather_uint8, to_unit_range
from pfanet_cli.data.prepared import PreparedSplit
from pfanet_cli.data.sampler import IdentityAlignedSampler


@dataclass
class Batch:
    rgb: torch.Tensor
    ir: torch.Tensor
    labels: torch.Tensor


class BatchSource:
    """Identity-aligned batches from a prepared split, augmented on tensors and moved to ``device``."""

    def __init__(self, split: PreparedSplit, sampler: IdentityAlignedSampler, device: torch.device,
                 flip: bool, pad: int, seed: int, channels_last: bool) -> None:
        self.split, self.sampler, self.device = split, sampler, device
        self.flip, self.pad = flip, pad
        self.generator = torch.Generator().manual_seed(seed)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def next(self) -> Batch:
        rgb_rows, ir_rows = self.sampler.next_batch()
        images = gather_uint8(self.split.images, np.concatenate([rgb_rows, ir_rows]))
        images = flip_and_crop(images, self.generator, self.flip, self.pad)
        images = to_unit_range(images.to(self.device, non_blocking=True))
        images = images.contiguous(memory_format=self.memory_format)
        rgb, ir = images.split(len(rgb_rows))
        labels = torch.from_numpy(self.split.labels[rgb_rows]).to(self.device)
        return Batch(rgb, ir, labels)

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict(), "augment_rng": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.generator.set_state(state["augment_rng"])


class ImagePool:
    """CycleGAN's history of generated images: D sees a mix of current and earlier fakes.

    Uses the global torch RNG (saved in checkpoints), and its contents are part of the state."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand(1).item() < 0.5:
                index = int(torch.randint(0, self.size, (1,)).item())
                out.append(self.images[index].clone())
                self.images[index] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)

    def state_dict(self) -> dict[str, Any]:
        stacked = torch.stack(self.images).cpu() if self.images else torch.empty(0)
        return {"size": self.size, "images": stacked}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.images = [image.to(device) for image in state["images"]] if state["images"].numel() else []
