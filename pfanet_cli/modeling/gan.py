"""The GAN part of PFANet (SPEC §3): the AlignGAN generators G_I / G_R, the plain PatchGAN
discriminator (D_R, and D_I in train-gan) and the joint image–feature discriminator D_I (train-joint),
with their N(0, 0.02) initialisation.

Written ``torch.compile``-agnostic (no data-dependent Python control flow) and channels-last friendly;
``docs/model.md`` explains every choice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pfanet_cli.errors import UsageError


def init_gan_weights(module: nn.Module) -> None:
    """N(0, 0.02) for conv / transposed conv / linear weights, zero biases; affine norm weights N(1, 0.02),
    norm biases zero (pix2pix/CycleGAN/AlignGAN convention; SPEC §3 for G and D)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
            if getattr(m, "weight", None) is not None:
                nn.init.normal_(m.weight, 1.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)


GENERATOR_TEST_NORMS = ("running", "instance")
"""What G's InstanceNorm uses in eval mode (``model.generator_test_norm``)."""


class GeneratorNorm(nn.InstanceNorm2d):
    """G's InstanceNorm: affine, with running statistics (AlignGAN, SPEC §3). In train mode it normalises each
    image by its own statistics and updates the running averages; in eval mode it uses the running averages
    (``test_norm = "running"``, PyTorch's behaviour) or, with ``test_norm = "instance"``, each image's own
    statistics again, without touching the running averages. Either way an image's output does not depend on
    the rest of its batch."""

    test_norm = "running"

    def __init__(self, channels: int) -> None:
        super().__init__(channels, affine=True, track_running_stats=True)

    def forward(self, x: Tensor) -> Tensor:
        if self.training or self.test_norm == "running":
            return super().forward(x)
        return F.instance_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


def set_generator_test_norm(generator: nn.Module, test_norm: str) -> None:
    """Make every :class:`GeneratorNorm` of ``generator`` use ``test_norm`` in eval mode."""
    if test_norm not in GENERATOR_TEST_NORMS:
        raise UsageError(f"G's test-time norm (--generator-norm, model.generator_test_norm) must be one of "
                         f"{', '.join(GENERATOR_TEST_NORMS)}, got {test_norm!r}")
    for module in generator.modules():
        if isinstance(module, GeneratorNorm):
            module.test_norm = test_norm


def generator_test_norm(generator: nn.Module | None) -> str | None:
    """What ``generator``'s InstanceNorms use in eval mode; None when there is no generator or it has no
    InstanceNorm (the grey G_I of ``model.pixel_alignment: grey``)."""
    if generator is None:
        return None
    return next((module.test_norm for module in generator.modules() if isinstance(module, GeneratorNorm)), None)


def _instance_norm(channels: int) -> nn.InstanceNorm2d:
    return GeneratorNorm(channels)


class _GeneratorResidualBlock(nn.Module):
    """conv3x3-IN-ReLU-conv3x3-IN plus the skip (no activation after the add)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            _instance_norm(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            _instance_norm(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class GreyGenerator(nn.Module):
    """G_I of ``model.pixel_alignment: grey``, the ablation without the GAN: an RGB image in [-1, 1] becomes its
    luma (ITU-R BT.601 weights 0.299, 0.587, 0.114, which sum to 1, so [-1, 1] stays [-1, 1]) in all three
    channels, as an IR camera's images are stored. Fixed: no parameters, nothing to train, an empty state dict."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("weights", torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grey = (x * self.weights.to(x.dtype)).sum(dim=1, keepdim=True)
        return grey.repeat(1, 3, 1, 1)


