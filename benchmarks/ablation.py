"""Table 2 in miniature: the paper's ablation rows trained at demo scale on the synthetic benchmark, several
seeds each, every model chosen on the val split, then scored once on the test split.

What it does (every step is a `pfanet` command run in a subprocess, so what is measured is what a user runs):

1. render the synthetic dataset (`--ids`, data seed 0, the default near-infrared model) and prepare it at the
   recipe's size with `--train-split train`, so the val identities are kept out of training;
2. per training seed, `train-gan` once for each distinct GAN the variants ask for (its `gan` section, generator
   keys, image size and `train` section as their recipe and overrides resolve them): the variants of one GAN
   share it (`gan-seed<S>` for the recipe's own, `gan-<hash>-seed<S>` for another, e.g. a variant recipe with
   other `gan.iterations`);
3. per variant and seed, `train-joint` with `joint.validate_every` (`train-agw` with `agw.validate_every` for
   AGW's recipes): the SYSU protocol on the val identities
   keeps `best.pt` (best val mAP), which is the model scored;
4. `pfanet evaluate --same-modality` of `best.pt` on the test split: all-search single-shot R1/mAP with the
   official sampler (10 trials), and the same model's IR->IR and RGB->RGB diagnostic;
5. with `--fidelity`, `benchmarks/fidelity.py` on each GAN variant's G_I (how well its fake IR gets each
   garment's grey level, against luma);
6. the mean and sample standard deviation (ddof 1) over the seeds, a markdown table (`<out>/table.md`) and one
   JSON line on stdout.

Runs are independent subprocesses, `--jobs` at a time, each with `cores / jobs` threads; a finished run
(its `result.json`) is kept, so re-running resumes. Variant sets: `table2` (B, B+BNG, B+MMM, B+BNG+MMM
without the GAN, PFANet); `baselines` (AGW, CAJ, PFANet, PFANet with CAJ's augmentation: `demo_agw.yaml`,
`demo_caj.yaml`, the recipe, `demo_pfanet_caj.yaml`); `--variant NAME=OVERRIDE,OVERRIDE` adds or replaces one
(`recipe=FILE` as an override picks another recipe; `gan=false` trains without a train-gan run). A variant whose
recipe is AGW's (`model.method: agw`) trains with `train-agw` and `agw.validate_every` instead of train-joint.

    python benchmarks/ablation.py --out runs/ablation [--ids 400] [--seeds 0,1,2] [--jobs 2] [k=v ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pfanet_cli.config import Recipe, load_recipe, recipe_to_dict
from pfanet_cli.data.prepare import prepare_sysu
from pfanet_cli.data.synthetic import render_synthetic_sysu
from pfanet_cli.modeling.build import GAN_ARCHITECTURE

REPO = Path(__file__).resolve().parents[1]
NO_GAN = ("model.pixel_alignment=grey",)
GAN_DATA_KEYS = ("height", "width", "flip")
"""The ``data`` keys a train-gan run depends on (its batches are flipped, never padded or otherwise augmented)."""


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: tuple[str, ...] = ()
    recipe: str | None = None
    gan: bool = True


VARIANT_SETS = {
    "table2": (
        Variant("B (plain)", ("model.bng=false", "model.mmm=false")),
        Variant("B + BNG", ("model.mmm=false",)),
        Variant("B + MMM", ("model.bng=false",)),
        Variant("B + BNG + MMM (no GAN)", NO_GAN, gan=False),
        Variant("PFANet (B + BNG + MMM + GAN)"),
    ),
    "baselines": (
        Variant("AGW", recipe="demo_agw.yaml", gan=False),
        Variant("CAJ", recipe="demo_caj.yaml", gan=False),
        Variant("PFANet"),
        Variant("PFANet + CAJ augmentation", recipe="demo_pfanet_caj.yaml"),
    ),
}


@dataclass
class Plan:
    out: Path
    recipe: str
    ids: int
    seeds: list[int]
    variants: list[Variant]
    overrides: list[str]
    jobs: int
    validate_every: int
    fidelity: bool
    python: str = sys.executable

    @property
    def raw(self) -> Path:
        return self.out / "raw"

    @property
    def prepared(self) -> Path:
        return self.out / "prepared"


def parse_variant(text: str) -> Variant:
    """``NAME=OVERRIDE,OVERRIDE``; ``recipe=FILE`` and ``gan=false`` among them are the variant's own settings."""
    name, _, rest = text.partition("=")
    overrides, recipe, gan = [], None, True
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key == "recipe":
            recipe = value
        elif key == "gan":
            gan = value.lower() not in ("false", "0", "no")
        else:
            overrides.append(item)
    return Variant(name.strip(), tuple(overrides), recipe, gan)


