"""Hand-computed cases for every loss of pfanet_cli.losses."""

import math

import pytest
import torch

from pfanet_cli.config import JointConfig
from pfanet_cli.modeling.losses import (
    adaptive_triplet,
    cross_modality_triplet,
    cycle_loss,
    identity_cross_entropy,
    lsgan_loss,
    pairwise_distance,
    weighted_regularized_triplet,
)


def test_lsgan_loss_hand_computed():
    prediction = torch.tensor([[[[0.5, 2.0]]]])
    # real: ((0.5 - 1)^2 + (2 - 1)^2) / 2 ; fake: (0.5^2 + 2^2) / 2
    assert lsgan_loss(prediction, True).item() == pytest.approx(0.625)
    assert lsgan_loss(prediction, False).item() == pytest.approx(2.125)


def test_cycle_loss_is_mean_absolute_error():
    a = torch.tensor([1.0, 2.0, 3.0])
    b = torch.tensor([2.0, 2.0, 0.0])
    assert cycle_loss(a, b).item() == pytest.approx(4.0 / 3.0)


def test_identity_cross_entropy_hand_computed():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    labels = torch.tensor([0, 1])
    # -log(1/2) and -log(1/4)
    expected = (math.log(2.0) + math.log(4.0)) / 2.0
    assert identity_cross_entropy(logits, labels).item() == pytest.approx(expected)


def _cosine_case():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    anchor_labels = torch.tensor([0, 1])
    others = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    other_labels = torch.tensor([0, 0, 1, 1])
    return anchors, anchor_labels, others, other_labels


def test_triplet_cosine_hand_computed():
    # anchor 1 (1,0), id 0: positives at d = 0 and 1 -> hardest 1; negatives at d = 1 - 1/sqrt2 and 2
    #   -> hardest 1 - 1/sqrt2; loss = 1 - (1 - 1/sqrt2) + m
    # anchor 2 (0,1), id 1: positives at d = 1 - 1/sqrt2 and 1 -> hardest 1; negatives at d = 1 and 0
    #   -> hardest 0; loss = 1 - 0 + m
    anchors, anchor_labels, others, other_labels = _cosine_case()
    r = 1.0 / math.sqrt(2.0)
    for margin in (1.0, 0.3):
        expected = ((r + margin) + (1.0 + margin)) / 2.0
        loss = cross_modality_triplet(anchors, anchor_labels, others, other_labels, margin, "cosine")
        assert loss.item() == pytest.approx(expected, abs=1e-6)
    # a margin small enough makes anchor 1's term vanish: relu(1/sqrt2 - 0.8) = 0
    loss = cross_modality_triplet(anchors, anchor_labels, others, other_labels, -0.8, "cosine")
    assert loss.item() == pytest.approx((0.0 + 0.2) / 2.0, abs=1e-6)


def test_triplet_euclidean_hand_computed():
    anchors = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    anchor_labels = torch.tensor([0, 1])
    others = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0], [0.0, 5.0]])
    other_labels = torch.tensor([0, 0, 1, 1])
    # anchor (0,0), id 0: positives d = 1, 2 -> 2; negatives d = 5, 5 -> 5; relu(2 - 5 + 0.3) = 0
    # anchor (3,0), id 1: positives d = 4, sqrt34 -> sqrt34; negatives d = 2, sqrt13 -> 2; sqrt34 - 2 + 0.3
    expected = (0.0 + (math.sqrt(34.0) - 2.0 + 0.3)) / 2.0
    loss = cross_modality_triplet(anchors, anchor_labels, others, other_labels, 0.3, "euclidean")
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    cosine = cross_modality_triplet(anchors, anchor_labels, others, other_labels, 0.3, "cosine")
    assert cosine.item() != pytest.approx(expected, abs=1e-3)


def test_triplet_mines_only_in_the_other_set():
    # Anchors of the same id far apart: mining inside the anchor set would find a hard positive there.
    anchors = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 0])
    others = torch.tensor([[1.0, 0.1], [-1.0, 0.1], [0.0, 1.0]])
    other_labels = torch.tensor([0, 0, 1])
    dist = pairwise_distance(anchors, others, "cosine")
    expected = torch.relu(dist[:, :2].amax(1) - dist[:, 2] + 1.0).mean()
    loss = cross_modality_triplet(anchors, labels, others, other_labels, 1.0)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


def reference_triplet(anchors, anchor_labels, positives, positive_labels, negatives, negative_labels, margin):
    """Batch-hard triplet with cosine distance, one anchor at a time."""
    terms = []
    for a, label in zip(anchors, anchor_labels):
        d_pos = [1 - torch.cosine_similarity(a, p, dim=0) for p, lp in zip(positives, positive_labels) if lp == label]
        d_neg = [1 - torch.cosine_similarity(a, n, dim=0) for n, ln in zip(negatives, negative_labels) if ln != label]
        if d_pos and d_neg:
            terms.append(torch.relu(max(d_pos) - min(d_neg) + margin))
    return sum(terms) / max(len(terms), 1)


