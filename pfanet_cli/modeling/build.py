"""The one table of the networks (checkpoint key, paper name, what it is, how it is built): PFANet's five and
AGW's one, and the builder every stage, checkpoint restore, dry run and benchmark uses.

The keys are the state-dict names of SPEC §4's checkpoint format; they never change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from torch import nn

from pfanet_cli.config import ModelConfig
from pfanet_cli.modeling.agw import AgwNet
from pfanet_cli.modeling.extractor import FeatureExtractor, feature_channels
from pfanet_cli.modeling.gan import (
    GreyGenerator,
    JointDiscriminator,
    PatchDiscriminator,
    ResnetGenerator,
    init_gan_weights,
)
from pfanet_cli.modeling.pretrained import load_agw_imagenet_weights, load_imagenet_weights

GENERATOR_RGB2IR = "generator_rgb2ir"
GENERATOR_IR2RGB = "generator_ir2rgb"
DISC_RGB = "disc_rgb"
DISC_IR = "disc_ir"
EXTRACTOR = "extractor"
AGW = "agw"

Builder = Callable[[ModelConfig, int, bool], nn.Module]
"""(model config, number of classes, joint discriminator?) -> a new network."""


@dataclass(frozen=True)
class NetworkSpec:
    key: str
    """State-dict name in checkpoints."""
    paper_name: str
    description: str
    build: Builder


def _generator(config: ModelConfig, num_classes: int, joint: bool) -> nn.Module:
    if config.pixel_alignment == "grey":
        return GreyGenerator()
    return ResnetGenerator(config.generator_channels, config.generator_res_blocks, config.generator_skip,
                           config.generator_test_norm)


def _plain_discriminator(config: ModelConfig, num_classes: int, joint: bool) -> nn.Module:
    return PatchDiscriminator(config.disc_channels)


def _ir_discriminator(config: ModelConfig, num_classes: int, joint: bool) -> nn.Module:
    """The joint image–feature discriminator in train-joint (it needs F's channel count, not F itself);
    a plain PatchGAN in train-gan."""
    if joint:
        return JointDiscriminator(feature_channels(config.backbone), config.disc_channels,
                                  config.joint_feature_channels)
    return PatchDiscriminator(config.disc_channels)


def _extractor(config: ModelConfig, num_classes: int, joint: bool) -> nn.Module:
    return FeatureExtractor(num_classes, config)


def _agw(config: ModelConfig, num_classes: int, joint: bool) -> nn.Module:
    return AgwNet(num_classes, config)


NETWORKS: dict[str, NetworkSpec] = {spec.key: spec for spec in (
    NetworkSpec(GENERATOR_RGB2IR, "G_I", "generator RGB -> IR", _generator),
    NetworkSpec(GENERATOR_IR2RGB, "G_R", "generator IR -> RGB", _generator),
    NetworkSpec(DISC_RGB, "D_R", "PatchGAN discriminator of RGB images", _plain_discriminator),
    NetworkSpec(DISC_IR, "D_I", "discriminator of IR images (joint image-feature in train-joint)", _ir_discriminator),
    NetworkSpec(EXTRACTOR, "F", "feature extractor (ResNet + BNG + MMM, classifier and embedder)", _extractor),
    NetworkSpec(AGW, "AGW", "AGW's two-stream ResNet (non-local blocks, GeM, BN-neck and classifier)", _agw),
)}
NETWORK_KEYS = (GENERATOR_RGB2IR, GENERATOR_IR2RGB, DISC_RGB, DISC_IR, EXTRACTOR)
"""PFANet's five networks."""
GENERATOR_KEYS = (GENERATOR_RGB2IR, GENERATOR_IR2RGB)
STAGE_NETWORKS = {"train-gan": (GENERATOR_RGB2IR, GENERATOR_IR2RGB, DISC_RGB, DISC_IR), "train-joint": NETWORK_KEYS,
                  "train-agw": (AGW,)}
"""The networks each training stage builds and checkpoints."""
GREY_JOINT_NETWORKS = (GENERATOR_RGB2IR, EXTRACTOR)
"""What train-joint builds with ``model.pixel_alignment: grey``: the fixed grey G_I and F (no G_R, no D)."""
GENERATOR_ARCHITECTURE = ("generator_channels", "generator_res_blocks", "generator_skip", "pixel_alignment")
"""The ``model`` keys G_I and G_R are built from."""
GAN_ARCHITECTURE = GENERATOR_ARCHITECTURE + ("disc_channels",)
"""The ``model`` keys train-gan's networks are built from (F's keys do not concern it)."""
DISC_RGB_WARMUP = "disc_rgb_warmup"
DISC_IR_WARMUP = "disc_ir_warmup"
WARMUP_DISCRIMINATORS = (DISC_RGB_WARMUP, DISC_IR_WARMUP)
"""train-joint's plain PatchGANs of the generator warm-up (``joint.generator_warmup_iterations`` > 0 only;
AlignGAN's ``D_rgb_warmup`` and ``D_ir_warmup``): not among the five networks of the paper and SPEC."""


def build_warmup_discriminators(config: ModelConfig) -> dict[str, nn.Module]:
    """Fresh plain PatchGANs for the generator warm-up, as D_R and train-gan's D_I are built."""
    networks = {key: _plain_discriminator(config, 0, False) for key in WARMUP_DISCRIMINATORS}
    for net in networks.values():
        init_gan_weights(net)
    return networks


def build_networks(config: ModelConfig, num_classes: int, joint_discriminator: bool, load_pretrained: bool = True,
                   keys: Iterable[str] = NETWORK_KEYS) -> dict[str, nn.Module]:
    """The networks named in ``keys`` (default: PFANet's five), in table order, initialised: G and D with
    N(0, 0.02), F's trunk and AGW's stems and layers from ``config.pretrained`` when ``load_pretrained``
    (otherwise torchvision's random initialisation, e.g. before loading a checkpoint)."""
    wanted = set(keys)
    networks = {key: spec.build(config, num_classes, joint_discriminator)
                for key, spec in NETWORKS.items() if key in wanted}
    for key, net in networks.items():
        if key == EXTRACTOR:
            if load_pretrained:
                load_imagenet_weights(net, config.pretrained)
        elif key == AGW:
            if load_pretrained:
                load_agw_imagenet_weights(net, config.pretrained)
        else:
            init_gan_weights(net)
    return networks


def stage_networks(config: ModelConfig, stage: str) -> tuple[str, ...]:
    """The networks ``stage`` builds and checkpoints for ``config``."""
    if stage == "train-joint" and config.pixel_alignment == "grey":
        return GREY_JOINT_NETWORKS
    return STAGE_NETWORKS[stage]


def count_parameters(module: nn.Module) -> int:
    """Number of parameter elements of ``module`` (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in module.parameters())


def parameter_counts(config: ModelConfig, num_classes: int, stage: str) -> dict[str, int]:
    """Parameter counts by paper name of every network a stage builds (no data, no pretrained weights),
    plus their total."""
    networks = build_networks(config, num_classes, joint_discriminator=stage == "train-joint",
                              load_pretrained=False, keys=stage_networks(config, stage))
    counts = {NETWORKS[key].paper_name: count_parameters(net) for key, net in networks.items()}
    counts["total"] = sum(counts.values())
    return counts
