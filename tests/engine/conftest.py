"""Prepared data shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import prepare_small


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """Five train ids and three test ids with images in every camera, prepared at 64x32."""
    return prepare_small(tmp_path_factory.mktemp("data"))
