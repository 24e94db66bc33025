"""The test feature as one module (what the ONNX export records) equals `extract`'s computation, for both paths,
and the test mode it shares with `extract`: G_I's InstanceNorm on its running statistics, so an image's feature
does not depend on the other images of its batch."""

from __future__ import annotations

import numpy as np
import torch

from pfanet_cli.inference.feature_model import compute_features
from pfanet_cli.modeling.gan import ResnetGenerator
from pfanet_cli.modeling.test_feature import TestFeature, pixel_batch, set_test_mode
from pfanet_cli.modeling.extractor import FeatureExtractor
from tests.helpers import small_config


def trained_looking_networks():
    """F and G_I with non-trivial running statistics (a few training-mode forwards)."""
    torch.manual_seed(0)
    extractor = FeatureExtractor(5, small_config(input_norm="imagenet"))
    generator = ResnetGenerator(8, 1, input_skip=True)
    with torch.no_grad():
        for _ in range(3):
            x = torch.rand(4, 3, 64, 32) * 2 - 1
            extractor(generator(x))
    return extractor, generator


def test_the_module_equals_extracts_computation_on_both_paths():
    extractor, generator = trained_looking_networks()
    images = np.random.default_rng(0).integers(0, 256, (6, 64, 32, 3), dtype=np.uint8)
    is_rgb = np.array([True, False, True, True, False, False])
    expected = compute_features(extractor, generator, images, is_rgb, (64, 32), batch_size=4)
    with torch.no_grad():
        pixels = pixel_batch(torch.from_numpy(images))
        rgb = TestFeature(extractor, generator)(pixels[torch.from_numpy(is_rgb)])
        ir = TestFeature(extractor)(pixels[torch.from_numpy(~is_rgb)])
    np.testing.assert_allclose(rgb.numpy(), expected[is_rgb], atol=1e-5, rtol=0)
    np.testing.assert_allclose(ir.numpy(), expected[~is_rgb], atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(expected, axis=1), 1.0, atol=1e-5)


def test_test_mode_uses_running_statistics_so_batch_companions_do_not_matter():
    extractor, generator = trained_looking_networks()
    extractor.train()
    generator.train()
    module = TestFeature(extractor, generator)
    assert not any(m.training for m in module.modules())
    pixels = torch.rand(5, 3, 64, 32) * 255
    with torch.no_grad():
        alone, together = module(pixels[:1]), module(pixels)[:1]
    torch.testing.assert_close(alone, together, atol=1e-5, rtol=0)
    generator.train()
    module.eval()                                                    # eval() goes through set_test_mode
    assert not generator.training
    set_test_mode(extractor, None)
    assert not extractor.training
