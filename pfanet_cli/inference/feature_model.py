"""Feature models: what turns decoded images into test features, from a checkpoint (PyTorch) or from an ONNX
export (onnxruntime, ``onnx_model.py``), behind one interface that ``extract``, ``search`` and the export's parity
check share. :func:`compute_features` is the PyTorch computation ``extract`` has always done."""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pfanet_cli.data.augment import to_unit_range
from pfanet_cli.engine.checkpoint import load_checkpoint, rebuild_networks
from pfanet_cli.errors import UsageError
from pfanet_cli.evaluation.card import extraction_provenance
from pfanet_cli.modeling.build import AGW, EXTRACTOR, GENERATOR_RGB2IR
from pfanet_cli.modeling.gan import generator_test_norm
from pfanet_cli.modeling.test_feature import set_test_mode
from pfanet_cli.utils.digest import file_sha256

Progress = Callable[[int, int], None]


@torch.inference_mode()
def compute_features(extractor: nn.Module, generator: nn.Module | None, images: np.ndarray, is_rgb: np.ndarray,
                     model_size: tuple[int, int], batch_size: int = 64, device: str | torch.device = "cpu",
                     on_progress: Progress | None = None) -> np.ndarray:
    """Features (float32 N×D) of ``images`` (N×H×W×3 uint8, may be memory-mapped): the network's
    ``test_features`` (PFANet's F or AGW's network; AGW sends the rows marked ``is_rgb`` through its
    visible stem).

    Rows marked ``is_rgb`` pass through ``generator`` first when one is given. Images of another
    size than the model's are resized (bilinear, antialiased) on the fly.
    """
    set_test_mode(extractor, generator)
    chunks = []
    for start in range(0, len(images), batch_size):
        rows = slice(start, start + batch_size)
        batch = torch.from_numpy(np.array(images[rows])).permute(0, 3, 1, 2).to(device)
        batch = to_unit_range(batch)
        if tuple(batch.shape[2:]) != tuple(model_size):
            batch = F.interpolate(batch, size=model_size, mode="bilinear", antialias=True, align_corners=False)
        rgb = torch.from_numpy(np.asarray(is_rgb[rows], dtype=bool)).to(device)
        if generator is not None and bool(rgb.any()):
            batch[rgb] = generator(batch[rgb])
        batch = batch.contiguous(memory_format=torch.channels_last)  # oneDNN: F runs ~1.5x faster on CPU
        chunks.append(extractor.test_features(batch, rgb).cpu().numpy().astype(np.float32))
        if on_progress:
            on_progress(min(batch_size, len(images) - start), len(images))
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


class FeatureModel(ABC):
    """A trained model that computes the SPEC §3 test feature of decoded images."""

    image_size: tuple[int, int]
    """(height, width) the model takes; other sizes are resized."""
    translate: bool
    """RGB images go through G_I first (the RGB path); off: every image goes through F alone."""

    @abstractmethod
    def features(self, images: np.ndarray, is_rgb: np.ndarray, batch_size: int = 64,
                 on_progress: Progress | None = None) -> np.ndarray:
        """Float32 N×D features of uint8 N×H×W×3 ``images``; ``is_rgb`` marks the RGB rows."""

    @abstractmethod
    def provenance(self, split: str | None = None) -> dict[str, Any]:
        """The source half of the protocol card for features this model computed (``card.py``)."""

    @property
    @abstractmethod
    def has_rgb_path(self) -> bool:
        """The model holds G_I (RGB images can be translated)."""

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """What identifies the weights (a content hash): features cached with another fingerprint are stale."""

    @property
    @abstractmethod
    def description(self) -> str:
        """One line for the screen: the checkpoint or export."""


