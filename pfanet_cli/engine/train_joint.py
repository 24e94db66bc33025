"""train-joint: feature warm-up, then joint PFANet training (SPEC §4).

G_I and G_R start from a train-gan checkpoint: ``--init-gan PATH``, else the newest finished train-gan run
of the same recipe under ``train.runs_root``; ``--init-gan none`` starts them from random weights on
purpose (warned, and recorded in ``run.yaml``).

Phase ``warmup``: F learns on real IR and fake IR (G_I(RGB), made without gradient) of its batch with
identity cross-entropy and the cross-modality triplet loss. Phase ``joint``, each iteration draws F's batch
and the G and D steps' own batch (``joint.gan_batch``, AlignGAN's 4 ids x 4 unpadded images), then:

1. F step (SGD): CE on fake and real IR of F's batch, triplet both ways, and 0.1 x LSGAN(D_I(x_ir, f(x'_ir))
   -> real) on the G/D batch, with f(x'_ir) from F run on the fake IR alone, the way D_I sees fakes;
2. G step (Adam): lambda1 x L_G (adversarial terms of D_I on (x'_ir, f(x'_ir)) and of D_R, plus omega x
   cycle L1), plus the 0.1-weighted CE and triplet of F on x'_ir; F is in the graph but not stepped;
3. D steps (Adam): D_R plain; D_I real pair (x_ir, f(x_ir)) against the three fake pairs of the paper's
   eq. 5 (and optionally AlignGAN's mismatched-identity pair); features detached. D_I's real and fake maps
   both come from the G step: the same F parameters, each modality in its own train-mode forward of the
   same size (AlignGAN's per-modality forwards), so BatchNorm context cannot tell real from fake.

All learning rates decay by ``joint.lr_decay_factor`` after ``joint.lr_decay_at`` joint iterations. With
``joint.validate_every``, the val identities choose ``best.pt`` (:mod:`pfanet_cli.engine.validation`).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pfanet_cli.config import LossWeights, Recipe
from pfanet_cli.engine.batches import Batch, ImagePool
from pfanet_cli.engine.checkpoint import check_architecture, load_checkpoint, load_network_state, require_networks
from pfanet_cli.engine.rundir import newest_finished_gan_checkpoint
from pfanet_cli.engine.runtime import no_sync, optimise, unwrap
from pfanet_cli.engine.trainer import Phase, StageParts, StageTrainer
from pfanet_cli.engine.validation import SelectionRecord, Validator, due, record_validation
from pfanet_cli.errors import UsageError
from pfanet_cli.modeling.build import (
    DISC_IR,
    DISC_RGB,
    EXTRACTOR,
    GENERATOR_ARCHITECTURE,
    GENERATOR_IR2RGB,
    GENERATOR_KEYS,
    GENERATOR_RGB2IR,
    build_networks,
    stage_networks,
)
from pfanet_cli.modeling.extractor import ExtractorOutput
from pfanet_cli.modeling.losses import cross_modality_triplet, cycle_loss, identity_cross_entropy, lsgan_loss
from pfanet_cli.utils.console import console, error_console

INIT_GAN_NONE = "none"
"""``--init-gan none``: random generators, on purpose."""
GREY = "grey"
"""``model.pixel_alignment: grey``: G_I is a fixed luma conversion; no generator is trained or loaded."""
GREY_SOURCE = "none: model.pixel_alignment is grey (a fixed luma conversion, no generator)"
GAN_BATCH = "gan"
"""Name of the G and D steps' batch source."""


def load_generators(path: Path, networks: dict[str, nn.Module], architecture: dict[str, Any]) -> None:
    """Start G_I and G_R from a train-gan (or train-joint) checkpoint built with the same generator keys."""
    payload = load_checkpoint(path)
    require_networks(payload, path, GENERATOR_KEYS, "train-joint --init-gan")
    check_architecture(payload, path, architecture, GENERATOR_ARCHITECTURE,
                       problem=f"--init-gan {path} has other generators")
    for key in GENERATOR_KEYS:
        load_network_state(networks[key], payload["networks"][key], key, path)


