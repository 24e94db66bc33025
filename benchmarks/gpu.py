"""GPU check and benchmark (``make gpu-check``): everything a first CUDA machine should run, in one
command and a few minutes on an H100-class GPU. Prints one JSON line.

1. ``tiny_end_to_end``: the tiny recipe through the command line on the device: train-gan, train-joint
   with bf16 autocast and with fp32 + TF32, extract and evaluate each;
2. ``torchrun``: train-joint under ``torchrun --nproc_per_node 1`` (a process group with one process:
   NCCL on a GPU, so DDP's code path runs);
3. ``paper``: the paper recipe's three phases (train-gan, warm-up, joint) at full size on synthetic data,
   a fixed number of iterations each, for each precision asked: images/s, achieved TFLOPS (FLOPs counted
   as in benchmarks/train.py), peak GPU memory, the fraction of time spent waiting for batches, and the
   projected wall time of the whole schedule (10,000 + 5,000 + 10,100 iterations in sysu_pfanet.yaml).

Without CUDA it prints that nothing was measured and exits 0. ``--device cpu`` runs the same code on the
CPU (the tests do, with the tiny recipe standing in for the paper one). A section that fails is
reported with its error and the others still run; the exit code is then 1.

    python benchmarks/gpu.py [--iterations 10] [--warmup 3] [--precisions auto bf16]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from pfanet_cli.cli import main as pfanet
from pfanet_cli.config import load_recipe
from pfanet_cli.engine.runtime import describe_precision, resolve_amp
from train import matmul_rate, prepare_synthetic, run_phases  # benchmarks/train.py, beside this file

TINY = "tiny_cpu.yaml"
GOAL_MINUTES = 30
"""The goal for the whole paper schedule on one H100-class GPU (issue #13)."""


def run_command(args: list[str]) -> None:
    """``pfanet ARGS`` in this process, its output on stderr (stdout holds the JSON line); a non-zero
    exit code is an error naming the command."""
    with contextlib.redirect_stdout(sys.stderr):
        code = pfanet(args)
    if code != 0:
        raise RuntimeError(f"pfanet {' '.join(args[:2])} exited with {code}")


def tiny_end_to_end(work: Path, device: torch.device, ids: int, overrides: list[str]) -> dict[str, Any]:
    """The tiny recipe through every command on ``device``; returns timings and R1/mAP per precision."""
    data = prepare_synthetic(work / "tiny-data", ids, 64, 32)
    common = [f"data.root={data.root}", f"train.device={device.type}", *overrides]
    timings: dict[str, float] = {}
    started = time.perf_counter()
    run_command(["train-gan", TINY, *common, "--out", str(work / "gan")])
    timings["train_gan"] = time.perf_counter() - started
    result: dict[str, Any] = {"gan_checkpoint": str(work / "gan" / "checkpoints" / "last.pt")}
    for name, precision in (("bf16", ["train.amp=bf16"]), ("tf32", ["train.amp=off", "train.tf32=true"])):
        started = time.perf_counter()
        run_command(["train-joint", TINY, *common, *precision, "--init-gan", result["gan_checkpoint"],
                     "--out", str(work / f"joint-{name}")])
        timings[f"train_joint_{name}"] = time.perf_counter() - started
        features, report = work / f"features-{name}.npz", work / f"eval-{name}.json"
        started = time.perf_counter()
        run_command(["extract", "--checkpoint", str(work / f"joint-{name}" / "checkpoints" / "last.pt"),
                     "--data", str(data.root), "--out", str(features), "--device", device.type])
        run_command(["evaluate", "--features", str(features), "--data", str(data.root), "--json", str(report),
                     "--trials", "2"])
        timings[f"extract_evaluate_{name}"] = time.perf_counter() - started
        metrics = json.loads(report.read_text())["metrics"]
        result[name] = {"r1": round(metrics["r1"], 2), "mAP": round(metrics["mAP"], 2)}
    result["seconds"] = {key: round(value, 1) for key, value in timings.items()}
    return result


def torchrun_one_process(work: Path, device: torch.device, data_root: Path, gan_checkpoint: Path) -> dict[str, Any]:
    """train-joint (tiny) under ``torchrun --nproc_per_node 1``: the process group's backend and time."""
    out = work / "torchrun"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
               "-m", "pfanet_cli", "train-joint", TINY, f"data.root={data_root}", f"train.device={device.type}",
               "--init-gan", str(gan_checkpoint), "--out", str(out)]
    started = time.perf_counter()
    environment = {**os.environ, "COLUMNS": "500"}  # the start line, which names the backend, unwrapped
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun exited with {done.returncode}: {done.stderr.strip()[-500:]}")
    payload = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    backend = re.search(r"x 1 processes\s+\((\w+)\)", done.stdout)
    return {"backend": backend.group(1) if backend else None, "world_size": payload["world_size"],
            "seconds": round(time.perf_counter() - started, 1)}


