"""Fault battery: kill every stage with SIGKILL at random moments, run it again, and compare the end state
with an uninterrupted run.

Each target runs the real command line (``python -m pfanet_cli ...``) on the tiny recipe and small synthetic
data. The battery first runs every target once without interruption (the reference). Then, per target, it
starts the command, kills its whole process group with SIGKILL after a random delay (seeded, uniform over the
reference's duration; a process that ends before its kill is retried with a shorter delay), checks that what
is on disk is a state the next run can resume from, and repeats; after the last kill it runs the command to
the end and compares the outputs with the reference:

* prepare-data synthetic / sysu: every file of the raw tree byte for byte; the prepared arrays, index and
  manifest (all but its timing);
* train-gan, train-joint (kills in the warm-up phase, and kills in the joint phase: that target starts from the
  reference's checkpoint at the end of the warm-up): every tensor of every network of ``last.pt`` and of each
  kept checkpoint (train.deterministic=true), and the metrics log without its timing columns;
* translate: every translated image byte for byte and the manifest; extract: the features file's arrays;
  evaluate: the JSON results; demo: its features, results and baselines;
* everywhere: no temporary file, half-built folder or lock left behind.

Prints one JSON line: kills tried and survived (a kill survives when the state after it was resumable and the
target's end state matched the reference), per target, the largest numeric difference seen, and failures.

    python benchmarks/faults.py [--kills 20] [--seed 0] [--targets render,prepare,...] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from pfanet_cli.data.prepared import open_prepared
from pfanet_cli.engine.checkpoint import load_checkpoint
from pfanet_cli.engine.rundir import RunDir
from pfanet_cli.evaluation.features import load_features

IDS = 16
"""Synthetic identities: enough for every split and the SYSU protocols."""
SIZE = ["--height", "64", "--width", "32"]
TRAIN = ["train.deterministic=true", "train.log_every=1", "train.sample_every=4", "train.checkpoint_every=4"]
GAN = TRAIN + ["gan.iterations=12"]
JOINT = TRAIN + ["joint.warmup_iterations=8", "joint.iterations=8", "joint.lr_decay_at=4"]
DEMO = ["gan.iterations=4", "joint.warmup_iterations=4", "joint.iterations=4", "train.deterministic=true"]
TIMING_COLUMNS = ("iterations_per_s", "images_per_s")
STRAY = re.compile(r"(\.\d+\.[^.]+\.tmp$)|(\.(tmp|old)-\d+$)|(\.link$)|(\.compact\.npy$)|(^\.pfanet-lock$)")
"""Names of what an interrupted writer may leave: atomic-write temporaries, half-built or set-aside prepared
folders, checkpoint link temporaries, compaction files and run-directory locks."""


@dataclass
class Target:
    """One command of the battery: how to run it into a folder, what to check after a kill, what to compare."""

    name: str
    command: Callable[[Path], list[str]]
    """The command line (after ``python -m pfanet_cli``) that writes into the given folder."""
    output: Callable[[Path], Path]
    """The folder or file the command writes, under the given folder."""
    check: Callable[[Path], None]
    """Raises when the output (after a kill) is not a state the next run can continue from."""
    compare: Callable[[Path, Path], list[float]]
    """Differences between an output and the reference's (raises AssertionError on a structural mismatch)."""
    reference: str | None = None
    """The input the setup wrote with the same command, uninterrupted (else the battery runs a reference)."""
    start: Callable[[Path], None] | None = None
    """Prepares a folder before the first run (e.g. a checkpoint to start from)."""


@dataclass
class Outcome:
    tried: int = 0
    survived: int = 0
    finished_early: int = 0
    largest_difference: float = 0.0
    failures: list[str] = field(default_factory=list)


def pfanet(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pfanet_cli", *args], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def run_to_end(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    process = pfanet(args, env)
    _, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"pfanet {' '.join(args)} exited {process.returncode}: {err.strip()[-600:]}")
    return time.perf_counter() - started


def kill_after(args: list[str], env: dict[str, str], delay: float) -> bool:
    """Start the command and SIGKILL its process group after ``delay`` s; False when it ended before."""
    process = pfanet(args, env)
    try:
        process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return True
    process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"pfanet {' '.join(args)} exited {process.returncode} before its kill")
    return False


# ----------------------------------------------------------------------------------------------
# Checks after a kill, and comparisons with the reference


def strays(folder: Path) -> list[str]:
    """What an interrupted writer left under or beside ``folder``."""
    found = [p for p in (folder.rglob("*") if folder.is_dir() else []) if STRAY.search(p.name)]
    found += [p for p in folder.parent.glob(f".{folder.name}*") if STRAY.search(p.name)]
    return sorted(str(p) for p in found)


