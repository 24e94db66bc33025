"""Where train-joint's generators come from (SPEC §4), and whether they fit the run.

``--init-gan PATH`` names the checkpoint; without it, the newest train-gan run of the recipe (by name, under
``train.runs_root``) that was trained on the same prepared data (the manifest's fingerprint), at the same image
size, with the same generator architecture, and finished at least the recipe's ``gan.iterations`` (and its own).
Runs that differ are skipped; when none is left, exit 2 naming the newest candidate and what differed. A GAN of
other prepared data is never picked up silently: for a RegDB trial, another trial's GAN was trained on images of
this trial's test identities, and a SYSU-MM01 folder prepared train ∪ val holds the val identities a run
prepared with ``--train-split train`` keeps apart. An explicit ``--init-gan`` of other data or another size is
refused too unless ``--init-gan-any``. ``--init-gan none`` starts from random generators on purpose (warned).
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pfanet_cli.config import Recipe, recipe_to_dict
from pfanet_cli.data.prepared import PreparedData
from pfanet_cli.engine.checkpoint import (
    architecture_differences,
    check_architecture,
    load_checkpoint,
    load_network_state,
    require_networks,
    stored_architecture,
)
from pfanet_cli.engine.rundir import find_checkpoints, read_run_info
from pfanet_cli.errors import CheckpointError, UsageError
from pfanet_cli.modeling.build import GENERATOR_ARCHITECTURE, GENERATOR_KEYS
from pfanet_cli.utils.console import console, error_console

INIT_GAN_NONE = "none"
"""``--init-gan none``: random generators, on purpose."""
FINGERPRINT_SHOWN = 12
"""Hex digits of a data fingerprint shown in messages."""


@dataclass(frozen=True)
class GeneratorSource:
    """Where G_I and G_R start from: a checkpoint (and the fingerprint of the data it was trained on), or
    ``none``; :meth:`run_info` is what ``run.yaml`` records."""

    path: str
    fingerprint: str | None = None

    def run_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"init_gan": self.path}
        if self.fingerprint is not None:
            info["init_gan_fingerprint"] = self.fingerprint
        return info


def _short(fingerprint: Any) -> str:
    return str(fingerprint)[:FINGERPRINT_SHOWN] if fingerprint else "not recorded"


def data_differences(payload: dict[str, Any], data: PreparedData, recipe: Recipe) -> list[str]:
    """How the data a checkpoint was trained on differs from this run's: prepared-data fingerprint, image size."""
    differences = []
    if payload.get("dataset_fingerprint") != data.fingerprint:
        differences.append(f"prepared data {_short(payload.get('dataset_fingerprint'))} "
                           f"({payload.get('dataset', '?')}), this run's {_short(data.fingerprint)} "
                           f"({data.dataset}, {data.root})")
    size = tuple(int(v) for v in payload.get("image_size") or ())
    wanted = (recipe.data.height, recipe.data.width)
    if size != wanted:
        shown = "x".join(map(str, size)) or "not recorded"
        differences.append(f"image size {shown}, this run's {wanted[0]}x{wanted[1]}")
    return differences


def candidate_differences(payload: dict[str, Any], path: Path, data: PreparedData, recipe: Recipe) -> list[str]:
    """Everything that rules out a train-gan checkpoint found by train-joint itself (empty: it fits)."""
    differences = data_differences(payload, data, recipe)
    iteration = int(payload.get("iteration", 0))
    own = int(((payload.get("recipe") or {}).get("gan") or {}).get("iterations", 0))
    if iteration < own:
        differences.append(f"unfinished ({iteration} of its {own} iterations)")
    if iteration < recipe.gan.iterations:
        differences.append(f"trained {iteration} iterations, the recipe asks for gan.iterations="
                           f"{recipe.gan.iterations}")
    try:
        saved = stored_architecture(payload, path)
    except CheckpointError as exc:
        return differences + [str(exc)]
    wanted = recipe_to_dict(recipe)["model"]
    differences += architecture_differences({k: saved[k] for k in GENERATOR_ARCHITECTURE},
                                            {k: wanted[k] for k in GENERATOR_ARCHITECTURE})
    return differences


