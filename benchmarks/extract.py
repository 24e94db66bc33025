"""Benchmark: ``extract`` throughput and peak memory (SPEC §6).

Builds the recipe's networks (random weights, saved as a train-joint checkpoint), prepares a
synthetic test split at the recipe's image size, and times ``extract_split`` (RGB through G_I, flip-
summed F features) over it. Reports images/s, the peak resident memory of the process (and the peak
CUDA memory on a GPU), as one JSON line.

    python benchmarks/extract.py [--recipe sysu_pfanet.yaml] [--ids 24] [--batch-size 64] [--device auto] [k=v ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import torch

from pfanet_cli.config import load_recipe, recipe_to_dict
from pfanet_cli.data.prepare import prepare_sysu
from pfanet_cli.data.prepared import open_prepared
from pfanet_cli.data.synthetic import render_synthetic_sysu
from pfanet_cli.engine.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, save_checkpoint
from pfanet_cli.engine.runtime import resolve_device
from pfanet_cli.evaluation.extract import extract_split
from pfanet_cli.modeling.build import build_networks


def untrained_checkpoint(path: Path, recipe, num_classes: int) -> Path:
    """A train-joint checkpoint of freshly initialised networks (speed does not depend on the weights)."""
    networks = build_networks(recipe.model, num_classes, joint_discriminator=True, load_pretrained=False)
    save_checkpoint(path, {
        "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "stage": "train-joint",
        "architecture": recipe_to_dict(recipe)["model"], "num_classes": num_classes,
        "image_size": [recipe.data.height, recipe.data.width],
        "networks": {key: net.state_dict() for key, net in networks.items()},
    })
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="sysu_pfanet.yaml")
    parser.add_argument("--ids", type=int, default=24, help="synthetic identities to render")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    recipe = load_recipe(args.recipe, args.overrides)
    device = resolve_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="pfanet-bench-extract-"))
    try:
        print(json.dumps(measure_extract(args, recipe, device, work)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure_extract(args: argparse.Namespace, recipe, device: torch.device, work: Path) -> dict:
    render_synthetic_sysu(work / "raw", preset="small", ids=args.ids, height=recipe.data.height,
                          width=recipe.data.width)
    prepare_sysu(work / "raw", work / "prepared", recipe.data.height, recipe.data.width)
    data = open_prepared(work / "prepared")
    checkpoint = untrained_checkpoint(work / "model.pt", recipe, data.split("train").num_classes)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    extract_split(checkpoint, work / "prepared", batch_size=args.batch_size, device=str(device))  # warm-up
    started = time.perf_counter()
    result = extract_split(checkpoint, work / "prepared", batch_size=args.batch_size, device=str(device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    report = {"benchmark": "extract", "recipe": recipe.name, "device": str(device), "cpu_cores": os.cpu_count(),
              "image_size": [recipe.data.height, recipe.data.width], "batch_size": args.batch_size,
              "images": len(result), "feature_dim": result.dim, "seconds": round(seconds, 2),
              "images_per_s": round(len(result) / seconds, 1),
              "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.type == "cuda":
        report["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return report


if __name__ == "__main__":
    main()
