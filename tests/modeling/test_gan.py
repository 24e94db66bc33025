"""The GAN networks: generator and discriminator shapes, structure, small-input errors and parameter counts."""


import pytest
import torch
from torch import nn

from pfanet_cli.modeling.build import count_parameters
from pfanet_cli.errors import UsageError
from pfanet_cli.modeling.gan import (
    GeneratorNorm,
    JointDiscriminator,
    PatchDiscriminator,
    ResnetGenerator,
    generator_test_norm,
    set_generator_test_norm,
)
from tests.helpers import FULL, SMALL


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


def test_generator_test_norm_instance_normalises_each_image_by_itself_in_eval_mode():
    """``model.generator_test_norm``: in eval mode G's InstanceNorm uses the running statistics of training
    (``running``, PyTorch's and AlignGAN's behaviour) or each image's own statistics (``instance``), which gives
    what train mode gives, without updating the running statistics; both map one image whatever the batch."""
    torch.manual_seed(0)
    g = ResnetGenerator(8, 2)
    x = torch.rand(3, 3, *SMALL) * 2 - 1
    for _ in range(3):
        g(torch.rand(4, 3, *SMALL))  # running statistics of other images
    g.eval()
    stats = {k: v.clone() for k, v in g.state_dict().items() if "running" in k}
    with torch.no_grad():
        running = g(x)
        set_generator_test_norm(g, "instance")
        instance = g(x)
        assert generator_test_norm(g) == "instance"
        assert torch.allclose(instance[:1], g(x[:1]), atol=1e-6)
        g.train()
        per_image = g(x)
    assert not torch.allclose(running, instance, atol=1e-3)
    torch.testing.assert_close(instance, per_image)
    after = {k: v for k, v in g.state_dict().items() if "running" in k}
    assert not all(torch.equal(stats[k], after[k]) for k in stats)  # only the train-mode call moved them
    g2 = ResnetGenerator(8, 2, test_norm="instance")
    assert all(m.test_norm == "instance" for m in g2.modules() if isinstance(m, GeneratorNorm))
    with pytest.raises(UsageError, match="must be one of running, instance"):
        set_generator_test_norm(g2, "batch")


def test_eval_with_instance_statistics_leaves_the_running_statistics_alone():
    g = ResnetGenerator(8, 1, test_norm="instance").eval()
    before = {k: v.clone() for k, v in g.state_dict().items()}
    with torch.no_grad():
        g(torch.rand(2, 3, *SMALL) * 2 - 1)
    assert all(torch.equal(before[k], v) for k, v in g.state_dict().items())