def resolve_init_gan(recipe: Recipe, init_gan: Path | str | None, announce: bool = True) -> Path | None:
    """The checkpoint G_I and G_R start from: ``init_gan``, or (None) the newest finished train-gan run of
    the recipe under ``train.runs_root`` (named on screen); None for ``"none"`` (random, warned)."""
    if init_gan is not None and str(init_gan) == INIT_GAN_NONE:
        if announce:
            error_console.print("warning: --init-gan none: G_I and G_R start from random weights, so the feature "
                                "warm-up learns on fake IR that is noise; this is recorded in run.yaml", soft_wrap=True)
        return None
    if init_gan is not None:
        return Path(init_gan)
    root = Path(recipe.train.runs_root)
    found = newest_finished_gan_checkpoint(root, recipe.name)
    if found is None:
        raise UsageError(
            f"train-joint needs trained generators, and no finished train-gan run of recipe '{recipe.name}' is "
            f"under {root}/: run 'pfanet train-gan' with this recipe first, or pass --init-gan PATH "
            "(--init-gan none starts from random generators on purpose)"
        )
    if announce:
        console.print(f"train-joint: G_I and G_R start from {found} (the newest finished train-gan run of recipe "
                      f"'{recipe.name}'; --init-gan chooses another)", soft_wrap=True)
    return found


def generator_objective(weights: LossWeights, pixel: Tensor, ce: Tensor, triplet: Tensor) -> Tensor:
    """The G step's loss, eq. 16's G terms: ``lambda1 · L_G + lambda3 · CE + lambda4 · triplet``, where ``pixel``
    is the whole L_G (adversarial terms + omega · cycle, eq. 7)."""
    return weights.gen_adv * pixel + weights.cls_gan * ce + weights.tri_gan * triplet


