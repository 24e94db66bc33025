"""extract --onnx: the exported graphs, run by onnxruntime, give the checkpoint's protocol numbers; what an
export without the RGB graph can and cannot do; and the one-line errors of the option."""

from __future__ import annotations

import json
import shutil

import numpy as np

from pfanet_cli.cli import main
from pfanet_cli.evaluation.features import load_features
from pfanet_cli.inference import extras
from tests.helpers import error_line
from tests.inference.conftest import needs_export


@needs_export
def test_extract_onnx_gives_the_checkpoints_protocol_numbers(exported, trained, tmp_path, capsys):
    for name, source in (("torch", ["--checkpoint", str(trained["joint"])]), ("onnx", ["--onnx", str(exported)])):
        assert main(["extract", *source, "--data", str(trained["prep"]), "--out", str(tmp_path / f"{name}.npz"),
                     "--batch-size", "7"]) == 0
        assert main(["evaluate", "--features", str(tmp_path / f"{name}.npz"), "--all-settings", "--sampler", "agw",
                     "--json", str(tmp_path / f"{name}.json")]) == 0
    torch_features, onnx_features = load_features(tmp_path / "torch.npz"), load_features(tmp_path / "onnx.npz")
    assert onnx_features.paths == torch_features.paths
    np.testing.assert_allclose(onnx_features.features, torch_features.features, atol=1e-5, rtol=0)
    torch_results = json.loads((tmp_path / "torch.json").read_text())
    onnx_results = json.loads((tmp_path / "onnx.json").read_text())
    assert len(onnx_results) == 4
    for mine, reference in zip(onnx_results, torch_results):
        assert (mine["mode"], mine["shot"]) == (reference["mode"], reference["shot"])
        assert mine["per_trial"] == reference["per_trial"] and mine["metrics"] == reference["metrics"]
    checkpoint = onnx_results[0]["card"]["checkpoint"]
    assert checkpoint["path"] == str(trained["joint"]) and checkpoint["onnx_export"].startswith(str(exported))


@needs_export
def test_an_export_without_the_rgb_graph(exported, trained, tmp_path, capsys):
    ir_only = tmp_path / "ir-only"
    shutil.copytree(exported, ir_only)
    meta = json.loads((ir_only / "model.json").read_text())
    del meta["graphs"]["rgb"]                           # what `pfanet export --path ir` writes
    (ir_only / "model.json").write_text(json.dumps(meta))
    for name in ("feature_rgb.onnx", "feature_rgb.onnx.data"):
        (ir_only / name).unlink()
    out = tmp_path / "f.npz"
    assert main(["extract", "--onnx", str(ir_only), "--data", str(trained["prep"]), "--out", str(out)]) == 4
    assert "holds no rgb graph (exported with --path ir)" in error_line(capsys) and not out.exists()
    assert main(["extract", "--onnx", str(ir_only), "--data", str(trained["prep"]), "--out", str(out),
                 "--no-translate"]) == 0
    assert main(["extract", "--checkpoint", str(trained["joint"]), "--data", str(trained["prep"]), "--no-translate",
                 "--out", str(tmp_path / "t.npz")]) == 0
    np.testing.assert_allclose(load_features(out).features, load_features(tmp_path / "t.npz").features, atol=1e-5,
                               rtol=0)
    (ir_only / "feature_ir.onnx.data").write_bytes(b"not the weights")
    assert main(["extract", "--onnx", str(ir_only), "--data", str(trained["prep"]), "--out", str(out),
                 "--no-translate"]) == 4
    assert "feature_ir.onnx.data is not the file exported with its model.json" in error_line(capsys)


def test_extract_onnx_errors(trained, tmp_path, capsys, monkeypatch):
    args = ["extract", "--data", str(trained["prep"]), "--out", str(tmp_path / "f.npz")]
    assert main([*args, "--onnx", str(tmp_path), "--checkpoint", str(trained["joint"])]) == 2
    assert "give --checkpoint or --onnx, not both" in error_line(capsys)
    assert main([*args, "--onnx", str(tmp_path), "--generator-norm", "instance"]) == 2
    assert "--generator-norm instance: an ONNX export's G_I norm was fixed at export" in error_line(capsys)
    if not extras.missing_from("export"):
        assert main([*args, "--onnx", str(tmp_path)]) == 4
        assert f"{tmp_path} is not a pfanet ONNX export (no model.json)" in error_line(capsys)
    monkeypatch.setattr(extras, "installed", lambda module: module != "onnxruntime")
    assert main([*args, "--onnx", str(tmp_path)]) == 2
    assert "needs the optional extra pfanet[export] (onnxruntime not installed)" in error_line(capsys)
    assert not (tmp_path / "f.npz").exists()