def load_feature_networks(checkpoint: Path, translate: bool, feature: str | None = None, purpose: str = "extract",
                          require_rgb: bool = True,
                          generator_norm: str | None = None) -> tuple[nn.Module, nn.Module | None, dict]:
    """The feature network of a checkpoint in test mode (:func:`set_test_mode`), with G_I when RGB images are to be
    translated (PFANet's F), or AGW's network set to its recipe's test feature (``feature``, ``fc`` or ``pool``,
    overrides it); and the checkpoint's payload. ``require_rgb`` off: a PFANet checkpoint without G_I gives no
    generator instead of an error (exit 4). ``generator_norm`` overrides the checkpoint's
    ``model.generator_test_norm`` for G_I's InstanceNorm."""
    payload = load_checkpoint(checkpoint)
    if payload.get("stage") == "train-agw":
        if generator_norm is not None:
            raise UsageError(f"--generator-norm {generator_norm}: {checkpoint} is AGW's (train-agw), which has no "
                             "generator; RGB images go through its visible stem")
        net = rebuild_networks(payload, Path(checkpoint), [AGW], purpose)[AGW]
        options = (payload.get("recipe") or {}).get("agw") or {}
        net.configure_test(feature or options.get("test_feature", "fc"), bool(options.get("test_flip", False)))
        return net, None, payload
    if feature not in (None, "pool"):
        raise UsageError(f"--feature {feature}: {checkpoint} is PFANet's ({payload.get('stage')}), whose test feature "
                         "is F's pooled vector v (pool); fc is AGW's BN-neck")
    keys = [EXTRACTOR]
    if translate and (require_rgb or GENERATOR_RGB2IR in payload.get("networks", {})):
        keys.append(GENERATOR_RGB2IR)
    networks = rebuild_networks(payload, Path(checkpoint), keys, purpose)
    set_test_mode(networks[EXTRACTOR], networks.get(GENERATOR_RGB2IR), generator_norm)
    return networks[EXTRACTOR], networks.get(GENERATOR_RGB2IR), payload


class CheckpointModel(FeatureModel):
    """A checkpoint run with PyTorch on ``device``: PFANet's F (and G_I for the RGB path) of a train-joint
    checkpoint, or AGW's two-stream network of a train-agw one (RGB through its visible stem)."""

    def __init__(self, checkpoint: Path, translate: bool = True, device: str = "cpu",
                 purpose: str = "extract", require_rgb: bool = True, feature: str | None = None,
                 generator_norm: str | None = None) -> None:
        """``require_rgb``: a PFANet checkpoint without G_I is an error (exit 4) when ``translate`` is on;
        otherwise the model has no RGB path (:attr:`has_rgb_path`) and the caller decides. ``feature``: AGW's
        test vector instead of its recipe's. ``generator_norm``: G_I's test-time InstanceNorm instead of the
        checkpoint's ``model.generator_test_norm``."""
        self.checkpoint = Path(checkpoint)
        self.extractor, self.generator, self.payload = load_feature_networks(self.checkpoint, translate, feature,
                                                                             purpose, require_rgb, generator_norm)
        self.device = device
        self.extractor.to(device)
        if self.generator is not None:
            self.generator.to(device)
        self.translate = translate
        self.image_size = tuple(int(v) for v in self.payload["image_size"])

    @property
    def is_agw(self) -> bool:
        return self.payload.get("stage") == "train-agw"

    @property
    def has_rgb_path(self) -> bool:
        return self.generator is not None or self.is_agw

    def features(self, images: np.ndarray, is_rgb: np.ndarray, batch_size: int = 64,
                 on_progress: Progress | None = None) -> np.ndarray:
        return compute_features(self.extractor, self.generator, images, is_rgb, self.image_size, batch_size,
                                self.device, on_progress)

    @property
    def generator_norm(self) -> str | None:
        """What G_I's InstanceNorm uses at test time (``running`` or ``instance``); None without G_I or when it has
        no InstanceNorm (the grey G_I)."""
        return generator_test_norm(self.generator)

    def provenance(self, split: str | None = None) -> dict[str, Any]:
        """The card's source half (AGW's: with the test vector and flip it used; PFANet's: with G_I's test-time
        InstanceNorm)."""
        agw = (self.extractor.test_vector, self.extractor.test_flip) if self.is_agw else None
        return extraction_provenance(str(self.checkpoint), self.payload, self.translate and agw is None, split,
                                     agw_test=agw, generator_norm=self.generator_norm or "running")

    @cached_property
    def sha256(self) -> str:
        """The checkpoint file's SHA-256 (hashed once: the fingerprint, an export's model.json and its run-log
        lookup all use it)."""
        return file_sha256(self.checkpoint)

    @cached_property
    def fingerprint(self) -> str:
        agw = f" ({self.extractor.test_vector}, flip {self.extractor.test_flip})" if self.is_agw else ""
        norm = f" (G_I test norm {self.generator_norm})" if self.generator_norm is not None else ""
        return f"checkpoint sha256 {self.sha256}{agw}{norm}"

    @property
    def description(self) -> str:
        return f"checkpoint {self.checkpoint}"
