"""The demo's guard of an earlier demo's training: another render is refused before anything is rendered over."""

from __future__ import annotations

import json

from pfanet_cli.cli import main
from pfanet_cli.data.synthetic import MARKER_FILE, render_synthetic_sysu


def test_a_demo_folder_trained_on_other_data_is_refused_and_left_as_it_is(tmp_path, capsys):
    out = tmp_path / "demo"
    render_synthetic_sysu(out / "raw", preset="small", ids=3, seed=0, height=32, width=16, workers=1)
    (out / "gan" / "checkpoints").mkdir(parents=True)
    marker = (out / "raw" / MARKER_FILE).read_text()
    images = sorted(p.name for p in (out / "raw").rglob("*.jpg"))

    code = main(["demo", "--out", str(out), "--ids", "4", "--ir-residual", "0.5", "--device", "cpu"])

    assert code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: {out} holds a demo trained on other synthetic data (")
    assert "ids 3 there, 4 asked for" in error and "ir_residual 0.3 there, 0.5 asked for" in error
    assert "height 32 there, 128 asked for" in error
    assert len(error.splitlines()) == 1
    assert (out / "raw" / MARKER_FILE).read_text() == marker
    assert sorted(p.name for p in (out / "raw").rglob("*.jpg")) == images
    assert not (out / "prepared").exists()


def test_a_demo_folder_without_training_is_rendered_over(tmp_path, monkeypatch, capsys):
    out = tmp_path / "demo"
    render_synthetic_sysu(out / "raw", preset="small", ids=3, seed=0, workers=1)
    stop = RuntimeError("stopped after the render")

    def stop_at_prepare(*args, **kwargs):
        raise stop

    monkeypatch.setattr("pfanet_cli.demo.pipeline.prepare_sysu", stop_at_prepare)
    assert main(["demo", "--out", str(out), "--ids", "4", "--device", "cpu"]) != 0
    assert "stopped after the render" in capsys.readouterr().err
    assert json.loads((out / "raw" / MARKER_FILE).read_text())["ids"]["available"] == 4
