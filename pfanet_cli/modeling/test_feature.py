"""The SPEC §3 test feature as one module, and how the networks are put in test mode.

``extract`` (``evaluation/extract.py``), validation and the ONNX export (``inference/export.py``) all call
:func:`set_test_mode`, and ``translate`` calls :func:`set_generator_test_mode`, so how G_I normalises at test
time is decided in one place: eval mode, F's BatchNorm layers on their running statistics, and G's InstanceNorm
layers as the checkpoint's ``model.generator_test_norm`` built them (``running`` statistics or each image's own,
``modeling/gan.py``) unless ``--generator-norm`` overrides it.

:class:`TestFeature` is the computation ``extract`` does for one modality, from pixels to feature: pixels in
[0, 255] scaled to [-1, 1] as ``data.augment.to_unit_range`` does, G_I for the RGB path, then F (which applies its
own input normalisation, ``model.input_norm``), v(image) + v(horizontal flip), L2-normalised.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pfanet_cli.data.augment import UNIT_SCALE
from pfanet_cli.modeling.extractor import FeatureExtractor, flip_summed_features
from pfanet_cli.modeling.gan import set_generator_test_norm


def set_generator_test_mode(generator: nn.Module, generator_norm: str | None = None) -> None:
    """G_I in eval mode, its InstanceNorm as ``generator_norm`` says (``running`` or ``instance``) when given,
    else as it was built (the checkpoint's ``model.generator_test_norm``)."""
    if generator_norm is not None:
        set_generator_test_norm(generator, generator_norm)
    generator.eval()


def set_test_mode(extractor: nn.Module, generator: nn.Module | None = None, generator_norm: str | None = None) -> None:
    """F and G_I as the test feature uses them: eval mode (F's BatchNorm on its running statistics, dropout
    off), G_I as :func:`set_generator_test_mode` puts it."""
    extractor.eval()
    if generator is not None:
        set_generator_test_mode(generator, generator_norm)


class TestFeature(nn.Module):
    """Pixels (float N×3×H×W, RGB, 0..255) -> the test feature (N×D, L2-normalised). With ``generator`` the
    RGB path (G_I, then F), without it the IR path (F alone). Built in test mode; ``eval()`` puts the networks
    in test mode through :func:`set_test_mode`."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, extractor: FeatureExtractor, generator: nn.Module | None = None) -> None:
        super().__init__()
        self.extractor = extractor
        self.generator = generator
        self.eval()

    def train(self, mode: bool = True) -> "TestFeature":
        super().train(mode)
        if not mode:
            set_test_mode(self.extractor, self.generator)
        return self

    def forward(self, pixels: Tensor) -> Tensor:
        x = pixels / UNIT_SCALE - 1.0
        if self.generator is not None:
            x = self.generator(x)
        return flip_summed_features(self.extractor, x)


def pixel_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 N×H×W×3 (as decoded) -> float N×3×H×W in 0..255, the input :class:`TestFeature` and the exported
    graphs take."""
    return images.permute(0, 3, 1, 2).float()
