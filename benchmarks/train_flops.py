"""Benchmark: the work of one iteration of each training phase at a recipe's scale (default the paper's),
counted with ``torch.utils.flop_counter`` on the meta device: the networks, batches and optimizer steps run
as shapes only, so the count takes minutes on any machine and needs no GPU. The recipe's iteration counts
turn it into the whole recipe's PFLOP. ``benchmarks/train.py`` measures speed (and counts the same FLOPs by
running the iterations for real). Prints one JSON line.

    python benchmarks/train_flops.py [--recipe sysu_pfanet.yaml] [k=v ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from pfanet_cli.config import load_recipe
from pfanet_cli.data.prepare import prepare_sysu
from pfanet_cli.data.prepared import open_prepared
from pfanet_cli.data.synthetic import render_synthetic_sysu
from pfanet_cli.engine.rundir import RunDir
from pfanet_cli.engine.runtime import Distributed
from pfanet_cli.engine.train_gan import GanTrainer
from pfanet_cli.engine.train_joint import JointTrainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="sysu_pfanet.yaml")
    parser.add_argument("--ids", type=int, default=24, help="synthetic identities to render")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pfanet-bench-flops-"))
    try:
        print(json.dumps(count(args, work)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def count(args: argparse.Namespace, work: Path) -> dict:
    probe = load_recipe(args.recipe, args.overrides)
    render_synthetic_sysu(work / "raw", preset="small", ids=args.ids, height=probe.data.height,
                          width=probe.data.width)
    prepare_sysu(work / "raw", work / "prepared", probe.data.height, probe.data.width)
    recipe = load_recipe(args.recipe, [f"data.root={work / 'prepared'}", "model.pretrained=none", 'train.amp="off"',
                                       *args.overrides])
    data, meta = open_prepared(work / "prepared"), torch.device("meta")
    phases = {"gan": (GanTrainer, {}, recipe.gan.iterations),
              "warmup": (JointTrainer, {"init_gan": "none"}, recipe.joint.warmup_iterations),
              "joint": (JointTrainer, {"init_gan": "none"}, recipe.joint.iterations)}
    result = {"benchmark": "train_flops", "recipe": recipe.name, "image_size": [recipe.data.height, recipe.data.width]}
    total = 0.0
    for phase, (trainer_class, options, iterations) in phases.items():
        trainer = trainer_class(recipe, RunDir(work / f"run-{phase}"), data, meta, Distributed(), show_progress=False,
                                **options)
        with FlopCounterMode(display=False) as counter:
            trainer.step(phase, 1)
        flops = counter.get_total_flops()
        result[f"{phase}_tflop_per_iteration"] = round(flops / 1e12, 2)
        total += iterations * flops
    result["recipe_pflop"] = round(total / 1e15, 1)
    return result


if __name__ == "__main__":
    main()
