"""The augmentations beyond crop and flip: what each does to a batch (checked against the reference code's
operation, restated here on the ImageNet-normalised tensor where the references apply them), the draws
(distributions, nothing drawn when off), and the host and device paths giving the same batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pfanet_cli.data.augment import (
    ERASE_AREA,
    NONE,
    Augmentation,
    augment_on_device,
    augment_on_host,
    crop_rows,
    draw_augment_plan,
    draw_crop_plan,
    gather_rows,
)
from pfanet_cli.data.channel_ops import (
    COPY_B,
    COPY_G,
    COPY_R,
    ERASE_FILL,
    GREY,
    IDENTITY,
    erase_boxes_,
    erase_fill,
    mix_channels_,
)
from pfanet_cli.modeling.extractor import IMAGENET_MEAN, IMAGENET_STD

MEAN = torch.tensor(IMAGENET_MEAN).reshape(1, 1, 1, 3)
STD = torch.tensor(IMAGENET_STD).reshape(1, 1, 1, 3)
SIZE = (64, 32)


def normalised(unit: torch.Tensor) -> torch.Tensor:
    """[-1, 1] B×H×W×3 -> what the references' ``Normalize(mean, std)`` gives for the same pixels."""
    return ((unit.double() + 1) / 2 - MEAN.double()) / STD.double()


def reference_channel_operation(image: torch.Tensor, code: int) -> torch.Tensor:
    """CAJ's ChannelExchange / ChannelAdapGray branches on a normalised H×W×3 image, written out."""
    out = image.clone()
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    if code == GREY:
        grey = 0.2989 * r + 0.5870 * g + 0.1140 * b
        out[..., 0], out[..., 1], out[..., 2] = grey, grey, grey
    elif code in (COPY_R, COPY_G, COPY_B):
        source = image[..., code - COPY_R]
        out[..., 0], out[..., 1], out[..., 2] = source, source, source
    return out