def _random_use(recipe: Recipe) -> str:
    """What random generators mean for this recipe's warm-ups."""
    joint = recipe.joint
    if joint.warmup_images == "ir_and_fake":
        return ", so the feature warm-up learns on fake IR that is noise"
    if joint.generator_warmup_iterations:
        return (f" (the feature warm-up sees real IR only, and the {joint.generator_warmup_iterations}-iteration "
                "generator warm-up trains them through F: AlignGAN's order)")
    return ", and the joint phase starts with them"


def _peek(path: Path) -> dict[str, Any] | None:
    """A checkpoint's payload with its tensors memory-mapped (not read), or None when it cannot be read."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError):
        return None
    return payload if isinstance(payload, dict) and payload.get("stage") == "train-gan" else None


def newest_fitting_gan(recipe: Recipe, data: PreparedData) -> Path:
    """``last.pt`` of the newest train-gan run of the recipe under ``train.runs_root`` that fits this run (see
    the module docstring); exit 2 when there is none, naming the newest candidate and what differed."""
    root = Path(recipe.train.runs_root)
    newest: tuple[Path, list[str]] | None = None
    for last in find_checkpoints(root, ("train-gan",)):
        if read_run_info(last.parent.parent).get("recipe") != recipe.name:
            continue
        payload = _peek(last)
        differences = ["unreadable"] if payload is None else candidate_differences(payload, last, data, recipe)
        if not differences:
            return last
        newest = newest or (last, differences)
    advice = ("run 'pfanet train-gan' with this recipe and data first, or pass --init-gan PATH (--init-gan none "
              "starts from random generators on purpose)")
    if newest is None:
        raise UsageError(f"train-joint needs trained generators, and no finished train-gan run of recipe "
                         f"'{recipe.name}' is under {root}/: {advice}")
    raise UsageError(f"train-joint needs trained generators, and no train-gan run of recipe '{recipe.name}' under "
                     f"{root}/ fits this run; the newest, {newest[0]}, differs: {'; '.join(newest[1])}; {advice}")


def resolve_generators(recipe: Recipe, data: PreparedData, init_gan: Path | str | None, accept_any: bool = False,
                       announce: bool = True) -> tuple[GeneratorSource, dict[str, Any] | None]:
    """Where G_I and G_R start from and that checkpoint's payload (None for ``--init-gan none``). An explicit
    checkpoint of other prepared data or another image size is refused (exit 2) unless ``accept_any``."""
    if init_gan is not None and str(init_gan) == INIT_GAN_NONE:
        if announce:
            error_console.print(f"warning: --init-gan none: G_I and G_R start from random weights"
                                f"{_random_use(recipe)}; this is recorded in run.yaml", soft_wrap=True)
        return GeneratorSource(INIT_GAN_NONE), None
    if init_gan is None:
        path = newest_fitting_gan(recipe, data)
        if announce:
            console.print(f"train-joint: G_I and G_R start from {path} (the newest train-gan run of recipe "
                          f"'{recipe.name}' trained on this data; --init-gan chooses another)", soft_wrap=True)
    else:
        path = Path(init_gan)
    payload = load_checkpoint(path)
    differences = data_differences(payload, data, recipe)
    if differences and not accept_any:
        raise UsageError(f"--init-gan {path} was trained on other data or at another size: {'; '.join(differences)}; "
                         "pass --init-gan-any to start from it anyway")
    if differences and announce:
        error_console.print(f"warning: --init-gan-any: G_I and G_R start from {path}, trained on other data or at "
                            f"another size ({'; '.join(differences)})", soft_wrap=True)
    return GeneratorSource(str(path), payload.get("dataset_fingerprint")), payload


def load_generators(payload: dict[str, Any], path: Path, networks: dict[str, nn.Module],
                    architecture: dict[str, Any]) -> None:
    """Start G_I and G_R from a train-gan (or train-joint) checkpoint's payload built with the same generator
    keys (exit 4 naming every key that differs)."""
    require_networks(payload, path, GENERATOR_KEYS, "train-joint --init-gan")
    check_architecture(payload, path, architecture, GENERATOR_ARCHITECTURE,
                       problem=f"--init-gan {path} has other generators")
    for key in GENERATOR_KEYS:
        load_network_state(networks[key], payload["networks"][key], key, path)
