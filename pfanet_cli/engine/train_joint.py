"""train-joint: feature warm-up, then joint PFANet training (SPEC §4).

G_I and G_R start from a train-gan checkpoint (:mod:`pfanet_cli.engine.init_gan`: ``--init-gan PATH``, else
the newest train-gan run of the recipe trained on the same data; ``--init-gan none`` starts them from random
weights on purpose). With ``model.pixel_alignment: grey`` there is no generator: G_I is a fixed luma
conversion, no GAN is loaded, and F alone trains in every phase (the ablation without the GAN).

Phase ``warmup``: F learns on real IR and fake IR (G_I(RGB), made without gradient) of its batch with
identity cross-entropy and the cross-modality triplet loss, or on real IR alone (``joint.warmup_images:
ir_only``, AlignGAN's feature warm-up). Optional phase ``generator_warmup`` (``joint.generator_warmup_iterations``,
AlignGAN's pixel warm-up): G against two fresh plain PatchGANs, with lambda3 CE and lambda4 triplet through the
warmed F, which is not stepped. Phase ``joint``, each iteration draws F's batch and the G and D steps' own batch
(``joint.gan_batch``, AlignGAN's 4 ids x 4 unpadded images), then:

1. F step (SGD): CE on fake and real IR of F's batch, triplet both ways, and 0.1 x LSGAN(D_I(x_ir, f(x'_ir))
   -> real) on the G/D batch, with f(x'_ir) from F run on the fake IR alone, the way D_I sees fakes;
2. G step (Adam): lambda1 x L_G (adversarial terms of D_I on (x'_ir, f(x'_ir)) and of D_R, plus omega x
   cycle L1), plus the 0.1-weighted CE and triplet of F on x'_ir; F is in the graph but not stepped;
3. D steps (Adam): D_R plain; D_I real pair (x_ir, f(x_ir)) against the three fake pairs of the paper's
   eq. 5 (and optionally AlignGAN's mismatched-identity pair); features detached. D_I's real and fake maps
   both come from the G step: the same F parameters, each modality in its own train-mode forward of the
   same size (AlignGAN's per-modality forwards), so BatchNorm context cannot tell real from fake.

The ``joint.*`` switches ``f_step_bn``, ``gen_adv_feature``, ``loss_scaling`` and ``f_step_translate`` give
AlignGAN's arrangement of steps 1 and 2 instead (docs/model.md). All learning rates decay by
``joint.lr_decay_factor`` after ``joint.lr_decay_at`` joint iterations. With ``joint.validate_every``, the val
identities choose ``best.pt`` (:mod:`pfanet_cli.engine.validation`).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from pfanet_cli.config import LossWeights
from pfanet_cli.data.augment import crop_and_flip_unit_range
from pfanet_cli.engine.batches import Batch, ImagePool
from pfanet_cli.engine.init_gan import INIT_GAN_NONE, GeneratorSource, load_generators, resolve_generators
from pfanet_cli.engine.runtime import no_sync, optimise, unwrap
from pfanet_cli.engine.train_gan import plain_discriminator_losses
from pfanet_cli.engine.trainer import Phase, StageParts, StageTrainer
from pfanet_cli.engine.validation import SelectionRecord, Validator, due, record_validation
from pfanet_cli.errors import UsageError
from pfanet_cli.modeling.build import (
    DISC_IR,
    DISC_IR_WARMUP,
    DISC_RGB,
    DISC_RGB_WARMUP,
    EXTRACTOR,
    GENERATOR_IR2RGB,
    GENERATOR_KEYS,
    GENERATOR_RGB2IR,
    build_networks,
    build_warmup_discriminators,
    stage_networks,
)
from pfanet_cli.modeling.extractor import ExtractorOutput
from pfanet_cli.modeling.losses import cross_modality_triplet, cycle_loss, identity_cross_entropy, lsgan_loss

GREY = "grey"
"""``model.pixel_alignment: grey``: G_I is a fixed luma conversion; no generator is trained or loaded."""
GREY_SOURCE = "none: model.pixel_alignment is grey (a fixed luma conversion, no generator)"
GAN_BATCH = "gan"
"""Name of the G and D steps' batch source."""
GENERATOR_WARMUP = "generator_warmup"
"""Name of the optional phase between the F warm-up and the joint phase (``joint.generator_warmup_iterations``)."""
MAIN_OPTIMIZERS = ("extractor", "generators", "discriminators")
"""The optimizers whose learning rates decay in the joint phase (not the warm-up discriminators')."""
Judge = Callable[[Tensor, Tensor, ExtractorOutput, ExtractorOutput], tuple[Tensor, Tensor]]
"""(x'_ir, x'_rgb, F(x'_ir), F(x_ir)) -> the discriminators' predictions on x'_ir and x'_rgb in a G step."""


