"""The attention modules of F (SPEC §3): BNG's NAM channel gate (inside every residual block) and
GAM (after every stage), or BNG as one BN -> NAM gate -> GAM block at each stage output; and the modal
mitigation module MMM (after layer3 and layer4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

from pfanet_cli.errors import UsageError


def nam_channel_weights(bn: nn.Module) -> Tensor:
    """NAM channel weights ``w_c = |γ_c| / Σ_j |γ_j|`` of a batch-norm layer, detached: the importance of a
    channel is read off γ, it is not trained through the gate (NAM uses ``weight.data``)."""
    gamma = bn.weight.detach().abs()
    return gamma / gamma.sum().clamp_min(1e-12)


def nam_gate(y: Tensor, bn: nn.Module, gated: Tensor | None = None) -> Tensor:
    """NAM channel gate on the output ``y = BN(x)`` of ``bn``: ``sigmoid(w ⊙ y) ⊙ y``, or ``sigmoid(w ⊙ y) ⊙ x``
    when the BN input ``x`` is given as ``gated`` (``model.nam_gated: bn_input``, NAM's own module and SPEC's
    formula).

    By default the gated tensor is the BN *output* (see docs/model.md): the BN is the block's own (pretrained) last
    BN, so gating its input instead would throw away the block's learned scale and shift."""
    w = nam_channel_weights(bn).to(y.dtype).reshape(1, -1, 1, 1)
    return torch.sigmoid(w * y) * (y if gated is None else gated)


class NAMBasicBlock(tv_resnet.BasicBlock):
    """torchvision BasicBlock with the NAM gate after ``bn2`` (its last BN), before the skip add."""

    nam = False
    nam_gates_input = False

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        branch = self.conv2(out)
        out = self.bn2(branch)
        if self.nam:
            out = nam_gate(out, self.bn2, branch if self.nam_gates_input else None)
        return self.relu(out + identity)


class NAMBottleneck(tv_resnet.Bottleneck):
    """torchvision Bottleneck with the NAM gate after ``bn3`` (its last BN), before the skip add."""

    nam = False
    nam_gates_input = False

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        branch = self.conv3(out)
        out = self.bn3(branch)
        if self.nam:
            out = nam_gate(out, self.bn3, branch if self.nam_gates_input else None)
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


class NAMChannelAttention(nn.Module):
    """NAM's own channel attention module (its ``Channel_Att``): a new BN of its own, ``w = |γ| / Σ|γ|`` of that
    BN (detached), ``out = sigmoid(w ⊙ BN(x)) ⊙ x``. Used by ``model.bng_placement: stages``, where its BN is new
    (γ = 1, β = 0): gating the input keeps the stage's pretrained output up to the gate factor."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return nam_gate(self.bn(x), self.bn, gated=x)


class StageBNG(nn.Module):
    """BNG as one block at a stage output (``model.bng_placement: stages``, eqs. 9-10 read as one chain):
    :class:`NAMChannelAttention` (F1 of eq. 9), then :class:`GlobalAttention` (F2, F3 of eq. 10)."""

    def __init__(self, channels: int, ratio: int = 4, groups: int = 4, residual: bool = True) -> None:
        super().__init__()
        self.channel_gate = NAMChannelAttention(channels)
        self.global_attention = GlobalAttention(channels, ratio, groups, residual)

    def forward(self, x: Tensor) -> Tensor:
        return self.global_attention(self.channel_gate(x))


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
