"""Machinery shared by the training stages: device and distributed set-up, mixed precision, the
batch pipeline, the image pool, and :class:`StageTrainer`, the loop that logs, samples, checks for
NaN, writes checkpoints and resumes exactly.

A stage subclasses :class:`StageTrainer` and provides its phases, its networks and optimizers, and
``step`` (one iteration). Everything a stage owns that changes while training (weights, optimizer
and scheduler states, sampler position, RNG states, image pools) is in the checkpoint, so a resumed
run reproduces an uninterrupted one exactly on CPU in deterministic mode.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from pfanet_cli import __version__
from pfanet_cli.augment import flip_and_crop, gather_uint8, to_uint8, to_unit_range
from pfanet_cli.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    capture_rng_state,
    checkpoint_name,
    link_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from pfanet_cli.console import console, progress_bar
from pfanet_cli.errors import TrainingDiverged, UsageError
from pfanet_cli.prepared import PreparedData, PreparedSplit
from pfanet_cli.recipes import Recipe, recipe_to_dict
from pfanet_cli.rundir import RunDir, loss_values
from pfanet_cli.sampler import IdentityAlignedSampler


# ----------------------------------------------------------------------------------------------
# Device, distributed, precision


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a usage error."""
    requested = requested.lower()
    if requested not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda, got {requested!r}")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device("cuda", local_rank)


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_request: str) -> tuple[Distributed, torch.device]:
    """Join the process group when started by ``torchrun`` (gloo on CPU, NCCL on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed(), resolve_device(device_request)
    info = Distributed(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_request, info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


def autocast_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    if amp == "off":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise UsageError("train.amp=fp16 needs CUDA; use train.amp=bf16 or off on the CPU")
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def set_determinism(enabled: bool) -> None:
    torch.use_deterministic_algorithms(enabled, warn_only=False)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.deterministic = enabled
        torch.backends.cudnn.benchmark = not enabled
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def no_sync(*modules: nn.Module) -> contextlib.ExitStack:
    """Skip DDP's gradient all-reduce for networks that are in a step's graph but not stepped."""
    stack = contextlib.ExitStack()
    for module in modules:
        if isinstance(module, nn.parallel.DistributedDataParallel):
            stack.enter_context(module.no_sync())
    return stack


# ----------------------------------------------------------------------------------------------
# Batches


@dataclass
class Batch:
    rgb: torch.Tensor
    ir: torch.Tensor
    labels: torch.Tensor


class BatchSource:
    """Identity-aligned batches from a prepared split, augmented on tensors and moved to ``device``."""

    def __init__(self, split: PreparedSplit, sampler: IdentityAlignedSampler, device: torch.device,
                 flip: bool, pad: int, seed: int, channels_last: bool) -> None:
        self.split, self.sampler, self.device = split, sampler, device
        self.flip, self.pad = flip, pad
        self.generator = torch.Generator().manual_seed(seed)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def next(self) -> Batch:
        rgb_rows, ir_rows = self.sampler.next_batch()
        images = gather_uint8(self.split.images, np.concatenate([rgb_rows, ir_rows]))
        images = flip_and_crop(images, self.generator, self.flip, self.pad)
        images = to_unit_range(images.to(self.device, non_blocking=True))
        images = images.contiguous(memory_format=self.memory_format)
        rgb, ir = images.split(len(rgb_rows))
        labels = torch.from_numpy(self.split.labels[rgb_rows]).to(self.device)
        return Batch(rgb, ir, labels)

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict(), "augment_rng": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.generator.set_state(state["augment_rng"])


class ImagePool:
    """CycleGAN's history of generated images: D sees a mix of current and earlier fakes.

    Uses the global torch RNG (saved in checkpoints), and its contents are part of the state."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand(1).item() < 0.5:
                index = int(torch.randint(0, self.size, (1,)).item())
                out.append(self.images[index].clone())
                self.images[index] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)

    def state_dict(self) -> dict[str, Any]:
        stacked = torch.stack(self.images).cpu() if self.images else torch.empty(0)
        return {"size": self.size, "images": stacked}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.images = [image.to(device) for image in state["images"]] if state["images"].numel() else []


# ----------------------------------------------------------------------------------------------
# The stage loop


@dataclass
class Phase:
    name: str
    iterations: int


def save_sample_grid(path: Path, columns: list[torch.Tensor], count: int = 8,
                     titles: tuple[str, ...] = ("RGB", "fake IR", "real IR")) -> None:
    """A PNG of image batches ([-1, 1]) side by side, e.g. RGB | fake IR | real IR."""
    from pfanet_cli.plots import save_image_grid

    arrays = [to_uint8(batch[:count].float()).permute(0, 2, 3, 1).cpu().numpy() for batch in columns]
    save_image_grid(path, arrays, titles=titles)