def paper_phases(work: Path, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """Every phase of ``args.paper_recipe`` at its full size, once per precision in ``args.precisions``."""
    probe = load_recipe(args.paper_recipe)
    data = prepare_synthetic(work / "paper-data", args.paper_ids, probe.data.height, probe.data.width)
    result: dict[str, Any] = {"recipe": probe.name, "image_size": [probe.data.height, probe.data.width]}
    for amp in args.precisions:
        recipe = load_recipe(args.paper_recipe, [f"data.root={data.root}", "model.pretrained=none",
                                                 f"train.device={device.type}", f"train.amp={amp}"])
        resolved = resolve_amp(amp, device)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolved, torch.float32)
        peak = matmul_rate(device, dtype, 8192 if device.type == "cuda" else 512, 20 if device.type == "cuda" else 3)
        row = {"precision": describe_precision(device, resolved, recipe.train.tf32),
               "matmul_tflops": round(peak / 1e12, 2)}
        row.update(run_phases(recipe, data, device, work / f"paper-{amp}", args.iterations, args.warmup, peak))
        if device.type == "cuda":
            torch.cuda.empty_cache()
        row["projected_schedule_minutes"] = round(row.pop("recipe_hours_at_this_rate") * 60, 1)
        result[amp] = row
    return result


def section(name: str, run: Callable[[], dict[str, Any]], failures: list[str]) -> dict[str, Any]:
    """Run one part of the check; its error (one line) is reported instead of stopping the others."""
    try:
        return {"ok": True, **run()}
    except Exception as error:  # noqa: BLE001 - every failure is reported in the JSON line
        failures.append(name)
        last_line = (str(error).strip().splitlines() or [""])[-1]
        return {"ok": False, "error": f"{type(error).__name__}: {last_line}"}


def describe_device(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "cpu_cores": os.cpu_count()}
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    gpu_memory_gib=round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1))
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info


def run_check(args: argparse.Namespace, work: Path) -> tuple[dict[str, Any], list[str]]:
    device = torch.device(args.device)
    failures: list[str] = []
    result: dict[str, Any] = {"benchmark": "gpu", "cuda": device.type == "cuda",
                              **describe_device(device)}
    tiny = result["tiny_end_to_end"] = section(
        "tiny_end_to_end", lambda: tiny_end_to_end(work, device, args.tiny_ids, args.tiny_overrides), failures)
    result["torchrun"] = section(
        "torchrun", lambda: torchrun_one_process(work, device, work / "tiny-data" / "prepared",
                                                 Path(tiny["gan_checkpoint"])), failures)
    paper = result["paper"] = section("paper", lambda: paper_phases(work, device, args), failures)
    if paper["ok"]:
        result["projected_schedule_minutes"] = {amp: paper[amp]["projected_schedule_minutes"]
                                                for amp in args.precisions}
        result["goal_minutes"] = GOAL_MINUTES
    result["failed"] = failures
    return result, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu to run the same code on the CPU")
    parser.add_argument("--iterations", type=int, default=10, help="timed iterations of each paper phase")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations before them")
    parser.add_argument("--precisions", nargs="+", default=["auto", "bf16"], help="train.amp values to time")
    parser.add_argument("--paper-recipe", default="sysu_pfanet.yaml")
    parser.add_argument("--paper-ids", type=int, default=24, help="synthetic identities for the paper phases")
    parser.add_argument("--tiny-ids", type=int, default=24, help="synthetic identities for the tiny run")
    parser.add_argument("--tiny-overrides", nargs="*", default=[], help="recipe overrides for the tiny run")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(json.dumps({"benchmark": "gpu", "cuda": False,
                          "note": "no CUDA device here (torch.cuda.is_available() is false): nothing measured"}))
        return 0
    work = Path(tempfile.mkdtemp(prefix="pfanet-gpu-check-"))
    try:
        result, failures = run_check(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
