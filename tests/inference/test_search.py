"""pfanet search: the ranking equals a brute-force ranking of `extract`'s features; the gallery cache embeds only
new and changed images and drops removed ones; the same-camera rule; modality maps; the page; the ONNX model;
and one line with exit 2 or 3 for every kind of bad input, with nothing already written lost."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pfanet_cli.cli import main
from pfanet_cli.evaluation.extract import extract_folder
from pfanet_cli.inference import extras
from pfanet_cli.inference.feature_model import CheckpointModel
from pfanet_cli.inference.search import SearchOptions, run_search
from tests.helpers import error_line
from tests.inference.conftest import needs_export


def search(checkpoint: Path, gallery: Path, queries: Path, out: Path, *extra: str) -> int:
    return main(["search", "--checkpoint", str(checkpoint), "--gallery", str(gallery), "--query", str(queries),
                 "--out", str(out), *extra])


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def brute_force(checkpoint: Path, gallery: Path, queries: Path, k: int, same_camera_hidden: bool = False):
    """Per query, its top-k (path, score) from extract's features of both folders ranked with numpy, and the
    score of every allowed gallery image."""
    g, q = extract_folder(checkpoint, gallery), extract_folder(checkpoint, queries)
    similarity = q.features.astype(np.float64) @ g.features.T.astype(np.float64)
    if same_camera_hidden:
        similarity[np.array([p.split("/")[0] for p in q.paths])[:, None] ==
                   np.array([p.split("/")[0] for p in g.paths])[None, :]] = -np.inf
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return {qp: ([(g.paths[j], similarity[i, j]) for j in row if np.isfinite(similarity[i, j])],
                 {path: s for path, s in zip(g.paths, similarity[i]) if np.isfinite(s)})
            for i, (qp, row) in enumerate(zip(q.paths, order))}


TIE = 1e-5
"""Features computed in other batches differ by about 1e-6 (float32 convolutions): scores closer than this are
ties, whose order may differ."""


def assert_matches(found: dict, expected: dict) -> None:
    """The same ranking: rank by rank the expected score, each match with its own score, no image twice; the
    same images in the same order wherever the scores are further apart than :data:`TIE`."""
    assert [q["path"] for q in found["queries"]] == list(expected)
    for query in found["queries"]:
        ranked, allowed = expected[query["path"]]
        paths, scores = [m["path"] for m in query["matches"]], [m["score"] for m in query["matches"]]
        assert len(paths) == len(set(paths)) == len(ranked) and set(paths) <= set(allowed)
        np.testing.assert_allclose(scores, [s for _, s in ranked], atol=TIE)
        np.testing.assert_allclose(scores, [allowed[p] for p in paths], atol=TIE)
        separated = [rank for rank, (_, s) in enumerate(ranked)
                     if all(abs(s - other) > TIE for _, other in ranked[:rank] + ranked[rank + 1:])]
        assert [paths[rank] for rank in separated] == [ranked[rank][0] for rank in separated]
        assert [m["rank"] for m in query["matches"]] == list(range(1, len(ranked) + 1))


def test_search_ranks_like_a_brute_force_ranking_of_extract_features(trained, gallery_and_queries, tmp_path, capsys):
    gallery, queries = gallery_and_queries
    out = tmp_path / "out"
    assert search(trained["joint"], gallery, queries, out, "--top-k", "5") == 0
    assert "14 queries against 42 gallery images (42 embedded, 0 from the cache, 0 removed" in \
        " ".join(capsys.readouterr().out.split())
    found = results(out)
    assert_matches(found, brute_force(trained["joint"], gallery, queries, 5))
    first = found["queries"][0]
    assert first["modality"] == "ir" and first["camera"] == "cam6"
    assert {m["modality"] for q in found["queries"] for m in q["matches"]} <= {"rgb", "ir"}
    assert found["top_k"] == 5 and found["backend"] == "exact (torch, cpu)" and found["gallery_images"] == 42
    page = (out / "index.html").read_text()
    assert page.count("<div class='query'>") == 14 and page.count("<figure") == 14 * 6
    thumbs = list((out / "thumbs").iterdir())
    assert thumbs and all(Image.open(t).size[1] == 128 for t in thumbs)
    single = tmp_path / "single"
    one = sorted((queries / "cam6").rglob("*.jpg"))[0]
    cache = str(out / "gallery_features.npz")
    assert search(trained["joint"], gallery, one, single, "--top-k", "3", "--cache", cache) == 0
    only = results(single)["queries"]
    assert len(only) == 1 and only[0]["path"] == one.name and only[0]["camera"] == one.parent.name
    alone, among_others = only[0]["matches"], found["queries"][0]["matches"][:3]   # batches of 1 and of 14
    assert [m["path"] for m in alone] == [m["path"] for m in among_others]
    np.testing.assert_allclose([m["score"] for m in alone], [m["score"] for m in among_others], atol=1e-5)
    assert results(single)["cache_use"] == {"reused": 42, "embedded": 0, "removed": 0, "note": None}


def assert_same_rankings(found: dict, expected: dict) -> None:
    """The same matches in the same order, scores equal up to batch-size effects of the float32 convolutions."""
    for mine, reference in zip(found["queries"], expected["queries"], strict=True):
        assert [m["path"] for m in mine["matches"]] == [m["path"] for m in reference["matches"]]
        np.testing.assert_allclose([m["score"] for m in mine["matches"]], [m["score"] for m in reference["matches"]],
                                   atol=1e-5)


class CountingModel(CheckpointModel):
    """The checkpoint model, counting the images it embeds."""

    embedded = 0

    def features(self, images, is_rgb, batch_size=64, on_progress=None):
        CountingModel.embedded += len(images)
        return super().features(images, is_rgb, batch_size, on_progress)


def test_the_cache_embeds_only_new_and_changed_images_and_drops_removed_ones(trained, gallery_and_queries, tmp_path):
    gallery, queries = gallery_and_queries
    options = SearchOptions(gallery=gallery, query=queries, out=tmp_path / "out", top_k=50)
    model = CountingModel(trained["joint"], require_rgb=False)

    def run():
        CountingModel.embedded = 0
        summary = run_search(lambda: model, options)
        return summary, CountingModel.embedded - summary.queries, results(options.out)

    summary, embedded, first = run()
    assert (summary.stats.embedded, summary.stats.reused, embedded) == (42, 0, 42)
    summary, embedded, again = run()
    assert (summary.stats.embedded, summary.stats.reused, summary.stats.removed, embedded) == (0, 42, 0, 0)
    assert again["queries"] == first["queries"]                    # the very features of the first run
    changed = sorted((gallery / "cam1").rglob("*.jpg"))[0]
    removed = sorted((gallery / "cam2").rglob("*.jpg"))[0]
    pixels = np.random.default_rng(7).integers(0, 256, (64, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(changed)
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    added = gallery / "cam3" / "0099" / "0001.jpg"
    added.parent.mkdir()
    shutil.copy(changed, added)
    removed.unlink()
    summary, embedded, third = run()
    assert (summary.stats.embedded, summary.stats.reused, summary.stats.removed, embedded) == (2, 40, 1, 2)
    paths = {m["path"] for q in third["queries"] for m in q["matches"]}
    assert removed.relative_to(gallery).as_posix() not in paths and "cam3/0099/0001.jpg" in paths
    fresh = tmp_path / "fresh"
    run_search(lambda: model, SearchOptions(gallery=gallery, query=queries, out=fresh, top_k=50))
    assert_same_rankings(results(fresh), third)                    # cached rows equal freshly embedded ones


def test_a_stale_or_damaged_cache_is_rebuilt_with_a_note(trained, gallery_and_queries, tmp_path, capsys):
    gallery, queries = gallery_and_queries
    out = tmp_path / "out"
    assert search(trained["joint"], gallery, queries, out) == 0
    capsys.readouterr()
    assert search(trained["joint"], gallery, queries, out, "--no-translate") == 0   # another feature, another key
    text = " ".join(capsys.readouterr().out.split())
    assert "was made with another model, input size or gallery folder" in text
    assert "(42 embedded, 0 from the cache" in text
    (out / "gallery_features.npz").write_bytes(b"garbage")
    assert search(trained["joint"], gallery, queries, out) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "is unreadable" in text and "(42 embedded, 0 from the cache" in text


def test_same_camera_matches_can_be_left_out(trained, gallery_and_queries, tmp_path):
    gallery, queries = gallery_and_queries
    shutil.copytree(trained["raw"] / "cam3", queries / "cam3")          # cam3 queries, and cam3 in the gallery
    out = tmp_path / "out"
    assert search(trained["joint"], gallery, queries, out, "--same-camera", "skip", "--top-k", "30") == 0
    found = results(out)
    assert all(m["camera"] != q["camera"] for q in found["queries"] for m in q["matches"])
    assert_matches(found, brute_force(trained["joint"], gallery, queries, 30, same_camera_hidden=True))
    assert found["same_camera"] == "skip"


def test_modalities_from_a_map_by_first_folder(trained, tmp_path):
    gallery = tmp_path / "gallery"
    for folder, camera in (("visible", "cam1"), ("thermal", "cam3")):
        for n, image in enumerate(sorted((trained["raw"] / camera).rglob("*.jpg"))[:4]):
            (gallery / folder).mkdir(parents=True, exist_ok=True)
            shutil.copy(image, gallery / folder / f"{n}.jpg")
    out = tmp_path / "out"
    query = gallery / "thermal" / "0.jpg"
    assert search(trained["joint"], gallery, query, tmp_path / "auto") == 2
    assert search(trained["joint"], gallery, query, out, "--gallery-modality", "visible=rgb,thermal=ir",
                  "--query-modality", "ir") == 0
    found = results(out)
    assert {m["path"].split("/")[0]: m["modality"] for m in found["queries"][0]["matches"]} == \
        {"visible": "rgb", "thermal": "ir"}
    assert found["queries"][0]["matches"][0]["path"] == "thermal/0.jpg"     # itself, first
    assert found["queries"][0]["matches"][0]["score"] == pytest.approx(1.0, abs=1e-5)


def without_generator(checkpoint: Path, target: Path) -> Path:
    payload = torch.load(checkpoint, weights_only=True)
    del payload["networks"]["generator_rgb2ir"]
    torch.save(payload, target)
    return target


def test_bad_inputs_are_one_line_with_exit_2_or_3(trained, gallery_and_queries, tmp_path, capsys, monkeypatch):
    gallery, queries = gallery_and_queries
    out = tmp_path / "out"
    assert search(trained["joint"], gallery, queries, out) == 0
    kept = (out / "results.json").read_bytes()
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "loose").mkdir()
    shutil.copy(sorted((gallery / "cam1").rglob("*.jpg"))[0], tmp_path / "loose" / "a.jpg")
    no_generator = without_generator(trained["joint"], tmp_path / "no-g.pt")
    cases = [
        (["--gallery", tmp_path / "missing"], 3, "gallery " + str(tmp_path / "missing") + " does not exist"),
        (["--gallery", tmp_path / "empty"], 3, "holds no images"),
        (["--query", tmp_path / "notes.txt"], 3, "is not an image"),
        (["--gallery-modality", "visible=uv"], 2, "--gallery-modality must be rgb, ir, auto or a map"),
        (["--gallery", tmp_path / "loose", "--gallery-modality", "ir", "--same-camera", "skip"], 2,
         "needs every image in a camera folder"),
        (["--same-camera", "sometimes"], 2, "--same-camera must be keep or skip"),
        (["--backend", "annoy"], 2, "--backend must be one of auto, exact, faiss"),
        (["--out", gallery / "results"], 2, "is inside the gallery"),
        (["--checkpoint", no_generator], 2, "go through G_I, and checkpoint " + str(no_generator) + " has none"),
        (["--top-k", "0"], 2, "--top-k"),
    ]
    for args, code, message in cases:
        arguments = {"--checkpoint": trained["joint"], "--gallery": gallery, "--query": queries, "--out": out}
        pairs = list(zip(args[::2], args[1::2]))
        arguments.update(pairs)
        assert main(["search", *[str(v) for pair in arguments.items() for v in pair]]) == code, args
        assert message in (capsys.readouterr().err if code == 2 and args[0] == "--top-k" else error_line(capsys))
    assert search(no_generator, gallery, queries, tmp_path / "ir-only", "--no-translate") == 0
    bad = gallery / "cam1" / "0001" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    assert search(trained["joint"], gallery, queries, out) == 3
    assert f"cannot decode {bad}" in error_line(capsys)
    assert (out / "results.json").read_bytes() == kept                   # nothing already written is lost
    bad.unlink()
    monkeypatch.setattr(extras, "installed", lambda module: module != "faiss")
    assert search(trained["joint"], gallery, queries, out, "--backend", "faiss") == 2
    assert "needs the optional extra pfanet[search] (faiss-cpu not installed): pip install 'pfanet[search]'" in \
        error_line(capsys)


@needs_export
def test_search_with_the_onnx_export_gives_the_checkpoints_results(exported, trained, gallery_and_queries, tmp_path):
    gallery, queries = gallery_and_queries
    assert search(trained["joint"], gallery, queries, tmp_path / "torch") == 0
    assert main(["search", "--onnx", str(exported), "--gallery", str(gallery), "--query", str(queries), "--out",
                 str(tmp_path / "onnx")]) == 0
    mine = results(tmp_path / "onnx")
    assert mine["model"].startswith(f"ONNX export {exported}")
    assert_same_rankings(mine, results(tmp_path / "torch"))
