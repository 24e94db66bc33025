"""The stage loop shared by train-gan, train-joint and train-agw, and running a stage end to end.

A stage subclasses :class:`StageTrainer`: it declares its phases, builds its parts in one place
(:meth:`StageTrainer.build`: networks, optimizers, schedulers, batches, image pools) and implements
``step`` (one iteration). The base class owns everything else: gradient scalers, logging, sample
grids, the NaN check, checkpoints and exact resume. Everything a stage owns that changes while
training (weights, optimizer and scheduler states, sampler position, RNG states, image pools) is in
the checkpoint, so a resumed run reproduces an uninterrupted one exactly on CPU in deterministic mode.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from pfanet_cli import __version__
from pfanet_cli.config import Recipe, recipe_to_dict
from pfanet_cli.data.augment import NONE, Augmentation, to_uint8
from pfanet_cli.data.datasets import DATASETS
from pfanet_cli.data.prepared import PreparedData, open_prepared
from pfanet_cli.data.sampler import IdentityAlignedSampler
from pfanet_cli.engine.batches import BatchSource, ImagePool
from pfanet_cli.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    capture_rng_state,
    check_architecture,
    link_checkpoint,
    load_checkpoint,
    load_network_state,
    require_networks,
    require_stage,
    restore_rng_state,
    save_checkpoint,
)
from pfanet_cli.engine.rundir import RunDir, checkpoint_name, initialise_run, loss_values, resolve_run, run_lock
from pfanet_cli.engine.runtime import (
    Distributed,
    agree_across_ranks,
    allow_tf32,
    autocast_context,
    describe_precision,
    init_distributed,
    make_scalers,
    place_module,
    resolve_amp,
    set_determinism,
    unwrap,
)
from pfanet_cli.errors import CheckpointError, DataError, TrainingDiverged
from pfanet_cli.methods import describe_augmentation, describe_method, require_stage_method
from pfanet_cli.modeling.build import parameter_counts
from pfanet_cli.utils.console import console, progress_bar
from pfanet_cli.utils.plots import save_image_grid


STREAM_SEED_STEP = 7919
"""Seed distance between the batch sources of one stage (``StageTrainer.batch_source``'s ``stream``)."""


@dataclass
class Phase:
    name: str
    iterations: int


@dataclass
class StageParts:
    """What a stage trains, declared in one place; the trainer checkpoints and restores all of it."""

    networks: dict[str, nn.Module]
    """By checkpoint key (``modeling.build``), on the device, possibly DDP-wrapped."""
    optimizers: dict[str, torch.optim.Optimizer]
    batches: BatchSource
    """The stage's main batches (what ``images_per_iteration`` counts; ``state["batches"]`` of a checkpoint)."""
    schedulers: dict[str, Any] = field(default_factory=dict)
    pools: dict[str, ImagePool] = field(default_factory=dict)
    batch_sources: dict[str, BatchSource] = field(default_factory=dict)
    """Further batch sources by name, each drawing its own batches (``state["batch_sources"]``)."""


class StageTrainer:
    """Runs the phases of one stage (see the module docstring)."""

    stage = ""
    sample_titles: tuple[str, ...] = ("RGB", "fake IR", "real IR")
    """The columns of the sample grids (``last_images``)."""

    def __init__(self, recipe: Recipe, run: RunDir, data: PreparedData, device: torch.device,
                 distributed: Distributed, show_progress: bool = True, fresh: bool = True) -> None:
        self.recipe, self.run, self.data = recipe, run, data
        self.device, self.distributed = device, distributed
        self.amp = resolve_amp(recipe.train.amp, device)
        self.opened_sources: list[BatchSource] = []  # every source batch_source() made, to close and to time
        self.show_progress = show_progress and distributed.is_main
        self.phase_index, self.iteration = 0, 0
        self.metrics_state: dict[str, Any] = {}
        self._checkpointed_at = -1
        self.split = data.split("train")
        self.last_images: list[torch.Tensor] = []
        """The latest step's image columns for sample grids (RGB | fake IR | real IR); none: no grid."""
        parts = self.build(fresh)
        self.nets, self.opts, self.scheds = parts.networks, parts.optimizers, parts.schedulers
        self.batches, self.pools, self.batch_sources = parts.batches, parts.pools, parts.batch_sources
        self.scalers = make_scalers(device, self.amp, tuple(self.opts))

    # --- what a stage provides -------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        raise NotImplementedError

    def build(self, fresh: bool) -> StageParts:
        """The stage's networks (new, or about to be overwritten by a resumed checkpoint when not
        ``fresh``), optimizers, schedulers, batches and pools."""
        raise NotImplementedError

    def step(self, phase: str, iteration: int) -> dict[str, torch.Tensor]:
        """One training iteration; returns the (detached) losses to log."""
        raise NotImplementedError

    def end_of_iteration(self, phase: Phase, last: bool) -> None:
        """Runs after an iteration is logged and before its checkpoint (``last``: the stage's final
        iteration); e.g. validation. Nothing by default."""

    def architecture_keys(self) -> tuple[str, ...] | None:
        """The ``model`` keys a resumed checkpoint must share with the recipe (None: all of them)."""
        return None

    def run_info(self) -> dict[str, Any]:
        """Extra entries of the run's ``run.yaml`` (how the stage started)."""
        return {}

    # --- helpers for build() -------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast_context(self.device, self.amp)

    def place(self, networks: dict[str, nn.Module], sync_bn: tuple[str, ...] = ()) -> dict[str, nn.Module]:
        """Networks moved to the device (channels-last when the recipe says so), DDP-wrapped under
        torchrun and compiled when ``train.compile``; those named in ``sync_bn`` get SyncBatchNorm when
        ``train.sync_bn`` is on."""
        train = self.recipe.train
        return {key: place_module(net, self.device, self.distributed, train.channels_last,
                                  sync_bn=train.sync_bn and key in sync_bn, compile=train.compile)
                for key, net in networks.items()}

    def batch_source(self, key: str, ids_per_batch: int, images_per_id: int, pad: int, stream: int = 0,
                     augment: bool = False, defer_rgb: bool = False) -> BatchSource:
        """Identity-aligned P x K batches of the training split (``key``: the recipe section, for errors),
        prepared ``train.prefetch`` batches ahead; :meth:`close` stops every source made here. Sources of one
        stage with different ``stream`` numbers draw different identities and augmentations. Every source flips
        (``data.flip``) and pads + crops; ``augment``: also the recipe's erasing, greyscale and channel operations
        (the batches F learns from, never the generators' and discriminators'); ``defer_rgb`` leaves the RGB
        images' pad + crop + flip to the stage (:class:`Batch`'s ``rgb_plan``)."""
        seed, rank = self.recipe.train.seed + STREAM_SEED_STEP * stream, self.distributed.rank
        sampler = IdentityAlignedSampler(self.split.labels, self.split.is_ir, ids_per_batch, images_per_id, seed,
                                         rank, self.distributed.world_size, key=key)
        augmentation = Augmentation.from_config(self.recipe.data) if augment else NONE
        source = BatchSource(self.split, sampler, self.device, self.recipe.data.flip, pad, seed=seed + rank,
                             channels_last=self.recipe.train.channels_last, prefetch=self.recipe.train.prefetch,
                             augmentation=augmentation, defer_rgb=defer_rgb)
        self.opened_sources.append(source)
        return source

    def close(self) -> None:
        """Stop the batch sources' prefetch threads (each rewinds to its last batch handed out)."""
        for source in self.opened_sources:
            source.close()

    # --- state ----------------------------------------------------------------------------------
    def images_per_iteration(self) -> int:
        return 2 * self.batches.sampler.batch_size * self.distributed.world_size

    def architecture(self) -> dict[str, Any]:
        return recipe_to_dict(self.recipe)["model"]

    def extra_state(self) -> dict[str, Any]:
        return {"batches": self.batches.state_dict(),
                "batch_sources": {key: source.state_dict() for key, source in self.batch_sources.items()},
                "pools": {key: pool.state_dict() for key, pool in self.pools.items()},
                "scalers": {key: scaler.state_dict() for key, scaler in self.scalers.items()}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.batches.load_state_dict(state["batches"])
        # checkpoints written before a stage had further sources hold none: those start from their seed
        for key, source in self.batch_sources.items():
            if key in state.get("batch_sources", {}):
                source.load_state_dict(state["batch_sources"][key])
        # train-joint checkpoints written before the engine/ layout kept their one pool as "pool_rgb"
        pools = state["pools"] if "pools" in state else {"rgb": state["pool_rgb"]}
        for key, pool in self.pools.items():
            pool.load_state_dict(pools[key], self.device)
        for key, scaler in self.scalers.items():
            scaler.load_state_dict(state["scalers"][key])

    def checkpoint_payload(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "stage": self.stage,
            "toolkit_version": __version__,
            "recipe": recipe_to_dict(self.recipe),
            "architecture": self.architecture(),
            "num_classes": self.split.num_classes,
            "image_size": [self.recipe.data.height, self.recipe.data.width],
            "dataset": self.data.dataset,
            "dataset_fingerprint": self.data.fingerprint,
            "networks": {key: unwrap(net).state_dict() for key, net in self.nets.items()},
            "optimizers": {key: opt.state_dict() for key, opt in self.opts.items()},
            "schedulers": {key: sched.state_dict() for key, sched in self.scheds.items()},
            "phase": self.phases()[self.phase_index].name,
            "phase_index": self.phase_index,
            "iteration": self.iteration,
            "rng": capture_rng_state(),
            "metrics": dict(self.metrics_state),
            "world_size": self.distributed.world_size,
            "state": self.extra_state(),
        }

    def restore(self, path: Path) -> None:
        """Continue from ``path``: weights, optimizers, schedulers, RNG, sampler, phase, iteration."""
        payload = load_checkpoint(path)
        require_stage(payload, path, (self.stage,), f"resuming {self.stage}")
        check_architecture(payload, path, self.architecture(), self.architecture_keys())
        self._check_same_schedule(payload, path)
        for key, net in self.nets.items():
            load_network_state(unwrap(net), payload["networks"][key], key, path)
        for key, opt in self.opts.items():
            opt.load_state_dict(payload["optimizers"][key])
        for key, sched in self.scheds.items():
            sched.load_state_dict(payload["schedulers"][key])
        self.phase_index, self.iteration = int(payload["phase_index"]), int(payload["iteration"])
        self._checkpointed_at = self.global_iteration()
        self.metrics_state = dict(payload.get("metrics", {}))
        self.load_extra_state(payload["state"])
        restore_rng_state(payload["rng"])
        if self.distributed.is_main:
            self.run.truncate_metrics(self.iteration, self.phase_index)

    def _check_same_schedule(self, payload: dict[str, Any], path: Path) -> None:
        """Exit 4 when the checkpoint's phase or its networks and optimizers are not this recipe's (a phase or
        network a recipe key adds, e.g. ``joint.generator_warmup_iterations``, changed since it was written)."""
        names = [phase.name for phase in self.phases()]
        index = int(payload["phase_index"])
        if index >= len(names) or names[index] != payload.get("phase"):
            raise CheckpointError(f"{path} stopped in phase {payload.get('phase')!r} (number {index + 1}); this "
                                  f"recipe's {self.stage} phases are {', '.join(names)}: resume with the recipe "
                                  "it was written with")
        require_networks(payload, path, self.nets, f"resuming {self.stage} with this recipe")
        missing = [key for key in self.opts if key not in payload.get("optimizers", {})]
        if missing:
            raise CheckpointError(f"{path} has no state of the optimizer(s) {', '.join(missing)}, which resuming "
                                  f"{self.stage} with this recipe needs: resume with the recipe it was written with")

    def write_checkpoint(self, keep: bool) -> Path | None:
        """Rank 0 writes ``last.pt`` (and a kept ``iter-N.pt`` copy when ``keep``)."""
        self._checkpointed_at = self.global_iteration()
        if not self.distributed.is_main:
            return None
        payload = self.checkpoint_payload()
        if keep:
            kept = self.run.checkpoints / checkpoint_name(self.global_iteration())
            save_checkpoint(kept, payload)
            link_checkpoint(kept, self.run.last_checkpoint)
        else:
            save_checkpoint(self.run.last_checkpoint, payload)
        return self.run.last_checkpoint

    # --- loop ------------------------------------------------------------------------------------
    def global_iteration(self) -> int:
        return sum(p.iterations for p in self.phases()[: self.phase_index]) + self.iteration

    def total_iterations(self) -> int:
        return sum(p.iterations for p in self.phases())

    def run_training(self) -> Path | None:
        """Train to the end of the last phase and return the final checkpoint (rank 0). The batch
        sources' threads are stopped on the way out, however training ends (Ctrl-C, an error)."""
        try:
            return self._train_phases()
        finally:
            self.close()

    def _train_phases(self) -> Path | None:
        phases = self.phases()
        with self._progress() as report:
            while self.phase_index < len(phases):
                phase = phases[self.phase_index]
                window = _LossWindow()
                while self.iteration < phase.iterations:
                    self.iteration += 1
                    started = time.perf_counter()
                    losses = self.step(phase.name, self.iteration)
                    self._check_finite(losses, phase.name)
                    window.add(losses, time.perf_counter() - started, self.images_per_iteration())
                    self._after_iteration(phase, window, report)
                if self.phase_index + 1 == len(phases):
                    break
                self.phase_index, self.iteration = self.phase_index + 1, 0
        if self._checkpointed_at == self.global_iteration() and self.run.last_checkpoint.is_file():
            return self.run.last_checkpoint if self.distributed.is_main else None
        return self.write_checkpoint(keep=False)

    def _after_iteration(self, phase: Phase, window: "_LossWindow", report: Callable) -> None:
        train = self.recipe.train
        done = self.iteration == phase.iterations
        global_iteration = self.global_iteration()
        if self.iteration % train.log_every == 0 or done:
            row = window.flush()
            row.update(stage=self.stage, phase=phase.name, phase_order=self.phase_index,
                       iteration=self.iteration, global_iteration=global_iteration, lr=self.learning_rates())
            self.metrics_state = row
            if self.distributed.is_main:
                self.run.append_metrics(row)
            report(0, _log_line(row, phase.iterations), f"{phase.name} {row['images_per_s']:.0f} img/s")
        report(1, None, None)
        if self.distributed.is_main and self.last_images and (global_iteration % train.sample_every == 0 or done):
            name = f"{self.stage}-{phase.name}-{self.iteration:06d}.png"
            save_sample_grid(self.run.samples / name, self.last_images, titles=self.sample_titles)
        self.end_of_iteration(phase, last=done and self.phase_index + 1 == len(self.phases()))
        if global_iteration % train.checkpoint_every == 0:
            self.write_checkpoint(keep=True)

    def write_selected_checkpoint(self, path: Path, selection: dict[str, Any]) -> None:
        """Rank 0 writes the current state to ``path`` with a ``"selection"`` entry saying how it was chosen
        (``last.pt`` and the kept ``iter-N.pt`` have none)."""
        if self.distributed.is_main:
            save_checkpoint(path, {**self.checkpoint_payload(), "selection": selection})

    def learning_rates(self) -> dict[str, float]:
        return {f"{key}.{i}": group["lr"] for key, opt in self.opts.items()
                for i, group in enumerate(opt.param_groups)}

    def _check_finite(self, losses: dict[str, torch.Tensor], phase: str) -> None:
        values = torch.stack([v.detach().float().reshape(()) for v in losses.values()])
        if bool(torch.isfinite(values).all()):
            return
        name, value = next((k, v) for k, v in zip(losses, values.tolist()) if not math.isfinite(v))
        last = self.run.last_checkpoint
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written yet"
        raise TrainingDiverged(
            f"{self.stage}: loss {name} became {value} at {phase} iteration {self.iteration}; stopped, {kept} "
            "(lower the learning rates, or try train.amp=off)"
        )

    @contextlib.contextmanager
    def _progress(self) -> Iterator[Callable]:
        """Yields ``report(steps, log_line, info)``: advance the bar, print a log line, set the bar text."""
        if not self.show_progress:
            yield lambda steps, line, info: None
            return
        with progress_bar() as progress:
            task = progress.add_task(self.stage, total=self.total_iterations(), completed=self.global_iteration(),
                                     info="")

            def report(steps: int, line: str | None, info: str | None) -> None:
                if line is not None:
                    progress.console.print(line)
                if info is not None:
                    progress.update(task, info=info)
                progress.advance(task, steps)

            yield report


def save_sample_grid(path: Path, columns: list[torch.Tensor], count: int = 8,
                     titles: tuple[str, ...] = ("RGB", "fake IR", "real IR")) -> None:
    """A PNG of image batches ([-1, 1]) side by side, e.g. RGB | fake IR | real IR."""
    arrays = [to_uint8(batch[:count].float()).permute(0, 2, 3, 1).cpu().numpy() for batch in columns]
    save_image_grid(path, arrays, titles=titles)


class _LossWindow:
    """Averages losses and throughput between two log lines."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count, self.seconds, self.images = 0, 0.0, 0

    def add(self, losses: dict[str, torch.Tensor], seconds: float, images: int) -> None:
        for key, value in losses.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.count += 1
        self.seconds += seconds
        self.images += images

    def flush(self) -> dict[str, Any]:
        row: dict[str, Any] = {key: value / max(self.count, 1) for key, value in self.sums.items()}
        row["iterations_per_s"] = self.count / self.seconds if self.seconds else 0.0
        row["images_per_s"] = self.images / self.seconds if self.seconds else 0.0
        self.__init__()
        return row


def _log_line(row: dict[str, Any], phase_iterations: int) -> str:
    losses = "  ".join(f"{k} {v:.3f}" for k, v in loss_values(row).items())
    return (f"{row['stage']} {row['phase']} {row['iteration']}/{phase_iterations}  {losses}  "
            f"{row['images_per_s']:.0f} img/s")


# ----------------------------------------------------------------------------------------------
# Running a stage


@dataclass
class StageResult:
    run: RunDir
    checkpoint: Path | None


def check_data_matches_recipe(data: PreparedData, recipe: Recipe) -> None:
    if data.image_size != (recipe.data.height, recipe.data.width):
        height, width = data.image_size
        raise DataError(
            f"{data.root} was prepared at {height}x{width} but the recipe asks for "
            f"{recipe.data.height}x{recipe.data.width}; re-run prepare-data with --height/--width "
            f"or set data.height={height} data.width={width}"
        )
    if data.dataset != recipe.data.dataset:
        raise DataError(f"{data.root} holds {data.dataset} but the recipe says data.dataset={recipe.data.dataset}")


def run_stage(trainer_class: type[StageTrainer], recipe: Recipe, overrides: list[str], out: Path | None,
              resume: str | None, show_progress: bool = True, **trainer_options: Any) -> StageResult:
    """Set up devices, data and the run directory, then train ``trainer_class`` to the end."""
    require_stage_method(recipe, trainer_class.stage)
    distributed, device = init_distributed(recipe.train.device)
    run, resume_from = agree_across_ranks(distributed,
                                          lambda: resolve_run(recipe, trainer_class.stage, out, resume))
    with run_lock(run.path, f"pfanet {trainer_class.stage}", enabled=distributed.is_main):
        if distributed.is_main:
            run.remove_stale_files()
        data = open_prepared(recipe.data.root)
        check_data_matches_recipe(data, recipe)
        set_determinism(recipe.train.deterministic)
        allow_tf32(recipe.train.tf32)
        torch.manual_seed(recipe.train.seed)
        trainer = trainer_class(recipe, run, data, device, distributed, show_progress,
                                fresh=resume_from is None, **trainer_options)
        torch.manual_seed(recipe.train.seed + distributed.rank)
        if resume_from is not None:
            trainer.restore(resume_from)
        elif distributed.is_main:
            run.truncate_metrics(0, 0)  # rows of an attempt killed before its first checkpoint
        if distributed.is_main:
            described = {"method": describe_method(recipe),
                         "augmentation": describe_augmentation(recipe, trainer_class.stage)}
            initialise_run(run, recipe, trainer_class.stage, overrides, str(device),
                           extra={**described, **trainer.run_info()})
            ranks = f" x {distributed.world_size} processes ({distributed.backend})" if distributed.enabled else ""
            precision = describe_precision(device, trainer.amp, recipe.train.tf32)
            console.print(f"[bold]{trainer_class.stage}[/] on {device}{ranks}, {precision} -> {run.path}")
        checkpoint = trainer.run_training()
    return StageResult(run, checkpoint)


def stage_parameter_counts(recipe: Recipe, stage: str) -> dict[str, int]:
    """Parameter counts of every network ``stage`` builds for ``recipe`` (classifier sized for the dataset's
    default training split), without data or pretrained weights."""
    require_stage_method(recipe, stage)
    return parameter_counts(recipe.model, DATASETS[recipe.data.dataset].train_classes, stage)