def check_run(run: Path) -> None:
    """Every checkpoint present loads, and the metrics log reads."""
    for checkpoint in sorted((run / "checkpoints").glob("*.pt")):
        load_checkpoint(checkpoint)
    RunDir(run).read_metrics()


def check_prepared(prepared: Path) -> None:
    """The prepared folder opens with every split; when it is absent (killed before its first swap, or between
    the two renames of a swap) the next run starts over or puts the previous version back."""
    if prepared.is_dir():
        data = open_prepared(prepared)
        for split in data.splits:
            data.split(split)


def check_features(path: Path) -> None:
    if path.exists():
        load_features(path)


def check_json(path: Path) -> None:
    if path.exists():
        json.loads(path.read_text())


def check_translated(out: Path) -> None:
    for image in out.rglob("*.png"):
        with Image.open(image) as opened:
            opened.load()
    check_json(out / "translate_manifest.json")


def check_demo(out: Path) -> None:
    for stage in ("gan", "joint"):
        if (out / stage).is_dir():
            check_run(out / stage)
    check_features(out / "features.npz")
    check_json(out / "results.json")


def tensor_differences(a: Path, b: Path) -> list[float]:
    wa, wb = load_checkpoint(a)["networks"], load_checkpoint(b)["networks"]
    assert wa.keys() == wb.keys(), f"{a.name}: networks {sorted(wa)} != {sorted(wb)}"
    differences = []
    for net in wa:
        assert wa[net].keys() == wb[net].keys(), f"{a.name}: {net} has other tensors"
        for key in wa[net]:
            x, y = wa[net][key], wb[net][key]
            assert x.shape == y.shape and x.dtype == y.dtype, f"{a.name}: {net}.{key} differs in shape or dtype"
            differences.append(float((x.double() - y.double()).abs().max()) if x.numel() else 0.0)
    return differences


def metric_rows(run: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in RunDir(run).read_metrics()]


def compare_runs(got: Path, reference: Path) -> list[float]:
    names = sorted(p.name for p in (reference / "checkpoints").glob("*.pt"))
    assert sorted(p.name for p in (got / "checkpoints").glob("*.pt")) == names, "other checkpoint files"
    differences = [d for name in names for d in tensor_differences(got / "checkpoints" / name,
                                                                   reference / "checkpoints" / name)]
    assert metric_rows(got) == metric_rows(reference), "metrics.jsonl differs"
    return differences


def compare_trees(got: Path, reference: Path) -> list[float]:
    files = sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file())
    assert sorted(p.relative_to(got) for p in got.rglob("*") if p.is_file()) == files, "other files"
    for rel in files:
        assert (got / rel).read_bytes() == (reference / rel).read_bytes(), f"{rel} differs"
    return [0.0]


def compare_prepared(got: Path, reference: Path) -> list[float]:
    a, b = open_prepared(got), open_prepared(reference)
    manifest = {k: v for k, v in a.manifest.items() if k != "seconds"}
    assert manifest == {k: v for k, v in b.manifest.items() if k != "seconds"}, "manifest differs"
    differences = []
    for split in b.splits:
        x, y = a.split(split), b.split(split)
        assert x.images.shape == y.images.shape, f"{split} arrays differ in shape"
        differences.append(float(np.abs(x.images.astype(np.int16) - y.images.astype(np.int16)).max()))
        for name in ("paths", "pids", "camids", "is_ir", "labels"):
            assert np.array_equal(getattr(x, name), getattr(y, name)), f"{split} index column {name} differs"
    return differences


def compare_features(got: Path, reference: Path) -> list[float]:
    a, b = load_features(got), load_features(reference)
    assert (a.paths, a.dataset) == (b.paths, b.dataset), "feature paths differ"
    assert np.array_equal(a.pids, b.pids) and np.array_equal(a.camids, b.camids), "feature labels differ"
    assert a.features.shape == b.features.shape, "feature shapes differ"
    return [float(np.abs(a.features.astype(np.float64) - b.features).max())]


def compare_json(got: Path, reference: Path) -> list[float]:
    assert relocated_json(got) == relocated_json(reference), f"{got.name} differs"
    return [0.0]


def relocated_json(path: Path) -> object:
    """The JSON file with the folder it was written in named ``<out>``: the protocol card names the files a
    result came from, and two runs in two folders name their own."""
    return json.loads(path.read_text().replace(str(path.parent), "<out>"))


