"""AGW (Ye et al., "Deep Learning for Person Re-identification: A Survey and Outlook", TPAMI 2021), the
cross-modality baseline as its code builds it (``mangye16/Cross-Modal-Re-ID-baseline``, ``model.py``,
``--method agw``): two ResNet stems (conv1 .. maxpool), one for visible and one for thermal images, a shared
layer1 .. layer4 with last stride 1, non-local blocks after the last half of the blocks of layer2 and layer3
(ResNet-50: 2 and 3, AGW's ``non_layers = [0, 2, 3, 0]``), GeM pooling (p = 3), and a BN-neck: BatchNorm1d
with a frozen bias, then a bias-free classifier. Written for this toolkit; see docs/model.md for every
detail and its source line.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

from pfanet_cli.config import ModelConfig
from pfanet_cli.errors import UsageError
from pfanet_cli.modeling.extractor import IMAGENET_MEAN, IMAGENET_STD

AGW_BACKBONES: dict[str, tuple[type[nn.Module], list[int], int]] = {
    "resnet18": (tv_resnet.BasicBlock, [2, 2, 2, 2], 1),
    "resnet34": (tv_resnet.BasicBlock, [3, 4, 6, 3], 1),
    "resnet50": (tv_resnet.Bottleneck, [3, 4, 6, 3], 4),
}
"""Backbone name -> (torchvision residual block, blocks per stage, channel expansion)."""
NON_LOCAL_STAGES = (2, 3)
"""The stages with non-local blocks: after the last half of their blocks (AGW's ``non_layers = [0, 2, 3, 0]``
for ResNet-50's 4 and 6 blocks; one block each for ResNet-18)."""
GEM_P = 3.0
GEM_EPS = 1e-12
"""GeM pooling as AGW computes it: ``(mean(x ** 3) + 1e-12) ** (1 / 3)`` over the positions."""


class NonLocal(nn.Module):
    """AGW's non-local block: ``x + BN(W(y))`` with ``y = theta(x)^T phi(x) g(x) / N`` (dot-product affinity
    divided by the number of positions N, no softmax), 1x1 convolutions with biases into ``inner`` channels,
    and the BN zero-initialised, so the block starts as the identity. ``y`` is computed as
    ``theta^T (phi g^T) / N``, the same product without the N x N affinity matrix."""

    def __init__(self, channels: int, inner: int) -> None:
        super().__init__()
        self.inner = inner
        self.g = nn.Conv2d(channels, inner, 1)
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.project = nn.Conv2d(inner, channels, 1)
        self.norm = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)

    def forward(self, x: Tensor) -> Tensor:
        batch, _, height, width = x.shape
        positions = height * width
        g = self.g(x).reshape(batch, self.inner, positions)
        theta = self.theta(x).reshape(batch, self.inner, positions)
        phi = self.phi(x).reshape(batch, self.inner, positions)
        context = torch.bmm(phi, g.transpose(1, 2)) / positions
        y = torch.bmm(theta.transpose(1, 2), context).transpose(1, 2).reshape(batch, self.inner, height, width)
        return x + self.norm(self.project(y))


def gem_pool(feature_map: Tensor, p: float = GEM_P) -> Tensor:
    """Generalised-mean pooling of a B×C×H×W map (non-negative, after a ReLU) to B×C, in float32."""
    x = feature_map.float()
    return (x.pow(p).mean(dim=(2, 3)) + GEM_EPS).pow(1.0 / p)


class AgwOutput(NamedTuple):
    pooled: Tensor  # B×C pooled feature map: AGW's x_pool, what the triplet loss sees, the "pool" test feature
    neck: Tensor  # B×C BN-neck output: AGW's feat, the "fc" test feature
    logits: Tensor  # B×num_classes: classifier(neck)


