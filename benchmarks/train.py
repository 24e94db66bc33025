"""Benchmark: training speed at paper scale (SPEC §6): ResNet-50 with BNG and MMM, 288x144,
P=9 x K=4 RGB + the same number of IR images per iteration, on the available device.

Renders a small synthetic dataset, prepares it at the recipe's size, builds the recipe's trainers,
and times train-gan iterations, then train-joint warm-up (F only) and joint (F, G, D) iterations,
each after a few untimed ones (their time, ``torch.compile`` included, is reported too). FLOPs of
one iteration of each phase are counted with ``torch.utils.flop_counter`` and compared with the
machine's own dense matrix-multiply rate (the same dtype the recipe trains in), giving the fraction
of that rate the training sustains; the recipe's iteration counts turn both into the whole recipe's
FLOPs and hours. Also the fraction of the time spent waiting for batches, and peak CUDA memory.
Prints one JSON line.

    python benchmarks/train.py [--recipe sysu_pfanet.yaml] [--iterations 5] [--warmup 2] [--device auto]
                               [--phases gan,warmup,joint] [k=v ...]
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

from pfanet_cli.config import Recipe, load_recipe
from pfanet_cli.data.prepare import prepare_sysu
from pfanet_cli.data.prepared import PreparedData, open_prepared
from pfanet_cli.data.synthetic import render_synthetic_sysu
from pfanet_cli.engine.rundir import RunDir
from pfanet_cli.engine.runtime import (
    Distributed,
    allow_tf32,
    describe_precision,
    resolve_amp,
    resolve_device,
    set_determinism,
)
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


def time_phase(trainer: GanTrainer | JointTrainer, phase: str, iterations: int, warmup: int) -> dict:
    """Seconds per iteration over ``iterations`` after ``warmup`` untimed ones (whose time, compilation
    included, is ``first_seconds``), the fraction of that time spent waiting for batches, peak CUDA
    memory, and the FLOPs of one more iteration (eager networks only: compiled kernels are not counted)."""
    started = time.perf_counter()
    for i in range(warmup):
        trainer.step(phase, i + 1)
    synchronise(trainer.device)
    first_seconds = time.perf_counter() - started
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.device)
    waited = sum(source.wait_seconds for source in trainer.opened_sources)
    started = time.perf_counter()
    for i in range(iterations):
        trainer.step(phase, warmup + i + 1)
    synchronise(trainer.device)
    elapsed = time.perf_counter() - started
    waited = sum(source.wait_seconds for source in trainer.opened_sources) - waited
    flops = None
    if not trainer.recipe.train.compile:
        with FlopCounterMode(display=False) as counter:
            trainer.step(phase, warmup + iterations + 1)
        flops = counter.get_total_flops()
    peak = torch.cuda.max_memory_allocated(trainer.device) / 2**30 if trainer.device.type == "cuda" else None
    return {"seconds": elapsed / iterations, "first_seconds": first_seconds, "flops": flops,
            "data_wait_fraction": waited / elapsed, "peak_memory_gib": peak}


PHASES = {"gan": (GanTrainer, lambda recipe: recipe.gan.iterations),
          "warmup": (JointTrainer, lambda recipe: recipe.joint.warmup_iterations),
          "joint": (JointTrainer, lambda recipe: recipe.joint.iterations)}
"""Each phase of the recipe's schedule: the trainer that runs it and its number of iterations."""


