"""train-gan: the pixel-alignment warm-up (CycleGAN part of PFANet, SPEC §4).

G_I (RGB -> IR) and G_R (IR -> RGB) against plain PatchGAN discriminators D_I and D_R with LSGAN,
cycle L1 (weight 10) and an optional identity L1; Adam 2e-4, betas (0.5, 0.999); an image pool of
earlier fakes for the discriminators.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

from pfanet_cli.losses import cycle_loss, lsgan_loss
from pfanet_cli.networks import build_networks
from pfanet_cli.sampler import IdentityAlignedSampler
from pfanet_cli.training import (
    BatchSource,
    ImagePool,
    Phase,
    StageTrainer,
    make_scalers,
    no_sync,
    optimise,
    prepare_module,
)


GAN_KEYS = ("generator_rgb2ir", "generator_ir2rgb", "disc_rgb", "disc_ir")


class GanTrainer(StageTrainer):
    stage = "train-gan"

    def __init__(self, recipe, run, data, device, distributed, show_progress: bool = True,
                 fresh: bool = True) -> None:
        super().__init__(recipe, run, data, device, distributed, show_progress)
        model, gan = recipe.model, recipe.gan
        self.split = data.split("train")
        nets = build_networks(model, self.split.num_classes, joint_discriminator=False, keys=GAN_KEYS)
        self.nets = {key: prepare_module(net, device, recipe, distributed) for key, net in nets.items()}
        betas = (gan.beta1, gan.beta2)
        generators = itertools.chain(self.nets["generator_rgb2ir"].parameters(),
                                     self.nets["generator_ir2rgb"].parameters())
        discriminators = itertools.chain(self.nets["disc_rgb"].parameters(), self.nets["disc_ir"].parameters())
        self.opts = {"generators": torch.optim.Adam(generators, lr=gan.lr, betas=betas),
                     "discriminators": torch.optim.Adam(discriminators, lr=gan.lr, betas=betas)}
        self.scalers = make_scalers(device, recipe.train.amp, tuple(self.opts))
        sampler = IdentityAlignedSampler(self.split.labels, self.split.is_ir, gan.ids_per_batch,
                                         gan.images_per_id, recipe.train.seed, distributed.rank,
                                         distributed.world_size, key="gan")
        self.batches = BatchSource(self.split, sampler, device, recipe.data.flip, pad=0,
                                   seed=recipe.train.seed + distributed.rank,
                                   channels_last=recipe.train.channels_last)
        self.pools = {"ir": ImagePool(gan.pool_size), "rgb": ImagePool(gan.pool_size)}

    def phases(self) -> list[Phase]:
        return [Phase("gan", self.recipe.gan.iterations)]

    def step(self, phase: str, iteration: int) -> dict[str, torch.Tensor]:
        gan, nets = self.recipe.gan, self.nets
        batch = self.batches.next()
        rgb, ir = batch.rgb, batch.ir
        g_ir, g_rgb, d_rgb, d_ir = (nets["generator_rgb2ir"], nets["generator_ir2rgb"], nets["disc_rgb"],
                                    nets["disc_ir"])
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
            real_ir_pred, fake_ir_pred = d_ir(torch.cat([ir, pooled_ir])).chunk(2)
            real_rgb_pred, fake_rgb_pred = d_rgb(torch.cat([rgb, pooled_rgb])).chunk(2)
            loss_d_ir = 0.5 * (lsgan_loss(real_ir_pred, True) + lsgan_loss(fake_ir_pred, False))
            loss_d_rgb = 0.5 * (lsgan_loss(real_rgb_pred, True) + lsgan_loss(fake_rgb_pred, False))
        optimise(loss_d_ir + loss_d_rgb, self.opts["discriminators"], self.scalers["discriminators"])
        self.last_images = [rgb.detach(), fake_ir.detach(), ir.detach()]
        return {"g_adv": adversarial.detach(), "cycle": cycle.detach(), "identity": identity.detach(),
                "d_ir": loss_d_ir.detach(), "d_rgb": loss_d_rgb.detach()}

    def extra_state(self) -> dict[str, Any]:
        return {"batches": self.batches.state_dict(),
                "pools": {key: pool.state_dict() for key, pool in self.pools.items()},
                "scalers": {key: scaler.state_dict() for key, scaler in self.scalers.items()}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.batches.load_state_dict(state["batches"])
        for key, pool in self.pools.items():
            pool.load_state_dict(state["pools"][key], self.device)
        for key, scaler in self.scalers.items():
            scaler.load_state_dict(state["scalers"][key])