class _Stem(nn.Module):
    """A modality's conv1 .. maxpool, with torchvision's parameter names and initialisation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(F.relu(self.bn1(self.conv1(x))), kernel_size=3, stride=2, padding=1)


class _SharedLayers(nn.Module):
    """layer1 .. layer4 of a torchvision ResNet (its names), with last stride 1 when asked."""

    def __init__(self, resnet: tv_resnet.ResNet, last_stride: int) -> None:
        super().__init__()
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        if last_stride == 1:
            for module in self.layer4[0].modules():
                if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
                    module.stride = (1, 1)


def non_local_width(channels: int, form: str) -> int:
    """Channels a non-local block embeds into: 1 (AGW's ``reduc_ratio // reduc_ratio``) or ``channels // 2``."""
    return 1 if form == "agw" else channels // 2


class AgwNet(nn.Module):
    """AGW's network (see the module docstring). ``forward(visible, thermal)`` runs the visible images through
    the visible stem and the thermal ones through the thermal stem, concatenates them (visible first) and runs
    the shared part; :meth:`test_features` does the same for a batch of either modality, row by row."""

    def __init__(self, num_classes: int, config: ModelConfig) -> None:
        super().__init__()
        if config.backbone not in AGW_BACKBONES:
            raise UsageError(f"model.backbone={config.backbone!r} is not one of {', '.join(AGW_BACKBONES)}")
        block, layers, expansion = AGW_BACKBONES[config.backbone]
        self.backbone_name = config.backbone
        self.visible, self.thermal = _Stem(), _Stem()
        self.backbone = _SharedLayers(tv_resnet.ResNet(block, layers), config.last_stride)
        channels = [64 * expansion * 2 ** stage for stage in range(4)]
        self.non_local_after: dict[int, list[int]] = {}
        for stage in NON_LOCAL_STAGES:
            count = 0 if config.non_local == "off" else layers[stage - 1] // 2
            width = non_local_width(channels[stage - 1], config.non_local)
            setattr(self, f"non_local{stage}", nn.ModuleList(NonLocal(channels[stage - 1], width) for _ in range(count)))
            self.non_local_after[stage] = list(range(layers[stage - 1] - count, layers[stage - 1]))
        self.pooling = config.pooling
        self.feature_channels = channels[-1]
        self.bottleneck = nn.BatchNorm1d(channels[-1])
        self.bottleneck.bias.requires_grad_(False)  # the BN-neck does not shift
        nn.init.normal_(self.bottleneck.weight, 1.0, 0.01)
        nn.init.zeros_(self.bottleneck.bias)
        self.classifier = nn.Linear(channels[-1], num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, 0.0, 0.001)
        self.input_norm = config.input_norm
        self.test_vector, self.test_flip = "fc", False
        std = torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1)
        self.register_buffer("input_scale", 0.5 / std, persistent=False)
        self.register_buffer("input_shift", (0.5 - torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1)) / std,
                             persistent=False)

    def normalise_input(self, x: Tensor) -> Tensor:
        """[-1, 1] images -> ImageNet mean/std (``model.input_norm: imagenet``, AGW's ``Normalize``) or as they are."""
        return x if self.input_norm == "none" else x * self.input_scale + self.input_shift

    def shared(self, x: Tensor) -> Tensor:
        """layer1 .. layer4 with the non-local blocks after their blocks: the final feature map."""
        for stage in range(1, 5):
            blocks = getattr(self.backbone, f"layer{stage}")
            after = self.non_local_after.get(stage, [])
            for index, block in enumerate(blocks):
                x = block(x)
                if index in after:
                    x = getattr(self, f"non_local{stage}")[after.index(index)](x)
        return x

    def head(self, feature_map: Tensor) -> AgwOutput:
        pooled = gem_pool(feature_map) if self.pooling == "gem" else feature_map.float().mean(dim=(2, 3))
        neck = self.bottleneck(pooled)
        return AgwOutput(pooled, neck, self.classifier(neck))

    def forward(self, visible: Tensor, thermal: Tensor) -> AgwOutput:
        stems = [self.visible(self.normalise_input(visible)), self.thermal(self.normalise_input(thermal))]
        return self.head(self.shared(torch.cat(stems)))

    def stems(self, images: Tensor, is_visible: Tensor) -> Tensor:
        """Each row through its modality's stem (visible rows through the visible stem), in row order."""
        images = self.normalise_input(images)
        is_visible = is_visible.to(images.device)
        if bool(is_visible.all()):
            return self.visible(images)
        if not bool(is_visible.any()):
            return self.thermal(images)
        visible, thermal = self.visible(images[is_visible]), self.thermal(images[~is_visible])
        out = visible.new_empty((images.shape[0],) + visible.shape[1:])
        out[is_visible], out[~is_visible] = visible, thermal
        return out

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``backbone``: stems, shared layers and non-local blocks (AGW: 0.1 x lr); ``head``: the BN-neck and the
        classifier (lr)."""
        head = {id(p) for p in (*self.bottleneck.parameters(), *self.classifier.parameters())}
        return {"backbone": [p for p in self.parameters() if id(p) not in head],
                "head": [*self.bottleneck.parameters(), *self.classifier.parameters()]}

    def configure_test(self, vector: str, flip: bool) -> None:
        """What :meth:`test_features` returns (``agw.test_feature``, ``agw.test_flip``); not part of the weights."""
        if vector not in ("fc", "pool"):
            raise UsageError(f"AGW's test feature is fc or pool, not {vector!r}")
        self.test_vector, self.test_flip = vector, flip

    @torch.no_grad()
    def test_features(self, images: Tensor, is_visible: Tensor) -> Tensor:
        """AGW's test feature (call in eval mode): the L2-normalised ``fc`` (BN-neck) or ``pool`` vector
        (:meth:`configure_test`; default fc, no flip, as AGW's test.py); with flip, the mean of the normalised
        vectors of the image and of its horizontal flip, normalised (CAJ's testa.py). ``is_visible`` says which
        rows go through the visible stem."""

        def vector(x: Tensor) -> Tensor:
            out = self.head(self.shared(self.stems(x, is_visible)))
            return F.normalize((out.neck if self.test_vector == "fc" else out.pooled).float(), dim=1)

        features = vector(images)
        if self.test_flip:
            features = F.normalize(features + vector(torch.flip(images, dims=[3])), dim=1)
        return features