def run(plan: Plan, args: list[str], log: Path, threads: int) -> None:
    """One `pfanet` command, its output in ``log``; a failure stops the benchmark with the log's tail."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as sink:
        done = subprocess.run([plan.python, "-m", "pfanet_cli", *args], stdout=sink, stderr=subprocess.STDOUT,
                              env=env, cwd=REPO)
    if done.returncode:
        tail = log.read_text(encoding="utf-8", errors="replace")[-2000:]
        raise RuntimeError(f"pfanet {' '.join(args[:2])} failed (exit {done.returncode}); {log}:\n{tail}")


def prepare_data(plan: Plan) -> None:
    """The synthetic render (kept when it is already there, complete) and its prepared folder (a no-op when up to
    date), at the recipe's size, val identities kept apart."""
    recipe = load_recipe(plan.recipe, plan.overrides)
    render_synthetic_sysu(plan.raw, preset="small", ids=plan.ids, seed=0, reuse=True)
    prepare_sysu(plan.raw, plan.prepared, height=recipe.data.height, width=recipe.data.width, train_split="train")


def common(plan: Plan, seed: int, recipe: str | None = None) -> list[str]:
    return [recipe or plan.recipe, f"data.root={plan.prepared}", f"train.seed={seed}",
            f"train.runs_root={plan.out / 'runs'}", "train.device=cpu", *plan.overrides]


@dataclass(frozen=True)
class GanRun:
    """One train-gan run per seed: its folder prefix, and the recipe and overrides it is trained with."""

    name: str
    recipe: str | None = None
    overrides: tuple[str, ...] = ()


def gan_settings(recipe: Recipe) -> str:
    """Everything of a recipe that a train-gan run's result depends on, as one string (equal: the same GAN)."""
    values = recipe_to_dict(recipe)
    return json.dumps({"gan": values["gan"], "train": values["train"],
                       "model": {key: values["model"][key] for key in GAN_ARCHITECTURE},
                       "data": {key: values["data"][key] for key in GAN_DATA_KEYS}}, sort_keys=True)


def _concerns_gan(override: str) -> bool:
    key = override.partition("=")[0].strip()
    section, _, name = key.partition(".")
    return section in ("gan", "train") or (section == "model" and name in GAN_ARCHITECTURE) or \
        (section == "data" and name in GAN_DATA_KEYS)


def gan_runs(plan: Plan) -> dict[str, GanRun]:
    """The train-gan run each GAN variant starts from: variants whose recipe and overrides resolve to the same GAN
    settings share one (``gan``: the plan's recipe's own); another is trained with that variant's recipe and its
    overrides that concern the GAN."""
    default = gan_settings(load_recipe(plan.recipe, plan.overrides))
    by_settings, chosen = {default: GanRun("gan")}, {}
    for variant in plan.variants:
        if not variant.gan:
            continue
        settings = gan_settings(load_recipe(variant.recipe or plan.recipe, [*plan.overrides, *variant.overrides]))
        if settings not in by_settings:
            own = tuple(o for o in variant.overrides if _concerns_gan(o))
            if gan_settings(load_recipe(variant.recipe or plan.recipe, [*plan.overrides, *own])) != settings:
                raise ValueError(f"variant {variant.name!r}: its GAN settings depend on an override this script "
                                 "does not pass to train-gan; give the variant its own recipe file")
            digest = hashlib.sha256(settings.encode()).hexdigest()[:8]
            by_settings[settings] = GanRun(f"gan-{digest}", variant.recipe, own)
        chosen[variant.name] = by_settings[settings]
    return chosen


