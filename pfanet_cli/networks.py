"""The networks of PFANet (SPEC §3): the two generators, the plain and the joint discriminator, and the
feature extractor F with BNG attention (NAM gate + GAM) and the modal mitigation module (MMM).

Every interpretation the paper leaves open is explained in ``docs/model.md``. The modules are written to be
``torch.compile``-agnostic (no data-dependent Python control flow), channels-last friendly (``reshape``, never
``view``) and DDP friendly (every parameter of a network contributes to its forward outputs).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

from pfanet_cli.errors import CheckpointError, UsageError
from pfanet_cli.recipes import ModelConfig

__all__ = [
    "ResnetGenerator",
    "PatchDiscriminator",
    "JointDiscriminator",
    "FeatureExtractor",
    "ExtractorOutput",
    "GlobalAttention",
    "ModalityMitigation",
    "build_networks",
    "load_imagenet_weights",
    "imagenet_weight_file",
    "count_parameters",
    "init_gan_weights",
    "nam_channel_weights",
    "nam_gate",
    "channel_shuffle",
    "extract_test_features",
]


# ----------------------------------------------------------------------------------------------------------
# Initialisation and counting
# ----------------------------------------------------------------------------------------------------------


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


def count_parameters(module: nn.Module) -> int:
    """Number of parameter elements of ``module`` (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------------------------------------
# Generator (AlignGAN design)
# ----------------------------------------------------------------------------------------------------------


def _instance_norm(channels: int) -> nn.InstanceNorm2d:
    # Affine with running statistics (AlignGAN): eval mode uses the running averages, so ``translate`` in eval
    # mode maps one image to one output whatever else is in the batch.
    return nn.InstanceNorm2d(channels, affine=True, track_running_stats=True)


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


class ResnetGenerator(nn.Module):
    """G_I (RGB→IR) or G_R (IR→RGB): conv7x7 (C) → two stride-2 4x4 convs (2C, 4C) → residual blocks at 4C →
    two stride-2 4x4 transposed convs (2C, C) → conv7x7 → 3, tanh. Images in [-1, 1]; the output has exactly the
    input's H×W whenever H and W are multiples of 4 (the toolkit uses multiples of 16).

    ``input_skip`` (``model.generator_skip``, not in AlignGAN) adds a 1x1 convolution of the input to the output
    convolution before the tanh: a full-resolution path, so a small generator trained for a few hundred
    iterations keeps the person's edges and patterns instead of a blurred silhouette."""

    def __init__(self, base_channels: int = 64, n_res_blocks: int = 4, input_skip: bool = False) -> None:
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

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        if self.input_skip is not None:
            out = out + self.input_skip(x)
        return torch.tanh(out)


# ----------------------------------------------------------------------------------------------------------
# Discriminators (LSGAN PatchGAN)
# ----------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------
# BNG attention: NAM channel gate (inside every residual block) and GAM (after every stage)
# ----------------------------------------------------------------------------------------------------------


def nam_channel_weights(bn: nn.Module) -> Tensor:
    """NAM channel weights ``w_c = |γ_c| / Σ_j |γ_j|`` of a batch-norm layer, detached: the importance of a
    channel is read off γ, it is not trained through the gate (NAM uses ``weight.data``)."""
    gamma = bn.weight.detach().abs()
    return gamma / gamma.sum().clamp_min(1e-12)


def nam_gate(y: Tensor, bn: nn.Module) -> Tensor:
    """NAM channel gate on the output ``y = BN(x)`` of ``bn``: ``sigmoid(w ⊙ y) ⊙ y``.

    The gated tensor is the BN *output* (see docs/model.md): the BN is the block's own (pretrained) last BN, so
    gating its input instead would throw away the block's learned scale and shift."""
    w = nam_channel_weights(bn).to(y.dtype).reshape(1, -1, 1, 1)
    return torch.sigmoid(w * y) * y


class _NAMBasicBlock(tv_resnet.BasicBlock):
    """torchvision BasicBlock with the NAM gate after ``bn2`` (its last BN), before the skip add."""

    nam = False

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.nam:
            out = nam_gate(out, self.bn2)
        return self.relu(out + identity)


class _NAMBottleneck(tv_resnet.Bottleneck):
    """torchvision Bottleneck with the NAM gate after ``bn3`` (its last BN), before the skip add."""

    nam = False

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.nam:
            out = nam_gate(out, self.bn3)
        return self.relu(out + identity)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """ShuffleNet channel shuffle: (g, C/g) → (C/g, g) along the channel axis."""
    b, c, h, w = x.shape
    out = x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    return out


class GlobalAttention(nn.Module):
    """GAM (Liu et al. 2021) as SPEC §3 fixes it: channel gate = per-pixel MLP C→C/r→C on the channels-last
    tensor, sigmoid; then spatial gate = grouped conv7x7 C→C/r + BN + ReLU, channel shuffle, grouped conv7x7
    C/r→C + BN, sigmoid; no pooling anywhere.

    ``residual=True`` applies each gate as ``x · (1 + M)`` (residual attention), ``False`` as ``x · M`` (GAM).
    The last layer of each gate starts at zero, so both maps start at exactly 0.5: the module starts as a uniform
    gain (2.25 residual, 0.25 plain) and does not distort pretrained features."""

    def __init__(self, channels: int, ratio: int = 4, groups: int = 4, residual: bool = True) -> None:
        super().__init__()
        hidden = channels // ratio
        if hidden < 1 or channels % ratio:
            raise UsageError(f"model.gam_ratio={ratio} must divide the {channels} channels of a ResNet stage")
        if channels % groups or hidden % groups:
            raise UsageError(
                f"model.gam_groups={groups} must divide both {channels} and {hidden} (= channels / gam_ratio)"
            )
        self.channels, self.ratio, self.groups, self.residual = channels, ratio, groups, residual
        self.channel_mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels)
        )
        self.spatial_reduce = nn.Conv2d(channels, hidden, 7, 1, 3, groups=groups, bias=False)
        self.spatial_reduce_bn = nn.BatchNorm2d(hidden)
        self.spatial_expand = nn.Conv2d(hidden, channels, 7, 1, 3, groups=groups, bias=False)
        self.spatial_expand_bn = nn.BatchNorm2d(channels)
        nn.init.kaiming_normal_(self.spatial_reduce.weight, mode="fan_out", nonlinearity="relu")
        nn.init.kaiming_normal_(self.spatial_expand.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.channel_mlp[2].weight)
        nn.init.zeros_(self.channel_mlp[2].bias)
        nn.init.zeros_(self.spatial_expand_bn.weight)

    def channel_attention(self, x: Tensor) -> Tensor:
        a = self.channel_mlp(x.permute(0, 2, 3, 1))
        return torch.sigmoid(a.permute(0, 3, 1, 2))

    def spatial_attention(self, x: Tensor) -> Tensor:
        s = F.relu(self.spatial_reduce_bn(self.spatial_reduce(x)), inplace=True)
        s = channel_shuffle(s, self.groups)
        s = self.spatial_expand_bn(self.spatial_expand(s))
        return torch.sigmoid(s)

    def forward(self, x: Tensor) -> Tensor:
        x = self._gate(x, self.channel_attention(x))
        return self._gate(x, self.spatial_attention(x))

    def _gate(self, x: Tensor, m: Tensor) -> Tensor:
        return x * (1.0 + m) if self.residual else x * m


