"""Identity-aligned sampler and batched augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pfanet_cli.data.augment import (
    AugmentPlan,
    augment_on_host,
    crop_and_flip,
    draw_crop_plan,
    gather_rows,
    to_uint8,
    to_unit_range,
)
from pfanet_cli.errors import UsageError
from pfanet_cli.data.sampler import IdentityAlignedSampler


def toy_index(ids: int = 8, rgb: int = 6, ir: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels, is_ir = [], []
    for label in range(ids):
        labels += [label] * (rgb + ir)
        is_ir += [False] * rgb + [True] * ir
    order = rng.permutation(len(labels))  # rows of a split need not be grouped
    return np.array(labels)[order], np.array(is_ir)[order]


def test_batches_are_identity_aligned_and_modality_pure():
    labels, is_ir = toy_index()
    sampler = IdentityAlignedSampler(labels, is_ir, ids_per_batch=3, images_per_id=2, seed=1)
    for _ in range(10):
        rgb, ir = sampler.next_batch()
        assert len(rgb) == len(ir) == 6
        np.testing.assert_array_equal(labels[rgb], labels[ir])
        assert not is_ir[rgb].any() and is_ir[ir].all()
        assert len(set(labels[rgb])) == 3
        assert list(labels[rgb]) == [l for l in labels[rgb][::2] for _ in range(2)]


def test_without_replacement_when_enough_images_and_with_replacement_otherwise():
    labels, is_ir = toy_index(ir=3)
    sampler = IdentityAlignedSampler(labels, is_ir, ids_per_batch=2, images_per_id=3, seed=0)
    for _ in range(20):
        rgb, ir = sampler.next_batch()
        for block in (rgb[0:3], rgb[3:6], ir[0:3], ir[3:6]):
            assert len(set(block)) == 3
    many = IdentityAlignedSampler(labels, is_ir, ids_per_batch=2, images_per_id=5, seed=0)
    rgb, ir = many.next_batch()
    assert len(set(rgb[:5])) == 5 and len(set(ir[:5])) <= 3


def test_every_identity_is_visited_once_per_epoch():
    labels, is_ir = toy_index(ids=9)
    sampler = IdentityAlignedSampler(labels, is_ir, ids_per_batch=3, images_per_id=1, seed=4)
    seen = [labels[sampler.next_batch()[0]] for _ in range(3)]
    assert sorted(np.concatenate(seen)) == list(range(9))
    assert sampler.epoch == 0
    sampler.next_batch()
    assert sampler.epoch == 1


def test_deterministic_for_a_seed_and_resumable_from_state():
    labels, is_ir = toy_index()
    a = IdentityAlignedSampler(labels, is_ir, 3, 2, seed=7)
    b = IdentityAlignedSampler(labels, is_ir, 3, 2, seed=7)
    c = IdentityAlignedSampler(labels, is_ir, 3, 2, seed=8)
    batches_a = [a.next_batch() for _ in range(6)]
    batches_b = [b.next_batch() for _ in range(6)]
    batches_c = [c.next_batch() for _ in range(6)]
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(batches_a, batches_b))
    assert not all(np.array_equal(x[0], y[0]) for x, y in zip(batches_a, batches_c))

    first = IdentityAlignedSampler(labels, is_ir, 3, 2, seed=7)
    for _ in range(4):
        first.next_batch()
    resumed = IdentityAlignedSampler(labels, is_ir, 3, 2, seed=7)
    resumed.load_state_dict(first.state_dict())
    for expected in batches_a[4:]:
        got = resumed.next_batch()
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])


def test_ranks_draw_disjoint_identities():
    labels, is_ir = toy_index(ids=12)
    ranks = [IdentityAlignedSampler(labels, is_ir, 3, 2, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(8):
        ids = [set(labels[s.next_batch()[0]]) for s in ranks]
        assert not ids[0] & ids[1]


def test_identities_missing_a_modality_are_not_sampled():
    labels, is_ir = toy_index(ids=5)
    keep = ~((labels == 2) & is_ir)
    sampler = IdentityAlignedSampler(labels[keep], is_ir[keep], 4, 1, seed=0)
    assert 2 not in sampler.identities


def test_too_many_identities_per_batch_is_a_usage_error():
    labels, is_ir = toy_index(ids=4)
    with pytest.raises(UsageError, match=r"joint.ids_per_batch=3 x 2 process\(es\) needs 6 identities"):
        IdentityAlignedSampler(labels, is_ir, 3, 2, world_size=2)


def reference_crop(images, rows, plan, pad):
    """Per sample: zero-pad, crop at the plan's offsets, flip the crop, with plain slicing; then scale to
    [-1, 1]. What both augmentation paths must equal (B×H×W×3)."""
    height, width = images.shape[1:3]
    out = []
    for row, top, left, flip in zip(rows, plan.top.tolist(), plan.left.tolist(), plan.flipped.tolist()):
        padded = np.pad(images[row], ((pad, pad), (pad, pad), (0, 0)))
        crop = padded[top:top + height, left:left + width]
        out.append(crop[:, ::-1] if flip else crop)
    return torch.from_numpy(np.stack(out).astype(np.float32) / np.float32(127.5) - np.float32(1.0))


@pytest.mark.parametrize("pad", [0, 2, 7], ids=["no-pad", "pad-2", "pad-beyond-the-width"])
def test_both_augmentation_paths_equal_a_per_sample_loop(pad):
    images = np.random.default_rng(0).integers(0, 256, (10, 8, 5, 3), dtype=np.uint8)
    rows = np.array([7, 2, 2, 9, 0, 4, 4, 1])
    plan = draw_crop_plan(len(rows), torch.Generator().manual_seed(3), flip=True, pad=pad)
    assert plan.flipped.any() and not plan.flipped.all()
    if pad:
        assert len(set(plan.top.tolist())) > 1 and len(set(plan.left.tolist())) > 1
    expected = reference_crop(images, rows, plan, pad)
    host = augment_on_host(images, rows, AugmentPlan(plan), pad)
    device = to_unit_range(crop_and_flip(gather_rows(images, rows), plan, pad))
    assert host.dtype == np.float32 and host.shape == (8, 8, 5, 3)
    assert torch.equal(torch.from_numpy(host), expected)
    assert torch.equal(device, expected)


def test_the_crop_plan_draws_what_the_synchronous_pipeline_drew():
    """Checkpoints written before the pipeline was made asynchronous hold the generator's state: the plan
    must consume it in the same order (top offsets, left offsets, then flips) to resume into the same
    batches."""
    plan = draw_crop_plan(6, torch.Generator().manual_seed(5), flip=True, pad=3)
    replay = torch.Generator().manual_seed(5)
    assert torch.equal(plan.top, torch.randint(0, 7, (6,), generator=replay))
    assert torch.equal(plan.left, torch.randint(0, 7, (6,), generator=replay))
    assert torch.equal(plan.flipped, torch.rand(6, generator=replay) < 0.5)
    unflipped = draw_crop_plan(6, torch.Generator(), flip=False, pad=0)
    assert not unflipped.flipped.any() and not unflipped.top.any() and not unflipped.left.any()


def test_gather_and_range_conversion_round_trip():
    images = np.random.default_rng(0).integers(0, 256, (10, 8, 4, 3), dtype=np.uint8)
    rows = np.array([7, 2, 2, 9])
    batch = gather_rows(images, rows)
    assert batch.shape == (4, 8, 4, 3) and batch.dtype == torch.uint8
    np.testing.assert_array_equal(batch.numpy(), images[rows])
    unit = to_unit_range(batch)
    assert unit.min() >= -1 and unit.max() <= 1
    torch.testing.assert_close(to_uint8(unit), batch)
    np.testing.assert_array_equal(augment_on_host(images, rows, AugmentPlan(draw_crop_plan(4, torch.Generator(), False)),
                                                  pad=0), unit.numpy())
