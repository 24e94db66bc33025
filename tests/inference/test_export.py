"""pfanet export: the ONNX graphs give what `extract` computes (G_I in test mode, F's input normalisation, the
flip-sum and L2), with any batch size; model.json says what they take; a failed parity check writes nothing; bad
input is one line with its exit code; and the paper-scale graphs at 288x144 (slow)."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pfanet_cli.cli import main
from pfanet_cli.config import load_recipe
from pfanet_cli.data.prepared import open_prepared
from pfanet_cli.errors import UsageError
from pfanet_cli.evaluation.extract import extract_split
from pfanet_cli.inference import extras
from pfanet_cli.inference.onnx_model import OnnxModel, read_export
from pfanet_cli.utils.digest import file_sha256
from tests.helpers import error_line, untrained_checkpoint
from tests.inference.conftest import needs_export


@needs_export
def test_the_graphs_give_the_features_extract_computes(exported, trained):
    import onnxruntime as ort  # optional extra: only when installed

    meta = read_export(exported)
    assert meta["input"] == {**meta["input"], "height": 64, "width": 32, "layout": "NCHW", "value_range": [0, 255],
                             "batch": "dynamic"}
    assert set(meta["graphs"]) == {"ir", "rgb"} and meta["output"]["dim"] == 512
    assert meta["checkpoint"]["sha256"] == file_sha256(trained["joint"])
    assert meta["normalisation_in_graph"]["input_norm"] == "imagenet" and meta["generator_test_norm"] == "running"
    for path, report in meta["parity"].items():
        assert report["passed"] and report["max_abs_difference"] < 1e-5 and report["images"] == 8, path
    expected = extract_split(trained["joint"], trained["prep"])
    test = open_prepared(trained["prep"]).split("test")
    for path, rows in (("rgb", np.flatnonzero(~test.is_ir)), ("ir", np.flatnonzero(test.is_ir))):
        session = ort.InferenceSession(str(exported / f"feature_{path}.onnx"), providers=["CPUExecutionProvider"])
        pixels = np.ascontiguousarray(test.images[rows].transpose(0, 3, 1, 2), np.float32)
        for batch in (1, 5):                                     # the batch dimension is dynamic
            got = session.run(["features"], {"images": pixels[:batch]})[0]
            np.testing.assert_allclose(got, expected.features[rows[:batch]], atol=1e-5, rtol=0)
    untranslated = extract_split(trained["joint"], trained["prep"], translate=False)
    ir_graph = OnnxModel(exported, translate=False)
    rgb = np.flatnonzero(~test.is_ir)[:3]
    np.testing.assert_allclose(ir_graph.features(test.images[rgb], np.ones(3, bool)), untranslated.features[rgb],
                               atol=1e-5, rtol=0)


@needs_export
def test_the_rgb_graph_uses_the_checkpoints_generator_test_norm(exported, trained, tmp_path):
    """A checkpoint with ``model.generator_test_norm: instance``: its RGB graph normalises each image by its own
    statistics, as extract does, and model.json names it; the running-statistics export gives other features."""
    import onnxruntime as ort  # optional extra: only when installed

    from pfanet_cli.inference.export import export_model  # heavy: the ONNX exporter, only with pfanet[export]

    payload = torch.load(trained["joint"], weights_only=True)
    payload["architecture"]["generator_test_norm"] = "instance"  # as train-joint writes it with the key set
    torch.save(payload, tmp_path / "instance.pt")
    out = tmp_path / "instance"
    export_model(tmp_path / "instance.pt", out, "rgb", num_images=4)
    meta = read_export(out)
    assert meta["generator_test_norm"] == "instance" and meta["parity"]["rgb"]["passed"]
    test = open_prepared(trained["prep"]).split("test")
    rows = np.flatnonzero(~test.is_ir)[:4]
    pixels = np.ascontiguousarray(test.images[rows].transpose(0, 3, 1, 2), np.float32)
    expected = extract_split(tmp_path / "instance.pt", trained["prep"]).features[rows]
    for folder in (out, exported):
        session = ort.InferenceSession(str(folder / "feature_rgb.onnx"), providers=["CPUExecutionProvider"])
        got = session.run(["features"], {"images": pixels})[0]
        assert np.allclose(got, expected, atol=1e-5, rtol=0) == (folder == out), folder


def test_export_refuses_bad_input_before_exporting(trained, tmp_path, capsys, monkeypatch):
    checkpoint = str(trained["joint"])
    (tmp_path / "file").write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    for args, code, message in (
            (["--path", "sideways"], 2, "--path must be one of ir, rgb, both"),
            (["--opset", "11"], 2, "--opset must be at least 18"),
            (["--parity-images", "1"], 2, "--parity-images must be at least 2"),
            (["--out", str(tmp_path / "file")], 3, "is a file, expected a folder"),
            (["--out", str(tmp_path / "other")], 2, "is not empty and holds no pfanet export"),
            (["--checkpoint", str(trained["gan"])], 4, "has no extractor, which export needs"),
            (["--checkpoint", str(tmp_path / "missing.pt")], 4, "checkpoint not found")):
        arguments = ["export", "--checkpoint", checkpoint, "--out", str(tmp_path / "x"), *args]
        if extras.missing_from("export"):
            message, code = "pip install 'pfanet[export]'", 2
        assert main(arguments) == code, args
        assert message in error_line(capsys)
        assert not (tmp_path / "x").exists()
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"
    monkeypatch.setattr(extras, "installed", lambda module: module != "onnxscript")
    assert main(["export", "--checkpoint", checkpoint, "--out", str(tmp_path / "x")]) == 2
    assert "needs the optional extra pfanet[export] (onnxscript not installed): pip install 'pfanet[export]'" in \
        error_line(capsys)


@needs_export
def test_a_failed_parity_check_writes_nothing_and_keeps_the_previous_export(exported, trained, tmp_path, capsys):
    previous = tmp_path / "export"
    shutil.copytree(exported, previous)
    before = {p.name: p.read_bytes() for p in previous.iterdir()}
    assert main(["export", "--checkpoint", str(trained["joint"]), "--out", str(previous), "--path", "ir",
                 "--tolerance", "1e-12", "--parity-images", "4"]) == 1
    message = error_line(capsys)
    assert "differ from PyTorch by more than 1e-12 (ir: largest difference" in message and "nothing was written" \
        in message
    assert {p.name: p.read_bytes() for p in previous.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]      # no temporary folder left behind


def exported_from(checkpoint, **payload):
    """What ``_evaluation_record`` reads of the model an export is made from."""
    return SimpleNamespace(checkpoint=checkpoint, sha256=file_sha256(checkpoint), payload=payload)


@needs_export
def test_export_records_an_evaluation_of_this_checkpoint_only(exported, trained, tmp_path, capsys):
    from pfanet_cli.inference.export import _evaluation_record  # the record alone: no second export needed

    assert OnnxModel(exported).meta["evaluation"] == {"selection": None, "results": None, "from": None}
    results = tmp_path / "r.json"
    assert main(["evaluate", "--checkpoint", str(trained["joint"]), "--data", str(trained["prep"]), "--trials", "1",
                 "--json", str(results)]) == 0
    selected = exported_from(trained["joint"], selection={"rule": "best val mAP"})
    record = _evaluation_record(selected, results)
    assert record["selection"] == {"rule": "best val mAP"} and record["results"][0]["card"]["dataset"] == "SYSU-MM01"
    assert record["from"] == f"--results {results}"
    with pytest.raises(UsageError, match="was not computed with"):
        _evaluation_record(exported_from(trained["gan"]), results)


@needs_export
def test_without_results_export_records_the_newest_evaluation_of_this_checkpoint_in_its_run(trained, tmp_path,
                                                                                           capsys):
    from pfanet_cli.inference.export import _evaluation_record  # the record alone: no second export needed

    run = shutil.copytree(trained["joint"].parent.parent, tmp_path / "run")
    checkpoint = run / "checkpoints" / trained["joint"].name
    log = run / "evaluations.jsonl"
    evaluate = ["evaluate", "--checkpoint", str(checkpoint), "--data", str(trained["prep"]), "--json"]
    assert main([*evaluate, str(tmp_path / "one.json"), "--trials", "1"]) == 0
    assert main([*evaluate, str(tmp_path / "two.json"), "--trials", "2", "--all-settings"]) == 0
    assert f"evaluationaddedto{log}" in "".join(capsys.readouterr().out.split())  # the console wraps long lines
    with open(log, "a") as handle:
        handle.write('{"checkpoint": "last.pt", "sha2')               # a line a full disk cut short

    record = _evaluation_record(exported_from(checkpoint), None)
    newest = json.loads((tmp_path / "two.json").read_text())
    assert [r["metrics"] for r in record["results"]] == [r["metrics"] for r in newest]
    assert [r["card"] for r in record["results"]] == [r["card"] for r in newest] and len(newest) == 4
    assert record["from"].startswith(f"{log} (pfanet evaluate, ")

    other = run / "checkpoints" / "other.pt"                     # another file in the same run: not evaluated
    shutil.copyfile(trained["gan"], other)
    assert _evaluation_record(exported_from(other), None)["results"] is None
    loose = shutil.copyfile(checkpoint, tmp_path / "loose.pt")   # outside a run folder: nothing is logged
    assert main(["evaluate", "--checkpoint", str(loose), "--data", str(trained["prep"]), "--trials", "1"]) == 0
    assert not (tmp_path / "evaluations.jsonl").exists()
    assert _evaluation_record(exported_from(loose), None)["results"] is None


@needs_export
@pytest.mark.slow
def test_the_paper_recipe_exports_at_288x144(tmp_path, capsys):
    recipe = load_recipe("sysu_pfanet.yaml", ["model.pretrained=none"])
    checkpoint = untrained_checkpoint(tmp_path / "paper.pt", recipe, num_classes=12)
    out = tmp_path / "paper"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--parity-images", "3"]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert (meta["input"]["height"], meta["input"]["width"], meta["output"]["dim"]) == (288, 144, 2048)
    for path in ("ir", "rgb"):
        report = meta["parity"][path]
        assert report["passed"] and report["max_abs_difference"] < 1e-4 and report["rank1_agreement"] == 1.0
        weights = out / f"feature_{path}.onnx.data"
        assert weights.stat().st_size > 200 * 2**20                    # ResNet-50 + BNG + MMM (+ G_I)
    model = OnnxModel(out)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 288, 144, 3), dtype=np.uint8)
    assert model.features(pixels, np.array([True, False])).shape == (2, 2048)
