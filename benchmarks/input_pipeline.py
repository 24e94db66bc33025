"""Benchmark: the training input pipeline alone, before and after it was made asynchronous (issue #13).

Renders a small synthetic dataset, prepares it at 288x144 and draws identity-aligned batches of
P=9 ids x K=4 images per modality (72 images) with flip and pad 10 + crop, on the CPU:

- ``before``: the synchronous path of commit de076d9 (gather, pad + crop + flip as one tensor gather,
  convert, copy; reproduced below), with channels-last off and on;
- ``after``: ``BatchSource`` with ``prefetch=0`` (the new code on the training thread) and with
  ``prefetch`` batches prepared on its background thread (the pipeline alone: a loop that only takes
  batches);
- the fraction of a training loop's time spent waiting for data when the compute step is a fixed sleep
  standing for a GPU step (30 ms and 100 ms by default), before and after.

Both paths give the same batches (checked: ``same_batches``). Prints one JSON line.

    python benchmarks/input_pipeline.py [--batches 40] [--steps-ms 30 100] [--prefetch 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from pfanet_cli.data.prepare import prepare_sysu
from pfanet_cli.data.prepared import PreparedSplit, open_prepared
from pfanet_cli.data.sampler import IdentityAlignedSampler
from pfanet_cli.data.synthetic import render_synthetic_sysu
from pfanet_cli.engine.batches import Batch, BatchSource

DEVICE = torch.device("cpu")


class SynchronousBefore:
    """The input pipeline of commit de076d9, on the training thread: ``BatchSource.next`` with
    ``data.augment.gather_uint8`` and ``flip_and_crop`` as they were."""

    def __init__(self, split: PreparedSplit, sampler: IdentityAlignedSampler, pad: int, seed: int,
                 channels_last: bool) -> None:
        self.split, self.sampler, self.pad = split, sampler, pad
        self.generator = torch.Generator().manual_seed(seed)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def next(self) -> Batch:
        rgb_rows, ir_rows = self.sampler.next_batch()
        rows = np.concatenate([rgb_rows, ir_rows])
        order = np.argsort(rows, kind="stable")
        gathered = np.empty((len(rows),) + self.split.images.shape[1:], dtype=np.uint8)
        gathered[order] = self.split.images[rows[order]]
        images = self._flip_and_crop(torch.from_numpy(gathered).permute(0, 3, 1, 2).contiguous())
        images = images.to(DEVICE, non_blocking=True).float().div_(127.5).sub_(1.0)
        images = images.contiguous(memory_format=self.memory_format)
        rgb, ir = images.split(len(rgb_rows))
        return Batch(rgb, ir, torch.from_numpy(self.split.labels[rgb_rows]).to(DEVICE))

    def _flip_and_crop(self, batch: torch.Tensor) -> torch.Tensor:
        size, _, height, width = batch.shape
        pad = self.pad
        batch = F.pad(batch, (pad, pad, pad, pad))
        top = torch.randint(0, 2 * pad + 1, (size,), generator=self.generator)
        left = torch.randint(0, 2 * pad + 1, (size,), generator=self.generator)
        rows = top[:, None] + torch.arange(height)[None, :]
        cols = left[:, None] + torch.arange(width)[None, :]
        flipped = torch.rand(size, generator=self.generator) < 0.5
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
        samples = torch.arange(size)[:, None, None]
        out = batch.permute(0, 2, 3, 1)[samples, rows[:, :, None], cols[:, None, :]]
        return out.permute(0, 3, 1, 2).contiguous()


def sampler_for(split: PreparedSplit, args: argparse.Namespace) -> IdentityAlignedSampler:
    return IdentityAlignedSampler(split.labels, split.is_ir, args.ids_per_batch, args.images_per_id, seed=0)


def before(split: PreparedSplit, args: argparse.Namespace, channels_last: bool) -> SynchronousBefore:
    return SynchronousBefore(split, sampler_for(split, args), args.pad, seed=0, channels_last=channels_last)


def after(split: PreparedSplit, args: argparse.Namespace, prefetch: int) -> BatchSource:
    return BatchSource(split, sampler_for(split, args), DEVICE, flip=True, pad=args.pad, seed=0,
                       channels_last=True, prefetch=prefetch)


def time_batches(next_batch: Callable[[], Batch], count: int, step_seconds: float = 0.0,
                 warmup: int = 5) -> tuple[float, float]:
    """(seconds per iteration, fraction of the loop spent waiting for data) over ``count`` iterations of
    taking a batch then sleeping ``step_seconds`` (the stand-in for a GPU step), after ``warmup`` untimed
    ones (the first batches also fault the memory map's pages in, and the thread starts)."""
    for _ in range(warmup):
        next_batch()
        time.sleep(step_seconds)
    waited = 0.0
    started = time.perf_counter()
    for _ in range(count):
        asked = time.perf_counter()
        next_batch()
        waited += time.perf_counter() - asked
        if step_seconds:
            time.sleep(step_seconds)
    total = time.perf_counter() - started
    return total / count, waited / total


def throughput(seconds_per_batch: float, images: int) -> dict[str, float]:
    return {"ms_per_batch": round(seconds_per_batch * 1000, 1), "images_per_s": round(images / seconds_per_batch)}


def same_field(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Two fields of a batch are the same tensor, or both absent (a field an augmentation off leaves empty)."""
    return a is b is None or (a is not None and b is not None and torch.equal(a, b))


def same_batches(split: PreparedSplit, args: argparse.Namespace, count: int = 3) -> bool:
    old, new = before(split, args, channels_last=True), after(split, args, prefetch=args.prefetch)
    try:
        return all(same_field(a, b) for _ in range(count) for a, b in zip(vars(old.next()).values(),
                                                                         vars(new.next()).values()))
    finally:
        new.close()


def run_benchmark(split: PreparedSplit, args: argparse.Namespace) -> dict:
    images = 2 * args.ids_per_batch * args.images_per_id
    result: dict = {"benchmark": "input_pipeline", "device": "cpu", "cpu_cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "image_size": list(split.image_size),
                    "images_per_batch": images, "pad": args.pad, "prefetch": args.prefetch,
                    "load_average_at_start": [round(v, 2) for v in os.getloadavg()]}
    result["same_batches"] = same_batches(split, args)
    result["before"] = {f"channels_last_{name}": throughput(time_batches(before(split, args, flag).next,
                                                                          args.batches)[0], images)
                        for name, flag in (("off", False), ("on", True))}
    result["after"] = {}
    for prefetch in (0, args.prefetch):
        source = after(split, args, prefetch)
        result["after"][f"prefetch_{prefetch}"] = throughput(time_batches(source.next, args.batches)[0], images)
        source.close()
    result["speedup"] = round(result["after"][f"prefetch_{args.prefetch}"]["images_per_s"]
                              / result["before"]["channels_last_on"]["images_per_s"], 2)
    result["wait_fraction"] = {}
    for step_ms in args.steps_ms:
        source = after(split, args, args.prefetch)
        waits = {"before": time_batches(before(split, args, True).next, args.loop_steps, step_ms / 1000)[1],
                 "after": time_batches(source.next, args.loop_steps, step_ms / 1000)[1]}
        source.close()
        result["wait_fraction"][f"step_{step_ms}ms"] = {key: round(value, 3) for key, value in waits.items()}
    result["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=288)
    parser.add_argument("--width", type=int, default=144)
    parser.add_argument("--ids", type=int, default=24, help="synthetic identities to render")
    parser.add_argument("--ids-per-batch", type=int, default=9)
    parser.add_argument("--images-per-id", type=int, default=4)
    parser.add_argument("--pad", type=int, default=10)
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--batches", type=int, default=40, help="timed batches of each throughput measurement")
    parser.add_argument("--loop-steps", type=int, default=50, help="iterations of each loop with a sleep")
    parser.add_argument("--steps-ms", type=int, nargs="+", default=[30, 100])
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pfanet-bench-input-"))
    try:
        render_synthetic_sysu(work / "raw", preset="small", ids=args.ids, height=args.height, width=args.width)
        prepare_sysu(work / "raw", work / "prepared", args.height, args.width)
        print(json.dumps(run_benchmark(open_prepared(work / "prepared").split("train"), args)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
