"""The demo report: ``report.md`` and ``report.html`` (no server needed; pictures are files next to
it) with the results table, its protocol card, the baselines, loss curves, translated test images, the CMC
curves and ranked lists. Report files are written whole or not at all (temporary file + rename)."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from pfanet_cli.evaluation.card import card_rows
from pfanet_cli.evaluation.protocols import METRIC_KEYS as METRICS
from pfanet_cli.evaluation.protocols import EvalResult
from pfanet_cli.utils.atomic import write_text

LABELS = {"r1": "R1", "r5": "R5", "r10": "R10", "r20": "R20", "mAP": "mAP", "mINP": "mINP"}
SETTING_NAMES = {("all", "single"): "all single-shot", ("all", "multi"): "all multi-shot",
                 ("indoor", "single"): "indoor single-shot", ("indoor", "multi"): "indoor multi-shot"}


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class ReportContent:
    title: str
    summary: list[str]
    results: list[EvalResult]
    baselines: dict[str, list[EvalResult]]
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    modality_gap: list[EvalResult] = field(default_factory=list)
    """The same-modality diagnostic (IR->IR, RGB->RGB) of the trained features, shown beside the protocol."""


def setting_name(result: EvalResult) -> str:
    return SETTING_NAMES.get((result.mode, result.shot), f"{result.mode} {result.shot}")


def _cell(result: EvalResult, metric: str) -> str:
    return f"{result.metrics[metric]:.2f} ± {result.std[metric]:.2f}"


def results_rows(results: Sequence[EvalResult]) -> list[list[str]]:
    """One row per setting: name, queries, gallery size and every metric as mean ± std."""
    return [[setting_name(r), f"{r.num_query:,}", f"{r.num_gallery:g}", *(_cell(r, m) for m in METRICS)]
            for r in results]


def comparison_rows(results: Sequence[EvalResult], baselines: dict[str, list[EvalResult]]) -> list[list[str]]:
    """R1 and mAP of PFANet, then of each baseline, per setting."""
    rows = []
    for index, result in enumerate(results):
        row = [setting_name(result), f"{result.metrics['r1']:.2f}", f"{result.metrics['mAP']:.2f}"]
        for runs in baselines.values():
            base = runs[index]
            row += [f"{base.metrics['r1']:.2f}", f"{base.metrics['mAP']:.2f}"]
        rows.append(row)
    return rows


GAP_NAMES = {"ir->ir": "IR query -> IR gallery (same-modality diagnostic, other IR camera)",
             "rgb->rgb": "RGB query -> RGB gallery (same-modality diagnostic, other RGB cameras)"}
GAP_HEADER = ["matching", "queries", "gallery", "R1", "mAP"]


def modality_gap_rows(results: Sequence[EvalResult], same_modality: Sequence[EvalResult]) -> list[list[str]]:
    """The protocol's all-search single-shot numbers (IR query, RGB gallery) beside the same model's IR->IR and
    RGB->RGB diagnostic: how much harder matching across modalities is than within one."""
    protocol = [r for r in results if (r.mode, r.shot) == ("all", "single")]
    rows = [["IR query -> RGB gallery (the protocol, all single-shot)", *_gap_cells(r)] for r in protocol]
    return rows + [[GAP_NAMES.get(r.mode, r.mode), *_gap_cells(r)] for r in same_modality]


def _gap_cells(result: EvalResult) -> list[str]:
    return [f"{result.num_query:,}", f"{result.num_gallery:g}", _cell(result, "r1"), _cell(result, "mAP")]


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _tables(content: ReportContent) -> list[tuple[str, list[str], list[list[str]]]]:
    header = ["setting", "queries", "gallery", *(LABELS[m] for m in METRICS)]
    tables = [("PFANet (trained)", header, results_rows(content.results))]
    compare_header = ["setting", "PFANet R1", "PFANet mAP"]
    for name in content.baselines:
        compare_header += [f"{name} R1", f"{name} mAP"]
    tables.append(("Protocol card", ["field", "value"], [list(row) for row in card_rows([r.card for r in
                                                                                           content.results])]))
    tables.append(("Against the baselines", compare_header, comparison_rows(content.results, content.baselines)))
    if content.modality_gap:
        tables.append(("The modality gap: the same model across and within modalities", GAP_HEADER,
                       modality_gap_rows(content.results, content.modality_gap)))
    return tables


def render_markdown(content: ReportContent, base: Path) -> str:
    parts = [f"# {content.title}", "", *[f"- {line}" for line in content.summary], ""]
    for title, header, rows in _tables(content):
        parts += [f"## {title}", "", _markdown_table(header, rows), ""]
    for figure in content.figures:
        parts += [f"## {figure.caption}", "", f"![{figure.caption}]({figure.path.relative_to(base).as_posix()})", ""]
    if content.notes:
        parts += ["## Notes", "", *[f"- {note}" for note in content.notes], ""]
    return "\n".join(parts)


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.95em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead { background: #f0f3f8; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; margin-top: 0.3em; }
"""


def render_html(content: ReportContent, base: Path) -> str:
    parts = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
             f"<title>{html.escape(content.title)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{html.escape(content.title)}</h1>", "<ul>"]
    parts += [f"<li>{html.escape(line)}</li>" for line in content.summary]
    parts.append("</ul>")
    for title, header, rows in _tables(content):
        parts += [f"<h2>{html.escape(title)}</h2>", _html_table(header, rows)]
    for figure in content.figures:
        src = html.escape(figure.path.relative_to(base).as_posix())
        parts.append(f"<figure><img src='{src}' alt='{html.escape(figure.caption)}'>"
                     f"<figcaption>{html.escape(figure.caption)}</figcaption></figure>")
    if content.notes:
        parts += ["<h2>Notes</h2>", "<ul>", *[f"<li>{html.escape(n)}</li>" for n in content.notes], "</ul>"]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(folder: Path, content: ReportContent) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``folder`` (figures are already there)."""
    markdown, page = folder / "report.md", folder / "report.html"
    write_text(markdown, render_markdown(content, folder))
    write_text(page, render_html(content, folder))
    return markdown, page
