"""What ``pfanet search`` writes: ``results.json`` (every query's top-k: gallery path, cosine similarity, modality
and camera) and ``index.html``, a page of thumbnails (each query, then its top-k with their scores) that needs
no server: the thumbnails are files in ``thumbs/`` beside it. Every file is written whole or not at all."""

from __future__ import annotations

import hashlib
import html
import json
from pathlib import Path

from PIL import Image

from pfanet_cli import __version__
from pfanet_cli.inference.gallery import SideImage
from pfanet_cli.inference.topk import Matches
from pfanet_cli.utils.atomic import save_image, write_text
from pfanet_cli.utils.images import BadImage, load_rgb

RESULTS_NAME, PAGE_NAME, THUMBS = "results.json", "index.html", "thumbs"
THUMB_HEIGHT = 128
PAGE_QUERIES = 200
"""Queries shown on the page (results.json holds all)."""
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
.query { display: flex; gap: 0.6em; align-items: flex-start; margin: 1.2em 0; }
figure { margin: 0; text-align: center; font-size: 0.8em; }
figure img { height: 128px; border: 3px solid #ddd; }
figure.q img { border-color: #3a6ea5; }
figcaption { max-width: 10em; overflow-wrap: anywhere; color: #555; }
table { border-collapse: collapse; } td { border: 1px solid #ccc; padding: 0.2em 0.6em; }
"""


def results_payload(model: str, settings: dict, queries: list[SideImage], gallery: list[SideImage],
                    matches: Matches) -> dict:
    """The content of results.json."""
    out = []
    for row, query in enumerate(queries):
        ranked = [{"rank": rank, "path": gallery[index].path, "score": float(score),
                   "modality": gallery[index].modality, "camera": gallery[index].camera}
                  for rank, (index, score) in enumerate(zip(matches.indices[row], matches.scores[row]), start=1)
                  if index >= 0]
        out.append({"path": query.path, "modality": query.modality, "camera": query.camera, "matches": ranked})
    return {"toolkit": f"pfanet {__version__}", "model": model, **settings, "gallery_images": len(gallery),
            "score": "cosine similarity of the test features (flip-summed, L2-normalised)", "queries": out}


def write_search_report(out: Path, model: str, settings: dict, queries: list[SideImage], gallery: list[SideImage],
                        matches: Matches) -> tuple[Path, Path]:
    """Write results.json, the thumbnails and index.html into ``out``."""
    out = Path(out)
    payload = results_payload(model, settings, queries, gallery, matches)
    results = out / RESULTS_NAME
    write_text(results, json.dumps(payload, indent=2) + "\n")
    page = out / PAGE_NAME
    write_text(page, render_page(out, model, settings, queries[:PAGE_QUERIES], gallery, matches, len(queries)))
    return results, page


def thumbnail(out: Path, image: SideImage) -> str | None:
    """The image's thumbnail (written once per file version), relative to ``out``; None when it cannot be read."""
    key = hashlib.sha1(f"{image.file.absolute()}|{image.size}|{image.mtime_ns}".encode()).hexdigest()[:20]
    relative = f"{THUMBS}/{key}.jpg"
    if not (out / relative).is_file():
        try:
            pixels = load_rgb(image.file)
        except BadImage:
            return None
        width = max(1, round(pixels.shape[1] * THUMB_HEIGHT / pixels.shape[0]))
        picture = Image.fromarray(pixels).resize((width, THUMB_HEIGHT), Image.Resampling.BICUBIC)
        save_image(picture, out / relative)
    return relative


def _figure(out: Path, image: SideImage, caption: str, css: str = "") -> str:
    source = thumbnail(out, image)
    picture = f"<img src='{html.escape(source)}' alt='{html.escape(image.path)}'>" if source else "(unreadable)"
    return (f"<figure class='{css}' title='{html.escape(image.path)}'>{picture}"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def render_page(out: Path, model: str, settings: dict, queries: list[SideImage], gallery: list[SideImage],
                matches: Matches, total_queries: int) -> str:
    """index.html: the settings, then one line per query (the query, then its top-k with their scores)."""
    rows = [("model", model), ("gallery", f"{settings['gallery']} ({len(gallery):,} images)"),
            ("top-k", str(settings["top_k"])), ("search", settings["backend"]),
            ("same camera", settings["same_camera"]), ("score", "cosine similarity")]
    parts = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
             f"<title>pfanet search</title><style>{STYLE}</style></head><body>", "<h1>pfanet search</h1>",
             "<table>" + "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows)
             + "</table>"]
    if total_queries > len(queries):
        parts.append(f"<p>The first {len(queries)} of {total_queries:,} queries; {RESULTS_NAME} holds all.</p>")
    for row, query in enumerate(queries):
        figures = [_figure(out, query, f"query {query.path} ({query.modality})", "q")]
        for rank, (index, score) in enumerate(zip(matches.indices[row], matches.scores[row]), start=1):
            if index >= 0:
                match = gallery[int(index)]
                figures.append(_figure(out, match, f"{rank}. {float(score):.3f} {match.path}"))
        parts.append("<div class='query'>" + "".join(figures) + "</div>")
    parts.append("</body></html>")
    return "\n".join(parts)

