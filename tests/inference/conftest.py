"""Fixtures of the inference tests: the tiny trained checkpoint's ONNX export (made once per session) and the
markers that skip, saying why, what needs an optional extra that is not installed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pfanet_cli.inference.extras import missing_from

MISSING_EXPORT = missing_from("export")
MISSING_SEARCH = missing_from("search")
needs_export = pytest.mark.skipif(
    bool(MISSING_EXPORT), reason=f"needs the optional extra pfanet[export] ({', '.join(MISSING_EXPORT)} not "
                                 "installed; make install installs it)")
needs_faiss = pytest.mark.skipif(
    bool(MISSING_SEARCH), reason="needs the optional extra pfanet[search] (faiss-cpu not installed; make install "
                                 "installs it)")


@pytest.fixture(scope="session")
def exported(trained, tmp_path_factory) -> Path:
    """Both paths of the tiny train-joint checkpoint exported (parity checked on 8 synthetic images)."""
    if MISSING_EXPORT:
        pytest.skip(f"needs the optional extra pfanet[export] ({', '.join(MISSING_EXPORT)} not installed)")
    from pfanet_cli.inference.export import export_model  # heavy: the ONNX exporter, only with pfanet[export]

    out = tmp_path_factory.mktemp("export") / "tiny"
    export_model(trained["joint"], out, "both", num_images=8)
    return out


@pytest.fixture
def gallery_and_queries(trained, tmp_path: Path) -> tuple[Path, Path]:
    """A gallery of the trained tree's cameras 1, 2 (RGB) and 3 (IR), and a query folder of its camera 6 (IR),
    in the SYSU-MM01 layout (camN/<pid>/<n>.jpg)."""
    gallery, queries = tmp_path / "gallery", tmp_path / "queries"
    for camera in ("cam1", "cam2", "cam3"):
        shutil.copytree(trained["raw"] / camera, gallery / camera)
    shutil.copytree(trained["raw"] / "cam6", queries / "cam6")
    return gallery, queries
