"""Networks of PFANet: shapes, parameter counts from the definitions, NAM/GAM/MMM behaviour, weight loading,
and the gradient structure of the joint training steps."""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from pfanet_cli.errors import CheckpointError
from pfanet_cli.losses import cross_modality_triplet, identity_cross_entropy
from pfanet_cli.networks import (
    ExtractorOutput,
    FeatureExtractor,
    GlobalAttention,
    JointDiscriminator,
    ModalityMitigation,
    PatchDiscriminator,
    ResnetGenerator,
    build_networks,
    channel_shuffle,
    count_parameters,
    extract_test_features,
    imagenet_weight_file,
    init_gan_weights,
    load_imagenet_weights,
    nam_channel_weights,
    nam_gate,
)
from pfanet_cli.recipes import ModelConfig

SMALL = (64, 32)
FULL = (288, 144)


def small_config(**overrides) -> ModelConfig:
    values = dict(backbone="resnet18", pretrained="none")
    values.update(overrides)
    return ModelConfig(**values)


@pytest.fixture(scope="module")
def resnet50_models():
    """ResNet-50 extractors at 395 ids: full PFANet, BNG only, and the bare baseline."""
    torch.manual_seed(0)
    full = FeatureExtractor(395, ModelConfig(pretrained="none")).eval()
    bng_only = FeatureExtractor(395, ModelConfig(pretrained="none", mmm=False))
    bare = FeatureExtractor(395, ModelConfig(pretrained="none", mmm=False, bng=False))
    return full, bng_only, bare


# ------------------------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize("size,base,blocks", [(FULL, 64, 4), (SMALL, 8, 2), ((48, 16), 8, 1)])
def test_generator_keeps_the_image_size(size, base, blocks):
    torch.manual_seed(0)
    g = ResnetGenerator(base, blocks)
    x = torch.rand(1, 3, *size) * 2 - 1
    y = g(x)
    assert y.shape == x.shape
    assert y.abs().max() <= 1.0
    assert g.model[0].out_channels == base and g.model[0].kernel_size == (7, 7)


def test_generator_structure_and_running_stats():
    g = ResnetGenerator(8, 3)
    norms = [m for m in g.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert norms and all(m.affine and m.track_running_stats for m in norms)
    convs = [m for m in g.modules() if isinstance(m, nn.Conv2d)]
    strided = [m for m in convs if m.stride == (2, 2)]
    assert [m.out_channels for m in strided] == [16, 32]
    ups = [m for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(m.out_channels, m.kernel_size, m.stride) for m in ups] == [(16, (4, 4), (2, 2)), (8, (4, 4), (2, 2))]
    assert sum(1 for m in g.modules() if type(m).__name__ == "_GeneratorResidualBlock") == 3
    # eval mode uses the running statistics: one image's output does not depend on the rest of the batch
    x = torch.rand(3, 3, *SMALL) * 2 - 1
    g.train()
    g(x)
    g.eval()
    with torch.no_grad():
        assert torch.allclose(g(x)[:1], g(x[:1]), atol=1e-6)


def test_generator_input_skip_adds_a_1x1_path_before_the_tanh():
    torch.manual_seed(0)
    plain, skip = ResnetGenerator(8, 2), ResnetGenerator(8, 2, input_skip=True)
    assert count_parameters(skip) - count_parameters(plain) == 3 * 3 + 3
    # the plain generator's state dict is the skip one's without the 1x1 conv: older checkpoints still load
    assert set(skip.state_dict()) - set(plain.state_dict()) == {"input_skip.weight", "input_skip.bias"}
    plain.load_state_dict({k: v for k, v in skip.state_dict().items() if not k.startswith("input_skip")})
    x = torch.rand(2, 3, *SMALL) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(skip(x), torch.tanh(plain.model(x) + skip.input_skip(x)), atol=1e-6)
        assert torch.allclose(plain(x), torch.tanh(plain.model(x)), atol=1e-6)
    skip(x).sum().backward()
    assert skip.input_skip.weight.grad.abs().sum() > 0 and skip.model[0].weight.grad.abs().sum() > 0


def test_build_networks_passes_generator_skip():
    nets = build_networks(small_config(generator_channels=8, generator_res_blocks=1, generator_skip=True), 5,
                          joint_discriminator=False, keys=("generator_rgb2ir", "generator_ir2rgb"))
    assert all(isinstance(g.input_skip, nn.Conv2d) for g in nets.values())
    assert build_networks(small_config(), 5, False, keys=("generator_rgb2ir",))["generator_rgb2ir"].input_skip is None


@pytest.mark.parametrize("size,grid", [(FULL, (9, 4)), (SMALL, (2, 1)), ((32, 64), (1, 2))])
def test_patch_discriminator_shapes(size, grid):
    d = PatchDiscriminator(16)
    assert d(torch.randn(2, 3, *size)).shape == (2, 1, *grid)


def test_patch_discriminator_default_widths_and_small_input_error():
    d = PatchDiscriminator()
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in convs] == [64, 128, 256, 512, 1024, 1]
    assert convs[-1].kernel_size == (3, 3)
    with pytest.raises(ValueError, match="at least 64x32"):
        d(torch.randn(2, 3, 32, 32))


