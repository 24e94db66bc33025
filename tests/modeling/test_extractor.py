"""The feature extractor F: feature maps and outputs, heads, channels-last, parameter counts from the
definitions, and the gradient structure of the joint training steps."""

import dataclasses

import pytest
import torch
import torchvision
from torch import nn

from pfanet_cli.modeling.build import count_parameters
from pfanet_cli.modeling.extractor import ExtractorOutput, FeatureExtractor, extract_test_features
from pfanet_cli.modeling.gan import ResnetGenerator, init_gan_weights
from pfanet_cli.modeling.losses import cross_modality_triplet, identity_cross_entropy
from tests.helpers import FULL, SMALL, small_config


def test_feature_map_sizes(feature_shapes):
    assert feature_shapes[("resnet50", 1, FULL)] == (1, 2048, 18, 9)
    assert feature_shapes[("resnet50", 2, FULL)] == (1, 2048, 9, 5)
    assert feature_shapes[("resnet18", 1, SMALL)] == (1, 512, 4, 2)
    assert feature_shapes[("resnet18", 2, SMALL)] == (1, 512, 2, 1)


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


@pytest.mark.parametrize("input_norm", ["imagenet", "none"])
def test_the_first_convolution_sees_imagenet_statistics_or_the_images_as_given(input_norm):
    """``model.input_norm: imagenet``: F maps G's [-1, 1] images to what torchvision's ImageNet weights were trained
    on, ``Normalize(mean, std)`` of the [0, 1] image; ``none`` feeds them unchanged."""
    torch.manual_seed(0)
    f = FeatureExtractor(5, small_config(input_norm=input_norm))
    seen = []
    f.backbone.conv1.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    x = torch.rand(2, 3, *SMALL) * 2 - 1
    f(x)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    expected = torchvision.transforms.functional.normalize((x + 1) / 2, mean, std) if input_norm == "imagenet" else x
    torch.testing.assert_close(seen[0], expected)


def test_input_normalisation_leaves_the_state_dict_and_parameters_alone():
    a, b = FeatureExtractor(5, small_config()), FeatureExtractor(5, small_config(input_norm="none"))
    assert a.state_dict().keys() == b.state_dict().keys() and count_parameters(a) == count_parameters(b)


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