class ModalityMitigation(nn.Module):
    """MMM (MPANet's modality alleviation module): ``m = sigmoid(W2 · ReLU(W1 · GAP(x)))`` with bias-free 1x1
    convs (ratio r); ``out = m ⊙ x + (1 − m) ⊙ IN(x)`` with IN without affine or running statistics."""

    def __init__(self, channels: int, ratio: int = 16) -> None:
        super().__init__()
        hidden = channels // ratio
        if hidden < 1:
            raise UsageError(f"model.mmm_ratio={ratio} is larger than the {channels} channels it reduces")
        self.channels, self.ratio = channels, ratio
        self.reduce = nn.Conv2d(channels, hidden, 1, bias=False)
        self.expand = nn.Conv2d(hidden, channels, 1, bias=False)
        for conv in (self.reduce, self.expand):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")

    def mask(self, x: Tensor) -> Tensor:
        pooled = x.mean(dim=(2, 3), keepdim=True)
        return torch.sigmoid(self.expand(F.relu(self.reduce(pooled))))

    def forward(self, x: Tensor) -> Tensor:
        m = self.mask(x)
        normalised = F.instance_norm(x).to(x.dtype)
        return m * x + (1.0 - m) * normalised


# ----------------------------------------------------------------------------------------------------------
# Feature extractor F
# ----------------------------------------------------------------------------------------------------------

