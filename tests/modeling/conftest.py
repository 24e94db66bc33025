"""Networks shared by the modeling tests (built once per module)."""

import pytest
import torch

from pfanet_cli.config import ModelConfig
from pfanet_cli.modeling.extractor import FeatureExtractor
from tests.helpers import FULL, SMALL, small_config


@pytest.fixture(scope="module")
def resnet50_models():
    """ResNet-50 extractors at 395 ids: full PFANet, BNG only, and the bare baseline."""
    torch.manual_seed(0)
    full = FeatureExtractor(395, ModelConfig(pretrained="none")).eval()
    bng_only = FeatureExtractor(395, ModelConfig(pretrained="none", mmm=False))
    bare = FeatureExtractor(395, ModelConfig(pretrained="none", mmm=False, bng=False))
    return full, bng_only, bare


@pytest.fixture(scope="module")
def feature_shapes(resnet50_models):
    """Feature-map shapes F really produces, for ResNet-18 and -50, last stride 1 and 2, both image sizes."""
    _, _, bare50 = resnet50_models
    r50 = {1: bare50, 2: FeatureExtractor(10, ModelConfig(pretrained="none", last_stride=2, bng=False, mmm=False))}
    shapes = {}
    with torch.no_grad():
        for stride in (1, 2):
            r18 = FeatureExtractor(10, small_config(last_stride=stride, bng=False, mmm=False))
            for size in (FULL, SMALL):
                x = torch.randn(1, 3, *size)
                shapes[("resnet18", stride, size)] = tuple(r18.feature_map(x).shape)
                shapes[("resnet50", stride, size)] = tuple(r50[stride].feature_map(x).shape)
    return shapes
