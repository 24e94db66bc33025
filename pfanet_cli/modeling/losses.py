"""The losses of PFANet (SPEC §4): LSGAN, cycle/identity L1, identity cross-entropy and the batch-hard
cross-modality triplet loss (AlignGAN's cosine form by default, Euclidean as a switch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "lsgan_loss",
    "cycle_loss",
    "identity_cross_entropy",
    "cross_modality_triplet",
    "pairwise_distance",
]

TRIPLET_DISTANCES = ("cosine", "euclidean")


def lsgan_loss(prediction: Tensor, target_is_real: bool) -> Tensor:
    """Least-squares GAN loss: mean squared error of the patch map to 1 (real) or 0 (fake)."""
    target = torch.ones_like(prediction) if target_is_real else torch.zeros_like(prediction)
    return F.mse_loss(prediction.float(), target.float())


def cycle_loss(reconstruction: Tensor, original: Tensor) -> Tensor:
    """Mean absolute error (L1); the cycle loss ``|G_R(G_I(x)) − x|`` and the identity loss ``|G(x) − x|``."""
    return F.l1_loss(reconstruction.float(), original.float())


def identity_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean softmax cross-entropy of identity logits against integer labels."""
    return F.cross_entropy(logits.float(), labels.long())


def pairwise_distance(a: Tensor, b: Tensor, distance: str = "cosine") -> Tensor:
    """|a|×|b| distance matrix: ``1 − cos`` (in [0, 2]) or Euclidean (sqrt clamped away from 0 so that
    identical points keep a finite gradient). Computed in float32."""
    a, b = a.float(), b.float()
    if distance == "cosine":
        return 1.0 - F.normalize(a, dim=1) @ F.normalize(b, dim=1).t()
    if distance == "euclidean":
        squared = (a * a).sum(1, keepdim=True) + (b * b).sum(1).unsqueeze(0) - 2.0 * (a @ b.t())
        return squared.clamp_min(1e-12).sqrt()
    raise ValueError(f"triplet distance must be one of {', '.join(TRIPLET_DISTANCES)}, got {distance!r}")


def cross_modality_triplet(
    anchors: Tensor,
    anchor_labels: Tensor,
    others: Tensor,
    other_labels: Tensor,
    margin: float,
    distance: str = "cosine",
    negatives: Tensor | None = None,
    negative_labels: Tensor | None = None,
) -> Tensor:
    """Batch-hard cross-modality triplet loss ``L_tri(anchors, others, others)``, or ``L_tri(anchors, others,
    negatives)`` when a negative set is given.

    For every anchor, the hardest positive (farthest sample of the same identity) is mined in ``others`` (the
    other modality, never the anchors' own set) and the hardest negative (closest sample of another identity) in
    ``negatives`` (default: ``others`` too); the loss is the mean of ``relu(d_ap − d_an + margin)``. With
    ``distance="cosine"`` (AlignGAN, margin 1.0) ``d = 1 − cos``; with ``"euclidean"`` (margin 0.3) the L2
    distance. Anchors that have no positive or no negative are left out of the mean (zero loss, still in the
    graph, when none qualifies)."""
    if negatives is None:
        negatives, negative_labels = others, other_labels
    for name, samples in (("others", others), ("negatives", negatives)):
        if anchors.dim() != 2 or samples.dim() != 2 or anchors.shape[1] != samples.shape[1]:
            raise ValueError(f"triplet: anchors and {name} must be N×D and M×D, got {tuple(anchors.shape)} and "
                             f"{tuple(samples.shape)}")
    if (anchor_labels.shape != (anchors.shape[0],) or other_labels.shape != (others.shape[0],)
            or negative_labels is None or negative_labels.shape != (negatives.shape[0],)):
        raise ValueError("triplet: one label per anchor and per other sample is needed")
    positive = anchor_labels.reshape(-1, 1) == other_labels.reshape(1, -1)
    negative = anchor_labels.reshape(-1, 1) != negative_labels.reshape(1, -1)
    hardest_positive = pairwise_distance(anchors, others, distance).masked_fill(~positive, float("-inf")).amax(dim=1)
    hardest_negative = pairwise_distance(anchors, negatives, distance).masked_fill(~negative, float("inf")).amin(1)
    valid = positive.any(dim=1) & negative.any(dim=1)
    per_anchor = F.relu(hardest_positive - hardest_negative + margin)
    per_anchor = torch.where(valid, per_anchor, torch.zeros_like(per_anchor))
    return per_anchor.sum() / valid.sum().clamp_min(1)