_BACKBONES: dict[str, tuple[type[nn.Module], list[int], int]] = {
    "resnet18": (_NAMBasicBlock, [2, 2, 2, 2], 1),
    "resnet34": (_NAMBasicBlock, [3, 4, 6, 3], 1),
    "resnet50": (_NAMBottleneck, [3, 4, 6, 3], 4),
}

# torchvision's IMAGENET1K_V1 files (the weights the ReID literature uses), then the older file names of the
# same weights that a torch hub cache may still hold.
_IMAGENET_FILES: dict[str, tuple[str, ...]] = {
    "resnet18": ("resnet18-f37072fd.pth", "resnet18-5c106cde.pth"),
    "resnet34": ("resnet34-b627a593.pth", "resnet34-333f7ec4.pth"),
    "resnet50": ("resnet50-0676ba61.pth", "resnet50-19c8e357.pth"),
}
_DOWNLOAD_ROOT = "https://download.pytorch.org/models/"


class ExtractorOutput(NamedTuple):
    feature_map: Tensor  # after layer4 (+ GAM) + MMM: B×C×h×w (18×9 at 288×144, last stride 1)
    pooled: Tensor  # v = GAP(feature_map): B×C, the test feature
    logits: Tensor  # classifier(v): B×num_classes
    embedding: Tensor  # embedder(v): B×embed_dim, for the triplet loss


class _ResNetTrunk(nn.Module):
    """The convolutional part of a torchvision ResNet, with torchvision's parameter names (so ImageNet state dicts
    load key for key, ``fc.*`` aside)."""

    def __init__(self, resnet: tv_resnet.ResNet) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4

    def stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))


