"""ImageNet weights for F: from a path or the hub cache, never downloaded, clear errors otherwise."""


import pytest
import torch
import torchvision

from pfanet_cli.errors import CheckpointError
from pfanet_cli.modeling.build import build_networks
from pfanet_cli.modeling.extractor import FeatureExtractor
from pfanet_cli.modeling.pretrained import imagenet_weight_file, load_imagenet_weights
from tests.helpers import small_config

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
