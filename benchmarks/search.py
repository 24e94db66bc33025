"""Benchmark: ``pfanet search`` at scale (issue 23).

1. Embedding: images/s of the gallery path of ``search`` (decode a JPEG, LANCZOS to the model size, the test
   feature), with the recipe's untrained networks, through PyTorch and, with ``pfanet[export]``, through the
   ONNX export run by onnxruntime.
2. Top-k: per gallery size (synthetic, clustered like ReID features: ten vectors per identity around its
   centre, L2-normalised), the time of exact search (``torch``: matrix product and ``topk``) and of FAISS
   IVF-Flat (build, then search) for a batch of queries and for one query, and FAISS's recall@10 against the
   exact top-10. The crossover: the number of queries from which FAISS, its index build included, is faster
   than exact search (build time / time saved per query).

Prints one JSON line.

    python benchmarks/search.py [--sizes 10000 100000 1000000] [--dims 256 2048] [--queries 100] [--repeats 3]
                                [--noise 0.5] [--recipe demo_cpu.yaml] [--images 256] [--skip-embedding]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from extract import untrained_checkpoint  # benchmarks/extract.py, beside this script
from pfanet_cli.config import load_recipe
from pfanet_cli.inference.extras import installed
from pfanet_cli.inference.feature_model import CheckpointModel
from pfanet_cli.inference.gallery import scan_side
from pfanet_cli.inference.gallery_cache import embed_images
from pfanet_cli.inference.topk import FaissIndex, exact_top_k

NOISE = 0.5
"""Norm of the per-image noise around an identity's unit-norm centre (same-identity cosine about 0.8)."""
MAX_BYTES = 4 << 30
"""Galleries larger than this (G x D x 4 bytes) are skipped: 1e6 x 2048 float32 is 8 GB."""


def clustered(count: int, dim: int, rng: np.random.Generator, centres: np.ndarray, noise: float = NOISE) -> np.ndarray:
    """``count`` unit vectors around the rows of ``centres`` (ten per identity)."""
    ids = np.arange(count) // 10 % len(centres)
    vectors = centres[ids] + noise / np.sqrt(dim) * rng.standard_normal((count, dim), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def median_seconds(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure_topk(size: int, dim: int, queries: int, repeats: int, noise: float = NOISE) -> dict:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((max(size // 10, 1), dim), dtype=np.float32) / np.sqrt(dim)
    gallery = clustered(size, dim, rng, centres, noise)
    query = clustered(queries, dim, np.random.default_rng(1), centres, noise)
    exact_idx, _ = exact_top_k(query, gallery, 10)
    row = {"gallery": size, "dim": dim, "queries": queries, "noise": noise,
           "exact_batch_s": median_seconds(lambda: exact_top_k(query, gallery, 10), repeats),
           "exact_one_query_ms": 1e3 * median_seconds(lambda: exact_top_k(query[:1], gallery, 10), repeats)}
    if installed("faiss"):
        started = time.perf_counter()
        index = FaissIndex(gallery)
        row["faiss_build_s"] = time.perf_counter() - started
        row["faiss_index"] = index.describe()
        row["faiss_batch_s"] = median_seconds(lambda: index.search(query, 10), repeats)
        row["faiss_one_query_ms"] = 1e3 * median_seconds(lambda: index.search(query[:1], 10), repeats)
        found, _ = index.search(query, 10)
        row["faiss_recall_at_10"] = float(np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(exact_idx, found)]))
        saved_per_query = (row["exact_batch_s"] - row["faiss_batch_s"]) / queries
        row["faiss_pays_off_from_queries"] = round(row["faiss_build_s"] / saved_per_query) if saved_per_query > 0 \
            else None
    return {key: round(value, 5) if isinstance(value, float) else value for key, value in row.items()}


def measure_embedding(recipe_name: str, count: int, repeats: int, work: Path) -> dict:
    recipe = load_recipe(recipe_name, [])
    rng = np.random.default_rng(0)
    folder = work / "gallery"
    for n in range(count):
        (folder / f"cam{1 + n % 2}").mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (recipe.data.height, recipe.data.width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"cam{1 + n % 2}" / f"{n:05d}.jpg", quality=90)
    images = scan_side(folder, "rgb", "--gallery-modality", "gallery")
    checkpoint = untrained_checkpoint(work / "model.pt", recipe, num_classes=10)
    models = {"torch": CheckpointModel(checkpoint)}
    if installed("onnxruntime") and installed("onnxscript"):
        from pfanet_cli.inference.export import export_model  # heavy: the exporter, only with pfanet[export]
        from pfanet_cli.inference.onnx_model import OnnxModel  # heavy: onnxruntime, only with pfanet[export]

        export_model(checkpoint, work / "onnx", "rgb", num_images=4)
        models["onnxruntime"] = OnnxModel(work / "onnx")
    out = {"recipe": recipe.name, "image_size": [recipe.data.height, recipe.data.width], "images": count}
    for name, model in models.items():
        embed_images(model, images[:64])  # warm-up
        seconds = median_seconds(lambda: embed_images(model, images), repeats)
        out[f"{name}_images_per_s"] = round(count / seconds, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[256, 2048])
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--noise", type=float, default=NOISE, help="norm of the noise around each identity's centre")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--recipe", default="demo_cpu.yaml")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--skip-embedding", action="store_true")
    args = parser.parse_args()
    report = {"benchmark": "search", "cpu_cores": os.cpu_count(), "load_average": os.getloadavg()[0],
              "faiss": installed("faiss"), "topk": [], "skipped": []}
    for dim in args.dims:
        for size in args.sizes:
            if size * dim * 4 > MAX_BYTES:
                report["skipped"].append(f"{size} x {dim}: {size * dim * 4 / 2**30:.0f} GiB of float32")
                continue
            report["topk"].append(measure_topk(size, dim, args.queries, args.repeats, args.noise))
    if not args.skip_embedding:
        work = Path(tempfile.mkdtemp(prefix="pfanet-bench-search-"))
        try:
            report["embedding"] = measure_embedding(args.recipe, args.images, args.repeats, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    report["load_average_end"] = os.getloadavg()[0]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