class JointTrainer(StageTrainer):
    stage = "train-joint"

    def __init__(self, *args: Any, init_gan: Path | str | None = None, **kwargs: Any) -> None:
        self.init_gan = init_gan
        self.init_gan_source = ""
        self.selection = SelectionRecord()
        self.validator: Validator | None = None
        super().__init__(*args, **kwargs)
        self.margin = self.recipe.joint.resolved_margin()

    # --- stage description -----------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        return [Phase("warmup", self.recipe.joint.warmup_iterations), Phase("joint", self.recipe.joint.iterations)]

    def build(self, fresh: bool) -> StageParts:
        recipe, joint = self.recipe, self.recipe.joint
        self.validator = Validator(self.data, joint.validate_trials, self.device) if joint.validate_every else None
        nets = build_networks(recipe.model, self.split.num_classes, joint_discriminator=True, load_pretrained=fresh,
                              keys=stage_networks(recipe.model, self.stage))
        if fresh:
            self.init_gan_source = self._start_generators(nets)
        if self.grey:
            return self._grey_parts(nets)
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
        gan_batch = joint.gan_batch
        return StageParts(
            networks=nets,
            optimizers=optimizers,
            schedulers={key: torch.optim.lr_scheduler.MultiStepLR(opt, [joint.lr_decay_at], joint.lr_decay_factor)
                        for key, opt in optimizers.items()},
            batches=self.batch_source("joint", joint.ids_per_batch, joint.images_per_id, recipe.data.pad,
                                      augment=True),
            batch_sources={GAN_BATCH: self.batch_source("joint.gan_batch", gan_batch.ids_per_batch,
                                                        gan_batch.images_per_id, gan_batch.pad, stream=1)},
            pools={"rgb": ImagePool(recipe.gan.pool_size)},
        )

    @property
    def grey(self) -> bool:
        return self.recipe.model.pixel_alignment == GREY

    def _grey_parts(self, nets: dict[str, nn.Module]) -> StageParts:
        """Without the GAN: F alone, on real IR and the luma of RGB, in both phases."""
        joint = self.recipe.joint
        if joint.triplet_feature == "pooled":
            nets[EXTRACTOR].embedder.requires_grad_(False)
        nets = self.place(nets, sync_bn=(EXTRACTOR,))
        groups = unwrap(nets[EXTRACTOR]).parameter_groups()
        extractor = torch.optim.SGD([{"params": groups["backbone"], "lr": joint.lr_backbone},
                                     {"params": groups["head"], "lr": joint.lr_head}],
                                    momentum=joint.momentum, nesterov=joint.nesterov, weight_decay=joint.weight_decay)
        return StageParts(
            networks=nets, optimizers={"extractor": extractor},
            schedulers={"extractor": torch.optim.lr_scheduler.MultiStepLR(extractor, [joint.lr_decay_at],
                                                                          joint.lr_decay_factor)},
            batches=self.batch_source("joint", joint.ids_per_batch, joint.images_per_id, self.recipe.data.pad,
                                      augment=True))

    def _start_generators(self, nets: dict[str, nn.Module]) -> str:
        """Load G_I and G_R as SPEC §4 says; returns what ``run.yaml`` records as ``init_gan``."""
        if self.grey:
            if self.init_gan is not None and str(self.init_gan) != INIT_GAN_NONE:
                raise UsageError(f"--init-gan {self.init_gan}: model.pixel_alignment=grey has no generator to start "
                                 "from; leave --init-gan out")
            return GREY_SOURCE
        path = resolve_init_gan(self.recipe, self.init_gan, announce=self.distributed.is_main)
        if path is None:
            return INIT_GAN_NONE
        load_generators(path, nets, self.architecture())
        return str(path)

    # --- state -------------------------------------------------------------------------------------
    def run_info(self) -> dict[str, Any]:
        return {"init_gan": self.init_gan_source or "unknown (resumed from a checkpoint that does not say)"}

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "init_gan": self.init_gan_source,
                "best_validation": self.selection.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        self.init_gan_source = state.get("init_gan", "")
        if "best_validation" in state:
            self.selection.load_state_dict(state["best_validation"])

    # --- losses -------------------------------------------------------------------------------------
    def _triplet(self, anchors: Tensor, others: Tensor, labels: Tensor) -> Tensor:
        """``L_tri(anchors, others, others)``: positives and negatives mined in the other set."""
        return cross_modality_triplet(anchors, labels, others, labels, self.margin, self.recipe.joint.triplet_distance)

    def _fake_anchor_triplet(self, fakes: Tensor, reals: Tensor, labels: Tensor) -> Tensor:
        """The term anchored on fake IR: ``L_tri(X'_ir, X_ir, X_ir)``, or ``L_tri(X'_ir, X_ir, X'_ir)`` with
        ``joint.fake_anchor_negatives: fake``."""
        if self.recipe.joint.fake_anchor_negatives == "real":
            return self._triplet(fakes, reals, labels)
        return cross_modality_triplet(fakes, labels, reals, labels, self.margin, self.recipe.joint.triplet_distance,
                                      negatives=fakes, negative_labels=labels)

    def _triplet_vectors(self, out: ExtractorOutput) -> torch.Tensor:
        """The vectors the triplet compares (``joint.triplet_feature``): the embedding or v itself."""
        return out.pooled if self.recipe.joint.triplet_feature == "pooled" else out.embedding

    def step(self, phase: str, iteration: int) -> dict[str, torch.Tensor]:
        batch = self.batches.next()
        if phase == "warmup" or self.grey:
            losses = self.feature_step(batch)
            if phase == "joint":
                self.scheds["extractor"].step()
            return losses
        gan_batch = self.batch_sources[GAN_BATCH].next()
        with self.autocast():
            fake_ir = self.nets[GENERATOR_RGB2IR](gan_batch.rgb)  # its graph waits for the G step
        losses = self.feature_step(batch, adversarial=(gan_batch.ir, fake_ir.detach()))
        g_losses, fake_rgb, real_map, fake_map = self.generator_step(gan_batch, fake_ir)
        d_losses = self.discriminator_step(gan_batch, fake_ir.detach(), fake_rgb, real_map, fake_map)
        for scheduler in self.scheds.values():
            scheduler.step()
        return {**losses, **g_losses, **d_losses}

    def feature_step(self, batch: Batch, adversarial: tuple[Tensor, Tensor] | None = None) -> dict[str, Tensor]:
        """F step: CE + cross-modality triplet on real and fake IR of F's batch; with ``adversarial`` = (real IR,
        fake IR) of the G/D batch, + the 0.1 adversarial term on D_I(real IR, f(fake IR)), where F runs on the
        fake IR alone, as it does when D_I is trained."""
        weights, nets = self.recipe.joint.loss, self.nets
        extractor, d_ir = nets[EXTRACTOR], nets.get(DISC_IR)
        with torch.no_grad(), self.autocast():
            fake_ir = nets[GENERATOR_RGB2IR](batch.rgb)
        with no_sync(*[d for d in (d_ir,) if d is not None]):
            with self.autocast():
                out = extractor(torch.cat([fake_ir, batch.ir]))
                fake_vectors, real_vectors = self._triplet_vectors(out).chunk(2)
                labels = batch.labels
                ce = identity_cross_entropy(out.logits, torch.cat([labels, labels]))
                triplet = (self._triplet(real_vectors, fake_vectors, labels)
                           + self._fake_anchor_triplet(fake_vectors, real_vectors, labels))
                loss = weights.cls_feat * ce + weights.tri_feat * triplet
                losses = {"f_ce": ce.detach(), "f_tri": triplet.detach()}
                if adversarial is not None:
                    real_ir, fake_gan_ir = adversarial
                    adv = lsgan_loss(d_ir(real_ir, extractor(fake_gan_ir).feature_map), True)
                    loss = loss + weights.feat_adv * adv
                    losses["f_adv"] = adv.detach()
            optimise(loss, self.opts["extractor"], self.scalers["extractor"])
        self.last_images = [batch.rgb.detach(), fake_ir, batch.ir.detach()]
        return losses

    def generator_step(self, batch: Batch, fake_ir: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor]:
        """G step on the G/D batch (``fake_ir`` = G_I(batch.rgb), with its graph): lambda1 x L_G (D_I on
        (x'_ir, f(x'_ir)), D_R, omega x cycle) and F's 0.1-weighted CE and triplet. Returns the losses, the fake
        RGB, and D_I's real and fake feature maps (detached, from the same F in the same mode)."""
        weights, nets, gan = self.recipe.joint.loss, self.nets, self.recipe.gan
        g_ir, g_rgb = nets[GENERATOR_RGB2IR], nets[GENERATOR_IR2RGB]
        extractor, d_ir, d_rgb = nets[EXTRACTOR], nets[DISC_IR], nets[DISC_RGB]
        labels = batch.labels
        with no_sync(extractor, d_ir, d_rgb):
            with torch.no_grad(), self.autocast():
                real_out = extractor(batch.ir)
            with self.autocast():
                fake_rgb = g_rgb(batch.ir)
                fake_out = extractor(fake_ir)
                adv = lsgan_loss(d_ir(fake_ir, fake_out.feature_map), True) + lsgan_loss(d_rgb(fake_rgb), True)
                cycle = cycle_loss(g_rgb(fake_ir), batch.rgb) + cycle_loss(g_ir(fake_rgb), batch.ir)
                pixel = adv + weights.cycle * cycle
                if gan.identity_weight > 0:
                    identity = cycle_loss(g_ir(batch.ir), batch.ir) + cycle_loss(g_rgb(batch.rgb), batch.rgb)
                    pixel = pixel + gan.identity_weight * identity
                ce = identity_cross_entropy(fake_out.logits, labels)
                fake_vectors, real_vectors = self._triplet_vectors(fake_out), self._triplet_vectors(real_out)
                triplet = 0.5 * (self._fake_anchor_triplet(fake_vectors, real_vectors, labels)
                                 + self._triplet(real_vectors, fake_vectors, labels))
                loss = generator_objective(weights, pixel, ce, triplet)
            optimise(loss, self.opts["generators"], self.scalers["generators"])
        losses = {"g_adv": adv.detach(), "g_cycle": cycle.detach(), "g_ce": ce.detach(), "g_tri": triplet.detach()}
        self.last_images = [batch.rgb.detach(), fake_ir.detach(), batch.ir.detach()]
        return losses, fake_rgb.detach(), real_out.feature_map, fake_out.feature_map.detach()

    def discriminator_step(self, batch: Batch, fake_ir: Tensor, fake_rgb: Tensor, real_map: Tensor,
                           fake_map: Tensor) -> dict[str, Tensor]:
        """D_R on real vs pooled fake RGB; D_I on the real pair vs the fake pairs, in one batched call."""
        joint, nets = self.recipe.joint, self.nets
        images = [batch.ir, fake_ir, fake_ir, batch.ir]
        features = [real_map, fake_map, real_map, fake_map]
        if joint.mismatch_pair:
            images.append(batch.ir.roll(joint.gan_batch.images_per_id, dims=0))
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

    # --- model selection ------------------------------------------------------------------------------
    def end_of_iteration(self, phase: Phase, last: bool) -> None:
        """Every ``joint.validate_every`` iterations and at the end: the val protocol, a ``metrics.jsonl`` row,
        and ``best.pt`` when val mAP is the best so far (rank 0)."""
        if self.validator is None or not self.distributed.is_main or \
                not due(self.recipe.joint.validate_every, self.global_iteration(), last):
            return
        metrics = self.validator.evaluate(unwrap(self.nets[EXTRACTOR]), unwrap(self.nets[GENERATOR_RGB2IR]))
        record_validation(self, phase.name, metrics)