def compare_demo(got: Path, reference: Path) -> list[float]:
    for name in ("results.json", "baselines.json"):
        compare_json(got / name, reference / name)
    differences = compare_features(got / "features.npz", reference / "features.npz")
    for stage in ("gan", "joint"):
        differences += tensor_differences(got / stage / "checkpoints/last.pt", reference / stage / "checkpoints/last.pt")
    return differences


# ----------------------------------------------------------------------------------------------
# The targets


def targets(data: Path) -> dict[str, Target]:
    """Every target, reading the shared inputs the setup wrote under ``data``."""
    joint = data / "joint/checkpoints/last.pt"
    commands = setup_commands(data)
    return {target.name: target for target in (
        Target("render", lambda d: commands["render"](d / "raw"), lambda d: d / "raw", lambda out: None,
               compare_trees, reference="render"),
        Target("prepare", lambda d: commands["prepare"](d / "prepared"), lambda d: d / "prepared", check_prepared,
               compare_prepared, reference="prepare"),
        Target("train-gan", lambda d: commands["train-gan"](d / "run") + ["--resume", "auto"], lambda d: d / "run",
               check_run, compare_runs, reference="train-gan"),
        Target("train-joint-warmup", lambda d: commands["train-joint"](d / "run") + ["--resume", "auto"],
               lambda d: d / "run", check_run, compare_runs, reference="train-joint"),
        Target("train-joint-joint", lambda d: commands["train-joint"](d / "run") + ["--resume", "auto"],
               lambda d: d / "run", check_run, compare_runs, reference="train-joint",
               start=lambda d: start_at_joint_phase(d / "run", data / "joint")),
        Target("translate", lambda d: ["translate", str(data / "rgb"), str(d / "fake"), "--checkpoint", str(joint),
                                       "--overwrite", "--batch-size", "4"],
               lambda d: d / "fake", check_translated, compare_trees),
        Target("extract", lambda d: commands["extract"](d / "features.npz"), lambda d: d / "features.npz",
               check_features, compare_features, reference="extract"),
        Target("evaluate", lambda d: ["evaluate", "--features", str(data / "features.npz"), "--all-settings",
                                      "--json", str(d / "eval.json")],
               lambda d: d / "eval.json", check_json, compare_json),
        Target("demo", lambda d: ["demo", "--out", str(d / "demo"), "--recipe", "tiny_cpu.yaml", "--ids", str(IDS),
                                  "--device", "cpu", *DEMO],
               lambda d: d / "demo", check_demo, compare_demo),
    )}


def setup_commands(data: Path) -> dict[str, Callable[[Path], list[str]]]:
    """The commands that write the shared inputs, each into a given output."""
    recipe = ["tiny_cpu.yaml", f"data.root={data / 'prepared'}"]
    return {
        "render": lambda out: ["prepare-data", "synthetic", str(out), "--ids", str(IDS), "--workers", "2"],
        "prepare": lambda out: ["prepare-data", "sysu", str(data / "raw"), "--out", str(out), *SIZE, "--workers", "2"],
        "train-gan": lambda out: ["train-gan", *recipe, *GAN, "--out", str(out)],
        "train-joint": lambda out: ["train-joint", *recipe, *JOINT, "--init-gan", str(data / "gan/checkpoints/last.pt"),
                                    "--out", str(out)],
        "extract": lambda out: ["extract", "--checkpoint", str(data / "joint/checkpoints/last.pt"), "--data",
                                str(data / "prepared"), "--out", str(out), "--batch-size", "16"],
    }


SETUP_OUTPUTS = {"render": "raw", "prepare": "prepared", "train-gan": "gan", "train-joint": "joint",
                 "extract": "features.npz"}
SETUP_ORDER = list(SETUP_OUTPUTS)
"""Each setup command reads what the ones before it wrote."""
TARGET_NEEDS = {"render": "render", "prepare": "prepare", "train-gan": "train-gan", "train-joint-warmup": "train-joint",
                "train-joint-joint": "train-joint", "translate": "train-joint", "extract": "extract",
                "evaluate": "extract", "demo": None}
"""The last setup command each target needs."""


def start_at_joint_phase(run: Path, reference: Path) -> None:
    """A train-joint run directory at the end of the warm-up, copied from the uninterrupted run ``reference``."""
    warmup_end = reference / "checkpoints/iter-000008.pt"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "overrides.txt", "env.txt", "run.yaml", "metrics.jsonl"):
        shutil.copyfile(reference / name, run / name)
    for kept in sorted((reference / "checkpoints").glob("iter-*.pt")):
        if kept.name <= warmup_end.name:
            shutil.copyfile(kept, run / "checkpoints" / kept.name)
    shutil.copyfile(warmup_end, run / "checkpoints/last.pt")


