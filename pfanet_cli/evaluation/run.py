"""Evaluating a feature set end to end, as ``pfanet evaluate`` and the demo do: where the features come
from (a features file, or extraction with a checkpoint from a prepared folder, opened once), which
official permutation applies, the protocol settings, the protocol card, the table on screen and the files
(JSON, CMC curves, ranked lists)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from rich import box
from rich.table import Table

from pfanet_cli.data import llcm, regdb
from pfanet_cli.data.datasets import DATASETS
from pfanet_cli.data.prepared import PreparedData, open_prepared
from pfanet_cli.data.sysu import RandPerm, bundled_perm_bytes, find_perm_file
from pfanet_cli.errors import CheckpointError, DataError, UsageError
from pfanet_cli.evaluation.card import attach_source, card_rows, split_summary
from pfanet_cli.evaluation.examples import ranked_examples, ranked_list_rows
from pfanet_cli.evaluation.features import FeatureSet, load_features, read_provenance
from pfanet_cli.evaluation.galleries import check_choice, load_perm, sample_gallery_official
from pfanet_cli.evaluation.history import record_evaluation
from pfanet_cli.evaluation.protocols import (
    ALL_SYSU_SETTINGS,
    METRIC_KEYS,
    EvalResult,
    evaluate_llcm,
    evaluate_regdb,
    evaluate_sysu_settings,
    write_results_json,
)
from pfanet_cli.evaluation.rerank import RerankConfig
from pfanet_cli.evaluation.same_modality import evaluate_same_modality
from pfanet_cli.utils.console import console
from pfanet_cli.utils.images import ImageLoader, raw_image_loader

DEFAULT_DATA_ROOT = Path("data/prepared")
"""Prepared folders live at ``<root>/<dataset>`` unless ``--data`` says otherwise."""
DIRECTIONS = {"regdb": regdb.DIRECTIONS, "llcm": llcm.DIRECTIONS}
BOTH = "both"
# the datasets whose protocol reads each dataset-specific option of `pfanet evaluate`
OPTION_DATASETS = {"--mode": ("sysu",), "--shot": ("sysu",), "--sampler": ("sysu",), "--perm-file": ("sysu",),
                   "--trials": ("sysu", "llcm"), "--direction": ("regdb", "llcm"), "--same-modality": ("sysu",)}
SAME_MODALITY_TITLE = "same-modality diagnostic (not the SYSU-MM01 protocol; never part of its numbers)"
BUNDLED = "the copy shipped with pfanet (pfanet_cli/resources/rand_perm_cam.mat, the real SYSU-MM01's)"


@dataclass(frozen=True)
class Permutation:
    """The official permutation an evaluation uses and where it came from (``None``: there is none)."""

    perm: RandPerm | None = None
    origin: str | None = None


@dataclass
class EvaluationSource:
    """The features of one evaluation and the prepared folder that goes with them (opened at most once)."""

    features: FeatureSet
    dataset: str
    data_dir: Path
    trusted_data: bool
    """The prepared folder was named (``--data``) or the features were extracted from it, so its
    permutation file belongs to these features."""
    _prepared: PreparedData | None = field(default=None, repr=False)
    _opened: bool = field(default=False, repr=False)

    def prepared(self) -> PreparedData | None:
        """The prepared folder, or None when there is none at ``data_dir``."""
        if not self._opened:
            self._opened = True
            try:
                self._prepared = open_prepared(self.data_dir)
            except DataError:
                self._prepared = None
        return self._prepared


def open_evaluation(features_file: Path | None, checkpoint: Path | None, data_dir: Path | None,
                    dataset: str | None, device: str | None, runs_root: Path = Path("runs"),
                    options_given: Sequence[str] = ()) -> EvaluationSource:
    """The features to evaluate: ``features_file``, or else extracted with ``checkpoint`` (the newest
    train-joint or train-agw checkpoint under ``runs_root`` when None) from the prepared folder. ``options_given`` (the
    dataset-specific options on the command line) are checked against the dataset before any extraction."""
    if features_file is not None:
        features = load_features(features_file)
        features.provenance = read_provenance(features_file)
        name = _dataset_name(dataset, features.dataset)
        refuse_options_for_other_datasets(name, options_given)
        return EvaluationSource(features, name, data_dir or DEFAULT_DATA_ROOT / name, trusted_data=data_dir is not None)
    checkpoint = _checkpoint_to_extract(checkpoint, runs_root)
    prepared = open_prepared(data_dir or DEFAULT_DATA_ROOT / (dataset or "sysu"))
    name = _dataset_name(dataset, prepared.dataset)
    refuse_options_for_other_datasets(name, options_given)
    return EvaluationSource(_extract(checkpoint, prepared, device, runs_root), name, prepared.root,
                            trusted_data=True, _prepared=prepared, _opened=True)


def _checkpoint_to_extract(checkpoint: Path | None, runs_root: Path) -> Path:
    """``checkpoint``, or the newest train-joint or train-agw one (named in the error when there is none, with
    the features-file alternative); it must exist."""
    from pfanet_cli.engine.checkpoint import FEATURE_STAGES, existing_checkpoint  # heavy: torch, only to extract
    from pfanet_cli.engine.rundir import newest_checkpoint  # heavy: torch, only needed to extract

    if checkpoint is None:
        try:
            checkpoint = newest_checkpoint(runs_root, FEATURE_STAGES, "extract")
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}; or evaluate a features file with --features F.npz") from exc
    existing_checkpoint(checkpoint)
    return checkpoint


def _extract(checkpoint: Path, prepared: PreparedData, device: str | None, runs_root: Path) -> FeatureSet:
    """The test features of the prepared folder, extracted with ``checkpoint``."""
    from pfanet_cli.engine.runtime import resolve_device  # heavy: torch, only needed to extract
    from pfanet_cli.evaluation.extract import extract_split  # heavy: torch, only needed to extract

    return extract_split(checkpoint, prepared, "test", device=str(resolve_device(device or "auto")),
                         runs_root=runs_root)


def _dataset_name(requested: str | None, found: str | None) -> str:
    name = requested or found or "sysu"
    check_choice("dataset", name, tuple(DATASETS))
    return name


def refuse_options_for_other_datasets(dataset: str, given: Sequence[str]) -> None:
    """An option given for a dataset whose protocol does not read it is a usage error, not silently ignored
    (a `--sampler agw` on RegDB features would otherwise print numbers the user believes are AGW's)."""
    for option in given:
        readers = OPTION_DATASETS[option]
        if dataset not in readers:
            names = " and ".join(DATASETS[name].title for name in readers)
            raise UsageError(f"{option} applies to {names} only, and these features are "
                             f"{DATASETS[dataset].title}'s; leave it out")


def official_permutation(source: EvaluationSource, sampler: str, perm_file: Path | None) -> Permutation:
    """The permutation the official sampler uses: ``--perm-file``, else the features file's own copy, else
    the prepared folder's when it belongs to these features, else the copy shipped with pfanet. The shipped
    copy is the real SYSU-MM01's: ``auto`` takes it only when it fits the features (every gallery folder
    has its entry, of the right length), ``official`` stops with the first mismatch."""
    if sampler == "agw":
        return Permutation()
    if perm_file is not None:
        return Permutation(load_perm(perm_file), f"--perm-file {perm_file}")
    carried = source.features.perm()
    if carried is not None:
        return Permutation(carried, f"carried in the features file {source.features.source or ''}".rstrip())
    found = find_perm_file(source.data_dir) if source.trusted_data else None
    if found is not None:
        return Permutation(load_perm(found), str(found))
    bundled = load_perm(bundled_perm_bytes())
    fs = source.features
    try:
        sample_gallery_official(fs.pids, fs.camids, fs.paths, bundled, mode="all", shot="single", trials=1)
    except DataError as exc:
        if sampler == "official":
            raise DataError(f"--sampler official: the shipped rand_perm_cam.mat is the real SYSU-MM01's and does "
                            f"not fit these features ({exc}); pass --perm-file or use --sampler agw") from exc
        return Permutation()
    return Permutation(bundled, BUNDLED)


def evaluate_source(source: EvaluationSource, *, all_settings: bool = False, mode: str = "all",
                    shot: str = "single", direction: str | None = None, trials: int = 10, sampler: str = "auto",
                    permutation: Permutation = Permutation(), max_rank: int = 20,
                    rerank: RerankConfig | None = None) -> list[EvalResult]:
    """The dataset's protocol on the source's features, with the protocol card completed from the source:
    one SYSU setting or all four; one direction or both (RegDB, LLCM)."""
    fs = source.features
    if source.dataset == "sysu":
        settings = list(ALL_SYSU_SETTINGS) if all_settings else [(mode, shot)]
        results = evaluate_sysu_settings(fs.features, fs.pids, fs.camids, fs.paths, settings, trials=trials,
                                         sampler=sampler, perm=permutation.perm, max_rank=max_rank, rerank=rerank,
                                         multi_on_single="note" if all_settings else "refuse")
    elif source.dataset == "llcm":
        results = [evaluate_llcm(fs.features, fs.pids, fs.camids, fs.paths, direction=d, trials=trials,
                                 max_rank=max_rank, rerank=rerank)
                   for d in directions("llcm", direction, all_settings)]
    else:
        results = [evaluate_regdb(fs.features, fs.pids, fs.camids, direction=d, max_rank=max_rank, rerank=rerank)
                   for d in directions("regdb", direction, all_settings)]
    attach_source(results, source_card(source))
    for result in results:
        if result.sampler == "official" and permutation.origin:
            result.card["sampler"] += f"; permutation file: {permutation.origin}"
    return results


def evaluate_source_same_modality(source: EvaluationSource, *, trials: int = 10,
                                  max_rank: int = 20) -> list[EvalResult]:
    """The same-modality diagnostic (IR->IR, RGB->RGB; ``same_modality.py``) of a SYSU-MM01 source, with the
    source half of the card."""
    fs = source.features
    results = evaluate_same_modality(fs.features, fs.pids, fs.camids, fs.paths, trials=trials, max_rank=max_rank)
    attach_source(results, source_card(source))
    return results


def log_evaluation(source: EvaluationSource, results: list[EvalResult]) -> None:
    """Append the results to the run log of the checkpoint the features were just extracted with
    (``history.py``), so ``pfanet export`` can record them; a log that cannot be written is a note, not an error."""
    checkpoint = ((source.features.provenance or {}).get("checkpoint") or {}).get("path")
    if not checkpoint:
        return
    try:
        log = record_evaluation(Path(checkpoint), results)
    except OSError as exc:
        console.print(f"note: the evaluation was not added to the run's log ({exc.strerror or exc})")
        return
    if log is not None:
        console.print(f"evaluation added to {log}")


def report_same_modality(source: EvaluationSource, *, trials: int = 10, max_rank: int = 20,
                         json_out: Path | None = None) -> list[EvalResult]:
    """``evaluate --same-modality``: the diagnostic's own table and card, and ``<json name>_same_modality.json``
    beside the protocol's JSON, never inside it."""
    diagnostic = evaluate_source_same_modality(source, trials=trials, max_rank=max_rank)
    print_results(diagnostic, title=f"{SAME_MODALITY_TITLE}, agw sampler, {trials} trials")
    if json_out is not None:
        written = write_results_json(json_out.with_name(json_out.stem + "_same_modality.json"), diagnostic,
                                     as_list=True)
        console.print(f"same-modality diagnostic written to {written}")
    return diagnostic


def directions(dataset: str, direction: str | None, all_settings: bool = False) -> list[str]:
    """The directions asked for: ``both`` (or ``--all-settings``) gives the dataset's two, None its first."""
    choices = DIRECTIONS[dataset]
    if all_settings or direction == BOTH:
        return list(choices)
    check_choice(f"{DATASETS[dataset].title} direction", direction or choices[0], (*choices, BOTH))
    return [direction or choices[0]]


def source_card(source: EvaluationSource) -> dict:
    """The source half of the protocol card: split, flip, feature, method, augmentation, checkpoint, translation
    and the features file."""
    fs = source.features
    provenance = fs.provenance or {}
    card = {key: provenance[key] for key in ("flip", "feature", "method", "augmentation", "checkpoint", "translation")
            if key in provenance}
    card["split"] = split_summary(source.dataset, fs.pids, fs.camids, provenance.get("split"))
    if fs.source is not None:
        card["features_file"] = str(fs.source)
    return card


def image_loader(source: EvaluationSource, image_root: Path | None) -> ImageLoader | None:
    """Images for the ranked-list picture: from the raw tree ``image_root`` when given, else the
    prepared test split (None when there is none)."""
    if image_root is not None:
        return raw_image_loader(image_root)
    prepared = source.prepared()
    if prepared is None or "test" not in prepared.splits:
        return None
    try:
        return prepared.split("test").image_loader()
    except DataError:
        return None


def save_ranked_list_picture(path: Path, features: FeatureSet, result: EvalResult, perm: RandPerm | None,
                             loader: ImageLoader | None, *, num_queries: int = 4,
                             cell_size: tuple[int, int] = (128, 64), title: str | None = None) -> int:
    """A few queries of trial 0 of ``result``'s setting and their top-10 gallery images; returns the number
    of query lines drawn (0: nothing written, the images could not be found)."""
    from pfanet_cli.utils.plots import save_ranked_lists  # heavy: matplotlib, only when a picture is asked for

    examples = ranked_examples(features.features, features.pids, features.camids, features.paths, result,
                               perm=perm, num_queries=num_queries)
    rows = ranked_list_rows(examples, features.paths, features.pids)
    return save_ranked_lists(path, rows, loader, cell_size=cell_size, title=title)


def _metric_cell(result: EvalResult, key: str) -> str:
    mean, std = result.metrics[key], result.std[key]
    return f"{mean:.2f} ± {std:.2f}" if result.trials > 1 else f"{mean:.2f}"


def print_results(results: list[EvalResult], title: str | None = None) -> None:
    """Metrics as rows, settings as columns (fits 80 columns with the four SYSU settings), then the
    protocol card."""
    first = results[0]
    plural = "s" * (first.trials > 1)
    if title is None and first.dataset == "regdb":
        title = "RegDB (one split)"
    elif title is None:
        sampler = f"{first.sampler} gallery sampler" if first.dataset == "sysu" else f"{first.sampler} sampler"
        title = f"{DATASETS[first.dataset].title}, {sampler}, {first.trials} trial{plural}"
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("", no_wrap=True)
    for result in results:
        table.add_column(result.setting, justify="right", no_wrap=True)
    for key in METRIC_KEYS:
        table.add_row(key if key.startswith("m") else key.upper(), *(_metric_cell(r, key) for r in results))
    table.add_section()
    table.add_row("queries", *(f"{r.num_query:,}" for r in results))
    if any(r.num_valid_query != r.num_query for r in results):
        table.add_row("valid queries", *(_count(r.num_valid_query) for r in results))
    table.add_row("gallery", *(_count(r.num_gallery) for r in results))
    console.print(table)
    note = "percent"
    if any(r.trials > 1 for r in results):
        note += ", mean ± std over trials; gallery = images per trial"
    console.print(f"{note}; valid queries (with a positive in the gallery) are the ones averaged", style="dim")
    print_card(results)


def print_card(results: list[EvalResult]) -> None:
    """The protocol card of the results (a field that differs between them lists each value)."""
    card = Table(title="protocol card", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_header=False)
    card.add_column("field", no_wrap=True, style="bold")
    card.add_column("value", overflow="fold")
    for field_name, value in card_rows([r.card for r in results]):
        card.add_row(field_name, value)
    console.print(card)


def _count(value: int | float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"


def write_outputs(source: EvaluationSource | None, results: list[EvalResult], perm: RandPerm | None, *,
                  json_out: Path | None = None, as_list: bool = False, cmc_plot: Path | None = None,
                  ranks_image: Path | None = None, image_root: Path | None = None, log: bool = False) -> None:
    """The files an evaluation asked for: the JSON (its CMC plot beside it unless another path is given),
    the CMC plot and the ranked-list picture of the first setting; with ``log``, the line of the run's log of
    the checkpoint the features were just extracted with (:func:`log_evaluation`)."""
    if json_out is not None:
        write_results_json(json_out, results, as_list=as_list)
        console.print(f"results written to {json_out}")
        if cmc_plot is None:
            cmc_plot = json_out.with_name(json_out.stem + "_cmc.png")
    if cmc_plot is not None and all(r.cmc.size for r in results):
        from pfanet_cli.utils.plots import save_cmc_plot  # heavy: matplotlib, only when a plot is asked for

        save_cmc_plot(cmc_plot, {r.setting: r.cmc for r in results}, title=f"CMC ({results[0].dataset})")
        console.print(f"CMC curve written to {cmc_plot}")
    elif cmc_plot is not None:
        console.print("note: CMC plot skipped: results read back from their JSON files hold no CMC curve")
    if ranks_image is not None:
        _write_ranked_lists(source, results[0], perm, ranks_image, image_root)
    if log and source is not None:
        log_evaluation(source, results)


def _write_ranked_lists(source: EvaluationSource, result: EvalResult, perm: RandPerm | None, path: Path,
                        image_root: Path | None) -> None:
    loader = image_loader(source, image_root)
    if loader is None:
        console.print(f"note: ranked-list picture skipped: no images (pass --image-root RAW or --data with "
                      f"test_images.npy; {source.data_dir} has none)")
        return
    drawn = save_ranked_list_picture(path, source.features, result, perm, loader, title=f"{result.setting}, trial 0")
    if drawn:
        console.print(f"ranked lists of {drawn} queries written to {path}")
    else:
        console.print("note: ranked-list picture skipped: the features' image paths do not resolve against "
                      f"{image_root if image_root is not None else source.data_dir}")
