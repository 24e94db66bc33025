"""``pfanet demo``: the whole pipeline on the built-in synthetic data, on a CPU, in minutes.

Render a small synthetic dataset in the SYSU-MM01 layout -> prepare-data sysu -> train-gan ->
train-joint -> translate a sample of test RGB images -> extract -> evaluate the four SYSU settings
(official sampler, the synthetic permutation file) -> report. Every stage calls the same library
functions as its subcommand. Each stage picks up what an earlier, interrupted demo left: the render
and the prepared data are reused when unchanged, training resumes from its last checkpoint, and
the report files are replaced whole at the end. A folder whose training runs were made on another render (other
``--ids``, ``--seed`` or ``--ir-residual``) is refused before anything is rendered over it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from rich.table import Table

from pfanet_cli.config import Recipe, load_recipe
from pfanet_cli.data.prepare import prepare_sysu
from pfanet_cli.data.prepared import PreparedData, PreparedSplit, open_prepared
from pfanet_cli.data.synthetic import SyntheticPlan, other_render, plan_synthetic_sysu, render_plan
from pfanet_cli.data.synthetic.nir import DEFAULT_IR_RESIDUAL
from pfanet_cli.data.sysu import RandPerm, load_rand_perm_cam
from pfanet_cli.demo.report import GAP_HEADER, Figure, ReportContent, modality_gap_rows, setting_name, write_report
from pfanet_cli.engine.rundir import RunDir, loss_series, run_lock
from pfanet_cli.engine.runtime import resolve_device
from pfanet_cli.engine.train_gan import GanTrainer
from pfanet_cli.engine.train_joint import JointTrainer
from pfanet_cli.engine.trainer import run_stage
from pfanet_cli.errors import Interrupted, UsageError
from pfanet_cli.evaluation.baselines import raw_pixel_features
from pfanet_cli.evaluation.card import FEATURE, attach_source
from pfanet_cli.evaluation.extract import extract_split
from pfanet_cli.inference.feature_model import compute_features
from pfanet_cli.evaluation.features import FeatureSet, save_feature_set
from pfanet_cli.evaluation.protocols import ALL_SYSU_SETTINGS, EvalResult, evaluate_sysu_settings, write_results_json
from pfanet_cli.evaluation.run import (
    EvaluationSource,
    evaluate_source_same_modality,
    save_ranked_list_picture,
    source_card,
)
from pfanet_cli.modeling.build import EXTRACTOR, GENERATOR_RGB2IR, build_networks
from pfanet_cli.translate import translate_folder
from pfanet_cli.utils.atomic import write_text
from pfanet_cli.utils.console import console
from pfanet_cli.utils.images import load_rgb
from pfanet_cli.utils.plots import save_cmc_plot, save_image_grid, save_loss_curves

DEMO_RECIPE = "demo_cpu.yaml"
GRID_SAMPLES = 8
RANKED_QUERIES = 4
FIGURE_SCALE = 2
"""Small demo images are drawn at twice their size in the report."""
FIGURES = "figures"


@dataclass
class DemoResult:
    out: Path
    report_markdown: Path
    report_html: Path
    results: list[EvalResult]
    baselines: dict[str, list[EvalResult]]
    timings: dict[str, float] = field(default_factory=dict)
    same_modality: list[EvalResult] = field(default_factory=list)
    """The same-modality diagnostic of the trained features (IR->IR, RGB->RGB), beside the protocol's numbers."""


class _Stages:
    """Prints each stage as it starts and records how long it took."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.current = ""

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.current = name
        console.rule(f"[bold]{name}")
        started = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - started
        console.print(f"{name}: done in {self.timings[name]:.1f} s")


def demo_recipe(out: Path, recipe: str | Path, overrides: Sequence[str], device: str, seed: int) -> Recipe:
    return load_recipe(recipe, [f"data.root={out / 'prepared'}", f"train.device={device}", f"train.seed={seed}",
                                f"train.runs_root={out}", *overrides])


def run_demo(out: Path = Path("runs/demo"), device: str = "auto", ids: int | None = None,
             recipe: str | Path = DEMO_RECIPE, overrides: Sequence[str] = (), seed: int = 0,
             ir_residual: float = DEFAULT_IR_RESIDUAL) -> DemoResult:
    """Run (or resume) the demo in ``out`` and return the evaluation results and report paths; ``ir_residual`` is
    the synthetic data's near-infrared residual share (docs/synthetic.md)."""
    out = Path(out)
    config = demo_recipe(out, recipe, overrides, device, seed)
    stages = _Stages()
    try:
        with run_lock(out, "pfanet demo"):
            return _run(out, config, list(overrides), ids, seed, ir_residual, stages)
    except KeyboardInterrupt as exc:
        raise Interrupted(
            f"demo interrupted during '{stages.current}'; finished stages are kept and no report was half-written "
            f"- run the same command again to resume"
        ) from exc


