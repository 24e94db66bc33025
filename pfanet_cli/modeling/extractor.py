"""The feature extractor F (SPEC §3): a torchvision ResNet (18/34/50, no weights downloaded) with last
stride 1 or 2, BNG attention (NAM gate in every residual block + GAM after layer1..4, or one BN -> NAM gate ->
GAM block after layer1..4), MMM after layer3 and layer4, and two heads on the GAP vector v; and the test
feature (flip-summed, L2-normalised v)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

from pfanet_cli.config import ModelConfig
from pfanet_cli.errors import UsageError
from pfanet_cli.modeling.attention import (
    GlobalAttention,
    ModalityMitigation,
    NAMBasicBlock,
    NAMBottleneck,
    StageBNG,
)

BACKBONES: dict[str, tuple[type[nn.Module], list[int], int]] = {
    "resnet18": (NAMBasicBlock, [2, 2, 2, 2], 1),
    "resnet34": (NAMBasicBlock, [3, 4, 6, 3], 1),
    "resnet50": (NAMBottleneck, [3, 4, 6, 3], 4),
}
"""Backbone name -> (residual block, blocks per stage, channel expansion)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""The per-channel statistics torchvision's ImageNet weights were trained with (images in [0, 1])."""



def feature_channels(backbone: str) -> int:
    """Channels of F's final feature map: 2048 for ResNet-50, 512 for ResNet-18/34."""
    if backbone not in BACKBONES:
        raise UsageError(f"model.backbone={backbone!r} is not one of {', '.join(BACKBONES)}")
    return 512 * BACKBONES[backbone][2]


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
        if config.backbone not in BACKBONES:
            raise UsageError(f"model.backbone={config.backbone!r} is not one of {', '.join(BACKBONES)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        block, layers, expansion = BACKBONES[config.backbone]
        trunk = _ResNetTrunk(tv_resnet.ResNet(block, layers))  # random init, no download
        if config.last_stride == 1:
            for m in trunk.layer4[0].modules():
                if isinstance(m, nn.Conv2d) and m.stride == (2, 2):
                    m.stride = (1, 1)
        gates_in_blocks = config.bng and config.bng_placement == "blocks"
        for m in trunk.modules():
            if isinstance(m, (NAMBasicBlock, NAMBottleneck)):
                m.nam, m.nam_gates_input = gates_in_blocks, config.nam_gated == "bn_input"
        self.backbone = trunk
        self.backbone_name = config.backbone
        self.input_norm = config.input_norm
        # ((x + 1) / 2 - mean) / std as one multiply-add; not in the state dict, so checkpoints are unchanged
        std = torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1)
        self.register_buffer("input_scale", 0.5 / std, persistent=False)
        self.register_buffer("input_shift", (0.5 - torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1)) / std,
                             persistent=False)
        self.num_classes = num_classes
        stage_channels = [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
        self.stage_channels = stage_channels
        self.feature_channels = stage_channels[-1]

        def gam(c: int) -> nn.Module:
            if not config.bng:
                return nn.Identity()
            attention = StageBNG if config.bng_placement == "stages" else GlobalAttention
            return attention(c, config.gam_ratio, config.gam_groups, residual=config.bng_form == "residual")

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

    def normalise_input(self, x: Tensor) -> Tensor:
        """F's input from the [-1, 1] images G and D work on: ImageNet mean/std (``model.input_norm: imagenet``)
        or unchanged (``none``)."""
        if self.input_norm == "none":
            return x
        return x * self.input_scale + self.input_shift

    def feature_map(self, x: Tensor) -> Tensor:
        """The final feature map (after layer4 + GAM + MMM) of [-1, 1] images; what the joint discriminator
        sees."""
        t = self.backbone
        x = t.stem(self.normalise_input(x))
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

    def test_features(self, images: Tensor, is_visible: Tensor) -> Tensor:
        """The SPEC §3 test feature of a batch whose RGB rows the caller has translated with G_I
        (:func:`extract_test_features`); ``is_visible`` plays no part (one network for both modalities)."""
        return extract_test_features(self, images)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``backbone``: ResNet + BNG + MMM (SGD lr 0.02); ``head``: classifier + embedder (lr 0.2)."""
        backbone: list[nn.Parameter] = list(self.backbone.parameters())
        for module in (self.gam1, self.gam2, self.gam3, self.gam4, self.mmm3, self.mmm4):
            backbone.extend(module.parameters())
        head = list(self.classifier.parameters()) + list(self.embedder.parameters())
        return {"backbone": backbone, "head": head}


def flip_summed_features(extractor: FeatureExtractor, images: Tensor) -> Tensor:
    """SPEC §3 test feature: v(image) + v(horizontal flip), L2-normalised (the caller puts F in eval mode and
    translates RGB images with G_I first). Differentiable and traceable: what the ONNX export records."""
    v = extractor.pooled_features(images) + extractor.pooled_features(torch.flip(images, dims=[3]))
    return F.normalize(v.float(), dim=1)


@torch.no_grad()
def extract_test_features(extractor: FeatureExtractor, images: Tensor) -> Tensor:
    """:func:`flip_summed_features` without autograd (``extract``, validation)."""
    return flip_summed_features(extractor, images)
