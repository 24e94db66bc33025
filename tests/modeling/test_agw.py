"""AGW's network against a restatement of the network its code builds (``mangye16/Cross-Modal-Re-ID-baseline``,
``model.py`` ``embed_net(no_local='on', gm_pool='on')`` and ``resnet.py``), written out here from that code's
structure: the same parameters (names mapped, shapes equal), the same outputs with the same weights, and the
parameters AGW's module holds but never uses."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from pfanet_cli.cli import main
from pfanet_cli.modeling.agw import AgwNet, NonLocal, gem_pool
from pfanet_cli.modeling.build import AGW, build_networks, count_parameters, parameter_counts
from tests.helpers import small_config

SYSU_CLASSES = 395


class RefBottleneck(nn.Module):
    """AGW resnet.py's Bottleneck: 1x1, 3x3 (stride), 1x1 x4, each with BN; the downsample when shapes change."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class RefResNet50(nn.Module):
    """AGW resnet.py's ResNet(Bottleneck, [3, 4, 6, 3], last_conv_stride=1): a trunk without fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes, stages = 64, []
        for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 1)):
            layer = [RefBottleneck(inplanes, planes, stride)] + [RefBottleneck(planes * 4, planes)
                                                                 for _ in range(blocks - 1)]
            inplanes = planes * 4
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages

    def stem(self, x):
        return self.maxpool(torch.relu(self.bn1(self.conv1(x))))


class RefNonLocal(nn.Module):
    """AGW model.py's Non_local with inter_channels = reduc_ratio // reduc_ratio = 1, its explicit N x N product."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.g = nn.Sequential(nn.Conv2d(channels, 1, 1))
        self.W = nn.Sequential(nn.Conv2d(1, channels, 1), nn.BatchNorm2d(channels))
        self.theta = nn.Conv2d(channels, 1, 1)
        self.phi = nn.Conv2d(channels, 1, 1)

    def forward(self, x):
        b = x.shape[0]
        g_x = self.g(x).reshape(b, 1, -1).permute(0, 2, 1)
        f = torch.matmul(self.theta(x).reshape(b, 1, -1).permute(0, 2, 1), self.phi(x).reshape(b, 1, -1))
        y = torch.matmul(f / f.shape[-1], g_x).permute(0, 2, 1).reshape(b, 1, *x.shape[2:])
        return self.W(y) + x


class RefEmbedNet(nn.Module):
    """AGW model.py's embed_net (no_local='on', gm_pool='on'): each modality module and the base hold a whole
    ResNet-50; the stems of the first two and the layers of the third are used."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.thermal_module, self.visible_module, self.base_resnet = nn.Module(), nn.Module(), nn.Module()
        self.thermal_module.thermal = RefResNet50()
        self.visible_module.visible = RefResNet50()
        self.base_resnet.base = RefResNet50()
        self.NL_1 = nn.ModuleList()
        self.NL_2 = nn.ModuleList([RefNonLocal(512) for _ in range(2)])
        self.NL_3 = nn.ModuleList([RefNonLocal(1024) for _ in range(3)])
        self.NL_4 = nn.ModuleList()
        self.NL_idx = {2: [2, 3], 3: [3, 4, 5]}
        self.bottleneck = nn.BatchNorm1d(2048)
        self.bottleneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(2048, classes, bias=False)

    def forward(self, x1, x2):
        x = torch.cat([self.visible_module.visible.stem(x1), self.thermal_module.thermal.stem(x2)])
        base = self.base_resnet.base
        for stage in range(1, 5):
            done = 0
            for i, block in enumerate(getattr(base, f"layer{stage}")):
                x = block(x)
                if i in self.NL_idx.get(stage, []):
                    x = getattr(self, f"NL_{stage}")[done](x)
                    done += 1
        x_pool = (torch.mean(x.reshape(*x.shape[:2], -1) ** 3.0, dim=-1) + 1e-12) ** (1 / 3.0)
        feat = self.bottleneck(x_pool)
        return x_pool, feat, self.classifier(feat)


USED = ("visible_module.visible.conv1.", "visible_module.visible.bn1.", "thermal_module.thermal.conv1.",
        "thermal_module.thermal.bn1.", "base_resnet.base.layer", "NL_", "bottleneck.", "classifier.")


def mapped(name: str) -> str:
    """A RefEmbedNet parameter's name in AgwNet."""
    for old, new in (("visible_module.visible.", "visible."), ("thermal_module.thermal.", "thermal."),
                     ("base_resnet.base.", "backbone."), (".g.0.", ".g."), (".W.0.", ".project."),
                     (".W.1.", ".norm.")):
        name = name.replace(old, new)
    for stage in (2, 3):
        name = name.replace(f"NL_{stage}.", f"non_local{stage}.")
    return name


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return RefEmbedNet(SYSU_CLASSES), AgwNet(SYSU_CLASSES, small_config(backbone="resnet50", method="agw"))


def test_parameters_are_those_agws_network_uses_names_and_shapes(nets):
    reference, mine = nets
    used = {mapped(n): tuple(p.shape) for n, p in reference.named_parameters() if n.startswith(USED)}
    assert used == {n: tuple(p.shape) for n, p in mine.named_parameters()}
    counts = {"agw_module": count_parameters(reference), "used": sum(int(torch.tensor(s).prod()) for s in used.values()),
              "mine": count_parameters(mine)}
    assert counts == {"agw_module": 71_365_839, "used": 24_359_311, "mine": 24_359_311}
    assert parameter_counts(small_config(backbone="resnet50", method="agw"), SYSU_CLASSES, "train-agw") == {
        "AGW": 24_359_311, "total": 24_359_311}


