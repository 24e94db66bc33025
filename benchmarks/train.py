"""Benchmark: training speed at paper scale (SPEC §6): ResNet-50 with BNG and MMM, 288x144,
P=9 x K=4 RGB + the same number of IR images per iteration, on the available device.

Renders a small synthetic dataset, prepares it at the recipe's size, builds the recipe's trainers,
and times train-gan iterations, then train-joint warm-up (F only) and joint (F, G, D) iterations,
each after a few untimed ones. FLOPs of one iteration of each phase are counted with
``torch.utils.flop_counter`` and compared with the machine's own dense matrix-multiply rate (the
same dtype the recipe trains in), giving the fraction of that rate the training sustains; the
recipe's iteration counts turn both into the whole recipe's FLOPs and hours. Prints one JSON line.

    python benchmarks/train.py [--recipe sysu_pfanet.yaml] [--iterations 5] [--warmup 2] [--device auto] [k=v ...]
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

import torch
from torch.utils.flop_counter import FlopCounterMode

from pfanet_cli.config import load_recipe
from pfanet_cli.data.prepare import prepare_sysu
from pfanet_cli.data.prepared import open_prepared
from pfanet_cli.data.synthetic import render_synthetic_sysu
from pfanet_cli.engine.rundir import RunDir
from pfanet_cli.engine.runtime import Distributed, resolve_device
from pfanet_cli.engine.train_gan import GanTrainer
from pfanet_cli.engine.train_joint import JointTrainer


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, dtype: torch.dtype, size: int, repeats: int) -> float:
    """FLOP/s of a square matrix product on ``device`` (the machine's own dense rate)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    synchronise(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronise(device)
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def time_phase(trainer: GanTrainer | JointTrainer, phase: str, iterations: int, warmup: int) -> tuple[float, int]:
    for i in range(warmup):
        trainer.step(phase, i + 1)
    synchronise(trainer.device)
    started = time.perf_counter()
    for i in range(iterations):
        trainer.step(phase, warmup + i + 1)
    synchronise(trainer.device)
    seconds = (time.perf_counter() - started) / iterations
    with FlopCounterMode(display=False) as counter:
        trainer.step(phase, warmup + iterations + 1)
    return seconds, counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="sysu_pfanet.yaml")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--ids", type=int, default=24, help="synthetic identities to render")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pfanet-bench-train-"))
    try:
        print(json.dumps(run_benchmark(args, work)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_benchmark(args: argparse.Namespace, work: Path) -> dict:
    probe = load_recipe(args.recipe, args.overrides)
    render_synthetic_sysu(work / "raw", preset="small", ids=args.ids, height=probe.data.height,
                          width=probe.data.width)
    prepare_sysu(work / "raw", work / "prepared", probe.data.height, probe.data.width)
    recipe = load_recipe(args.recipe, [f"data.root={work / 'prepared'}", "model.pretrained=none",
                                       f"train.device={args.device}", *args.overrides])
    device = resolve_device(recipe.train.device)
    torch.manual_seed(0)
    data = open_prepared(work / "prepared")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(recipe.train.amp, torch.float32)
    if device.type == "cpu" and amp_dtype == torch.float16:
        amp_dtype = torch.float32
    peak = matmul_rate(device, amp_dtype, 4096 if device.type == "cuda" else 2048, 20 if device.type == "cuda" else 5)
    result = {"benchmark": "train", "recipe": recipe.name, "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
              "cpu_cores": os.cpu_count(), "amp": recipe.train.amp,
              "channels_last": recipe.train.channels_last and device.type == "cuda",
              "image_size": [recipe.data.height, recipe.data.width], "matmul_tflops": round(peak / 1e12, 3)}
    stages = {"gan": (GanTrainer, recipe.gan.iterations), "warmup": (JointTrainer, recipe.joint.warmup_iterations),
              "joint": (JointTrainer, recipe.joint.iterations)}
    total_seconds = total_flops = 0.0
    for phase, (trainer_class, recipe_iterations) in stages.items():
        options = {"init_gan": "none"} if trainer_class is JointTrainer else {}  # speed does not depend on G's weights
        trainer = trainer_class(recipe, RunDir(work / f"run-{phase}"), data, device, Distributed(), show_progress=False,
                                **options)
        images = trainer.images_per_iteration()
        seconds, flops = time_phase(trainer, phase, args.iterations, args.warmup)
        result[phase] = {"images_per_iteration": images, "seconds_per_iteration": round(seconds, 4),
                         "images_per_s": round(images / seconds, 1), "tflop_per_iteration": round(flops / 1e12, 3),
                         "sustained_tflops": round(flops / seconds / 1e12, 3),
                         "fraction_of_matmul": round(flops / seconds / peak, 3)}
        total_seconds += recipe_iterations * seconds
        total_flops += recipe_iterations * flops
        del trainer
    result["recipe_pflop"] = round(total_flops / 1e15, 1)
    result["recipe_hours_at_this_rate"] = round(total_seconds / 3600, 2)
    return result


if __name__ == "__main__":
    main()