def train_gan(plan: Plan, seed: int, gan: GanRun, threads: int) -> Path:
    out = plan.out / f"{gan.name}-seed{seed}"
    checkpoint = out / "checkpoints" / "last.pt"
    if not checkpoint.is_file():
        resume = ["--resume", "auto"] if out.exists() else []
        run(plan, ["train-gan", *common(plan, seed, gan.recipe), *gan.overrides, "--out", str(out), *resume],
            plan.out / "logs" / f"{out.name}.log", threads)
    return checkpoint


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def train_and_score(plan: Plan, variant: Variant, seed: int, gan: Future | None, threads: int) -> dict:
    """Train one variant with one seed (model chosen on val), score it on test; its ``result.json``."""
    out = plan.out / f"{slug(variant.name)}-seed{seed}"
    result_file = out / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text(encoding="utf-8"))
    started = time.perf_counter()
    stage, trained_run, args = training_command(plan, variant, seed, out, gan.result() if gan is not None else None)
    run(plan, args, out / f"{stage}.log", threads)
    trained = time.perf_counter() - started
    best = trained_run / "checkpoints" / "best.pt"
    run(plan, ["evaluate", "--checkpoint", str(best), "--data", str(plan.prepared), "--sampler", "official",
               "--json", str(out / "test.json"), "--same-modality", "--device", "cpu"], out / "evaluate.log", threads)
    result = collect(out, trained_run, variant, seed, trained)
    if plan.fidelity and variant.gan:
        result["fidelity"] = fidelity(plan, best, out, threads)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result_file.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


def training_command(plan: Plan, variant: Variant, seed: int, out: Path,
                     gan: Path | None) -> tuple[str, Path, list[str]]:
    """(stage, run folder, arguments) of a variant's training: train-joint (from the seed's train-gan run when
    ``gan``), or train-agw for an AGW recipe; validated every ``plan.validate_every`` iterations."""
    method = load_recipe(variant.recipe or plan.recipe, [*plan.overrides, *variant.overrides]).model.method
    stage, section = ("train-agw", "agw") if method == "agw" else ("train-joint", "joint")
    folder = out / section
    init = ["--init-gan", str(gan)] if gan is not None else []
    resume = ["--resume", "auto"] if folder.exists() else []
    args = [stage, *common(plan, seed, variant.recipe), f"{section}.validate_every={plan.validate_every}",
            *variant.overrides, "--out", str(folder), *init, *resume]
    return stage, folder, args


def collect(out: Path, joint: Path, variant: Variant, seed: int, train_seconds: float) -> dict:
    test = json.loads((out / "test.json").read_text(encoding="utf-8"))
    same = {d["mode"]: d["metrics"] for d in json.loads((out / "test_same_modality.json").read_text("utf-8"))}
    rows = [json.loads(line) for line in (joint / "metrics.jsonl").read_text("utf-8").splitlines() if line.strip()]
    val = [(r["global_iteration"], r["val"]["r1"], r["val"]["mAP"]) for r in rows if "val" in r]
    best = max(val, key=lambda v: v[2])
    return {"variant": variant.name, "seed": seed, "r1": test["metrics"]["r1"], "mAP": test["metrics"]["mAP"],
            "ir_ir_r1": same["ir->ir"]["r1"], "rgb_rgb_r1": same["rgb->rgb"]["r1"],
            "ir_ir_mAP": same["ir->ir"]["mAP"], "rgb_rgb_mAP": same["rgb->rgb"]["mAP"],
            "val_best": {"iteration": best[0], "r1": best[1], "mAP": best[2]}, "val_curve": val,
            "train_seconds": round(train_seconds, 1)}


