"""``pfanet regdb-all``: RegDB as the literature reports it, one model per trial. For each trial: train-gan
and train-joint (PFANet; AGW recipes: train-agw), extract the test split, evaluate both directions and write
``<out>/trial<T>/results.json``; then the mean ± std over the trials, computed from those per-trial files,
into ``<out>/results.json``.

Resumable per trial: a trial whose ``results.json`` exists is not run again, and a trial that stopped
half-way resumes each stage from its last checkpoint (the stages run with ``--resume auto`` on fixed run
folders, ``<out>/trial<T>/gan`` and ``<out>/trial<T>/joint``, or ``<out>/trial<T>/agw``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from pfanet_cli.config import load_recipe
from pfanet_cli.data.prepared import open_prepared
from pfanet_cli.engine.runtime import resolve_device
from pfanet_cli.engine.train_agw import AgwTrainer
from pfanet_cli.engine.train_gan import GanTrainer
from pfanet_cli.engine.train_joint import JointTrainer
from pfanet_cli.engine.trainer import run_stage
from pfanet_cli.errors import DataError, UsageError
from pfanet_cli.evaluation.extract import extract_split
from pfanet_cli.evaluation.features import save_feature_set
from pfanet_cli.evaluation.protocols import EvalResult
from pfanet_cli.evaluation.run import EvaluationSource, evaluate_source
from pfanet_cli.evaluation.trials import label_trial, read_trial_results, report_regdb_trials, write_trial_results
from pfanet_cli.utils.console import console

RESULTS = "results.json"
FEATURES = "features.npz"


def run_regdb_all(recipe_path: str | Path, overrides: Sequence[str], trials: Sequence[int], *, data_root: Path,
                  out: Path, show_progress: bool = True) -> list[EvalResult]:
    """Train, extract and evaluate every trial (skipping finished ones), then report the mean ± std over
    the trials from their ``results.json`` files; returns the aggregated results (v2t, t2v)."""
    out, data_root = Path(out), Path(data_root)
    for trial in trials:
        try:
            open_prepared(data_root / f"trial{trial}")
        except DataError as exc:
            raise DataError(f"RegDB trial {trial}: {exc} (prepare every trial first: pfanet prepare-data regdb "
                            f"RAW --trial all --out {data_root})") from exc
    for trial in trials:
        done = out / f"trial{trial}" / RESULTS
        if done.is_file():
            console.print(f"RegDB trial {trial}: finished earlier ({done})")
            continue
        console.rule(f"[bold]RegDB trial {trial}")
        _run_trial(recipe_path, overrides, trial, data_root / f"trial{trial}", out / f"trial{trial}", show_progress)
    per_trial = {trial: read_trial_results(out / f"trial{trial}" / RESULTS) for trial in trials}
    return report_regdb_trials(per_trial, json_out=out / RESULTS, trial_jsons=False)


def _run_trial(recipe_path: str | Path, overrides: Sequence[str], trial: int, data: Path, folder: Path,
               show_progress: bool) -> None:
    trial_overrides = [*overrides, f"data.root={data}"]
    recipe = load_recipe(recipe_path, trial_overrides)
    if recipe.data.dataset != "regdb":
        raise UsageError(f"regdb-all trains RegDB: the recipe says data.dataset={recipe.data.dataset} "
                         "(use regdb_pfanet.yaml, regdb_agw.yaml or set data.dataset=regdb)")
    if recipe.model.method == "agw":
        trained = run_stage(AgwTrainer, recipe, trial_overrides, folder / "agw", "auto", show_progress)
    else:
        gan = run_stage(GanTrainer, recipe, trial_overrides, folder / "gan", "auto", show_progress)
        trained = run_stage(JointTrainer, recipe, trial_overrides, folder / "joint", "auto", show_progress,
                            init_gan=gan.checkpoint)
    prepared = open_prepared(data)
    features = extract_split(trained.checkpoint, prepared, "test", device=str(resolve_device(recipe.train.device)))
    save_feature_set(folder / FEATURES, features)
    source = EvaluationSource(features, "regdb", prepared.root, trusted_data=True, _prepared=prepared, _opened=True)
    results = label_trial(evaluate_source(source, all_settings=True), trial)
    write_trial_results(folder / RESULTS, results)
    console.print(f"RegDB trial {trial}: " + ", ".join(
        f"{r.mode} R1 {r.metrics['r1']:.2f} mAP {r.metrics['mAP']:.2f}" for r in results))