def images(count: int = 12, seed: int = 0, grey_from: int | None = None) -> np.ndarray:
    """Random uint8 N×64×32×3 images; from row ``grey_from`` on, grey (three equal channels, like SYSU's IR)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (count,) + SIZE + (3,), dtype=np.uint8)
    if grey_from is not None:
        pixels[grey_from:] = pixels[grey_from:, ..., :1]
    return pixels


def batch(augmentation: Augmentation, rgb: int = 6, ir: int = 6, seed: int = 3, pad: int = 2, data=None):
    """(plan, host batch) of rows 0..rgb-1 as RGB and the next ``ir`` rows as IR (grey)."""
    data = images(rgb + ir, grey_from=rgb) if data is None else data
    rows = np.concatenate([np.arange(rgb), np.arange(rgb, rgb + ir)] + [np.arange(rgb)] * (augmentation.rgb_views - 1))
    plan = draw_augment_plan(rgb, ir, SIZE, torch.Generator().manual_seed(seed), True, pad, augmentation)
    return plan, torch.from_numpy(augment_on_host(data, rows, plan, pad)), data, rows


def test_without_augmentation_the_draws_are_the_crop_plans_alone():
    """Checkpoints written before these augmentations hold the generator's state after the crop plan; with all
    of them off nothing else is drawn, so such runs resume into the same batches."""
    generator, replay = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    plan = draw_augment_plan(4, 4, SIZE, generator, True, 3, NONE)
    crop = draw_crop_plan(8, replay, True, 3)
    assert all(torch.equal(a, b) for a, b in zip(plan.crop, crop))
    assert plan.grey is None and plan.erase is None and plan.channel is None
    assert torch.equal(generator.get_state(), replay.get_state())


def test_random_erasing_fills_one_box_per_image_with_the_references_value():
    plain_plan, plain, _, _ = batch(NONE)
    plan, erased, _, _ = batch(Augmentation(erasing=1.0))
    assert all(torch.equal(a, b) for a, b in zip(plan.crop, plain_plan.crop))  # crops are drawn first
    height, width = SIZE
    fill = erase_fill()
    for image, before, (top, left, box_h, box_w) in zip(erased, plain, plan.erase.tolist()):
        assert 0 < box_h < height and 0 < box_w < width
        assert top + box_h <= height and left + box_w <= width
        area = box_h * box_w / (height * width)
        assert ERASE_AREA[0] * 0.7 <= area <= ERASE_AREA[1] * 1.1  # drawn area, then sides rounded
        assert 0.3 * 0.7 <= box_h / box_w <= (1 / 0.3) * 1.4
        inside = torch.zeros(SIZE, dtype=torch.bool)
        inside[top:top + box_h, left:left + box_w] = True
        assert torch.equal(image[inside], fill.expand(int(inside.sum()), 3))
        assert torch.equal(image[~inside], before[~inside])
    # the reference writes its constants into the normalised tensor: the fill normalises to them
    torch.testing.assert_close(normalised(fill.reshape(1, 1, 1, 3)).flatten(), torch.tensor(ERASE_FILL).double(),
                               atol=1e-6, rtol=0)


def test_random_erasing_happens_with_its_probability_and_boxes_vary():
    plan = draw_augment_plan(200, 200, SIZE, torch.Generator().manual_seed(0), True, 0, Augmentation(erasing=0.5))
    erased = plan.erase[:, 2] > 0
    assert 0.45 < float(erased.float().mean()) < 0.55
    boxes = plan.erase[erased]
    assert len(set(boxes[:, 2].tolist())) > 10 and len(set(boxes[:, 0].tolist())) > 10
    assert (boxes[:, 0] + boxes[:, 2] <= SIZE[0]).all() and (boxes[:, 1] + boxes[:, 3] <= SIZE[1]).all()
    assert boxes[:, 0].min() == 0 and int((boxes[:, 0] + boxes[:, 2]).max()) == SIZE[0]  # corners reach the edges


@pytest.mark.parametrize("code", [IDENTITY, COPY_R, COPY_G, COPY_B, GREY])
def test_channel_operations_equal_the_references_on_the_normalised_image(code):
    unit = torch.rand(2, 5, 4, 3) * 2 - 1
    mixed = unit.clone()
    mix_channels_(mixed, torch.tensor([code, IDENTITY]))
    expected = reference_channel_operation(normalised(unit)[0], code)
    torch.testing.assert_close(normalised(mixed)[0], expected, atol=1e-5, rtol=0)
    assert torch.equal(mixed[1], unit[1])


def test_erasing_then_channels_is_the_references_order():
    """CAJ's second RGB view: ChannelRandomErasing, then ChannelExchange, both on the normalised tensor."""
    unit = torch.rand(1, 8, 6, 3) * 2 - 1
    out = unit.clone()
    erase_boxes_(out, torch.tensor([[1, 2, 3, 2]]), erase_fill())
    mix_channels_(out, torch.tensor([COPY_B]))
    reference = normalised(unit)[0]
    reference[1:4, 2:4] = torch.tensor(ERASE_FILL, dtype=torch.float64)
    torch.testing.assert_close(normalised(out)[0], reference_channel_operation(reference, COPY_B), atol=1e-5, rtol=0)


def test_channel_exchange_turns_each_rgb_image_into_one_of_its_channels_and_leaves_ir_alone():
    _, plain, _, _ = batch(NONE)
    plan, exchanged, _, _ = batch(Augmentation(channel_exchange=1.0))
    codes = plan.channel.tolist()
    assert set(codes[:6]) <= {COPY_R, COPY_G, COPY_B} and len(set(codes[:6])) > 1 and set(codes[6:]) == {IDENTITY}
    assert torch.equal(exchanged[6:], plain[6:])
    for image, before, code in zip(normalised(exchanged[:6]), normalised(plain[:6]), codes[:6]):
        for channel in range(3):
            torch.testing.assert_close(image[..., channel], before[..., code - COPY_R], atol=1e-5, rtol=0)


