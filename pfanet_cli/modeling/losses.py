"""The losses of PFANet (SPEC §4): LSGAN, cycle/identity L1, identity cross-entropy and the batch-hard
cross-modality triplet loss (AlignGAN's cosine form by default, Euclidean as a switch); and AGW's weighted
regularised triplet and CAJ's adaptive (squared-difference) variant of it."""

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
    "weighted_regularized_triplet",
    "adaptive_triplet",
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


def _softmax_weights(values: Tensor, mask: Tensor) -> Tensor:
    """Row-wise softmax of ``values`` over the entries where ``mask`` is 1, as AGW computes it: shifted by the row's
    largest masked-to-zero value, with 1e-6 added to the denominator."""
    largest = (values * mask).amax(dim=1, keepdim=True)
    exp = torch.exp(values - largest) * mask
    return exp / (exp.sum(dim=1, keepdim=True) + 1e-6)


def _soft_hardest(features: Tensor, labels: Tensor, alpha: float = 1.0) -> tuple[Tensor, Tensor]:
    """Per sample of the whole batch (every modality): the softmax-weighted mean of its Euclidean distances to
    its positives (itself included, weights growing with distance) and to its negatives (weights growing as the
    distance shrinks); ``alpha`` scales the distances inside the softmax."""
    distance = pairwise_distance(features, features, "euclidean")
    same = labels.reshape(-1, 1) == labels.reshape(1, -1)
    positive, negative = same.float(), (~same).float()
    to_positive, to_negative = distance * positive, distance * negative
    furthest_positive = (to_positive * _softmax_weights(to_positive * alpha, positive)).sum(dim=1)
    closest_negative = (to_negative * _softmax_weights(-to_negative * alpha, negative)).sum(dim=1)
    return furthest_positive, closest_negative


def weighted_regularized_triplet(features: Tensor, labels: Tensor) -> Tensor:
    """AGW's weighted regularised triplet (``TripletLoss_WRT``): the soft margin ``log(1 + exp(d_p - d_n))``
    averaged over the batch, with ``d_p`` and ``d_n`` the softmax-weighted positive and negative distances; no
    margin to choose."""
    furthest_positive, closest_negative = _soft_hardest(features, labels)
    return F.softplus(furthest_positive - closest_negative).mean()


def adaptive_triplet(features: Tensor, labels: Tensor, alpha: float = 1.0, gamma: float = 1.0) -> Tensor:
    """CAJ's ``TripletLoss_ADP`` with ``square = 1``: ``s = min(gamma * (d_p - d_n) ** 2, 88)`` and
    ``log(1 + exp(s))`` where the triplet is violated (``d_p > d_n``), ``log(1 + exp(-s))`` where it is not,
    averaged; ``alpha`` scales the distances inside the weights."""
    furthest_positive, closest_negative = _soft_hardest(features, labels, alpha)
    squared = (gamma * (furthest_positive - closest_negative).pow(2)).clamp_max(88.0)
    violated = furthest_positive > closest_negative
    return F.softplus(torch.where(violated, squared, -squared)).mean()