class StageTrainer:
    """Runs the phases of one stage.

    Subclasses set ``stage``, implement ``phases`` and ``step``, and in ``__init__`` fill the state
    the shared accessors read: ``split`` (the training split), ``nets`` (the networks to checkpoint,
    by SPEC key, possibly DDP-wrapped), ``opts`` (optimizers by name), ``batches`` (a
    :class:`BatchSource`) and ``last_images`` (the batches of the latest sample grid).
    """

    stage = ""

    def __init__(self, recipe: Recipe, run: RunDir, data: PreparedData, device: torch.device,
                 distributed: Distributed, show_progress: bool = True) -> None:
        self.recipe, self.run, self.data = recipe, run, data
        self.device, self.distributed = device, distributed
        self.show_progress = show_progress and distributed.is_main
        self.autocast = lambda: autocast_context(device, recipe.train.amp)
        self.phase_index, self.iteration = 0, 0
        self.metrics_state: dict[str, Any] = {}
        self._checkpointed_at = -1
        self.split: PreparedSplit
        self.nets: dict[str, nn.Module] = {}
        self.opts: dict[str, torch.optim.Optimizer] = {}
        self.batches: BatchSource
        self.last_images: list[torch.Tensor] = []

    # --- to implement ------------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        raise NotImplementedError

    def step(self, phase: str, iteration: int) -> dict[str, torch.Tensor]:
        """One training iteration; returns the (detached) losses to log."""
        raise NotImplementedError

    # --- shared accessors --------------------------------------------------------------------
    def networks(self) -> dict[str, nn.Module]:
        return self.nets

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self.opts

    def schedulers(self) -> dict[str, Any]:
        return {}

    def sample_images(self) -> list[torch.Tensor]:
        """Batches to put side by side in the sample grid."""
        return self.last_images

    def images_per_iteration(self) -> int:
        return 2 * self.batches.sampler.batch_size * self.distributed.world_size

    def num_classes(self) -> int:
        return self.split.num_classes

    def architecture(self) -> dict[str, Any]:
        return recipe_to_dict(self.recipe)["model"]

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    # --- checkpoint ----------------------------------------------------------------------------
    def checkpoint_payload(self) -> dict[str, Any]:
        recipe = recipe_to_dict(self.recipe)
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "stage": self.stage,
            "toolkit_version": __version__,
            "recipe": recipe,
            "architecture": self.architecture(),
            "num_classes": self.num_classes(),
            "image_size": [self.recipe.data.height, self.recipe.data.width],
            "dataset": self.data.dataset,
            "dataset_fingerprint": self.data.fingerprint,
            "networks": {key: unwrap(net).state_dict() for key, net in self.networks().items()},
            "optimizers": {key: opt.state_dict() for key, opt in self.optimizers().items()},
            "schedulers": {key: sched.state_dict() for key, sched in self.schedulers().items()},
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
        from pfanet_cli.checkpoint import (
            architecture_differences,
            load_network_state,
            require_stage,
            stored_architecture,
        )

        payload = load_checkpoint(path)
        require_stage(payload, path, (self.stage,), f"resuming {self.stage}")
        differences = architecture_differences(stored_architecture(payload, path), self.architecture())
        if differences:
            raise_incompatible(path, differences)
        for key, net in self.networks().items():
            load_network_state(unwrap(net), payload["networks"][key], key, path)
        for key, opt in self.optimizers().items():
            opt.load_state_dict(payload["optimizers"][key])
        for key, sched in self.schedulers().items():
            sched.load_state_dict(payload["schedulers"][key])
        self.phase_index, self.iteration = int(payload["phase_index"]), int(payload["iteration"])
        self._checkpointed_at = self.global_iteration()
        self.metrics_state = dict(payload.get("metrics", {}))
        self.load_extra_state(payload["state"])
        restore_rng_state(payload["rng"])
        if self.distributed.is_main:
            self.run.truncate_metrics(self.iteration, self.phase_index)

    def write_checkpoint(self, keep: bool) -> Path | None:
        """Rank 0 writes ``last.pt`` (and a kept ``iter-N.pt`` copy when ``keep``)."""
        self._checkpointed_at = self.global_iteration()
        if not self.distributed.is_main:
            return None
        payload = self.checkpoint_payload()
        global_iteration = self.global_iteration()
        if keep:
            kept = self.run.checkpoints / checkpoint_name(global_iteration)
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
        """Train to the end of the last phase and return the final checkpoint (rank 0)."""
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

    def _after_iteration(self, phase: Phase, window: "_LossWindow", report) -> None:
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
        if self.distributed.is_main and (global_iteration % train.sample_every == 0 or done):
            name = f"{self.stage}-{phase.name}-{self.iteration:06d}.png"
            save_sample_grid(self.run.samples / name, self.sample_images())
        if global_iteration % train.checkpoint_every == 0:
            self.write_checkpoint(keep=True)

    def learning_rates(self) -> dict[str, float]:
        return {f"{key}.{i}": group["lr"] for key, opt in self.optimizers().items()
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
    def _progress(self) -> Iterator[Any]:
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


def raise_incompatible(path: Path, differences: list[str]) -> None:
    from pfanet_cli.errors import CheckpointError

    raise CheckpointError(f"{path} was trained with another architecture: {'; '.join(differences)}")


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


def print_stage_header(stage: str, run: RunDir, device: torch.device, distributed: Distributed) -> None:
    if distributed.is_main:
        ranks = f" x {distributed.world_size} processes" if distributed.enabled else ""
        console.print(f"[bold]{stage}[/] on {device}{ranks} -> {run.path}")


# ----------------------------------------------------------------------------------------------
# Running a stage


DEFAULT_NUM_CLASSES = {"sysu": 395, "regdb": 206}
"""Identities of the default training split, used by ``--dry-run`` (which reads no data)."""


@dataclass
class StageResult:
    run: RunDir
    checkpoint: Path | None


def make_scalers(device: torch.device, amp: str, names: tuple[str, ...]) -> dict[str, torch.amp.GradScaler]:
    """One gradient scaler per optimizer step (fp16 on CUDA only; disabled otherwise)."""
    enabled = amp == "fp16" and device.type == "cuda"
    return {name: torch.amp.GradScaler(device.type, enabled=enabled) for name in names}


def optimise(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def prepare_module(module: nn.Module, device: torch.device, recipe: Recipe, distributed: Distributed,
                   sync_bn: bool = False) -> nn.Module:
    """Move to ``device`` (channels-last when asked) and wrap in DDP under torchrun."""
    if sync_bn and distributed.enabled and recipe.train.sync_bn:
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    module = module.to(device)
    if recipe.train.channels_last:
        module = module.to(memory_format=torch.channels_last)
    if distributed.enabled:
        ids = [device.index] if device.type == "cuda" else None
        module = nn.parallel.DistributedDataParallel(module, device_ids=ids, broadcast_buffers=True)
    return module


def check_data_matches_recipe(data: PreparedData, recipe: Recipe) -> None:
    from pfanet_cli.errors import DataError

    if data.image_size != (recipe.data.height, recipe.data.width):
        height, width = data.image_size
        raise DataError(
            f"{data.root} was prepared at {height}x{width} but the recipe asks for "
            f"{recipe.data.height}x{recipe.data.width}; re-run prepare-data with --height/--width "
            f"or set data.height={height} data.width={width}"
        )
    if data.dataset != recipe.data.dataset:
        raise DataError(f"{data.root} holds {data.dataset} but the recipe says data.dataset={recipe.data.dataset}")


def run_stage(trainer_class: type, recipe: Recipe, overrides: list[str], out: Path | None,
              resume: str | None, show_progress: bool = True, **trainer_options: Any) -> StageResult:
    """Set up devices, data and the run directory, then train ``trainer_class`` to the end."""
    from pfanet_cli.prepared import open_prepared
    from pfanet_cli.rundir import initialise_run, resolve_run

    distributed, device = init_distributed(recipe.train.device)
    run, resume_from = _agreed_run(distributed, lambda: resolve_run(recipe, trainer_class.stage, out, resume))
    data = open_prepared(recipe.data.root)
    check_data_matches_recipe(data, recipe)
    set_determinism(recipe.train.deterministic)
    torch.manual_seed(recipe.train.seed)
    trainer = trainer_class(recipe, run, data, device, distributed, show_progress,
                            fresh=resume_from is None, **trainer_options)
    torch.manual_seed(recipe.train.seed + distributed.rank)
    if resume_from is not None:
        trainer.restore(resume_from)
    if distributed.is_main:
        initialise_run(run, recipe, trainer_class.stage, overrides, str(device))
        print_stage_header(trainer_class.stage, run, device, distributed)
    checkpoint = trainer.run_training()
    return StageResult(run, checkpoint)


def _agreed_run(distributed: Distributed, resolve) -> tuple[RunDir, Path | None]:
    """Rank 0 picks the run directory and the checkpoint to resume from; the other ranks use its
    choice (they would otherwise race rank 0's new directory and disagree on timestamps)."""
    if not distributed.enabled:
        return resolve()
    choice = [resolve() if distributed.is_main else None]
    dist.broadcast_object_list(choice, src=0)
    return choice[0]


def network_parameter_counts(recipe: Recipe, stage: str) -> dict[str, int]:
    """Parameter counts of every network a stage builds, without data or pretrained weights."""
    from pfanet_cli.networks import build_networks, count_parameters

    num_classes = DEFAULT_NUM_CLASSES[recipe.data.dataset]
    names = {"generator_rgb2ir": "G_I", "generator_ir2rgb": "G_R", "disc_rgb": "D_R", "disc_ir": "D_I",
             "extractor": "F"}
    keys = tuple(names) if stage == "train-joint" else tuple(names)[:4]
    networks = build_networks(recipe.model, num_classes, joint_discriminator=stage == "train-joint",
                              load_pretrained=False, keys=keys)
    counts = {names[key]: count_parameters(net) for key, net in networks.items()}
    counts["total"] = sum(counts.values())
    return counts