def generator_objective(weights: LossWeights, pixel: Tensor, ce: Tensor, triplet: Tensor) -> Tensor:
    """The G step's loss, eq. 16's G terms: ``lambda1 · L_G + lambda3 · CE + lambda4 · triplet``, where ``pixel``
    is the whole L_G (adversarial terms + omega · cycle, eq. 7)."""
    return weights.gen_adv * pixel + weights.cls_gan * ce + weights.tri_gan * triplet


def split_output(out: ExtractorOutput) -> tuple[ExtractorOutput, ExtractorOutput]:
    """The two halves of F's output on a concatenated batch."""
    halves = [tensor.chunk(2) for tensor in out]
    return ExtractorOutput(*(half[0] for half in halves)), ExtractorOutput(*(half[1] for half in halves))


class JointTrainer(StageTrainer):
    stage = "train-joint"

    def __init__(self, *args: Any, init_gan: Path | str | None = None, init_gan_any: bool = False,
                 **kwargs: Any) -> None:
        self.init_gan, self.init_gan_any = init_gan, init_gan_any
        self.generator_source = GeneratorSource("")
        self.selection = SelectionRecord()
        self.validator: Validator | None = None
        super().__init__(*args, **kwargs)
        self.margin = self.recipe.joint.resolved_margin()

    # --- stage description -----------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        joint = self.recipe.joint
        phases = [Phase("warmup", joint.warmup_iterations)]
        if joint.generator_warmup_iterations:
            phases.append(Phase(GENERATOR_WARMUP, joint.generator_warmup_iterations))
        return phases + [Phase("joint", joint.iterations)]

    def build(self, fresh: bool) -> StageParts:
        recipe, joint = self.recipe, self.recipe.joint
        self.validator = Validator(self.data, joint.validate_trials, self.device) if joint.validate_every else None
        nets = build_networks(recipe.model, self.split.num_classes, joint_discriminator=True, load_pretrained=fresh,
                              keys=stage_networks(recipe.model, self.stage))
        if joint.generator_warmup_iterations:
            nets.update(build_warmup_discriminators(recipe.model))
        if fresh:
            self._start_generators(nets)
        if self.grey:
            return self._grey_parts(nets)
        if joint.triplet_feature == "pooled":
            nets[EXTRACTOR].embedder.requires_grad_(False)  # no loss uses it, and DDP must not wait for it
        nets = self.place(nets, sync_bn=(EXTRACTOR,))
        optimizers = self._optimizers(nets)
        gan_batch, pools = joint.gan_batch, {"rgb": ImagePool(recipe.gan.pool_size)}
        if joint.generator_warmup_iterations:
            pools.update(warmup_ir=ImagePool(recipe.gan.pool_size), warmup_rgb=ImagePool(recipe.gan.pool_size))
        return StageParts(
            networks=nets,
            optimizers=optimizers,
            schedulers={key: torch.optim.lr_scheduler.MultiStepLR(optimizers[key], [joint.lr_decay_at],
                                                                  joint.lr_decay_factor) for key in MAIN_OPTIMIZERS},
            batches=self.batch_source("joint", joint.ids_per_batch, joint.images_per_id, recipe.data.pad,
                                      augment=True, defer_rgb=joint.f_step_translate == "before_pad"),
            batch_sources={GAN_BATCH: self.batch_source("joint.gan_batch", gan_batch.ids_per_batch,
                                                        gan_batch.images_per_id, gan_batch.pad, stream=1)},
            pools=pools,
        )

    def _optimizers(self, nets: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        """F's SGD (backbone and head groups), G's Adam, the discriminators' Adam, and the warm-up
        discriminators' Adam when there is a generator warm-up."""
        recipe, joint = self.recipe, self.recipe.joint
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
        if joint.generator_warmup_iterations:
            optimizers["warmup_discriminators"] = torch.optim.Adam(
                itertools.chain(nets[DISC_RGB_WARMUP].parameters(), nets[DISC_IR_WARMUP].parameters()), **adam)
        return optimizers

    @property
    def grey(self) -> bool:
        return self.recipe.model.pixel_alignment == GREY

    def _grey_parts(self, nets: dict[str, nn.Module]) -> StageParts:
        """Without the GAN: F alone, on real IR and the luma of RGB, in every phase."""
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
                                      augment=True, defer_rgb=joint.f_step_translate == "before_pad"))

    def _start_generators(self, nets: dict[str, nn.Module]) -> None:
        """Load G_I and G_R as SPEC §4 says, from a checkpoint that fits this run (:mod:`.init_gan`); with
        ``model.pixel_alignment: grey`` there is none to load (and no GAN is looked for)."""
        if self.grey:
            if self.init_gan is not None and str(self.init_gan) != INIT_GAN_NONE:
                raise UsageError(f"--init-gan {self.init_gan}: model.pixel_alignment=grey has no generator to start "
                                 "from; leave --init-gan out")
            self.generator_source = GeneratorSource(GREY_SOURCE)
            return
        self.generator_source, payload = resolve_generators(self.recipe, self.data, self.init_gan, self.init_gan_any,
                                                            announce=self.distributed.is_main)
        if payload is not None:
            load_generators(payload, Path(self.generator_source.path), nets, self.architecture())

    # --- state -------------------------------------------------------------------------------------
    def run_info(self) -> dict[str, Any]:
        if not self.generator_source.path:
            return {"init_gan": "unknown (resumed from a checkpoint that does not say)"}
        return self.generator_source.run_info()

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "init_gan": self.generator_source.path,
                "init_gan_fingerprint": self.generator_source.fingerprint,
                "best_validation": self.selection.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        self.generator_source = GeneratorSource(state.get("init_gan", ""), state.get("init_gan_fingerprint"))
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

    def _pair(self, first: Tensor, second: Tensor) -> Tensor:
        """A pair of G's pixel terms: summed (eqs. 6 and 7) or averaged (``joint.loss_scaling: aligngan``)."""
        return first + second if self.recipe.joint.loss_scaling == "pfanet" else 0.5 * (first + second)

    def _extract_pair(self, fake_ir: Tensor, real_ir: Tensor) -> tuple[ExtractorOutput, ExtractorOutput]:
        """F on fake and real IR: one forward of both (``joint.f_step_bn: joint``) or one each (``per_modality``)."""
        extractor = self.nets[EXTRACTOR]
        if self.recipe.joint.f_step_bn == "per_modality":
            return extractor(fake_ir), extractor(real_ir)
        return split_output(extractor(torch.cat([fake_ir, real_ir])))

    def _feature_ce(self, fake_logits: Tensor, real_logits: Tensor, labels: Tensor) -> Tensor:
        """The F step's CE: one mean over X_ir ∪ X'_ir (eq. 15), or the sum of the two modalities' means
        (``joint.loss_scaling: aligngan``)."""
        if self.recipe.joint.loss_scaling == "pfanet":
            return identity_cross_entropy(torch.cat([fake_logits, real_logits]), torch.cat([labels, labels]))
        return identity_cross_entropy(fake_logits, labels) + identity_cross_entropy(real_logits, labels)

    # --- steps --------------------------------------------------------------------------------------
    def step(self, phase: str, iteration: int) -> dict[str, torch.Tensor]:
        if phase == "warmup":
            batch = self.batches.next()
            return self.ir_feature_step(batch) if self.recipe.joint.warmup_images == "ir_only" \
                else self.feature_step(batch)
        if phase == GENERATOR_WARMUP:
            return self.generator_warmup_step(self.batch_sources[GAN_BATCH].next())
        batch = self.batches.next()
        if self.grey:
            losses = self.feature_step(batch)
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

    def translate_for_features(self, batch: Batch) -> Tensor:
        """F's fake IR of a batch, without gradient: G_I of the RGB images as they come, or, when the source
        deferred their augmentation (``joint.f_step_translate: before_pad``), G_I of the unpadded images, then
        their pad + crop + flip."""
        with torch.no_grad(), self.autocast():
            fake_ir = self.nets[GENERATOR_RGB2IR](batch.rgb)
            if batch.rgb_plan is not None:
                fake_ir = crop_and_flip_unit_range(fake_ir, batch.rgb_plan, self.recipe.data.pad)
        return fake_ir

    def ir_feature_step(self, batch: Batch) -> dict[str, Tensor]:
        """AlignGAN's feature warm-up (``joint.warmup_images: ir_only``): CE and the batch-hard triplet on the real
        IR of F's batch alone (anchors, positives and negatives all real IR); no generator runs."""
        weights, labels = self.recipe.joint.loss, batch.labels
        with self.autocast():
            out = self.nets[EXTRACTOR](batch.ir)
            vectors = self._triplet_vectors(out)
            ce, triplet = identity_cross_entropy(out.logits, labels), self._triplet(vectors, vectors, labels)
            loss = weights.cls_feat * ce + weights.tri_feat * triplet
        optimise(loss, self.opts["extractor"], self.scalers["extractor"])
        self.last_images = []  # no fake IR to show
        return {"f_ce": ce.detach(), "f_tri": triplet.detach()}

    def feature_step(self, batch: Batch, adversarial: tuple[Tensor, Tensor] | None = None) -> dict[str, Tensor]:
        """F step: CE + cross-modality triplet on real and fake IR of F's batch; with ``adversarial`` = (real IR,
        fake IR) of the G/D batch, + the 0.1 adversarial term on D_I(real IR, f(fake IR)), where F runs on the
        fake IR alone, as it does when D_I is trained."""
        weights, extractor, d_ir = self.recipe.joint.loss, self.nets[EXTRACTOR], self.nets.get(DISC_IR)
        fake_ir = self.translate_for_features(batch)
        with no_sync(*[d for d in (d_ir,) if d is not None]):
            with self.autocast():
                fake_out, real_out = self._extract_pair(fake_ir, batch.ir)
                fake_vectors, real_vectors = self._triplet_vectors(fake_out), self._triplet_vectors(real_out)
                labels = batch.labels
                ce = self._feature_ce(fake_out.logits, real_out.logits, labels)
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

    def _generator_loss(self, batch: Batch, fakes: tuple[Tensor, Tensor],
                        outputs: tuple[ExtractorOutput, ExtractorOutput],
                        predictions: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """G's objective from its fakes (x'_ir, x'_rgb), F's outputs on (x'_ir, x_ir) and the discriminators'
        predictions on (x'_ir, x'_rgb): lambda1 x (adversarial pair + omega x cycle pair [+ identity pair]) +
        lambda3 x CE + lambda4 x triplet, scaled as ``joint.loss_scaling`` says."""
        weights, gan, joint = self.recipe.joint.loss, self.recipe.gan, self.recipe.joint
        g_ir, g_rgb = self.nets[GENERATOR_RGB2IR], self.nets[GENERATOR_IR2RGB]
        (fake_ir, fake_rgb), (fake_out, real_out), labels = fakes, outputs, batch.labels
        adv = self._pair(lsgan_loss(predictions[0], True), lsgan_loss(predictions[1], True))
        cycle = self._pair(cycle_loss(g_rgb(fake_ir), batch.rgb), cycle_loss(g_ir(fake_rgb), batch.ir))
        pixel = adv + weights.cycle * cycle
        if gan.identity_weight > 0:
            identity = self._pair(cycle_loss(g_ir(batch.ir), batch.ir), cycle_loss(g_rgb(batch.rgb), batch.rgb))
            pixel = pixel + gan.identity_weight * identity
        ce = identity_cross_entropy(fake_out.logits, labels)
        fake_vectors, real_vectors = self._triplet_vectors(fake_out), self._triplet_vectors(real_out)
        triplet = (self._fake_anchor_triplet(fake_vectors, real_vectors, labels)
                   + self._triplet(real_vectors, fake_vectors, labels))
        triplet = 0.5 * triplet if joint.loss_scaling == "pfanet" else triplet
        losses = {"g_adv": adv.detach(), "g_cycle": cycle.detach(), "g_ce": ce.detach(), "g_tri": triplet.detach()}
        return generator_objective(weights, pixel, ce, triplet), losses

    def update_generators(self, batch: Batch, fake_ir: Tensor, discriminators: tuple[nn.Module, nn.Module],
                          judge: Judge) -> tuple[dict[str, Tensor], Tensor, ExtractorOutput, ExtractorOutput]:
        """One step of G's optimizer on the G/D batch (``fake_ir`` = G_I(batch.rgb), with its graph): F (train mode,
        in the graph, not stepped) on the real IR and on ``fake_ir``, then :meth:`_generator_loss` with the
        predictions ``judge`` gets from ``discriminators`` for (x'_ir, x'_rgb). Returns the losses, the fake RGB
        and F's outputs on fake and real IR."""
        extractor = self.nets[EXTRACTOR]
        with no_sync(extractor, *discriminators):
            with torch.no_grad(), self.autocast():
                real_out = extractor(batch.ir)
            with self.autocast():
                fake_rgb = self.nets[GENERATOR_IR2RGB](batch.ir)
                fake_out = extractor(fake_ir)
                loss, losses = self._generator_loss(batch, (fake_ir, fake_rgb), (fake_out, real_out),
                                                    judge(fake_ir, fake_rgb, fake_out, real_out))
            optimise(loss, self.opts["generators"], self.scalers["generators"])
        self.last_images = [batch.rgb.detach(), fake_ir.detach(), batch.ir.detach()]
        return losses, fake_rgb, fake_out, real_out

    def generator_step(self, batch: Batch, fake_ir: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor]:
        """G step of the joint phase: lambda1 x L_G (D_I on (x'_ir, f(x'_ir)), or on (x'_ir, f(x_ir) detached) with
        ``joint.gen_adv_feature: real_detached``; D_R; omega x cycle) and F's 0.1-weighted CE and triplet. Returns
        the losses, the fake RGB, and D_I's real and fake feature maps (detached, from the same F in the same
        mode)."""
        d_ir, d_rgb = self.nets[DISC_IR], self.nets[DISC_RGB]
        real_condition = self.recipe.joint.gen_adv_feature == "real_detached"

        def judge(fake_ir: Tensor, fake_rgb: Tensor, fake_out: ExtractorOutput,
                  real_out: ExtractorOutput) -> tuple[Tensor, Tensor]:
            return d_ir(fake_ir, (real_out if real_condition else fake_out).feature_map), d_rgb(fake_rgb)

        losses, fake_rgb, fake_out, real_out = self.update_generators(batch, fake_ir, (d_ir, d_rgb), judge)
        return losses, fake_rgb.detach(), real_out.feature_map, fake_out.feature_map.detach()

    def generator_warmup_step(self, batch: Batch) -> dict[str, Tensor]:
        """AlignGAN's pixel warm-up on the G/D batch: G against the plain warm-up PatchGANs, with F's CE and
        triplet on x'_ir; then those PatchGANs' step."""
        d_ir, d_rgb = self.nets[DISC_IR_WARMUP], self.nets[DISC_RGB_WARMUP]
        with self.autocast():
            fake_ir = self.nets[GENERATOR_RGB2IR](batch.rgb)
        losses, fake_rgb, _, _ = self.update_generators(batch, fake_ir, (d_ir, d_rgb),
                                                        lambda fake_ir, fake_rgb, *_: (d_ir(fake_ir), d_rgb(fake_rgb)))
        pooled_ir = self.pools["warmup_ir"].query(fake_ir.detach())
        pooled_rgb = self.pools["warmup_rgb"].query(fake_rgb.detach())
        with self.autocast():
            loss_d_ir, loss_d_rgb = plain_discriminator_losses(d_ir, d_rgb, batch, pooled_ir, pooled_rgb)
        optimise(loss_d_ir + loss_d_rgb, self.opts["warmup_discriminators"], self.scalers["warmup_discriminators"])
        return {**losses, "d_ir": loss_d_ir.detach(), "d_rgb": loss_d_rgb.detach()}

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
