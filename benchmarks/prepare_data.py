"""Benchmark: ``prepare-data sysu`` on a real-size synthetic SYSU-MM01 tree (SPEC §6).

Renders the ``sysu`` synthetic preset (the real per-camera, per-person counts: 45,863 images) unless
``--raw`` names an existing tree, then times

* the toolkit's ``prepare_sysu`` (worker processes decoding straight into the memory-mapped output),
* a one-process decode-and-resize loop over the same files into the same kind of array,
* optionally (``--fast``) the toolkit's opt-in JPEG draft mode,

checks that the toolkit's arrays equal the loop's pixel for pixel, and prints one JSON line with
images/s of each and their ratio. Also reports the split sizes against the real SYSU-MM01 counts.

    python benchmarks/prepare_data.py [--raw DIR] [--work DIR] [--height 288 --width 144] [--fast]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pfanet_cli.data.prepare import prepare_sysu
from pfanet_cli.data.synthetic import render_synthetic_sysu
from pfanet_cli.data.sysu import scan_sysu

REAL = {"train_rgb": 22258, "train_ir": 11909, "test_ir": 3803}


def one_process_loop(raw: Path, paths: list[str], out: Path, height: int, width: int) -> float:
    """The plain way: open, convert to RGB, LANCZOS-resize, store; one file after another."""
    started = time.perf_counter()
    array = np.lib.format.open_memmap(out, mode="w+", dtype=np.uint8, shape=(len(paths), height, width, 3))
    for row, rel in enumerate(paths):
        with Image.open(raw / rel) as image:
            array[row] = np.asarray(image.convert("RGB").resize((width, height), Image.LANCZOS))
    array.flush()
    del array
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, help="existing SYSU-layout tree (default: render the sysu preset)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary folder)")
    parser.add_argument("--height", type=int, default=288)
    parser.add_argument("--width", type=int, default=144)
    parser.add_argument("--fast", action="store_true", help="also time the opt-in JPEG draft mode")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="pfanet-bench-prepare-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"benchmark": "prepare-data", "cpu_cores": os.cpu_count(), "machine": platform.machine()}
    try:
        raw = args.raw
        if raw is None:
            raw = work / "raw"
            render = render_synthetic_sysu(raw, preset="sysu", reuse=True)
            result["render_s"] = round(render.seconds, 1)
        splits, _ = scan_sysu(raw)
        result["train_rgb"] = sum(e.modality == "rgb" for e in splits["train"])
        result["train_ir"] = sum(e.modality == "ir" for e in splits["train"])
        result["test_ir"] = sum(e.modality == "ir" for e in splits["test"])
        result["real_sysu_counts_match"] = all(result[k] == v for k, v in REAL.items())

        summary = prepare_sysu(raw, work / "prepared", args.height, args.width)
        images = sum(summary.counts.values())
        result.update(images=images, toolkit_s=round(summary.seconds, 2),
                      toolkit_images_per_s=round(images / summary.seconds, 1))

        loop_s, exact = 0.0, True
        for name, entries in splits.items():
            target = work / f"loop_{name}.npy"
            loop_s += one_process_loop(raw, [e.path for e in entries], target, args.height, args.width)
            exact &= bool(np.array_equal(np.load(target, mmap_mode="r"),
                                         np.load(work / "prepared" / f"{name}_images.npy", mmap_mode="r")))
            target.unlink()
        result.update(loop_s=round(loop_s, 2), loop_images_per_s=round(images / loop_s, 1),
                      speedup=round(loop_s / summary.seconds, 2), pixel_exact=exact)

        if args.fast:
            fast = prepare_sysu(raw, work / "prepared_fast", args.height, args.width, fast=True)
            result.update(fast_s=round(fast.seconds, 2), fast_images_per_s=round(images / fast.seconds, 1),
                          fast_speedup=round(loop_s / fast.seconds, 2))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
