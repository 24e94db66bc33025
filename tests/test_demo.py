"""`pfanet demo` end to end at a tiny size: every report file, the HTML's references, the pictures,
results.json in the evaluation contract, and a clean stop and resume after Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pfanet_cli.demo.pipeline import run_demo
from pfanet_cli.demo.report import ReportContent, write_report
from pfanet_cli.errors import DiskFull, Interrupted
from tests.helpers import CONTRACT

pytestmark = pytest.mark.slow  # the whole pipeline, minutes on 2 cores with the browser check

TINY = ["gan.iterations=3", "joint.warmup_iterations=2", "joint.iterations=2"]


def run_tiny_demo(out: Path):
    return run_demo(out, device="cpu", ids=12, recipe="tiny_cpu.yaml", overrides=TINY)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    return run_tiny_demo(out)


def referenced_files(page: Path) -> list[str]:
    return re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page.read_text(encoding="utf-8"))


def test_every_report_file_exists_and_html_references_only_existing_files(demo):
    out = demo.out
    for name in ("report.html", "report.md", "results.json", "baselines.json", "features.npz"):
        assert (out / name).is_file(), name
    references = referenced_files(demo.report_html)
    assert len(references) >= 4
    for reference in references:
        assert not reference.startswith(("http:", "https:", "/")), reference
        assert (out / reference).is_file(), reference
    markdown = demo.report_markdown.read_text()
    for reference in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown):
        assert (out / reference).is_file(), reference
    assert "raw pixels" in markdown and "untrained network" in markdown
    card = markdown[markdown.index("## Protocol card"):]
    assert f"| checkpoint | path {out / 'joint' / 'checkpoints' / 'last.pt'}, chosen last" in card
    assert "| flip | flip-summed" in card and "| sampler | official" in card


def test_results_json_follows_the_evaluation_contract(demo):
    results = json.loads((demo.out / "results.json").read_text())
    assert [(r["mode"], r["shot"]) for r in results] == [("all", "single"), ("all", "multi"),
                                                         ("indoor", "single"), ("indoor", "multi")]
    for result in results:
        assert list(result) == CONTRACT + ["card"]
        assert result["dataset"] == "sysu" and result["sampler"] == "official" and result["trials"] == 10
        assert result["card"]["checkpoint"]["path"] == str(demo.out / "joint" / "checkpoints" / "last.pt")
        assert str(demo.out / "prepared" / "exp" / "rand_perm_cam.mat") in result["card"]["sampler"]
        assert set(result["metrics"]) == {"r1", "r5", "r10", "r20", "mAP", "mINP"}
        assert len(result["per_trial"]) == 10
    baselines = json.loads((demo.out / "baselines.json").read_text())
    assert set(baselines) == {"raw pixels", "untrained network"}
    assert baselines["raw pixels"][0]["card"]["feature"].startswith("raw pixels")
    assert baselines["untrained network"][0]["card"]["checkpoint"].startswith("none: seeded initialisation")


def test_the_modality_gap_is_reported_apart_from_the_protocol(demo):
    """The same model's IR->IR and RGB->RGB numbers beside the protocol's, in their own file and section."""
    diagnostic = json.loads((demo.out / "same_modality.json").read_text())
    assert [(d["dataset"], d["mode"]) for d in diagnostic] == [("sysu-same-modality", "ir->ir"),
                                                               ("sysu-same-modality", "rgb->rgb")]
    assert diagnostic[0]["card"]["checkpoint"]["path"] == str(demo.out / "joint" / "checkpoints" / "last.pt")
    assert [(r.mode, r.dataset) for r in demo.same_modality] == [("ir->ir", "sysu-same-modality"),
                                                                  ("rgb->rgb", "sysu-same-modality")]
    markdown = demo.report_markdown.read_text()
    section = markdown[markdown.index("## The modality gap"):]
    protocol = demo.results[0]
    assert f"| IR query -> RGB gallery (the protocol, all single-shot) | {protocol.num_query:,} |" in section
    assert f"{protocol.metrics['r1']:.2f} ± {protocol.std['r1']:.2f}" in section.splitlines()[4]
    assert "IR query -> IR gallery" in section and "RGB query -> RGB gallery" in section
    assert all(r["dataset"] == "sysu" for r in json.loads((demo.out / "results.json").read_text()))


def test_pictures_are_not_blank(demo):
    figures = sorted((demo.out / "figures").glob("*.png"))
    assert {f.name for f in figures} >= {"loss_curves.png", "translation.png", "cmc.png", "ranked_lists.png"}
    for figure in figures:
        pixels = np.asarray(Image.open(figure).convert("L"), dtype=np.float32)
        assert pixels.std() > 10, figure.name


def test_report_renders_in_headless_chromium(demo, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        assert not os.environ.get("PFANET_REQUIRE_BROWSER"), "CI (.ci/run) needs Chromium for this check"
        pytest.skip("headless Chromium is not installed (apt-get install chromium to run this check)")
    shot = tmp_path / "page.png"
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2400",
               f"--screenshot={shot}", demo.report_html.resolve().as_uri()]
    subprocess.run(command, capture_output=True, timeout=120, check=False)
    assert shot.is_file(), "Chromium wrote no screenshot"
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.std() > 10


def test_interrupted_demo_leaves_no_report_and_resumes(tmp_path, monkeypatch):
    import pfanet_cli.demo.pipeline as demo_module

    out = tmp_path / "run"

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(demo_module, "extract_split", interrupt)
        with pytest.raises(Interrupted, match="demo interrupted during 'extract'.*run the same command again"):
            run_tiny_demo(out)
    assert not (out / "report.html").exists() and not (out / "results.json").exists()
    trained = out / "joint/checkpoints/last.pt"
    stamp = trained.stat().st_mtime_ns
    result = run_tiny_demo(out)
    assert result.report_html.is_file()
    assert trained.stat().st_mtime_ns == stamp  # finished training was resumed, not repeated


def test_the_report_on_a_full_disk_keeps_the_previous_one_and_is_written_after(demo, small_disk):
    content = ReportContent("demo", ["summary"], demo.results, demo.baselines)
    markdown, page = write_report(small_disk.root, content)
    before = (markdown.read_bytes(), page.read_bytes())
    small_disk.fill()
    with pytest.raises(DiskFull, match=f"writing {markdown}: it needs about .* the previous report.md is unchanged"):
        write_report(small_disk.root, ReportContent("demo again", ["summary"] * 2000, demo.results, demo.baselines))
    assert (markdown.read_bytes(), page.read_bytes()) == before
    small_disk.free()
    write_report(small_disk.root, ReportContent("demo again", ["summary"] * 2000, demo.results, demo.baselines))
    assert "demo again" in page.read_text()