def test_the_recipes_dry_run_with_those_counts(capsys):
    for recipe, count in (("sysu_agw.yaml", 24_359_311), ("sysu_caj.yaml", 24_359_311), ("regdb_agw.yaml", 23_972_239)):
        assert main(["train-agw", recipe, "--dry-run", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["parameters"] == {"AGW": count, "total": count}


def test_the_used_parameters_are_exactly_those_that_get_gradients(nets):
    reference, _ = nets
    reference.train()
    reference.zero_grad()
    _, _, logits = reference(torch.randn(2, 3, 64, 32), torch.randn(2, 3, 64, 32))
    logits.sum().backward()
    with_grad = {n for n, p in reference.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, _ in reference.named_parameters() if n.startswith(USED)} - {"bottleneck.bias"}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_the_same_weights_give_agws_outputs(nets, training):
    reference, mine = nets
    generator = torch.Generator().manual_seed(1)
    unit = torch.rand(4, 3, 64, 32, generator=generator) * 2 - 1
    with torch.no_grad():  # every norm's affine parameters away from their initial values
        for name, p in mine.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1 + (1.0 if name.endswith("weight") else 0.0))
        for module in mine.modules():  # running statistics of these images, so eval mode keeps a sane scale
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                module.momentum = None
        mine.train()(unit[:2], unit[2:])
    ours = mine.state_dict()
    reference.load_state_dict({n: ours.get(mapped(n), t) for n, t in reference.state_dict().items()})
    reference.train(training)
    mine.train(training)
    normalised = unit * mine.input_scale + mine.input_shift  # what AGW's Normalize(ImageNet) gives
    with torch.no_grad():
        x_pool, feat, logits = reference(normalised[:2], normalised[2:])
        out = mine(unit[:2], unit[2:])
        torch.testing.assert_close(out.pooled, x_pool, rtol=1e-3, atol=1e-4)
        # in train mode the BN-neck divides by the spread of 4 samples, which magnifies float32 rounding
        torch.testing.assert_close(out.neck, feat, rtol=1e-3, atol=5e-4)
        torch.testing.assert_close(out.logits, logits, rtol=1e-3, atol=1e-4)
        if not training:  # AGW's test output: l2norm(x_pool), l2norm(feat), rows through their modality's stem
            visible = torch.tensor([True, True, False, False])
            fc = mine.test_features(unit, visible)
            mine.configure_test("pool", flip=False)
            pool = mine.test_features(unit, visible)
            mine.configure_test("fc", flip=False)
            torch.testing.assert_close(fc, torch.nn.functional.normalize(feat), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(pool, torch.nn.functional.normalize(x_pool), rtol=1e-4, atol=1e-5)


def test_non_local_is_agws_product_and_starts_as_the_identity():
    torch.manual_seed(2)
    block, reference = NonLocal(16, 1), RefNonLocal(16)
    x = torch.randn(3, 16, 6, 4)
    assert torch.equal(block(x), x)  # BN weight and bias start at zero
    with torch.no_grad():
        for p in block.parameters():
            p.normal_()
    names = {"g.0": "g", "W.0": "project", "W.1": "norm", "theta": "theta", "phi": "phi"}
    reference.load_state_dict({n: block.state_dict()[names[n.rsplit(".", 1)[0]] + "." + n.rsplit(".", 1)[1]]
                               for n in reference.state_dict()})
    block.eval()
    reference.eval()
    torch.testing.assert_close(block(x), reference(x), rtol=1e-5, atol=1e-5)


def test_non_local_placement_width_and_pooling_switches():
    r50 = AgwNet(10, small_config(backbone="resnet50", method="agw"))
    assert r50.non_local_after == {2: [2, 3], 3: [3, 4, 5]}
    r18 = AgwNet(10, small_config(method="agw"))
    assert r18.non_local_after == {2: [1], 3: [1]} and len(r18.non_local2) == len(r18.non_local3) == 1
    half = AgwNet(10, small_config(method="agw", non_local="half"))
    one = count_parameters(r18)
    # per block: g, theta, phi C -> i (+ bias), W i -> C (+ bias), BN 2C
    per_block = {c: {i: 3 * (c * i + i) + (i * c + c) + 2 * c for i in (1, c // 2)} for c in (128, 256)}
    assert count_parameters(half) - one == sum(per_block[c][c // 2] - per_block[c][1] for c in (128, 256))
    off = AgwNet(10, small_config(method="agw", non_local="off"))
    assert one - count_parameters(off) == per_block[128][1] + per_block[256][1]
    maps = torch.rand(2, 4, 3, 2)
    torch.testing.assert_close(gem_pool(maps), (maps.pow(3).mean(dim=(2, 3)) + 1e-12).pow(1 / 3))


def test_imagenet_weights_go_into_both_stems_and_the_shared_layers(tmp_path):
    from torchvision.models import resnet18  # the file a user would put in the hub cache

    torch.manual_seed(3)
    reference = resnet18()
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    net, = build_networks(small_config(method="agw", pretrained=str(path)), 5, False, keys=[AGW]).values()
    for stem in (net.visible, net.thermal):
        assert torch.equal(stem.conv1.weight, reference.conv1.weight) and torch.equal(stem.bn1.bias, reference.bn1.bias)
    assert torch.equal(net.backbone.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)