@pytest.fixture(scope="module")
def feature_shapes(resnet50_models):
    """Feature-map shapes F really produces, for ResNet-18 and -50, last stride 1 and 2, both image sizes."""
    _, _, bare50 = resnet50_models
    r50 = {1: bare50, 2: FeatureExtractor(10, ModelConfig(pretrained="none", last_stride=2, bng=False, mmm=False))}
    shapes = {}
    with torch.no_grad():
        for stride in (1, 2):
            r18 = FeatureExtractor(10, small_config(last_stride=stride, bng=False, mmm=False))
            for size in (FULL, SMALL):
                x = torch.randn(1, 3, *size)
                shapes[("resnet18", stride, size)] = tuple(r18.feature_map(x).shape)
                shapes[("resnet50", stride, size)] = tuple(r50[stride].feature_map(x).shape)
    return shapes


def test_feature_map_sizes(feature_shapes):
    assert feature_shapes[("resnet50", 1, FULL)] == (1, 2048, 18, 9)
    assert feature_shapes[("resnet50", 2, FULL)] == (1, 2048, 9, 5)
    assert feature_shapes[("resnet18", 1, SMALL)] == (1, 512, 4, 2)
    assert feature_shapes[("resnet18", 2, SMALL)] == (1, 512, 2, 1)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size,grid", [(FULL, (9, 4)), (SMALL, (2, 1))])
def test_joint_discriminator_accepts_extractor_feature_maps(feature_shapes, backbone, stride, size, grid):
    _, channels, h, w = feature_shapes[(backbone, stride, size)]
    d = JointDiscriminator(channels, base_channels=8, feature_proj=16)
    out = d(torch.randn(2, 3, *size), torch.randn(2, channels, h, w))
    assert out.shape == (2, 1, *grid)


def test_joint_discriminator_default_structure():
    d = JointDiscriminator(2048)
    assert [m.out_channels for m in d.image_branch if isinstance(m, nn.Conv2d)] == [64, 128, 256]
    assert d.feature_branch[0].kernel_size == (1, 1) and d.feature_branch[0].out_channels == 64
    joint_convs = [m for block in d.joint for m in block if isinstance(m, nn.Conv2d)]
    assert [(m.in_channels, m.out_channels) for m in joint_convs] == [(320, 512), (512, 1024)]
    with pytest.raises(ValueError, match="2048-channel"):
        d(torch.randn(1, 3, *SMALL), torch.randn(1, 512, 4, 2))


def test_resnet50_extractor_outputs_at_288x144(resnet50_models):
    full, _, _ = resnet50_models
    assert full.feature_channels == 2048
    with torch.no_grad():
        out = full(torch.randn(1, 3, *FULL))
    assert isinstance(out, ExtractorOutput)
    assert out.feature_map.shape == (1, 2048, 18, 9)
    assert out.pooled.shape == (1, 2048)
    assert out.logits.shape == (1, 395)
    assert out.embedding.shape == (1, 256)
    assert torch.allclose(out.pooled, out.feature_map.mean(dim=(2, 3)), atol=1e-5)