def run_phases(recipe: Recipe, data: PreparedData, device: torch.device, work: Path, iterations: int,
               warmup: int, peak_flops: float | None = None, phases: tuple[str, ...] = tuple(PHASES)) -> dict:
    """Time every phase of ``recipe`` on ``device`` and project the whole schedule: per phase images/s,
    achieved TFLOPS (and the fraction of ``peak_flops``), data wait, peak memory; then the recipe's
    PFLOP and its projected wall time (the first iterations' time, compilation included, plus the
    rest at the measured rate); both only count the ``phases`` timed."""
    set_determinism(recipe.train.deterministic)
    allow_tf32(recipe.train.tf32)
    result: dict = {}
    total_seconds = total_flops = 0.0
    for phase in phases:
        trainer_class, recipe_iterations = PHASES[phase]
        options = {"init_gan": "none"} if trainer_class is JointTrainer else {}  # speed does not depend on G's weights
        trainer = trainer_class(recipe, RunDir(work / f"run-{phase}"), data, device, Distributed(),
                                show_progress=False, **options)
        try:
            images = trainer.images_per_iteration()
            timing = time_phase(trainer, phase, iterations, warmup)
        finally:
            trainer.close()
        seconds, flops = timing["seconds"], timing["flops"]
        row = {"images_per_iteration": images, "seconds_per_iteration": round(seconds, 4),
               "images_per_s": round(images / seconds, 1),
               "first_iterations_seconds": round(timing["first_seconds"], 2),
               "data_wait_fraction": round(timing["data_wait_fraction"], 4)}
        if timing["peak_memory_gib"] is not None:
            row["peak_memory_gib"] = round(timing["peak_memory_gib"], 2)
        if flops is not None:
            row.update(tflop_per_iteration=round(flops / 1e12, 3), sustained_tflops=round(flops / seconds / 1e12, 3))
            if peak_flops:
                row["fraction_of_matmul"] = round(flops / seconds / peak_flops, 3)
            total_flops += recipe_iterations(recipe) * flops
        total_seconds += timing["first_seconds"] + max(recipe_iterations(recipe) - warmup, 0) * seconds
        result[phase] = row
        del trainer
    if total_flops:
        result["recipe_pflop"] = round(total_flops / 1e15, 1)
    result["recipe_hours_at_this_rate"] = round(total_seconds / 3600, 3)
    return result


def phase_list(text: str) -> tuple[str, ...]:
    phases = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in phases if name not in PHASES]
    if unknown or not phases:
        raise argparse.ArgumentTypeError(f"phases are {', '.join(PHASES)}; got {text!r}")
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="sysu_pfanet.yaml")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--ids", type=int, default=24, help="synthetic identities to render")
    parser.add_argument("--phases", type=phase_list, default=tuple(PHASES),
                        help="comma-separated phases to time, of gan,warmup,joint (the recipe totals cover these)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pfanet-bench-train-"))
    try:
        print(json.dumps(run_benchmark(args, work)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def prepare_synthetic(work: Path, ids: int, height: int, width: int) -> PreparedData:
    """A small synthetic SYSU-layout dataset, prepared at ``height`` x ``width`` under ``work``."""
    render_synthetic_sysu(work / "raw", preset="small", ids=ids, height=height, width=width)
    prepare_sysu(work / "raw", work / "prepared", height, width)
    return open_prepared(work / "prepared")


def run_benchmark(args: argparse.Namespace, work: Path) -> dict:
    probe = load_recipe(args.recipe, args.overrides)
    data = prepare_synthetic(work, args.ids, probe.data.height, probe.data.width)
    recipe = load_recipe(args.recipe, [f"data.root={data.root}", "model.pretrained=none",
                                       f"train.device={args.device}", *args.overrides])
    device = resolve_device(recipe.train.device)
    torch.manual_seed(0)
    amp = resolve_amp(recipe.train.amp, device)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp, torch.float32)
    peak = matmul_rate(device, amp_dtype, 4096 if device.type == "cuda" else 2048, 20 if device.type == "cuda" else 5)
    result = {"benchmark": "train", "recipe": recipe.name, "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
              "cpu_cores": os.cpu_count(), "amp": recipe.train.amp,
              "precision": describe_precision(device, amp, recipe.train.tf32), "compile": recipe.train.compile,
              "channels_last": recipe.train.channels_last, "image_size": [recipe.data.height, recipe.data.width],
              "matmul_tflops": round(peak / 1e12, 3), "load_average_at_start": [round(v, 2) for v in os.getloadavg()]}
    result.update(run_phases(recipe, data, device, work, args.iterations, args.warmup, peak, args.phases))
    result["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    return result


if __name__ == "__main__":
    main()
