"""The one checkpoint format of every stage (SPEC §4).

A checkpoint is a single ``torch.save`` file of tensors and plain Python values, so it loads with
``torch.load(weights_only=True)``. It carries enough to rebuild every network without the recipe
(architecture arguments, number of classes, image size), the state dicts present, and everything a
training stage needs to continue exactly (optimizers, schedulers, phase, iteration, RNG states,
sampler position, image pools). Writes are atomic: temporary file, fsync, rename.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

import torch

from pfanet_cli import __version__
from pfanet_cli.config import ModelConfig, build_recipe
from pfanet_cli.errors import CheckpointError, UsageError
from pfanet_cli.modeling.build import build_networks
from pfanet_cli.utils.atomic import atomic_write, raise_disk_full
from pfanet_cli.utils.safe_torch import safe_torch_load

CHECKPOINT_FORMAT = "pfanet-checkpoint"
CHECKPOINT_VERSION = 1
STAGES = ("train-gan", "train-joint", "train-agw")
GENERATOR_STAGES = ("train-gan", "train-joint")
"""The stages whose checkpoints hold G_I (what translate needs)."""
FEATURE_STAGES = ("train-joint", "train-agw")
"""The stages whose checkpoints extract test features: PFANet's F (with G_I) or AGW's network."""
ARCHITECTURE_BEFORE_THE_KEY = {"input_norm": "none"}
"""``model`` keys added with a default other than the behaviour before them: a checkpoint written without the
key was trained this way (F fed [-1, 1] images before ``model.input_norm`` existed)."""
CHECKPOINT_ADVICE = "use a checkpoint written by pfanet train-gan, train-joint or train-agw"


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically and durably: a crash or a full disk (:class:`DiskFull`, naming the
    space needed) leaves the previous file untouched."""
    with atomic_write(path, durable=True, size_hint=tensor_bytes(payload)) as handle:
        torch.save(payload, handle)


def tensor_bytes(value: Any) -> int:
    """Bytes of every tensor in a nested structure of dicts, lists and tuples (a checkpoint's size, nearly)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def link_checkpoint(source: Path, target: Path) -> None:
    """Make ``target`` (e.g. ``last.pt``) point at the same bytes as ``source``, atomically."""
    tmp = target.with_name(f".{target.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        try:
            with raise_disk_full(target, source.stat().st_size):
                shutil.copyfile(source, tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    os.replace(tmp, target)


def existing_checkpoint(path: str | Path) -> Path:
    """``path`` when it is a file, else the exit-4 'not found' error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and sanity-check a checkpoint; every failure is a one-line :class:`CheckpointError`."""
    path = existing_checkpoint(path)
    payload = safe_torch_load(path, "checkpoint", CHECKPOINT_ADVICE)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a pfanet checkpoint (no '{CHECKPOINT_FORMAT}' format field)")
    version = payload.get("format_version")
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}; this pfanet {__version__} reads version "
            f"{CHECKPOINT_VERSION}"
        )
    return payload


def require_networks(payload: dict[str, Any], path: Path, keys: Iterable[str], purpose: str) -> None:
    """Exit-4 error naming the state dicts ``purpose`` needs that the checkpoint lacks."""
    missing = [key for key in keys if key not in payload.get("networks", {})]
    if missing:
        raise CheckpointError(
            f"{path} (stage {payload.get('stage')}) has no {', '.join(missing)}, which {purpose} needs"
        )


def require_stage(payload: dict[str, Any], path: Path, stages: Iterable[str], purpose: str) -> None:
    stages = tuple(stages)
    if payload.get("stage") not in stages:
        raise CheckpointError(
            f"{path} is a {payload.get('stage')} checkpoint; {purpose} needs one of: {', '.join(stages)}"
        )


def architecture_differences(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """``key: saved -> wanted`` for every architecture argument that differs."""
    keys = sorted(set(saved) | set(wanted))
    return [f"model.{k}: {saved.get(k)!r} in the checkpoint, {wanted.get(k)!r} requested"
            for k in keys if saved.get(k) != wanted.get(k)]


def load_network_state(module: torch.nn.Module, state: dict[str, torch.Tensor], name: str, path: Path) -> None:
    """``load_state_dict`` that reports an architecture mismatch as one line (exit 4)."""
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"{path}: {name} does not match this architecture ({detail})") from exc


def capture_rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def model_config_from_checkpoint(payload: dict[str, Any], path: Path) -> ModelConfig:
    """The :class:`ModelConfig` stored in a checkpoint, validated like a recipe section (keys it lacks take the
    value the code that wrote it used: :data:`ARCHITECTURE_BEFORE_THE_KEY`, else the default)."""
    try:
        return build_recipe({"model": {**ARCHITECTURE_BEFORE_THE_KEY, **payload["architecture"]}}, str(path)).model
    except (UsageError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: stored architecture is not understood by pfanet {__version__} ({exc})") from exc


def stored_architecture(payload: dict[str, Any], path: Path) -> dict[str, Any]:
    """The checkpoint's architecture arguments with the defaults of keys added since it was written, so a
    checkpoint from an earlier pfanet compares equal to a recipe that leaves the new keys alone."""
    return dataclasses.asdict(model_config_from_checkpoint(payload, path))


def check_architecture(payload: dict[str, Any], path: Path, wanted: dict[str, Any], keys: Iterable[str] | None = None,
                       problem: str | None = None) -> None:
    """Exit-4 error naming every architecture argument (all, or only ``keys``) that differs from ``wanted``;
    ``problem`` is the text before the list (default: the checkpoint was trained with another architecture)."""
    saved = stored_architecture(payload, path)
    if keys is not None:
        saved = {k: saved[k] for k in keys}
        wanted = {k: wanted[k] for k in keys}
    differences = architecture_differences(saved, wanted)
    if differences:
        problem = problem or f"{path} was trained with another architecture"
        raise CheckpointError(f"{problem}: {'; '.join(differences)}")


def restore_networks(path: Path, keys: Iterable[str], purpose: str) -> tuple[dict[str, torch.nn.Module], dict]:
    """Rebuild the networks ``keys`` from a checkpoint's architecture arguments alone, load their
    weights and put them in eval mode. Returns the networks and the checkpoint payload."""
    payload = load_checkpoint(path)
    return rebuild_networks(payload, path, keys, purpose), payload


def rebuild_networks(payload: dict[str, Any], path: Path, keys: Iterable[str],
                     purpose: str) -> dict[str, torch.nn.Module]:
    """The networks ``keys`` of a loaded checkpoint (``payload``, read from ``path``), in eval mode."""
    keys = tuple(keys)
    require_networks(payload, path, keys, purpose)
    config = model_config_from_checkpoint(payload, path)
    networks = build_networks(config, int(payload["num_classes"]), payload["stage"] == "train-joint",
                              load_pretrained=False, keys=keys)
    for key, network in networks.items():
        load_network_state(network, payload["networks"][key], key, path)
        network.eval()
    return networks