def _run(out: Path, recipe: Recipe, overrides: list[str], ids: int | None, seed: int, ir_residual: float,
         stages: _Stages) -> DemoResult:
    plan = plan_synthetic_sysu("small", ids=ids, seed=seed, ir_residual=ir_residual)
    _refuse_training_of_other_data(out, plan)
    with stages.stage("render synthetic data"):
        render_plan(plan, out / "raw", show_progress=True, reuse=True)
    with stages.stage("prepare-data sysu"):
        prepare_sysu(out / "raw", out / "prepared", height=recipe.data.height, width=recipe.data.width)
    with stages.stage("train-gan"):
        gan = run_stage(GanTrainer, recipe, overrides, out / "gan", "auto")
    with stages.stage("train-joint"):
        joint = run_stage(JointTrainer, recipe, overrides, out / "joint", "auto", init_gan=gan.checkpoint)
    device = str(resolve_device(recipe.train.device))
    data = open_prepared(out / "prepared")
    test = data.split("test")
    with stages.stage("translate test images"):
        grid = _translate_sample(out, test, joint.checkpoint, device, out / FIGURES)
    with stages.stage("extract"):
        trained = extract_split(joint.checkpoint, data, device=device)
        save_feature_set(out / "features.npz", trained)
        features = {"PFANet": trained.features, "raw pixels": raw_pixel_features(test.images),
                    "untrained network": _untrained_features(recipe, data.split("train").num_classes, test, device,
                                                             seed)}
    with stages.stage("evaluate"):
        perm = load_rand_perm_cam(data.perm_file())
        evaluations = {name: evaluate_sysu_settings(feats, test.pids, test.camids, test.paths, ALL_SYSU_SETTINGS,
                                                    trials=10, sampler="official", perm=perm)
                       for name, feats in features.items()}
        _attach_cards(evaluations, trained, data)
        same_modality = evaluate_source_same_modality(EvaluationSource(trained, "sysu", data.root, trusted_data=True))
    with stages.stage("report"):
        results = evaluations.pop("PFANet")
        figures = [_loss_figure(out / FIGURES, gan.run, joint.run),
                   Figure(grid, "Test images: RGB | fake IR made by G_I | real IR of the same person")]
        figures += _evaluation_figures(out / FIGURES, results, evaluations, trained, test, perm)
        _write_json(out, results, evaluations, same_modality)
        content = _report_content(data, recipe, stages.timings, results, evaluations, figures)
        content.modality_gap = same_modality
        markdown, page = write_report(out, content)
    _print_table(results, evaluations, same_modality)
    console.print(f"report: {page}")
    return DemoResult(out, markdown, page, results, evaluations, stages.timings, same_modality)


def _refuse_training_of_other_data(out: Path, plan: SyntheticPlan) -> None:
    """Exit 2 before anything is rendered over when ``out`` holds training runs of another render: re-rendering
    would leave them trained on data that is gone, and train-joint would refuse their GAN."""
    difference = other_render(out / "raw", plan)
    trained = [name for name in ("gan", "joint") if (out / name).exists()]
    if difference and trained:
        raise UsageError(f"{out} holds a demo trained on other synthetic data ({difference}); pass another --out, "
                         f"or remove {out} to start over")


def _attach_cards(evaluations: dict[str, list[EvalResult]], trained: FeatureSet, data: PreparedData) -> None:
    """The source half of every card: the trained network's features, or a baseline's."""
    base = source_card(EvaluationSource(trained, "sysu", data.root, trusted_data=True))
    sources = {
        "PFANet": base,
        "raw pixels": {**base, "feature": "raw pixels, flattened and L2-normalised", "flip": "none",
                       "checkpoint": "none (no network)"},
        "untrained network": {**base, "feature": f"{FEATURE}, of the networks before training",
                              "checkpoint": "none: seeded initialisation, not trained"},
    }
    for name, results in evaluations.items():
        attach_source(results, sources[name])
        for result in results:
            result.card["sampler"] += f"; permutation file: {data.perm_file()}"


def _translate_sample(out: Path, test: PreparedSplit, checkpoint: Path, device: str, figures: Path) -> Path:
    """Translate one RGB test image of a few people with the translate command's library function,
    and draw RGB | fake IR | real IR."""
    rgb_rows, ir_rows = [], []
    for pid in np.unique(test.pids)[:GRID_SAMPLES]:
        person = test.pids == pid
        rgb_rows.append(int(np.flatnonzero(person & ~test.is_ir)[0]))
        ir_rows.append(int(np.flatnonzero(person & test.is_ir)[0]))
    source = out / "translate" / "rgb"
    shutil.rmtree(source, ignore_errors=True)
    for row in rgb_rows:
        target = source / test.paths[row]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "raw" / test.paths[row], target)
    translated = out / "translate" / "fake_ir"
    translate_folder(source, translated, checkpoint, keep_size=False, device=device, overwrite=True)
    fakes = np.stack([load_rgb(translated / test.paths[row]) for row in rgb_rows])
    return save_image_grid(figures / "translation.png", [test.images[rgb_rows], fakes, test.images[ir_rows]],
                           titles=("RGB", "fake IR", "real IR"), scale=FIGURE_SCALE)