def prepare_inputs(data: Path, names: list[str], env: dict[str, str]) -> dict[str, float]:
    """The shared inputs the targets ``names`` need (of: raw tree, prepared data, a train-gan and a train-joint
    run, features, a folder of RGB images to translate), each written by an uninterrupted command; returns
    their durations."""
    needed = [SETUP_ORDER.index(TARGET_NEEDS[name]) for name in names if TARGET_NEEDS[name]]
    commands = setup_commands(data)
    durations = {name: run_to_end(commands[name](data / SETUP_OUTPUTS[name]), env)
                 for name in SETUP_ORDER[:max(needed, default=-1) + 1]}
    if not (data / "raw").is_dir():
        return durations
    for image in sorted((data / "raw/cam1").rglob("*.jpg"))[:24]:
        target = data / "rgb" / image.relative_to(data / "raw")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, target)
    return durations


# ----------------------------------------------------------------------------------------------
# The battery


def run_target(target: Target, kills: int, rng: random.Random, work: Path, data: Path, durations: dict[str, float],
               env: dict[str, str]) -> Outcome:
    """``kills`` kills of one target in one folder, then the run to the end and the comparison with an
    uninterrupted run (the setup's, or one made here)."""
    if target.reference:
        reference, duration = data / SETUP_OUTPUTS[target.reference], durations[target.reference]
    else:
        (work / f"{target.name}-reference").mkdir()
        duration = run_to_end(target.command(work / f"{target.name}-reference"), env)
        reference = target.output(work / f"{target.name}-reference")
    folder = work / target.name
    folder.mkdir()
    if target.start:
        target.start(folder)
    outcome, resumable = Outcome(), 0
    while outcome.tried < kills:
        delay = rng.uniform(0.0, duration)
        while not kill_after(target.command(folder), env, delay):
            outcome.finished_early += 1
            delay /= 2
        outcome.tried += 1
        try:
            target.check(target.output(folder))
            resumable += 1
        except Exception as exc:  # noqa: BLE001 - any failure to read the state is what the battery reports
            outcome.failures.append(f"{target.name}: state after kill {outcome.tried} ({delay:.1f} s): {exc}")
    try:
        run_to_end(target.command(folder), env)
        outcome.largest_difference = max(target.compare(target.output(folder), reference), default=0.0)
        left = strays(target.output(folder))
        assert not left, f"left behind: {', '.join(left[:3])}"
        assert outcome.largest_difference == 0.0, f"largest difference {outcome.largest_difference}"
        outcome.survived = resumable
    except Exception as exc:  # noqa: BLE001 - reported, not raised: the other targets still run
        outcome.failures.append(f"{target.name}: end state: {exc}")
    return outcome


def kills_per_target(names: list[str], kills: int, rng: random.Random) -> dict[str, int]:
    """``kills`` spread over the targets as evenly as possible (the remainder to randomly chosen ones)."""
    share = {name: kills // len(names) for name in names}
    for name in rng.sample(names, kills % len(names)):
        share[name] += 1
    return share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="kills in all, spread over the targets")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--targets", default=None, help="comma-separated subset of the targets (default: all)")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="pfanet-faults-"))
    env = {**os.environ, "PFANET_DEBUG": "1", "COLUMNS": "120"}
    started = time.perf_counter()
    data = work / "data"
    all_targets = targets(data)
    names = args.targets.split(",") if args.targets else list(all_targets)
    unknown = sorted(set(names) - set(all_targets))
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(all_targets)}")
    data.mkdir(parents=True)
    durations = prepare_inputs(data, names, env)
    rng = random.Random(args.seed)
    share = kills_per_target(names, args.kills, rng)
    (work / "targets").mkdir()
    outcomes = {name: run_target(all_targets[name], share[name], rng, work / "targets", data, durations, env)
                for name in names}
    print(json.dumps({
        "benchmark": "faults", "seed": args.seed, "kills_tried": sum(o.tried for o in outcomes.values()),
        "kills_survived": sum(o.survived for o in outcomes.values()),
        "largest_difference": max((o.largest_difference for o in outcomes.values()), default=0.0),
        "per_target": {name: {"tried": o.tried, "survived": o.survived, "finished_before_kill": o.finished_early}
                       for name, o in outcomes.items()},
        "failures": [f for o in outcomes.values() for f in o.failures],
        "seconds": round(time.perf_counter() - started, 1), "torch": torch.__version__, "cpus": os.cpu_count(),
    }))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