class ResnetGenerator(nn.Module):
    """G_I (RGB→IR) or G_R (IR→RGB): conv7x7 (C) → two stride-2 4x4 convs (2C, 4C) → residual blocks at 4C →
    two stride-2 4x4 transposed convs (2C, C) → conv7x7 → 3, tanh. Images in [-1, 1]; the output has exactly the
    input's H×W whenever H and W are multiples of 4 (the toolkit uses multiples of 16).

    ``test_norm`` (``model.generator_test_norm``) says what its InstanceNorms use in eval mode
    (:class:`GeneratorNorm`).

    ``input_skip`` (``model.generator_skip``, not in AlignGAN) adds a 1x1 convolution of the input to the output
    convolution before the tanh: a full-resolution path, so a small generator trained for a few hundred
    iterations keeps the person's edges and patterns instead of a blurred silhouette."""

    def __init__(self, base_channels: int = 64, n_res_blocks: int = 4, input_skip: bool = False,
                 test_norm: str = "running") -> None:
        super().__init__()
        c = base_channels
        layers: list[nn.Module] = [
            nn.Conv2d(3, c, 7, 1, 3, bias=False),
            _instance_norm(c),
            nn.ReLU(inplace=True),
        ]
        for mult in (1, 2):  # down-sampling: C -> 2C -> 4C
            layers += [
                nn.Conv2d(c * mult, c * mult * 2, 4, 2, 1, bias=False),
                _instance_norm(c * mult * 2),
                nn.ReLU(inplace=True),
            ]
        layers += [_GeneratorResidualBlock(c * 4) for _ in range(n_res_blocks)]
        for mult in (4, 2):  # up-sampling: 4C -> 2C -> C
            layers += [
                nn.ConvTranspose2d(c * mult, c * mult // 2, 4, 2, 1, bias=False),
                _instance_norm(c * mult // 2),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv2d(c, 3, 7, 1, 3, bias=False))
        self.model = nn.Sequential(*layers)
        self.input_skip = nn.Conv2d(3, 3, 1) if input_skip else None
        self.base_channels = base_channels
        self.n_res_blocks = n_res_blocks
        set_generator_test_norm(self, test_norm)

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        if self.input_skip is not None:
            out = out + self.input_skip(x)
        return torch.tanh(out)


def _down(in_channels: int, out_channels: int, norm: bool) -> list[nn.Module]:
    """conv4x4 stride 2 (+ IN without affine) + LeakyReLU 0.2."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 4, 2, 1)]
    if norm:
        layers.append(nn.InstanceNorm2d(out_channels))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return layers


def _pad_to_two(x: Tensor) -> Tensor:
    """Zero-pad a spatial side of length 1 to 2 (bottom/right) so that a 4x4/stride-2/pad-1 convolution still
    produces one cell. Sides >= 2 are untouched, so the usual grids (9×4 at 288×144) are AlignGAN's."""
    h, w = x.shape[-2:]
    if h >= 2 and w >= 2:
        return x
    return F.pad(x, (0, max(0, 2 - w), 0, max(0, 2 - h)))


def _strided_sizes(size: int, n: int) -> list[int]:
    sizes = []
    for _ in range(n):
        size = max(size, 2) // 2
        sizes.append(size)
    return sizes


def _check_disc_input(name: str, height: int, width: int, n_down: int, first_norm: int) -> None:
    """InstanceNorm needs more than one value per channel: every normalised map must have >= 2 cells."""
    hs, ws = _strided_sizes(height, n_down), _strided_sizes(width, n_down)
    for i in range(first_norm, n_down):
        if hs[i] * ws[i] < 2:
            raise ValueError(
                f"{name}: a {height}x{width} input is too small (the 1/{2 ** (i + 1)} grid would be "
                f"{hs[i]}x{ws[i]}); use images of at least 64x32 or 32x64 pixels"
            )


class PatchDiscriminator(nn.Module):
    """Plain PatchGAN (AlignGAN/CycleGAN style) for LSGAN: conv4x4 s2 3→C + LeakyReLU 0.2, four stride-2 convs
    doubling to 16C with IN + LeakyReLU, conv3x3 → 1-channel patch map (9×4 at 288×144, 2×1 at 64×32)."""

    n_down = 5

    def __init__(self, base_channels: int = 64) -> None:
        super().__init__()
        c = base_channels
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(*_down(3, c, norm=False)),
                nn.Sequential(*_down(c, 2 * c, norm=True)),
                nn.Sequential(*_down(2 * c, 4 * c, norm=True)),
                nn.Sequential(*_down(4 * c, 8 * c, norm=True)),
                nn.Sequential(*_down(8 * c, 16 * c, norm=True)),
            ]
        )
        self.head = nn.Conv2d(16 * c, 1, 3, 1, 1, bias=False)
        self.base_channels = base_channels

    def forward(self, image: Tensor) -> Tensor:
        _check_disc_input("PatchDiscriminator", image.shape[-2], image.shape[-1], self.n_down, 1)
        x = image
        for block in self.blocks:
            x = block(_pad_to_two(x))
        return self.head(x)


class JointDiscriminator(nn.Module):
    """Joint image–feature discriminator D_I (AlignGAN's conditional discriminator, SPEC §3).

    image branch: conv4x4 s2 3→C + LeakyReLU, then two stride-2 convs (2C, 4C) with IN + LeakyReLU (1/8 grid);
    feature branch: F's final feature map → 1x1 conv to ``feature_proj`` + LeakyReLU → bilinear resize to the image
    branch's grid; concatenation (4C + feature_proj = 320 by default) → two stride-2 convs (8C, 16C) with IN +
    LeakyReLU → conv3x3 → 1-channel patch map (9×4 at 288×144)."""

    n_down = 5

    def __init__(self, feature_channels: int, base_channels: int = 64, feature_proj: int = 64) -> None:
        super().__init__()
        c = base_channels
        self.image_branch = nn.Sequential(
            *_down(3, c, norm=False), *_down(c, 2 * c, norm=True), *_down(2 * c, 4 * c, norm=True)
        )
        self.feature_branch = nn.Sequential(
            nn.Conv2d(feature_channels, feature_proj, 1, 1, 0), nn.LeakyReLU(0.2, inplace=True)
        )
        self.joint = nn.ModuleList(
            [
                nn.Sequential(*_down(4 * c + feature_proj, 8 * c, norm=True)),
                nn.Sequential(*_down(8 * c, 16 * c, norm=True)),
            ]
        )
        self.head = nn.Conv2d(16 * c, 1, 3, 1, 1, bias=False)
        self.feature_channels = feature_channels
        self.base_channels = base_channels
        self.feature_proj = feature_proj

    def forward(self, image: Tensor, feature_map: Tensor) -> Tensor:
        if feature_map.shape[1] != self.feature_channels:
            raise ValueError(
                f"JointDiscriminator expects a {self.feature_channels}-channel feature map, "
                f"got {feature_map.shape[1]} channels"
            )
        if feature_map.shape[0] != image.shape[0]:
            raise ValueError(
                f"JointDiscriminator: {image.shape[0]} images but {feature_map.shape[0]} feature maps"
            )
        _check_disc_input("JointDiscriminator", image.shape[-2], image.shape[-1], self.n_down, 1)
        x = self.image_branch(image)
        f = self.feature_branch(feature_map)
        f = F.interpolate(f, size=(int(x.shape[-2]), int(x.shape[-1])), mode="bilinear", align_corners=False)
        x = torch.cat([x, f.to(x.dtype)], dim=1)
        for block in self.joint:
            x = block(_pad_to_two(x))
        return self.head(x)
