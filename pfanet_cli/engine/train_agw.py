"""train-agw: AGW (``model.method: agw``) trained as its code trains it (``mangye16/Cross-Modal-Re-ID-baseline``,
``train.py``, ``--method agw``), and CAJ with the same network (``ICCV21_CAJ/train_ext.py``, ``--method adp``).

One stage, no GAN. Each iteration: P identities x K RGB and K IR images (AGW: 8 x (4 + 4); with
``data.rgb_views: 2`` a second, channel-exchanged view of every RGB image, CAJ's batch), RGB through the
visible stem and IR through the thermal stem, identity cross-entropy on the classifier and AGW's weighted
regularised triplet (or CAJ's adaptive one) on the pooled vectors of the whole batch. SGD with Nesterov
momentum, the BN-neck and classifier at ``agw.lr``, the rest at ``agw.lr x agw.backbone_lr_factor``; the
rate is set per epoch: linear warm-up, then x0.1 and x0.01 (AGW's ``adjust_learning_rate``). An epoch is
AGW's number of batches, ``int(max(#RGB, #IR) / (P * K)) + 1``, unless ``agw.iterations_per_epoch`` says.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from pfanet_cli.config import AgwConfig
from pfanet_cli.engine.runtime import optimise, unwrap
from pfanet_cli.engine.trainer import Phase, StageParts, StageTrainer
from pfanet_cli.engine.validation import SelectionRecord, Validator, due, record_validation
from pfanet_cli.modeling.build import AGW, build_networks
from pfanet_cli.modeling.losses import adaptive_triplet, identity_cross_entropy, weighted_regularized_triplet


def agw_learning_rate_factor(epoch: int, agw: AgwConfig) -> float:
    """The factor of ``agw.lr`` in ``epoch`` (from 0): AGW's ``adjust_learning_rate``, ``(epoch + 1) /
    warmup_epochs`` during the warm-up, then 1, 0.1 from ``first_decay``, 0.01 from ``second_decay``."""
    if epoch < agw.warmup_epochs:
        return (epoch + 1) / agw.warmup_epochs
    if epoch < agw.first_decay:
        return 1.0
    return 0.1 if epoch < agw.second_decay else 0.01


def agw_iterations_per_epoch(rgb_images: int, ir_images: int, agw: AgwConfig) -> int:
    """AGW's batches per epoch (its IdentitySampler draws ``int(N / (P * K)) + 1`` batches, N the larger
    modality's image count), or ``agw.iterations_per_epoch`` when it is set."""
    if agw.iterations_per_epoch:
        return agw.iterations_per_epoch
    return int(max(rgb_images, ir_images) / (agw.ids_per_batch * agw.images_per_id)) + 1


class AgwTrainer(StageTrainer):
    stage = "train-agw"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.selection = SelectionRecord()
        self.validator: Validator | None = None
        super().__init__(*args, **kwargs)
        self.sample_titles = ("RGB", "RGB second view", "IR") if self.recipe.data.rgb_views == 2 else ("RGB", "IR")

    # --- stage description -----------------------------------------------------------------------
    def iterations_per_epoch(self) -> int:
        ir = int(self.split.is_ir.sum())
        return agw_iterations_per_epoch(len(self.split) - ir, ir, self.recipe.agw)

    def phases(self) -> list[Phase]:
        return [Phase("agw", self.recipe.agw.epochs * self.iterations_per_epoch())]

    def build(self, fresh: bool) -> StageParts:
        recipe, agw = self.recipe, self.recipe.agw
        self.validator = (Validator(self.data, agw.validate_trials, self.device, key="agw.validate_every")
                          if agw.validate_every else None)
        nets = self.place(build_networks(recipe.model, self.split.num_classes, joint_discriminator=False,
                                         load_pretrained=fresh, keys=(AGW,)), sync_bn=(AGW,))
        net = unwrap(nets[AGW])
        net.configure_test(agw.test_feature, agw.test_flip)
        groups = net.parameter_groups()
        optimizer = torch.optim.SGD(
            [{"params": groups["backbone"], "lr": agw.lr * agw.backbone_lr_factor},
             {"params": groups["head"], "lr": agw.lr}],
            momentum=agw.momentum, nesterov=True, weight_decay=agw.weight_decay)
        per_epoch = self.iterations_per_epoch()
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: agw_learning_rate_factor(step // per_epoch, agw))
        return StageParts(networks=nets, optimizers={"agw": optimizer}, schedulers={"agw": schedule},
                          batches=self.batch_source("agw", agw.ids_per_batch, agw.images_per_id, recipe.data.pad,
                                                    augment=True))

    def images_per_iteration(self) -> int:
        return (self.recipe.data.rgb_views + 1) * self.batches.sampler.batch_size * self.distributed.world_size

    def run_info(self) -> dict[str, Any]:
        return {"iterations_per_epoch": self.iterations_per_epoch(), "epochs": self.recipe.agw.epochs}

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "best_validation": self.selection.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        self.selection.load_state_dict(state["best_validation"])

    # --- one iteration -----------------------------------------------------------------------------
    def triplet(self) -> Callable[[Tensor, Tensor], Tensor]:
        agw = self.recipe.agw
        if agw.triplet == "adp":
            return lambda features, labels: adaptive_triplet(features, labels, agw.adp_alpha, agw.adp_gamma)
        return weighted_regularized_triplet

    def step(self, phase: str, iteration: int) -> dict[str, Tensor]:
        batch = self.batches.next()
        views = [batch.rgb] + ([batch.rgb_second] if batch.rgb_second is not None else [])
        labels = torch.cat([batch.labels] * (len(views) + 1))  # every RGB view, then the IR images
        with self.autocast():
            out = self.nets[AGW](torch.cat(views), batch.ir)
            ce = identity_cross_entropy(out.logits, labels)
            triplet = self.triplet()(out.pooled.float(), labels)
            loss = ce + triplet
        optimise(loss, self.opts["agw"], self.scalers["agw"])
        self.scheds["agw"].step()
        self.last_images = [view.detach() for view in views] + [batch.ir.detach()]
        return {"ce": ce.detach(), "tri": triplet.detach()}

    # --- model selection ------------------------------------------------------------------------------
    def end_of_iteration(self, phase: Phase, last: bool) -> None:
        """Every ``agw.validate_every`` iterations and at the end: the val protocol, a ``metrics.jsonl`` row and
        ``best.pt`` when val mAP is the best so far (rank 0), as train-joint does."""
        if self.validator is None or not self.distributed.is_main or \
                not due(self.recipe.agw.validate_every, self.global_iteration(), last):
            return
        record_validation(self, phase.name, self.validator.evaluate(unwrap(self.nets[AGW]), None))