class FeatureExtractor(nn.Module):
    """F: torchvision ResNet (18/34/50, no weights downloaded) with last stride 1 or 2, BNG attention (NAM gate
    in every residual block + GAM after layer1..4), MMM after layer3 and layer4, and two heads on the GAP vector
    v: classifier FC→hidden, BN1d, Dropout, ReLU, FC→num_classes (the paper's order), embedder FC→embed_dim."""

    def __init__(self, num_classes: int, config: ModelConfig) -> None:
        super().__init__()
        if config.backbone not in _BACKBONES:
            raise UsageError(f"model.backbone={config.backbone!r} is not one of {', '.join(_BACKBONES)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        block, layers, expansion = _BACKBONES[config.backbone]
        trunk = _ResNetTrunk(tv_resnet.ResNet(block, layers))  # random init, no download
        if config.last_stride == 1:
            for m in trunk.layer4[0].modules():
                if isinstance(m, nn.Conv2d) and m.stride == (2, 2):
                    m.stride = (1, 1)
        for m in trunk.modules():
            if isinstance(m, (_NAMBasicBlock, _NAMBottleneck)):
                m.nam = bool(config.bng)
        self.backbone = trunk
        self.backbone_name = config.backbone
        self.num_classes = num_classes
        stage_channels = [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
        self.stage_channels = stage_channels
        self.feature_channels = stage_channels[-1]

        def gam(c: int) -> nn.Module:
            if not config.bng:
                return nn.Identity()
            return GlobalAttention(c, config.gam_ratio, config.gam_groups, residual=config.bng_form == "residual")

        self.gam1, self.gam2 = gam(stage_channels[0]), gam(stage_channels[1])
        self.gam3, self.gam4 = gam(stage_channels[2]), gam(stage_channels[3])
        self.mmm3 = ModalityMitigation(stage_channels[2], config.mmm_ratio) if config.mmm else nn.Identity()
        self.mmm4 = ModalityMitigation(stage_channels[3], config.mmm_ratio) if config.mmm else nn.Identity()

        c = self.feature_channels
        self.classifier = nn.Sequential(
            nn.Linear(c, config.classifier_hidden),
            nn.BatchNorm1d(config.classifier_hidden),
            nn.Dropout(config.dropout),
            nn.ReLU(inplace=True),
            nn.Linear(config.classifier_hidden, num_classes),
        )
        self.embedder = nn.Linear(c, config.embed_dim)
        # AlignGAN's head initialisation: Kaiming (fan_out) bottleneck, BN1d N(1, 0.02), classifier N(0, 0.001).
        nn.init.kaiming_normal_(self.classifier[0].weight, a=0, mode="fan_out")
        nn.init.zeros_(self.classifier[0].bias)
        nn.init.normal_(self.classifier[1].weight, 1.0, 0.02)
        nn.init.zeros_(self.classifier[1].bias)
        nn.init.normal_(self.classifier[4].weight, 0.0, 0.001)
        nn.init.zeros_(self.classifier[4].bias)

    def feature_map(self, x: Tensor) -> Tensor:
        """The final feature map (after layer4 + GAM + MMM); what the joint discriminator sees."""
        t = self.backbone
        x = t.stem(x)
        x = self.gam1(t.layer1(x))
        x = self.gam2(t.layer2(x))
        x = self.mmm3(self.gam3(t.layer3(x)))
        x = self.mmm4(self.gam4(t.layer4(x)))
        return x

    def forward(self, x: Tensor) -> ExtractorOutput:
        fmap = self.feature_map(x)
        pooled = fmap.mean(dim=(2, 3))
        return ExtractorOutput(fmap, pooled, self.classifier(pooled), self.embedder(pooled))

    def pooled_features(self, x: Tensor) -> Tensor:
        """v = GAP of the final feature map, without the heads (test-time extraction)."""
        return self.feature_map(x).mean(dim=(2, 3))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``backbone``: ResNet + BNG + MMM (SGD lr 0.02); ``head``: classifier + embedder (lr 0.2)."""
        backbone: list[nn.Parameter] = list(self.backbone.parameters())
        for module in (self.gam1, self.gam2, self.gam3, self.gam4, self.mmm3, self.mmm4):
            backbone.extend(module.parameters())
        head = list(self.classifier.parameters()) + list(self.embedder.parameters())
        return {"backbone": backbone, "head": head}


@torch.no_grad()
def extract_test_features(extractor: FeatureExtractor, images: Tensor) -> Tensor:
    """SPEC §3 test feature: v(image) + v(horizontal flip), L2-normalised (the caller puts F in eval mode and
    translates RGB images with G_I first)."""
    v = extractor.pooled_features(images) + extractor.pooled_features(torch.flip(images, dims=[3]))
    return F.normalize(v.float(), dim=1)


# ----------------------------------------------------------------------------------------------------------
# ImageNet weights (never downloaded)
# ----------------------------------------------------------------------------------------------------------


def imagenet_weight_file(backbone: str) -> Path:
    """Where the torch hub cache keeps torchvision's ImageNet file for ``backbone`` (it may not exist)."""
    if backbone not in _IMAGENET_FILES:
        raise UsageError(f"model.backbone={backbone!r} is not one of {', '.join(_IMAGENET_FILES)}")
    return Path(torch.hub.get_dir()) / "checkpoints" / _IMAGENET_FILES[backbone][0]


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read is a corrupt file to the user
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot read backbone weights {path}: not a PyTorch state dict or corrupt ({reason[:120]}); "
            "replace the file"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"backbone weights {path} do not hold a state dict of tensors; replace the file")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def load_imagenet_weights(extractor: FeatureExtractor, spec: str) -> None:
    """Load ImageNet (or other torchvision-layout) weights into F's ResNet trunk.

    ``spec``: ``"none"`` (keep the random initialisation), ``"imagenet"`` (torchvision's file from the torch hub
    cache, ``torch.hub.get_dir()/checkpoints/<file>``) or a path to a local file. Nothing is ever downloaded and
    there is no silent fallback: a missing, unreadable or mismatching file raises :class:`CheckpointError`.
    All trunk keys must be present with the right shapes; ``fc.*`` is ignored; other extra keys are an error."""
    spec = str(spec).strip()
    if spec.lower() == "none":
        return
    backbone = extractor.backbone_name
    if spec.lower() == "imagenet":
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        candidates = [hub / name for name in _IMAGENET_FILES[backbone]]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            name = _IMAGENET_FILES[backbone][0]
            raise CheckpointError(
                f"ImageNet weights for {backbone} are not on disk: put {name} (from {_DOWNLOAD_ROOT}{name}) at "
                f"{candidates[0]}, or set model.pretrained to a local file, or model.pretrained=none"
            )
    else:
        path = Path(os.path.expanduser(spec))
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "does not exist"
            raise CheckpointError(
                f"backbone weights file {path} {what}; set model.pretrained to a torchvision {backbone} "
                "state dict, imagenet, or none"
            )
    state = {k: v for k, v in _read_state_dict(path).items() if not k.startswith("fc.")}
    target = extractor.backbone.state_dict()
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in target]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise CheckpointError(
            f"backbone weights {path} do not fit a torchvision {backbone}: keys {', '.join(parts)}; "
            f"give a {backbone} file"
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(target[key].shape):
            raise CheckpointError(
                f"backbone weights {path} do not fit a torchvision {backbone}: {key} has shape "
                f"{tuple(value.shape)}, expected {tuple(target[key].shape)}"
            )
    extractor.backbone.load_state_dict(state, strict=True)


# ----------------------------------------------------------------------------------------------------------
# Assembly
# ----------------------------------------------------------------------------------------------------------


NETWORK_KEYS = ("generator_rgb2ir", "generator_ir2rgb", "disc_rgb", "disc_ir", "extractor")


def build_networks(
    config: ModelConfig,
    num_classes: int,
    joint_discriminator: bool,
    load_pretrained: bool = True,
    keys: tuple[str, ...] = NETWORK_KEYS,
) -> dict[str, nn.Module]:
    """The networks named in ``keys`` (default: all five), initialised: G and D with N(0, 0.02), F's trunk from
    ``config.pretrained`` when ``load_pretrained`` (otherwise torchvision's random initialisation, e.g. before
    loading a checkpoint).

    ``disc_ir`` is the joint image–feature discriminator when ``joint_discriminator`` (train-joint), else a
    plain PatchGAN (train-gan); the joint one needs F's channel count, not F itself."""
    feature_channels = 512 * _BACKBONES[config.backbone][2]

    def disc_ir() -> nn.Module:
        if joint_discriminator:
            return JointDiscriminator(feature_channels, config.disc_channels, config.joint_feature_channels)
        return PatchDiscriminator(config.disc_channels)

    def generator() -> nn.Module:
        return ResnetGenerator(config.generator_channels, config.generator_res_blocks, config.generator_skip)

    builders = {
        "generator_rgb2ir": generator,
        "generator_ir2rgb": generator,
        "disc_rgb": lambda: PatchDiscriminator(config.disc_channels),
        "disc_ir": disc_ir,
        "extractor": lambda: FeatureExtractor(num_classes, config),
    }
    networks = {key: builders[key]() for key in NETWORK_KEYS if key in keys}
    for key, net in networks.items():
        if key == "extractor":
            if load_pretrained:
                load_imagenet_weights(net, config.pretrained)
        else:
            init_gan_weights(net)
    return networks
