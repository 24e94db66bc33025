"""train-joint: feature warm-up, then joint PFANet training (SPEC §4).

Phase ``warmup``: F learns on real IR and fake IR (G_I(RGB), made without gradient) with identity
cross-entropy and the cross-modality triplet loss. Phase ``joint``, each iteration in order:

1. F step (SGD): CE on fake and real IR, triplet both ways, and 0.1 x LSGAN(D_I(x_ir, f(x'_ir)) -> real);
2. G step (Adam): adversarial terms of D_I (on the pair (x'_ir, f(x'_ir))) and D_R, cycle L1, and the
   0.1-weighted CE and triplet of F on x'_ir; F is in the graph but not stepped;
3. D steps (Adam): D_R plain; D_I real pair (x_ir, f(x_ir)) against the three fake pairs of the
   paper's eq. 5 (and optionally AlignGAN's mismatched-identity pair); features detached.

All learning rates decay by ``joint.lr_decay_factor`` after ``joint.lr_decay_at`` joint iterations.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pfanet_cli.engine.batches import Batch, ImagePool
from pfanet_cli.engine.checkpoint import check_architecture, load_checkpoint, load_network_state, require_networks
from pfanet_cli.engine.runtime import no_sync, optimise, unwrap
from pfanet_cli.engine.trainer import Phase, StageParts, StageTrainer
from pfanet_cli.modeling.build import (
    DISC_IR,
    DISC_RGB,
    EXTRACTOR,
    GENERATOR_IR2RGB,
    GENERATOR_KEYS,
    GENERATOR_RGB2IR,
    build_networks,
)
from pfanet_cli.modeling.extractor import ExtractorOutput
from pfanet_cli.modeling.losses import cross_modality_triplet, cycle_loss, identity_cross_entropy, lsgan_loss

GENERATOR_ARCHITECTURE = ("generator_channels", "generator_res_blocks", "generator_skip")
"""The model keys the generators of an --init-gan checkpoint must share with the recipe."""


def load_generators(path: Path, networks: dict[str, nn.Module], architecture: dict[str, Any]) -> None:
    """Start G_I and G_R from a train-gan (or train-joint) checkpoint."""
    payload = load_checkpoint(path)
    require_networks(payload, path, GENERATOR_KEYS, "train-joint --init-gan")
    check_architecture(payload, path, architecture, GENERATOR_ARCHITECTURE,
                       problem=f"--init-gan {path} has other generators")
    for key in GENERATOR_KEYS:
        load_network_state(networks[key], payload["networks"][key], key, path)


class JointTrainer(StageTrainer):
    stage = "train-joint"

    def __init__(self, *args: Any, init_gan: Path | None = None, **kwargs: Any) -> None:
        self.init_gan = init_gan
        super().__init__(*args, **kwargs)
        self.margin = self.recipe.joint.resolved_margin()

    # --- stage description -----------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        return [Phase("warmup", self.recipe.joint.warmup_iterations), Phase("joint", self.recipe.joint.iterations)]

    def build(self, fresh: bool) -> StageParts:
        recipe, joint = self.recipe, self.recipe.joint
        nets = build_networks(recipe.model, self.split.num_classes, joint_discriminator=True, load_pretrained=fresh)
        if self.init_gan is not None and fresh:
            load_generators(Path(self.init_gan), nets, self.architecture())
        if joint.triplet_feature == "pooled":
            nets[EXTRACTOR].embedder.requires_grad_(False)  # no loss uses it, and DDP must not wait for it
        nets = self.place(nets, sync_bn=(EXTRACTOR,))
        groups = unwrap(nets[EXTRACTOR]).parameter_groups()
        adam = {"lr": joint.lr_gan, "betas": (recipe.gan.beta1, recipe.gan.beta2)}
        optimizers = {
            "extractor": torch.optim.SGD(
                [{"params": groups["backbone"], "lr": joint.lr_backbone},
                 {"params": groups["head"], "lr": joint.lr_head}],
                momentum=joint.momentum, nesterov=joint.nesterov, weight_decay=joint.weight_decay),
            "generators": torch.optim.Adam(itertools.chain(*(nets[k].parameters() for k in GENERATOR_KEYS)), **adam),
            "discriminators": torch.optim.Adam(
                itertools.chain(nets[DISC_RGB].parameters(), nets[DISC_IR].parameters()), **adam),
        }
        return StageParts(
            networks=nets,
            optimizers=optimizers,
            schedulers={key: torch.optim.lr_scheduler.MultiStepLR(opt, [joint.lr_decay_at], joint.lr_decay_factor)
                        for key, opt in optimizers.items()},
            batches=self.batch_source("joint", joint.ids_per_batch, joint.images_per_id, recipe.data.pad),
            pools={"rgb": ImagePool(recipe.gan.pool_size)},
        )

    # --- losses -------------------------------------------------------------------------------------
    def _triplet(self, anchors: torch.Tensor, others: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cross_modality_triplet(anchors, labels, others, labels, self.margin, self.recipe.joint.triplet_distance)

    def _triplet_vectors(self, out: ExtractorOutput) -> torch.Tensor:
        """The vectors the triplet compares (``joint.triplet_feature``): the embedding or v itself."""
        return out.pooled if self.recipe.joint.triplet_feature == "pooled" else out.embedding

    def step(self, phase: str, iteration: int) -> dict[str, torch.Tensor]:
        batch = self.batches.next()
        if phase == "warmup":
            losses, _ = self.feature_step(batch, adversarial=False)
            return losses
        losses, real_out = self.feature_step(batch, adversarial=True)
        g_losses, fake_ir, fake_rgb, fake_out = self.generator_step(batch, real_out)
        d_losses = self.discriminator_step(batch, fake_ir, fake_rgb, real_out, fake_out)
        for scheduler in self.scheds.values():
            scheduler.step()
        return {**losses, **g_losses, **d_losses}

    def feature_step(self, batch: Batch, adversarial: bool) -> tuple[dict[str, torch.Tensor], ExtractorOutput]:
        """F step: CE + cross-modality triplet on real and fake IR (+ the 0.1 adversarial term)."""
        weights, nets = self.recipe.joint.loss, self.nets
        extractor, d_ir = nets[EXTRACTOR], nets[DISC_IR]
        with torch.no_grad(), self.autocast():
            fake_ir = nets[GENERATOR_RGB2IR](batch.rgb)
        with no_sync(d_ir):
            with self.autocast():
                out = extractor(torch.cat([fake_ir, batch.ir]))
                fake_vectors, real_vectors = self._triplet_vectors(out).chunk(2)
                labels = batch.labels
                ce = identity_cross_entropy(out.logits, torch.cat([labels, labels]))
                triplet = (self._triplet(real_vectors, fake_vectors, labels)
                           + self._triplet(fake_vectors, real_vectors, labels))
                loss = weights.cls_feat * ce + weights.tri_feat * triplet
                losses = {"f_ce": ce.detach(), "f_tri": triplet.detach()}
                if adversarial:
                    fake_map = out.feature_map.chunk(2)[0]
                    adv = lsgan_loss(d_ir(batch.ir, fake_map), True)
                    loss = loss + weights.feat_adv * adv
                    losses["f_adv"] = adv.detach()
            optimise(loss, self.opts["extractor"], self.scalers["extractor"])
        self.last_images = [batch.rgb.detach(), fake_ir, batch.ir.detach()]
        real_out = type(out)(*(t.chunk(2)[1].detach() for t in out))
        return losses, real_out

    def generator_step(self, batch: Batch, real_out: ExtractorOutput):
        """G step: L_G with D_I on (x'_ir, f(x'_ir)), D_R, cycle, and F's 0.1-weighted CE and triplet."""
        weights, nets, gan = self.recipe.joint.loss, self.nets, self.recipe.gan
        g_ir, g_rgb = nets[GENERATOR_RGB2IR], nets[GENERATOR_IR2RGB]
        extractor, d_ir, d_rgb = nets[EXTRACTOR], nets[DISC_IR], nets[DISC_RGB]
        labels = batch.labels
        with no_sync(extractor, d_ir, d_rgb):
            with self.autocast():
                fake_ir, fake_rgb = g_ir(batch.rgb), g_rgb(batch.ir)
                fake_out = extractor(fake_ir)
                adv = lsgan_loss(d_ir(fake_ir, fake_out.feature_map), True) + lsgan_loss(d_rgb(fake_rgb), True)
                cycle = cycle_loss(g_rgb(fake_ir), batch.rgb) + cycle_loss(g_ir(fake_rgb), batch.ir)
                ce = identity_cross_entropy(fake_out.logits, labels)
                fake_vectors, real_vectors = self._triplet_vectors(fake_out), self._triplet_vectors(real_out)
                triplet = 0.5 * (self._triplet(fake_vectors, real_vectors, labels)
                                 + self._triplet(real_vectors, fake_vectors, labels))
                loss = (weights.gen_adv * adv + weights.cycle * cycle + weights.cls_gan * ce
                        + weights.tri_gan * triplet)
                if gan.identity_weight > 0:
                    identity = cycle_loss(g_ir(batch.ir), batch.ir) + cycle_loss(g_rgb(batch.rgb), batch.rgb)
                    loss = loss + gan.identity_weight * identity
            optimise(loss, self.opts["generators"], self.scalers["generators"])
        losses = {"g_adv": adv.detach(), "g_cycle": cycle.detach(), "g_ce": ce.detach(), "g_tri": triplet.detach()}
        self.last_images = [batch.rgb.detach(), fake_ir.detach(), batch.ir.detach()]
        return losses, fake_ir.detach(), fake_rgb.detach(), fake_out.feature_map.detach()

    def discriminator_step(self, batch: Batch, fake_ir: torch.Tensor, fake_rgb: torch.Tensor,
                           real_out: ExtractorOutput, fake_map: torch.Tensor) -> dict[str, torch.Tensor]:
        """D_R on real vs pooled fake RGB; D_I on the real pair vs the fake pairs, in one batched call."""
        joint, nets = self.recipe.joint, self.nets
        real_map = real_out.feature_map
        images = [batch.ir, fake_ir, fake_ir, batch.ir]
        features = [real_map, fake_map, real_map, fake_map]
        if joint.mismatch_pair:
            images.append(batch.ir.roll(joint.images_per_id, dims=0))
            features.append(real_map)
        pooled_rgb = self.pools["rgb"].query(fake_rgb)
        with self.autocast():
            predictions = nets[DISC_IR](torch.cat(images), torch.cat(features)).chunk(len(images))
            fake_terms = torch.stack([lsgan_loss(p, False) for p in predictions[1:]])
            loss_d_ir = 0.5 * (lsgan_loss(predictions[0], True) + fake_terms.mean())
            real_rgb_pred, fake_rgb_pred = nets[DISC_RGB](torch.cat([batch.rgb, pooled_rgb])).chunk(2)
            loss_d_rgb = 0.5 * (lsgan_loss(real_rgb_pred, True) + lsgan_loss(fake_rgb_pred, False))
            loss = joint.loss.disc * loss_d_ir + loss_d_rgb
        optimise(loss, self.opts["discriminators"], self.scalers["discriminators"])
        return {"d_ir": loss_d_ir.detach(), "d_rgb": loss_d_rgb.detach()}