def fidelity(plan: Plan, checkpoint: Path, out: Path, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([plan.python, str(REPO / "benchmarks" / "fidelity.py"), "--checkpoint", str(checkpoint),
                           "--data", str(plan.prepared), "--raw", str(plan.raw)], capture_output=True, text=True,
                          env=env, cwd=REPO, check=True)
    (out / "fidelity.json").write_text(done.stdout, encoding="utf-8")
    return json.loads(done.stdout.strip().splitlines()[-1])


METRICS = ("r1", "mAP", "ir_ir_r1", "rgb_rgb_r1")


def summarise(results: list[dict], variants: list[Variant]) -> dict:
    table = {}
    for variant in variants:
        runs = [r for r in results if r["variant"] == variant.name]
        row = {}
        for key in METRICS:
            values = [r[key] for r in runs]
            row[key] = [round(statistics.mean(values), 2), round(statistics.stdev(values), 2) if len(values) > 1
                        else 0.0]
        row["seeds"] = [r["seed"] for r in runs]
        row["best_val_iteration"] = [r["val_best"]["iteration"] for r in runs]
        if all("fidelity" in r for r in runs) and runs:
            row["fake_ir_corr"] = round(statistics.mean(r["fidelity"]["corr"]["fake_ir"] for r in runs), 3)
            row["luma_corr"] = round(statistics.mean(r["fidelity"]["corr"]["luma"] for r in runs), 3)
        table[variant.name] = row
    return table


def markdown(summary: dict, plan: Plan, wall: float) -> str:
    lines = [f"Synthetic benchmark, {plan.ids} identities (data seed 0), recipe `{plan.recipe}` "
             f"{' '.join(plan.overrides)}; seeds {', '.join(map(str, plan.seeds))}; model chosen on val "
             f"(best val mAP); test: all-search single-shot, official sampler, 10 trials; mean ± std over seeds "
             f"(ddof 1); wall time {wall / 60:.1f} min with {plan.jobs} job(s) in parallel.", "",
             "| variant | R1 | mAP | IR→IR R1 | RGB→RGB R1 |", "|---|---:|---:|---:|---:|"]
    for name, row in summary.items():
        cells = [f"{row[k][0]:.1f} ± {row[k][1]:.1f}" for k in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def execute(plan: Plan) -> dict:
    started = time.perf_counter()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // plan.jobs)
    plan.out.mkdir(parents=True, exist_ok=True)
    prepare_data(plan)
    with ThreadPoolExecutor(max_workers=plan.jobs) as pool:
        chosen = gan_runs(plan)
        gans = {(gan, seed): pool.submit(train_gan, plan, seed, gan, threads)
                for seed in plan.seeds for gan in dict.fromkeys(chosen.values())}
        futures = [pool.submit(train_and_score, plan, v, seed, gans[chosen[v.name], seed] if v.gan else None, threads)
                   for seed in plan.seeds for v in plan.variants]
        results = [f.result() for f in futures]
    wall = time.perf_counter() - started
    summary = summarise(results, plan.variants)
    (plan.out / "table.md").write_text(markdown(summary, plan, wall), encoding="utf-8")
    return {"benchmark": "ablation", "ids": plan.ids, "recipe": plan.recipe, "overrides": plan.overrides,
            "seeds": plan.seeds, "jobs": plan.jobs, "threads_per_job": threads, "wall_minutes": round(wall / 60, 1),
            "variants": summary, "table": str(plan.out / "table.md")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--recipe", default="demo_cpu.yaml")
    parser.add_argument("--ids", type=int, default=400)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (each gets cores / jobs threads)")
    parser.add_argument("--set", default="table2", choices=sorted(VARIANT_SETS), help="the variants to run")
    parser.add_argument("--variant", action="append", default=[], help="NAME=OVERRIDE,... (adds or replaces one)")
    parser.add_argument("--only", default="", help="variant names to keep, separated by ';' (default: all)")
    parser.add_argument("--validate-every", type=int, default=50)
    parser.add_argument("--fidelity", action="store_true", help="measure each GAN variant's G_I (fidelity.py)")
    parser.add_argument("overrides", nargs="*", help="recipe overrides for every run (k=v)")
    args = parser.parse_args(argv)
    variants = {v.name: v for v in VARIANT_SETS[args.set]}
    for text in args.variant:
        extra = parse_variant(text)
        variants[extra.name] = extra
    if args.only:
        keep = [name.strip() for name in args.only.split(";")]
        variants = {name: variants[name] for name in keep}
    plan = Plan(args.out.resolve(), args.recipe, args.ids, [int(s) for s in args.seeds.split(",")],
                list(variants.values()), list(args.overrides), args.jobs, args.validate_every, args.fidelity)
    print(json.dumps(execute(plan)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