def test_small_extractor_outputs_and_pooled_features():
    torch.manual_seed(0)
    f = FeatureExtractor(7, small_config(embed_dim=32, classifier_hidden=16))
    assert f.feature_channels == 512
    x = torch.randn(4, 3, *SMALL)
    out = f(x)
    assert out.feature_map.shape == (4, 512, 4, 2)
    assert out.logits.shape == (4, 7) and out.embedding.shape == (4, 32)
    f.eval()
    with torch.no_grad():
        assert torch.allclose(f.pooled_features(x), f(x).pooled, atol=1e-6)
        feats = extract_test_features(f, x)
        assert torch.allclose(feats.norm(dim=1), torch.ones(4), atol=1e-5)
        flipped = extract_test_features(f, torch.flip(x, dims=[3]))
        assert torch.allclose(feats, flipped, atol=1e-5)


def test_classifier_order_and_last_stride():
    f = FeatureExtractor(5, small_config(last_stride=1))
    assert [type(m) for m in f.classifier] == [nn.Linear, nn.BatchNorm1d, nn.Dropout, nn.ReLU, nn.Linear]
    assert f.classifier[2].p == 0.5 and f.classifier[0].out_features == 256
    strides = {m.stride for m in f.backbone.layer4[0].modules() if isinstance(m, nn.Conv2d)}
    assert strides == {(1, 1)}
    f2 = FeatureExtractor(5, small_config(last_stride=2))
    assert (2, 2) in {m.stride for m in f2.backbone.layer4[0].modules() if isinstance(m, nn.Conv2d)}