def test_triplet_mines_negatives_in_a_set_of_their_own_when_given():
    """``L_tri(X'_ir, X_ir, X'_ir)`` read literally (eqs. 14/15): positives in the other set, negatives among the
    anchors' own set (an anchor is never its own negative: same identity)."""
    torch.manual_seed(0)
    fake, real = torch.randn(6, 5), torch.randn(6, 5)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    own = cross_modality_triplet(fake, labels, real, labels, 1.0, negatives=fake, negative_labels=labels)
    assert own.item() == pytest.approx(reference_triplet(fake, labels, real, labels, fake, labels, 1.0).item(),
                                       abs=1e-6)
    other = cross_modality_triplet(fake, labels, real, labels, 1.0)
    assert other.item() == pytest.approx(reference_triplet(fake, labels, real, labels, real, labels, 1.0).item(),
                                         abs=1e-6)
    assert own.item() != pytest.approx(other.item(), abs=1e-4)


def test_triplet_skips_anchors_without_positive_or_negative():
    anchors, anchor_labels, others, other_labels = _cosine_case()
    base = cross_modality_triplet(anchors, anchor_labels, others, other_labels, 1.0)
    extra = torch.cat([anchors, torch.tensor([[0.3, 0.7]])])
    extra_labels = torch.cat([anchor_labels, torch.tensor([7])])  # id 7 has no positive among the others
    assert cross_modality_triplet(extra, extra_labels, others, other_labels, 1.0).item() == pytest.approx(
        base.item(), abs=1e-6
    )
    # no valid anchor at all: zero, but still differentiable
    lonely = anchors.clone().requires_grad_(True)
    loss = cross_modality_triplet(lonely, torch.tensor([5, 6]), others, other_labels, 1.0)
    loss.backward()
    assert loss.item() == 0.0 and torch.all(lonely.grad == 0)


def test_triplet_gradients_are_finite_for_identical_points():
    x = torch.randn(4, 8, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    for distance in ("cosine", "euclidean"):
        loss = cross_modality_triplet(x, labels, x, labels, 0.3, distance)
        (grad,) = torch.autograd.grad(loss, x)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_triplet_rejects_unknown_distance_and_bad_shapes():
    anchors, anchor_labels, others, other_labels = _cosine_case()
    with pytest.raises(ValueError, match="cosine"):
        cross_modality_triplet(anchors, anchor_labels, others, other_labels, 1.0, "manhattan")
    with pytest.raises(ValueError):
        cross_modality_triplet(anchors, anchor_labels[:1], others, other_labels, 1.0)


def test_default_margins_follow_the_distance():
    assert JointConfig().resolved_margin() == 1.0
    assert JointConfig(triplet_distance="euclidean").resolved_margin() == 0.3


def reference_soft_triplet(features, labels, alpha=1.0, gamma=1.0, adaptive=False):
    """AGW's TripletLoss_WRT and CAJ's TripletLoss_ADP (square=1) restated sample by sample: for each anchor, a
    softmax over its positives' distances weights them, one over its negatives' negated distances weights those,
    then nn.SoftMarginLoss (y = 1; ADP: the squared difference, y = -1 where the triplet is violated). As in
    their softmax_weights, the shift is the largest of the row's masked values (for the negatives 0, from the
    masked-out entries) and 1e-6 is added to the denominator, which matters when all negatives are far."""
    n = len(labels)
    distance = torch.cdist(features.double(), features.double()).clamp_min(1e-6)
    distance = torch.where(torch.eye(n, dtype=torch.bool), torch.full_like(distance, 1e-6), distance)
    positives, negatives = [], []
    for i in range(n):
        pos = distance[i][labels == labels[i]]
        neg = distance[i][labels != labels[i]]
        pos_weights = torch.exp(alpha * pos - (alpha * pos).max())
        neg_weights = torch.exp(-alpha * neg)
        positives.append((pos * pos_weights / (pos_weights.sum() + 1e-6)).sum())
        negatives.append((neg * neg_weights / (neg_weights.sum() + 1e-6)).sum())
    d_p, d_n = torch.stack(positives), torch.stack(negatives)
    soft_margin = torch.nn.SoftMarginLoss()
    if not adaptive:
        return soft_margin(d_n - d_p, torch.ones(n, dtype=torch.float64))
    y = torch.where(d_p > d_n, -1.0, 1.0).double()
    return soft_margin((gamma * (d_p - d_n) ** 2).clamp_max(88), y)


@pytest.mark.parametrize("alpha, gamma", [(1.0, 1.0), (2.0, 0.5)])
def test_agws_weighted_regularised_and_cajs_adaptive_triplets_equal_a_per_sample_restatement(alpha, gamma):
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2, 2])  # two modalities' halves of one batch, any order
    features = torch.randn(10, 6, requires_grad=True)
    wrt, adp = weighted_regularized_triplet(features, labels), adaptive_triplet(features, labels, alpha, gamma)
    assert wrt.item() == pytest.approx(reference_soft_triplet(features, labels).item(), rel=1e-5)
    assert adp.item() == pytest.approx(reference_soft_triplet(features, labels, alpha, gamma, True).item(), rel=1e-5)
    grad, = torch.autograd.grad(wrt, features)
    expected, = torch.autograd.grad(reference_soft_triplet(features, labels), features)
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)
    # separated identities: the soft margin still pulls (WRT never reaches zero); ADP's satisfied branch is tiny
    apart = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [10.1, 0.0]])
    pairs = torch.tensor([0, 0, 1, 1])
    assert 0 < weighted_regularized_triplet(apart, pairs).item() < 1e-3
    assert adaptive_triplet(apart, pairs).item() < 1e-30 + math.log1p(math.exp(-88))
