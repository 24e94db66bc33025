"""BNG (NAM gate, GAM) and MMM: their definitions, placement and gradients."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pfanet_cli.modeling.attention import (
    GlobalAttention,
    ModalityMitigation,
    NAMBasicBlock,
    NAMBottleneck,
    StageBNG,
    channel_shuffle,
    nam_channel_weights,
    nam_gate,
)
from pfanet_cli.modeling.build import count_parameters
from pfanet_cli.modeling.extractor import FeatureExtractor
from tests.helpers import small_config

# ------------------------------------------------------------------------------------------------- NAM


def test_nam_weights_sum_to_one_and_are_detached():
    bn = nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0, -0.25, 1.75]))
    w = nam_channel_weights(bn)
    assert not w.requires_grad
    assert w.sum().item() == pytest.approx(1.0)
    assert torch.allclose(w, bn.weight.detach().abs() / 5.5)


def test_nam_gate_gives_gamma_no_gradient_through_w():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([3.0, -0.5, 1.0, 2.0]))
    x = torch.randn(2, 4, 3, 3)
    r = torch.randn(2, 4, 3, 3)

    def gamma_grad(gate):
        bn.zero_grad()
        y = bn(x)
        (gate(y) * r).sum().backward()
        return bn.weight.grad.clone()

    ours = gamma_grad(lambda y: nam_gate(y, bn))
    w_const = (bn.weight.detach().abs() / bn.weight.detach().abs().sum()).reshape(1, -1, 1, 1)
    constant = gamma_grad(lambda y: torch.sigmoid(w_const * y) * y)
    assert torch.allclose(ours, constant, atol=1e-6)

    def through_w(y):
        w = (bn.weight.abs() / bn.weight.abs().sum()).reshape(1, -1, 1, 1)
        return torch.sigmoid(w * y) * y

    assert not torch.allclose(ours, gamma_grad(through_w), atol=1e-6)


def test_nam_gate_sits_after_the_last_bn_of_every_block():
    torch.manual_seed(0)
    for backbone, n_blocks in (("resnet18", 8), ("resnet34", 16)):
        f = FeatureExtractor(3, small_config(backbone=backbone))
        blocks = [m for layer in (f.backbone.layer1, f.backbone.layer2, f.backbone.layer3, f.backbone.layer4)
                  for m in layer]
        assert len(blocks) == n_blocks and all(b.nam for b in blocks)
    block = f.backbone.layer2[0].eval()  # has a downsample
    with torch.no_grad():
        block.bn2.weight.uniform_(-2, 2)
        x = torch.randn(2, 64, 8, 4)
        y = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x)))))
        w = (block.bn2.weight.abs() / block.bn2.weight.abs().sum()).reshape(1, -1, 1, 1)
        expected = F.relu(torch.sigmoid(w * y) * y + block.downsample(x))
        assert torch.allclose(block(x), expected, atol=1e-6)
        block.nam = False
        assert torch.allclose(block(x), F.relu(y + block.downsample(x)), atol=1e-6)
    off = FeatureExtractor(3, small_config(bng=False))
    assert not any(getattr(m, "nam", False) for m in off.modules())
    assert not any(isinstance(m, GlobalAttention) for m in off.modules())


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_nam_gate_can_multiply_the_bn_input_instead(backbone):
    """``model.nam_gated: bn_input``: out = sigmoid(w ⊙ BN(x)) ⊙ x with x the last conv's output (NAM's module)."""
    torch.manual_seed(0)
    f = FeatureExtractor(3, small_config(backbone=backbone, nam_gated="bn_input"))
    block = f.backbone.layer1[0].eval()
    last_bn = block.bn3 if backbone == "resnet50" else block.bn2
    with torch.no_grad():
        last_bn.weight.uniform_(-2, 2)
        x = torch.randn(2, block.conv1.in_channels, 8, 4)
        out = block.relu(block.bn1(block.conv1(x)))
        if backbone == "resnet50":
            out = block.relu(block.bn2(block.conv2(out)))
        branch = (block.conv3 if backbone == "resnet50" else block.conv2)(out)
        w = (last_bn.weight.abs() / last_bn.weight.abs().sum()).reshape(1, -1, 1, 1)
        identity = x if block.downsample is None else block.downsample(x)
        expected = F.relu(torch.sigmoid(w * last_bn(branch)) * branch + identity)
        assert torch.allclose(block(x), expected, atol=1e-5)
        block.nam_gates_input = False
        assert not torch.allclose(block(x), expected, atol=1e-3)


def test_nam_bottleneck_gates_bn3(resnet50_models):
    torch.manual_seed(0)
    block = copy.deepcopy(resnet50_models[1].backbone.layer1[1]).eval()
    assert block.nam
    with torch.no_grad():
        block.bn3.weight.uniform_(-2, 2)
        x = torch.randn(1, 256, 4, 4)
        out = block.relu(block.bn1(block.conv1(x)))
        out = block.relu(block.bn2(block.conv2(out)))
        y = block.bn3(block.conv3(out))
        assert torch.allclose(block(x), F.relu(nam_gate(y, block.bn3) + x), atol=1e-5)


# ------------------------------------------------------------------------------------------------- GAM


def test_channel_shuffle_order():
    x = torch.arange(8.0).reshape(1, 8, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert channel_shuffle(x, 4).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]


def _force_gam(gam: GlobalAttention, logit: float) -> None:
    with torch.no_grad():
        gam.channel_mlp[2].weight.zero_()
        gam.channel_mlp[2].bias.fill_(logit)
        gam.spatial_expand_bn.weight.zero_()
        gam.spatial_expand_bn.bias.fill_(logit)


def test_gam_residual_and_plain_forms():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 6, 4)
    residual, plain = GlobalAttention(16, 4, 4, residual=True), GlobalAttention(16, 4, 4, residual=False)
    # at initialisation both maps are exactly 0.5: a uniform gain
    assert torch.allclose(residual(x), 2.25 * x, atol=1e-6)
    assert torch.allclose(plain(x), 0.25 * x, atol=1e-6)
    for gam in (residual, plain):
        _force_gam(gam, -1e4)  # attention maps = 0
    assert torch.allclose(residual(x), x) and torch.allclose(plain(x), torch.zeros_like(x))
    for gam in (residual, plain):
        _force_gam(gam, 1e4)  # attention maps = 1
    assert torch.allclose(residual(x), 4 * x) and torch.allclose(plain(x), x)
    torch.manual_seed(1)
    a, b = GlobalAttention(16, 4, 4, residual=True), GlobalAttention(16, 4, 4, residual=False)
    b.load_state_dict(a.state_dict())
    for gam in (a, b):
        nn.init.normal_(gam.channel_mlp[2].weight)
        nn.init.normal_(gam.spatial_expand_bn.weight)
    b.load_state_dict(a.state_dict())
    assert not torch.allclose(a(x), b(x), atol=1e-3)


def test_gam_gates_match_their_definition():
    torch.manual_seed(0)
    c = 32  # hidden 8 in 4 groups of 2: the shuffle is not the identity
    gam = GlobalAttention(c, 4, 4).eval()
    with torch.no_grad():
        for p in gam.parameters():
            p.normal_()
        for bn in (gam.spatial_reduce_bn, gam.spatial_expand_bn):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2)
        x = torch.randn(2, c, 5, 3)
        # channel gate: the same MLP at every pixel of the channels-last tensor
        l1, l2 = gam.channel_mlp[0], gam.channel_mlp[2]
        pixels = x.permute(0, 2, 3, 1).reshape(-1, c)
        mc = torch.sigmoid(l2(F.relu(l1(pixels)))).reshape(2, 5, 3, c).permute(0, 3, 1, 2)
        assert torch.allclose(gam.channel_attention(x), mc, atol=1e-6)
        # spatial gate: grouped conv7x7 C->C/4, BN, ReLU, shuffle, grouped conv7x7 C/4->C, BN, sigmoid
        assert gam.spatial_reduce.groups == 4 and gam.spatial_expand.groups == 4
        assert gam.spatial_reduce.kernel_size == (7, 7) and gam.spatial_reduce.out_channels == 8
        assert gam.spatial_reduce.bias is None and gam.spatial_expand.bias is None
        s = F.relu(gam.spatial_reduce_bn(F.conv2d(x, gam.spatial_reduce.weight, padding=3, groups=4)))
        s = s[:, [0, 2, 4, 6, 1, 3, 5, 7]]
        ms = torch.sigmoid(gam.spatial_expand_bn(F.conv2d(s, gam.spatial_expand.weight, padding=3, groups=4)))
        assert torch.allclose(gam.spatial_attention(x), ms, atol=1e-5)
        expected = x * (1 + mc)
        expected = expected * (1 + gam.spatial_attention(expected))
        assert torch.allclose(gam(x), expected, atol=1e-5)


def test_gam_placement_after_every_stage():
    f = FeatureExtractor(3, small_config(bng_form="plain"))
    gams = [f.gam1, f.gam2, f.gam3, f.gam4]
    assert all(isinstance(g, GlobalAttention) and not g.residual for g in gams)
    assert [g.channels for g in gams] == [64, 128, 256, 512]
    assert isinstance(f.mmm3, ModalityMitigation) and f.mmm3.channels == 256 and f.mmm4.channels == 512


# ------------------------------------------------------------------------------------------------- MMM


def test_mmm_mask_and_mixing(monkeypatch):
    torch.manual_seed(0)
    mmm = ModalityMitigation(32, 16)
    assert count_parameters(mmm) == 2 * 32 * 2 and not list(mmm.buffers())
    x = torch.randn(2, 32, 5, 3) * 3 + 1
    pooled = x.mean(dim=(2, 3))
    w1, w2 = mmm.reduce.weight.reshape(2, 32), mmm.expand.weight.reshape(32, 2)
    expected_mask = torch.sigmoid(F.relu(pooled @ w1.t()) @ w2.t()).reshape(2, 32, 1, 1)
    assert torch.allclose(mmm.mask(x), expected_mask, atol=1e-6)
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), unbiased=False, keepdim=True)
    normalised = (x - mean) / torch.sqrt(var + 1e-5)
    monkeypatch.setattr(mmm, "mask", lambda t: torch.ones_like(t[:, :, :1, :1]))
    assert torch.allclose(mmm(x), x)
    monkeypatch.setattr(mmm, "mask", lambda t: torch.zeros_like(t[:, :, :1, :1]))
    assert torch.allclose(mmm(x), normalised, atol=1e-5)
    monkeypatch.setattr(mmm, "mask", lambda t: torch.full_like(t[:, :, :1, :1], 0.25))
    assert torch.allclose(mmm(x), 0.25 * x + 0.75 * normalised, atol=1e-5)
    mmm.eval()  # no running statistics: eval mode normalises per instance too
    assert torch.allclose(mmm(x), 0.25 * x + 0.75 * normalised, atol=1e-5)


def test_gam_gradient_at_the_first_step_reaches_only_the_zero_initialised_layers_and_what_follows_them():
    """docs/model.md measured: with the last channel Linear and the spatial gate's last BN γ at zero, the first
    backward pass gives exactly zero gradient to everything in front of them (the channel MLP's first Linear, the
    spatial convolutions and the spatial gate's first BN), and a non-zero one to those layers themselves."""
    torch.manual_seed(0)
    gam = GlobalAttention(32, 4, 4)
    x = torch.randn(4, 32, 6, 4)
    (gam(x) * torch.randn(4, 32, 6, 4)).sum().backward()
    zero = {name for name, p in gam.named_parameters() if torch.count_nonzero(p.grad) == 0}
    assert zero == {"channel_mlp.0.weight", "channel_mlp.0.bias", "spatial_reduce.weight",
                    "spatial_reduce_bn.weight", "spatial_reduce_bn.bias", "spatial_expand.weight"}
    assert {name for name, _ in gam.named_parameters()} - zero == {
        "channel_mlp.2.weight", "channel_mlp.2.bias", "spatial_expand_bn.weight", "spatial_expand_bn.bias"}


def test_dense_gam_at_ratio_16_costs_what_grouped_gam_at_ratio_4_costs_in_its_spatial_convolutions():
    """The two readings of GAM's ratio (docs/model.md): SPEC's 4 groups at r = 4, or BAM's r = 16 dense."""
    dense16, grouped4 = GlobalAttention(2048, 16, 1), GlobalAttention(2048, 4, 4)
    convs = ("spatial_reduce", "spatial_expand")
    assert sum(count_parameters(getattr(dense16, c)) for c in convs) == \
        sum(count_parameters(getattr(grouped4, c)) for c in convs) == 2 * 49 * 2048 * 128


def test_bng_as_one_block_at_each_stage_output():
    """``model.bng_placement: stages``: no gate inside the residual blocks; at each stage output a new BN, NAM's
    gate of its input ``sigmoid(w ⊙ BN(x)) ⊙ x`` (eq. 9), then GAM (eq. 10), checked against those formulas."""
    f = FeatureExtractor(3, small_config(bng_placement="stages"))
    blocks = [m for m in f.modules() if isinstance(m, (NAMBasicBlock, NAMBottleneck))]
    assert blocks and not any(block.nam for block in blocks)
    stages = [f.gam1, f.gam2, f.gam3, f.gam4]
    assert all(isinstance(s, StageBNG) for s in stages)
    plain = FeatureExtractor(3, small_config())
    assert count_parameters(f) - count_parameters(plain) == 2 * (64 + 128 + 256 + 512)  # the four new BNs
    torch.manual_seed(0)
    stage = StageBNG(16, 4, 4).eval()
    with torch.no_grad():
        for p in stage.parameters():
            p.normal_()
        x = torch.randn(2, 16, 5, 3)
        bn = stage.channel_gate.bn
        w = (bn.weight.abs() / bn.weight.abs().sum()).reshape(1, -1, 1, 1)
        gated = torch.sigmoid(w * bn(x)) * x
        torch.testing.assert_close(stage(x), stage.global_attention(gated))


def test_mmm_after_the_last_stage_only_rescales_the_pooled_feature():
    """docs/model.md: GAP(MMM(x)) = m ⊙ GAP(x), since IN's output has zero spatial mean in every channel."""
    torch.manual_seed(0)
    mmm = ModalityMitigation(32, 16)
    x = torch.randn(3, 32, 6, 4) * 3 + 1
    with torch.no_grad():
        torch.testing.assert_close(mmm(x).mean(dim=(2, 3)), mmm.mask(x)[:, :, 0, 0] * x.mean(dim=(2, 3)))