def test_two_rgb_views_the_second_channel_exchanged():
    """CAJ's joint batch: each RGB image twice, independently cropped, flipped and erased, the second view
    channel-exchanged; IR images once."""
    augmentation = Augmentation(erasing=0.5, channel_exchange=1.0, rgb_views=2)
    plan, out, _, rows = batch(augmentation)
    assert out.shape == (18,) + SIZE + (3,) and rows.tolist() == list(range(12)) + list(range(6))
    codes = plan.channel.tolist()
    assert set(codes[:12]) == {IDENTITY} and set(codes[12:]) <= {COPY_R, COPY_G, COPY_B}
    first, second = normalised(out[:6]), normalised(out[12:])
    assert (first[..., 0] - first[..., 1]).abs().amax() > 0.5  # colour kept
    torch.testing.assert_close(second[..., 0], second[..., 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(second[..., 0], second[..., 2], atol=1e-5, rtol=0)
    assert not torch.equal(plan.crop.top[:6], plan.crop.top[12:]) or not torch.equal(plan.crop.left[:6],
                                                                                     plan.crop.left[12:])


def test_adaptive_gray_draws_cajs_cases_on_ir_only():
    plan = draw_augment_plan(100, 4000, SIZE, torch.Generator().manual_seed(1), True, 0,
                             Augmentation(ir_adaptive_gray=True))
    codes = plan.channel
    assert set(codes[:100].tolist()) == {IDENTITY}
    share = {code: float((codes[100:] == code).float().mean()) for code in (COPY_R, COPY_G, COPY_B, GREY, IDENTITY)}
    for code, expected in ((COPY_R, 0.25), (COPY_G, 0.25), (COPY_B, 0.25), (GREY, 0.125), (IDENTITY, 0.125)):
        assert share[code] == pytest.approx(expected, abs=0.03), code


def test_on_grey_images_pixel_greyscale_is_a_no_op_but_cajs_channel_copies_are_not():
    """SYSU-MM01's IR images are grey (three equal channels): DEEN's RandomGrayscale, which runs on the pixels,
    leaves them exactly as they are. CAJ's operations run after Normalize(ImageNet), where a grey pixel's three
    values differ, so copying one channel to the others shifts the other two pixel channels a little: up to
    0.0896 of the range (22.8 grey levels, copying B), which is what the reference does and pfanet reproduces."""
    data = images(6, grey_from=0)
    _, plain, _, _ = batch(NONE, rgb=3, ir=3, data=data)
    _, grey, _, _ = batch(Augmentation(grayscale=1.0), rgb=3, ir=3, data=data)
    assert torch.equal(grey, plain)
    unit = torch.linspace(-1, 1, 256).reshape(1, 1, 256, 1).expand(1, 1, 256, 3).contiguous()
    largest = {}
    for code in (COPY_R, COPY_G, COPY_B, GREY):
        mixed = unit.clone()
        mix_channels_(mixed, torch.tensor([code]))
        largest[code] = float((mixed - unit).abs().max() / 2)
    assert largest == pytest.approx({COPY_R: 0.0880, COPY_G: 0.0520, COPY_B: 0.0896, GREY: 0.0543}, abs=2e-4)


def test_random_grayscale_is_pils_conversion_on_both_modalities():
    augmentation = Augmentation(grayscale=1.0)
    plan, grey, data, rows = batch(augmentation, ir=0, rgb=8)
    crops = crop_rows(data, rows, plan.crop, 2)
    for image, crop in zip(grey, crops):
        pil = np.asarray(Image.fromarray(crop).convert("L"), dtype=np.float32) / np.float32(127.5) - np.float32(1)
        for channel in range(3):
            np.testing.assert_array_equal(image[..., channel].numpy(), pil)
    half = draw_augment_plan(300, 300, SIZE, torch.Generator().manual_seed(2), True, 0, Augmentation(grayscale=0.5))
    assert 0.45 < float(half.grey.float().mean()) < 0.55


def test_host_and_device_paths_give_the_same_augmented_batch():
    augmentation = Augmentation(erasing=0.5, grayscale=0.5, channel_exchange=0.5, ir_adaptive_gray=True, rgb_views=2)
    data = images(12, grey_from=6)
    rows = np.concatenate([np.arange(6), np.arange(6, 12), np.arange(6)])
    plan = draw_augment_plan(6, 6, SIZE, torch.Generator().manual_seed(9), True, 4, augmentation)
    assert plan.grey.any() and (plan.erase[:, 2] > 0).any() and (plan.channel != IDENTITY).any()
    host = augment_on_host(data, rows, plan, 4)
    device = augment_on_device(gather_rows(data, rows), plan, 4)
    assert torch.equal(torch.from_numpy(host), device)