def test_channels_last_input_gives_the_same_output():
    torch.manual_seed(0)
    f = FeatureExtractor(5, small_config()).eval()
    x = torch.randn(2, 3, *SMALL)
    with torch.no_grad():
        a = f(x)
        f_cl = f.to(memory_format=torch.channels_last)
        b = f_cl(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(a.feature_map, b.feature_map, rtol=1e-4, atol=1e-3)
    assert torch.allclose(a.logits, b.logits, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------- parameter counts


def gam_parameters(c: int, ratio: int = 4, groups: int = 4) -> int:
    h = c // ratio
    mlp = c * h + h + h * c + c  # two Linear layers with bias
    convs = h * (c // groups) * 49 + c * (h // groups) * 49  # bias-free grouped 7x7 convs
    bns = 2 * h + 2 * c
    return mlp + convs + bns


def mmm_parameters(c: int, ratio: int = 16) -> int:
    return 2 * c * (c // ratio)  # two bias-free 1x1 convs, no IN parameters


def test_parameter_counts_resnet50(resnet50_models):
    full, bng_only, bare = resnet50_models
    stages = [256, 512, 1024, 2048]
    assert count_parameters(full) - count_parameters(bng_only) == mmm_parameters(1024) + mmm_parameters(2048)
    assert count_parameters(bng_only) - count_parameters(bare) == sum(gam_parameters(c) for c in stages)
    # NAM reuses the blocks' BN gammas: the ResNet trunk is the same size with and without BNG
    assert count_parameters(full.backbone) == count_parameters(bare.backbone)
    tv = torchvision.models.resnet50()
    assert count_parameters(bare.backbone) == count_parameters(tv) - count_parameters(tv.fc)
    heads = (2048 * 256 + 256) + 2 * 256 + (256 * 395 + 395) + (2048 * 256 + 256)
    assert count_parameters(bare) - count_parameters(bare.backbone) == heads


@pytest.mark.parametrize("ratio,groups,mmm_ratio", [(4, 4, 16), (8, 2, 8)])
def test_parameter_counts_follow_the_recipe_keys(ratio, groups, mmm_ratio):
    cfg = small_config(gam_ratio=ratio, gam_groups=groups, mmm_ratio=mmm_ratio)
    bare = count_parameters(FeatureExtractor(10, dataclasses.replace(cfg, bng=False, mmm=False)))
    with_mmm = count_parameters(FeatureExtractor(10, dataclasses.replace(cfg, bng=False)))
    with_bng = count_parameters(FeatureExtractor(10, dataclasses.replace(cfg, mmm=False)))
    assert with_mmm - bare == mmm_parameters(256, mmm_ratio) + mmm_parameters(512, mmm_ratio)
    assert with_bng - bare == sum(gam_parameters(c, ratio, groups) for c in (64, 128, 256, 512))


def test_generator_and_discriminator_counts():
    c = 64
    g = 3 * c * 49 + 2 * c
    g += c * 2 * c * 16 + 2 * 2 * c + 2 * c * 4 * c * 16 + 2 * 4 * c
    g += 4 * (2 * (4 * c) ** 2 * 9 + 2 * 2 * 4 * c)
    g += 4 * c * 2 * c * 16 + 2 * 2 * c + 2 * c * c * 16 + 2 * c + c * 3 * 49
    assert count_parameters(ResnetGenerator(64, 4)) == g
    widths = [3, 64, 128, 256, 512, 1024]
    d = sum(widths[i] * widths[i + 1] * 16 + widths[i + 1] for i in range(5)) + 1024 * 9
    assert count_parameters(PatchDiscriminator(64)) == d
    j = sum(widths[i] * widths[i + 1] * 16 + widths[i + 1] for i in range(3))
    j += 2048 * 64 + 64 + 320 * 512 * 16 + 512 + 512 * 1024 * 16 + 1024 + 1024 * 9
    assert count_parameters(JointDiscriminator(2048, 64, 64)) == j


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


# --------------------------------------------------------------------------------- training structure


def test_every_extractor_parameter_gets_a_gradient_and_groups_partition():
    torch.manual_seed(0)
    f = FeatureExtractor(6, small_config())
    out = f(torch.randn(4, 3, *SMALL))
    (out.logits.sum() + out.embedding.sum() + out.feature_map.mean()).backward()
    assert all(p.grad is not None for p in f.parameters())
    groups = f.parameter_groups()
    ids = {name: {id(p) for p in params} for name, params in groups.items()}
    assert set(groups) == {"backbone", "head"}
    assert not ids["backbone"] & ids["head"]
    assert ids["backbone"] | ids["head"] == {id(p) for p in f.parameters()}
    assert ids["head"] == {id(p) for p in list(f.classifier.parameters()) + list(f.embedder.parameters())}


def test_joint_update_structure_gradients():
    torch.manual_seed(0)
    g = ResnetGenerator(8, 1)
    init_gan_weights(g)
    f = FeatureExtractor(3, small_config())
    x_rgb, x_ir = torch.rand(6, 3, *SMALL) * 2 - 1, torch.rand(6, 3, *SMALL) * 2 - 1
    y = torch.tensor([0, 0, 1, 1, 2, 2])

    # F step: X'ir made without gradient; F's losses never reach G
    with torch.no_grad():
        fake = g(x_rgb)
    out_fake, out_real = f(fake), f(x_ir)
    loss = identity_cross_entropy(torch.cat([out_fake.logits, out_real.logits]), torch.cat([y, y]))
    loss = loss + cross_modality_triplet(out_real.embedding, y, out_fake.embedding, y, 1.0)
    loss = loss + cross_modality_triplet(out_fake.embedding, y, out_real.embedding, y, 1.0)
    loss.backward()
    assert all(p.grad is None for p in g.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in f.parameters())

    def generator_grad_norm(term):
        g.zero_grad(set_to_none=True)
        f.zero_grad(set_to_none=True)
        fake = g(x_rgb)
        out_fake, out_real = f(fake), f(x_ir)
        term(out_fake, out_real).backward()
        grads = [p.grad for p in g.parameters()]
        assert all(gr is not None for gr in grads)
        return sum(gr.abs().sum().item() for gr in grads)

    ce = generator_grad_norm(lambda fo, ro: 0.1 * identity_cross_entropy(fo.logits, y))
    tri = generator_grad_norm(
        lambda fo, ro: 0.1
        * 0.5
        * (
            cross_modality_triplet(fo.embedding, y, ro.embedding, y, 1.0)
            + cross_modality_triplet(ro.embedding, y, fo.embedding, y, 1.0)
        )
    )
    assert ce > 0 and tri > 0


# ------------------------------------------------------------------------------------- weights and build


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    old = torch.hub.get_dir()
    hub = tmp_path / "hub"
    torch.hub.set_dir(str(hub))

    def no_download(*args, **kwargs):
        raise AssertionError("nothing may be downloaded")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    yield hub
    torch.hub.set_dir(old)


def _assert_backbone_equals(f: FeatureExtractor, state: dict) -> None:
    own = f.backbone.state_dict()
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(own[key], value), key


def test_load_weights_from_a_path(tmp_path, hub_dir):
    torch.manual_seed(1)
    state = torchvision.models.resnet18().state_dict()
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    f = FeatureExtractor(4, small_config())
    load_imagenet_weights(f, str(path))
    _assert_backbone_equals(f, state)


def test_load_weights_from_the_hub_cache(hub_dir):
    torch.manual_seed(2)
    state = torchvision.models.resnet18().state_dict()
    expected = imagenet_weight_file("resnet18")
    assert expected == hub_dir / "checkpoints" / "resnet18-f37072fd.pth"
    expected.parent.mkdir(parents=True)
    torch.save(state, expected)
    f = FeatureExtractor(4, small_config(pretrained="imagenet"))
    load_imagenet_weights(f, "imagenet")
    _assert_backbone_equals(f, state)


def test_missing_imagenet_weights_name_the_file(hub_dir):
    f = FeatureExtractor(4, small_config())
    before = {k: v.clone() for k, v in f.backbone.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_imagenet_weights(f, "imagenet")
    message = str(info.value)
    assert str(hub_dir / "checkpoints" / "resnet18-f37072fd.pth") in message and "\n" not in message
    with pytest.raises(CheckpointError):
        build_networks(small_config(pretrained="imagenet"), 4, joint_discriminator=True)
    load_imagenet_weights(f, "none")
    assert all(torch.equal(v, before[k]) for k, v in f.backbone.state_dict().items())


def test_bad_weight_files_raise_checkpoint_errors(tmp_path, hub_dir):
    f = FeatureExtractor(4, small_config())
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_imagenet_weights(f, str(corrupt))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_imagenet_weights(f, str(tmp_path / "absent.pth"))
    other = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), other)
    with pytest.raises(CheckpointError, match="resnet18"):
        load_imagenet_weights(f, str(other))
    truncated = tmp_path / "truncated.pth"
    torch.save(torchvision.models.resnet18().state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(CheckpointError):
        load_imagenet_weights(f, str(truncated))


def test_build_networks_keys_types_and_init():
    torch.manual_seed(0)
    cfg = small_config(generator_channels=16, generator_res_blocks=2, disc_channels=16, joint_feature_channels=8)
    nets = build_networks(cfg, 5, joint_discriminator=True)
    assert list(nets) == ["generator_rgb2ir", "generator_ir2rgb", "disc_rgb", "disc_ir", "extractor"]
    assert isinstance(nets["disc_ir"], JointDiscriminator) and nets["disc_ir"].feature_channels == 512
    assert isinstance(nets["disc_rgb"], PatchDiscriminator)
    assert isinstance(nets["extractor"], FeatureExtractor) and nets["extractor"].num_classes == 5
    plain = build_networks(cfg, 5, joint_discriminator=False)
    assert isinstance(plain["disc_ir"], PatchDiscriminator)
    g = nets["generator_rgb2ir"]
    weights = torch.cat([m.weight.flatten() for m in g.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))])
    assert abs(weights.std().item() - 0.02) < 0.001 and abs(weights.mean().item()) < 0.001
    norm_weights = torch.cat([m.weight for m in g.modules() if isinstance(m, nn.InstanceNorm2d)])
    assert abs(norm_weights.mean().item() - 1.0) < 0.01 and 0.005 < norm_weights.std().item() < 0.04
    d = nets["disc_ir"]
    assert all(torch.all(m.bias == 0) for m in d.modules() if isinstance(m, nn.Conv2d) and m.bias is not None)
