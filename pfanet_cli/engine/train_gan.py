"""train-gan: the pixel-alignment warm-up (CycleGAN part of PFANet, SPEC §4).

G_I (RGB -> IR) and G_R (IR -> RGB) against plain PatchGAN discriminators D_I and D_R with LSGAN,
cycle L1 (weight 10) and an optional identity L1; Adam 2e-4, betas (0.5, 0.999); an image pool of
earlier fakes for the discriminators.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from pfanet_cli.engine.batches import Batch, ImagePool
from pfanet_cli.engine.runtime import no_sync, optimise
from pfanet_cli.engine.trainer import Phase, StageParts, StageTrainer
from pfanet_cli.modeling.build import (
    DISC_IR,
    DISC_RGB,
    GAN_ARCHITECTURE,
    GENERATOR_IR2RGB,
    GENERATOR_RGB2IR,
    STAGE_NETWORKS,
    build_networks,
)
from pfanet_cli.errors import UsageError
from pfanet_cli.modeling.losses import cycle_loss, lsgan_loss


def plain_discriminator_losses(d_ir: nn.Module, d_rgb: nn.Module, batch: Batch, fake_ir: Tensor,
                               fake_rgb: Tensor) -> tuple[Tensor, Tensor]:
    """LSGAN losses of two plain PatchGANs, ``½ (real -> 1 + fake -> 0)`` each: D_I on the batch's IR against
    ``fake_ir``, D_R on its RGB against ``fake_rgb`` (detached fakes)."""
    real_ir_pred, fake_ir_pred = d_ir(torch.cat([batch.ir, fake_ir])).chunk(2)
    real_rgb_pred, fake_rgb_pred = d_rgb(torch.cat([batch.rgb, fake_rgb])).chunk(2)
    return (0.5 * (lsgan_loss(real_ir_pred, True) + lsgan_loss(fake_ir_pred, False)),
            0.5 * (lsgan_loss(real_rgb_pred, True) + lsgan_loss(fake_rgb_pred, False)))


class GanTrainer(StageTrainer):
    stage = "train-gan"

    def phases(self) -> list[Phase]:
        return [Phase("gan", self.recipe.gan.iterations)]

    def architecture_keys(self) -> tuple[str, ...]:
        return GAN_ARCHITECTURE

    def build(self, fresh: bool) -> StageParts:
        if self.recipe.model.pixel_alignment == "grey":
            raise UsageError("model.pixel_alignment=grey has no generator to train: run train-joint directly "
                             "(it needs no train-gan run)")
        gan = self.recipe.gan
        nets = self.place(build_networks(self.recipe.model, self.split.num_classes, joint_discriminator=False,
                                         keys=STAGE_NETWORKS[self.stage]))
        betas = (gan.beta1, gan.beta2)
        generators = itertools.chain(nets[GENERATOR_RGB2IR].parameters(), nets[GENERATOR_IR2RGB].parameters())
        discriminators = itertools.chain(nets[DISC_RGB].parameters(), nets[DISC_IR].parameters())
        return StageParts(
            networks=nets,
            optimizers={"generators": torch.optim.Adam(generators, lr=gan.lr, betas=betas),
                        "discriminators": torch.optim.Adam(discriminators, lr=gan.lr, betas=betas)},
            batches=self.batch_source("gan", gan.ids_per_batch, gan.images_per_id, pad=0),
            pools={"ir": ImagePool(gan.pool_size), "rgb": ImagePool(gan.pool_size)},
        )

    def step(self, phase: str, iteration: int) -> dict[str, torch.Tensor]:
        gan, nets = self.recipe.gan, self.nets
        batch = self.batches.next()
        rgb, ir = batch.rgb, batch.ir
        g_ir, g_rgb, d_rgb, d_ir = nets[GENERATOR_RGB2IR], nets[GENERATOR_IR2RGB], nets[DISC_RGB], nets[DISC_IR]
        with no_sync(d_rgb, d_ir), self.autocast():
            fake_ir, fake_rgb = g_ir(rgb), g_rgb(ir)
            adversarial = lsgan_loss(d_ir(fake_ir), True) + lsgan_loss(d_rgb(fake_rgb), True)
            cycle = cycle_loss(g_rgb(fake_ir), rgb) + cycle_loss(g_ir(fake_rgb), ir)
            loss_g = adversarial + gan.cycle_weight * cycle
            identity = torch.zeros((), device=rgb.device)
            if gan.identity_weight > 0:
                identity = cycle_loss(g_ir(ir), ir) + cycle_loss(g_rgb(rgb), rgb)
                loss_g = loss_g + gan.identity_weight * identity
        with no_sync(d_rgb, d_ir):
            optimise(loss_g, self.opts["generators"], self.scalers["generators"])

        pooled_ir = self.pools["ir"].query(fake_ir.detach())
        pooled_rgb = self.pools["rgb"].query(fake_rgb.detach())
        with self.autocast():
            loss_d_ir, loss_d_rgb = plain_discriminator_losses(d_ir, d_rgb, batch, pooled_ir, pooled_rgb)
        optimise(loss_d_ir + loss_d_rgb, self.opts["discriminators"], self.scalers["discriminators"])
        self.last_images = [rgb.detach(), fake_ir.detach(), ir.detach()]
        return {"g_adv": adversarial.detach(), "cycle": cycle.detach(), "identity": identity.detach(),
                "d_ir": loss_d_ir.detach(), "d_rgb": loss_d_rgb.detach()}
