"""The demo report states the protocol card of its results, in both report.md and report.html."""

from __future__ import annotations

import html

from pfanet_cli.demo.report import ReportContent, write_report
from pfanet_cli.evaluation.card import attach_source
from pfanet_cli.evaluation.protocols import evaluate_sysu_settings
from tests.helpers import perm_for, sysu_like


def test_report_carries_the_protocol_card(tmp_path):
    feats, pids, camids, paths = sysu_like(seed=2, ids=6, dim=6)
    results = evaluate_sysu_settings(feats, pids, camids, paths, [("all", "single"), ("indoor", "multi")], trials=2,
                                     sampler="official", perm=perm_for(pids, camids))
    attach_source(results, {"checkpoint": {"path": "runs/demo/joint/checkpoints/last.pt", "chosen": "last"},
                            "flip": "flip-summed", "feature": "pooled v", "split": "the test split"})
    markdown, page = write_report(tmp_path, ReportContent("demo", ["one line"], results, {}))
    text = markdown.read_text()
    card = text[text.index("## Protocol card"):text.index("## Against the baselines")]
    for line in ("| camera rule | a cam3 (IR) query never sees cam2", "| rerank | off |",
                 "| checkpoint | path runs/demo/joint/checkpoints/last.pt, chosen last |",
                 "| mode | all-search (gallery cameras 1, 2, 4, 5) \\| indoor-search (gallery cameras 1, 2) |",
                 "| sampler | official: rows of rand_perm_cam.mat", "| flip | flip-summed |", "| trials | 2 |"):
        assert line in card, line
    page_text = page.read_text()
    assert "<h2>Protocol card</h2>" in page_text
    assert html.escape("a cam3 (IR) query never sees cam2") in page_text
