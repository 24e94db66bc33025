"""The network table and the builder every stage, checkpoint restore and dry run use."""


import torch
from torch import nn

from pfanet_cli.modeling.build import NETWORKS, build_networks, parameter_counts
from pfanet_cli.modeling.extractor import FeatureExtractor
from pfanet_cli.modeling.gan import JointDiscriminator, PatchDiscriminator
from tests.helpers import REPO, small_config


def test_build_networks_passes_generator_skip():
    nets = build_networks(small_config(generator_channels=8, generator_res_blocks=1, generator_skip=True), 5,
                          joint_discriminator=False, keys=("generator_rgb2ir", "generator_ir2rgb"))
    assert all(isinstance(g.input_skip, nn.Conv2d) for g in nets.values())
    assert build_networks(small_config(), 5, False, keys=("generator_rgb2ir",))["generator_rgb2ir"].input_skip is None


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



def test_the_network_table_names_every_checkpoint_key_and_the_docs_list_it():
    assert tuple(NETWORKS) == ("generator_rgb2ir", "generator_ir2rgb", "disc_rgb", "disc_ir", "extractor", "agw")
    assert [spec.paper_name for spec in NETWORKS.values()] == ["G_I", "G_R", "D_R", "D_I", "F", "AGW"]
    docs = (REPO / "docs" / "model.md").read_text(encoding="utf-8")
    for spec in NETWORKS.values():
        assert f"| {spec.paper_name} | `{spec.key}` |" in docs, spec.key


def test_parameter_counts_are_keyed_by_paper_name_and_add_up():
    counts = parameter_counts(small_config(), 5, "train-gan")
    assert list(counts) == ["G_I", "G_R", "D_R", "D_I", "total"]
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    assert set(parameter_counts(small_config(), 5, "train-joint")) == {"G_I", "G_R", "D_R", "D_I", "F", "total"}
    assert set(parameter_counts(small_config(method="agw"), 5, "train-agw")) == {"AGW", "total"}
