"""RegDB's ten trials as papers report them: every trial is its own split with its own model, evaluated in
both directions; the reported number is the mean (and standard deviation) over the trials.

Each trial's results are written as their own evaluation JSON (a list: v2t, t2v); the aggregate is computed
from those per-trial results, and can be recomputed from the JSON files alone (:func:`read_trial_results`),
which is how ``pfanet regdb-all`` resumes a run that stopped between trials.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from rich import box
from rich.table import Table

from pfanet_cli.data import regdb
from pfanet_cli.errors import DataError, UsageError
from pfanet_cli.evaluation.card import describe
from pfanet_cli.evaluation.protocols import EvalResult, summarise_trials, write_results_json
from pfanet_cli.evaluation.rerank import RerankConfig
from pfanet_cli.evaluation.run import BOTH, directions, evaluate_source, open_evaluation, print_results, write_outputs
from pfanet_cli.utils.console import console

PLACEHOLDER = "{trial}"


def trial_paths(template: str | Path, trials: Sequence[int], option: str) -> dict[int, Path]:
    """``template`` with ``{trial}`` replaced by each trial; :class:`UsageError` when it has no ``{trial}``."""
    text = str(template)
    if PLACEHOLDER not in text:
        raise UsageError(f"with --all-trials, {option} must contain {PLACEHOLDER} (e.g. feats/trial{PLACEHOLDER}.npz), "
                         f"got {text}")
    return {trial: Path(text.replace(PLACEHOLDER, str(trial))) for trial in trials}


def evaluate_regdb_trials(trials: Sequence[int], *, features: str | Path | None, checkpoint: str | Path | None,
                          data_root: Path, device: str | None, dataset: str | None = None, max_rank: int = 20,
                          rerank: RerankConfig | None = None,
                          direction: str | None = None) -> dict[int, list[EvalResult]]:
    """Every trial in ``direction`` (v2t, t2v or, by default, both): from ``features`` (a ``{trial}`` template of
    features files), else extracted with ``checkpoint`` (a ``{trial}`` template) from ``<data_root>/trial<T>``."""
    if dataset not in (None, "regdb"):
        raise UsageError(f"--all-trials is RegDB's (ten splits, one model each), not {dataset}'s")
    direction = direction or BOTH
    directions("regdb", direction)
    if features is None and checkpoint is None:
        raise UsageError("--all-trials needs the features of each trial: --features 'feats/trial{trial}.npz' or "
                         "--checkpoint 'runs/.../trial{trial}/joint/checkpoints/last.pt' (see pfanet regdb-all)")
    files = trial_paths(features, trials, "--features") if features is not None else {}
    checkpoints = trial_paths(checkpoint, trials, "--checkpoint") if features is None else {}
    for trial, path in files.items():
        if not path.is_file():
            raise DataError(f"features file of RegDB trial {trial} not found: {path}")
    out = {}
    for trial in trials:
        source = open_evaluation(files.get(trial), checkpoints.get(trial), Path(data_root) / f"trial{trial}",
                                 "regdb", device)
        out[trial] = label_trial(evaluate_source(source, direction=direction, max_rank=max_rank, rerank=rerank), trial)
    return out


def label_trial(results: list[EvalResult], trial: int) -> list[EvalResult]:
    """Say in each card which RegDB trial the results are."""
    for result in results:
        result.card["split"] = f"RegDB trial {trial}: {result.card.get('split', 'test split')}"
    return results


def aggregate_trials(per_trial: Mapping[int, Sequence[EvalResult]]) -> list[EvalResult]:
    """One result per direction over the trials: ``per_trial`` holds each trial's metrics, ``metrics`` and
    ``std`` their mean and (population) standard deviation; counts are means; the CMC curve is the mean
    curve when every trial has one."""
    trials = sorted(per_trial)
    if not trials:
        raise DataError("no RegDB trial to aggregate")
    out = []
    for index, first in enumerate(per_trial[trials[0]]):
        rows = [per_trial[t][index] for t in trials]
        if any(r.mode != first.mode for r in rows):
            raise DataError(f"RegDB trials disagree on the direction of result {index + 1}")
        mean, std = summarise_trials([r.metrics for r in rows])
        curves = [r.cmc for r in rows]
        out.append(EvalResult(
            dataset="regdb", mode=first.mode, shot=first.shot, sampler=first.sampler, trials=len(rows),
            num_query=int(round(np.mean([r.num_query for r in rows]))),
            num_gallery=float(np.mean([r.num_gallery for r in rows])), metrics=mean, std=std,
            per_trial=[dict(r.metrics) for r in rows],
            cmc=np.mean(curves, axis=0) if all(c.size for c in curves) and len({c.size for c in curves}) == 1
            else np.zeros(0),
            num_valid_query=float(np.mean([r.num_valid_query for r in rows])),
            card=_aggregate_card(trials, rows)))
    return out


def _aggregate_card(trials: Sequence[int], rows: Sequence[EvalResult]) -> dict:
    card = dict(rows[0].card)
    card["trials"] = len(trials)
    card["split"] = (f"RegDB trials {', '.join(map(str, trials))} of {len(regdb.TRIALS)}, one model per trial; "
                     "metrics are the mean and standard deviation over the trials")
    for key in ("checkpoint", "features_file"):
        values = {f"trial {t}": describe(r.card[key]) for t, r in zip(trials, rows) if key in r.card}
        if values:
            card[key] = values
    return card


def write_trial_results(path: Path, results: Sequence[EvalResult]) -> Path:
    """One trial's results (both directions) as an evaluation JSON list."""
    return write_results_json(path, results, as_list=True)


def read_trial_results(path: Path) -> list[EvalResult]:
    """The results of one trial read back from its JSON (written by :func:`write_trial_results`)."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        return [EvalResult.from_json_dict(item) for item in payload]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a RegDB trial's results JSON ({exc}); delete it to evaluate the trial again") \
            from exc


def report_regdb_trials(per_trial: Mapping[int, Sequence[EvalResult]], *, json_out: Path | None = None,
                        cmc_plot: Path | None = None, trial_jsons: bool = True) -> list[EvalResult]:
    """Aggregate the trials, print each trial and the mean ± std (with the protocol card), and write the
    aggregate's ``json_out`` and (``trial_jsons``) each trial's JSON beside it (``<name>_trial<T>.json``)."""
    results = aggregate_trials(per_trial)
    print_trial_table(per_trial)
    print_results(results, title=f"RegDB, {len(per_trial)} trial{'s' * (len(per_trial) > 1)}, one model per "
                                 "trial: mean ± std over trials")
    if json_out is not None and trial_jsons:
        for trial, trial_results in per_trial.items():
            write_trial_results(json_out.with_name(f"{json_out.stem}_trial{trial}.json"), trial_results)
    write_outputs(None, results, None, json_out=json_out, as_list=True, cmc_plot=cmc_plot)
    return results


def print_trial_table(per_trial: Mapping[int, Sequence[EvalResult]]) -> None:
    """R1 and mAP of every trial and direction."""
    trials = sorted(per_trial)
    table = Table(title="RegDB, per trial: R1 / mAP (percent)", title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False)
    table.add_column("trial", justify="right")
    for result in per_trial[trials[0]]:
        table.add_column(result.mode, justify="right")
    for trial in trials:
        table.add_row(str(trial), *(f"{r.metrics['r1']:.2f} / {r.metrics['mAP']:.2f}" for r in per_trial[trial]))
    console.print(table)