def _untrained_features(recipe: Recipe, num_classes: int, test: PreparedSplit, device: str, seed: int) -> np.ndarray:
    """The same networks before any training (seeded initialisation), as a baseline."""
    torch.manual_seed(seed)
    nets = build_networks(recipe.model, num_classes, joint_discriminator=True, load_pretrained=False,
                          keys=(GENERATOR_RGB2IR, EXTRACTOR))
    extractor, generator = nets[EXTRACTOR].to(device), nets[GENERATOR_RGB2IR].to(device)
    return compute_features(extractor, generator, test.images, ~test.is_ir, (recipe.data.height, recipe.data.width),
                            device=device)


def _loss_figure(folder: Path, gan: RunDir, joint: RunDir) -> Figure:
    series = {"train-gan": loss_series(gan.read_metrics()), "train-joint": loss_series(joint.read_metrics())}
    return Figure(save_loss_curves(folder / "loss_curves.png", series),
                  "Training losses (train-gan, then train-joint: warm-up and joint phases)")


def _evaluation_figures(folder: Path, results: list[EvalResult], baselines: dict[str, list[EvalResult]],
                        features: FeatureSet, test: PreparedSplit, perm: RandPerm) -> list[Figure]:
    first = results[0]
    curves = {"PFANet": first.cmc, **{name: runs[0].cmc for name, runs in baselines.items()}}
    cmc = save_cmc_plot(folder / "cmc.png", curves, title=f"CMC, {setting_name(first)}")
    ranks = folder / "ranked_lists.png"
    save_ranked_list_picture(ranks, features, first, perm, test.image_loader(), num_queries=RANKED_QUERIES,
                             cell_size=(test.image_size[0] * FIGURE_SCALE, test.image_size[1] * FIGURE_SCALE),
                             title=f"top-10, {setting_name(first)}, trial 1")
    return [Figure(cmc, f"CMC curves, {setting_name(first)}"),
            Figure(ranks, "Ranked lists: IR query (blue), then the 10 best RGB gallery images "
                          "(green: same person, red: another)")]


def _write_json(out: Path, results: list[EvalResult], baselines: dict[str, list[EvalResult]],
                same_modality: list[EvalResult]) -> None:
    write_results_json(out / "results.json", results, as_list=True)
    write_results_json(out / "same_modality.json", same_modality, as_list=True)
    payload = {name: [r.to_json_dict() for r in runs] for name, runs in baselines.items()}
    write_text(out / "baselines.json", json.dumps(payload, indent=2) + "\n")


def _report_content(data: PreparedData, recipe: Recipe, timings: dict[str, float], results: list[EvalResult],
                    baselines: dict[str, list[EvalResult]], figures: list[Figure]) -> ReportContent:
    return ReportContent(
        title="PFANet demo on synthetic SYSU-MM01-layout data",
        summary=_summary(data, recipe, timings),
        results=results, baselines=baselines, figures=figures,
        notes=["Synthetic identities: colour never transfers between RGB and IR, so raw pixels are near "
               "chance across modalities; shape, pattern, bag and height do, and the network has to learn them.",
               "Metrics are percentages, mean ± std over 10 trials of the official gallery sampler."])


def _summary(data: PreparedData, recipe: Recipe, timings: dict[str, float]) -> list[str]:
    train, test = data.manifest["splits"]["train"], data.manifest["splits"]["test"]
    total = sum(timings.values())
    return [
        f"data: {train['ids']} training identities ({train['rgb']:,} RGB + {train['ir']:,} IR images), "
        f"{test['ids']} test identities ({test['ir']:,} IR queries, {test['rgb']:,} RGB gallery candidates), "
        f"{recipe.data.height}x{recipe.data.width} pixels",
        f"model: {recipe.model.backbone}, BNG {'on' if recipe.model.bng else 'off'}, "
        f"MMM {'on' if recipe.model.mmm else 'off'}; {recipe.gan.iterations} train-gan iterations, "
        f"{recipe.joint.warmup_iterations} + {recipe.joint.iterations} train-joint iterations",
        "time: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items()) + f"; total {total:.0f} s",
    ]


def _print_table(results: list[EvalResult], baselines: dict[str, list[EvalResult]],
                 same_modality: list[EvalResult]) -> None:
    table = Table(title="demo results: R1 / mAP (percent, mean over 10 trials)")
    table.add_column("features")
    for result in results:
        table.add_column(setting_name(result), justify="right")
    for name, runs in {"PFANet": results, **baselines}.items():
        table.add_row(name, *(f"{r.metrics['r1']:.1f} / {r.metrics['mAP']:.1f}" for r in runs))
    console.print(table)
    gap = Table(title="the modality gap (PFANet): R1 / mAP, percent, mean ± std over 10 trials")
    for column in GAP_HEADER:
        gap.add_column(column, justify="left" if column == "matching" else "right")
    for row in modality_gap_rows(results, same_modality):
        gap.add_row(*row)
    console.print(gap)
