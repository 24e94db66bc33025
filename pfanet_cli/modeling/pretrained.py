"""ImageNet (or other torchvision-layout) weights for F's ResNet trunk and AGW's stems and shared layers, from
the torch hub cache or a local file. Nothing is ever downloaded and there is never a silent fallback to random weights."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from pfanet_cli.errors import CheckpointError, UsageError
from pfanet_cli.modeling.agw import AgwNet
from pfanet_cli.modeling.extractor import FeatureExtractor
from pfanet_cli.utils.safe_torch import safe_torch_load

# torchvision's IMAGENET1K_V1 files (the weights the ReID literature uses), then the older file names of the
# same weights that a torch hub cache may still hold.
_IMAGENET_FILES: dict[str, tuple[str, ...]] = {
    "resnet18": ("resnet18-f37072fd.pth", "resnet18-5c106cde.pth"),
    "resnet34": ("resnet34-b627a593.pth", "resnet34-333f7ec4.pth"),
    "resnet50": ("resnet50-0676ba61.pth", "resnet50-19c8e357.pth"),
}
_DOWNLOAD_ROOT = "https://download.pytorch.org/models/"


def imagenet_weight_file(backbone: str) -> Path:
    """Where the torch hub cache keeps torchvision's ImageNet file for ``backbone`` (it may not exist)."""
    if backbone not in _IMAGENET_FILES:
        raise UsageError(f"model.backbone={backbone!r} is not one of {', '.join(_IMAGENET_FILES)}")
    return Path(torch.hub.get_dir()) / "checkpoints" / _IMAGENET_FILES[backbone][0]


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    obj = safe_torch_load(path, "backbone weights file", "replace the file")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"backbone weights {path} do not hold a state dict of tensors; replace the file")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def _weights_path(backbone: str, spec: str) -> Path:
    """The file ``spec`` names: ``imagenet`` (torchvision's file in the torch hub cache) or a local path; a missing
    file is a :class:`CheckpointError` saying where to put it."""
    if spec.lower() == "imagenet":
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        candidates = [hub / name for name in _IMAGENET_FILES[backbone]]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            name = _IMAGENET_FILES[backbone][0]
            raise CheckpointError(
                f"ImageNet weights for {backbone} are not on disk: put {name} (from {_DOWNLOAD_ROOT}{name}) at "
                f"{candidates[0]}, or set model.pretrained to a local file, or model.pretrained=none"
            )
        return path
    path = Path(os.path.expanduser(spec))
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise CheckpointError(
            f"backbone weights file {path} {what}; set model.pretrained to a torchvision {backbone} "
            "state dict, imagenet, or none"
        )
    return path


def read_trunk_weights(backbone: str, spec: str, target: dict[str, Tensor]) -> dict[str, Tensor] | None:
    """The torchvision-layout trunk weights ``spec`` names (None for ``"none"``), checked against ``target`` (the
    trunk's state dict under torchvision's names): every key present with its shape (``num_batches_tracked`` may
    be absent), ``fc.*`` ignored, any other key an error."""
    spec = str(spec).strip()
    if spec.lower() == "none":
        return None
    path = _weights_path(backbone, spec)
    state = {k: v for k, v in _read_state_dict(path).items() if not k.startswith("fc.")}
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in target]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise CheckpointError(
            f"backbone weights {path} do not fit a torchvision {backbone}: keys {', '.join(parts)}; "
            f"give a {backbone} file"
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(target[key].shape):
            raise CheckpointError(
                f"backbone weights {path} do not fit a torchvision {backbone}: {key} has shape "
                f"{tuple(value.shape)}, expected {tuple(target[key].shape)}"
            )
    return state


def load_imagenet_weights(extractor: FeatureExtractor, spec: str) -> None:
    """Load ImageNet (or other torchvision-layout) weights into F's ResNet trunk.

    ``spec``: ``"none"`` (keep the random initialisation), ``"imagenet"`` (torchvision's file from the torch hub
    cache, ``torch.hub.get_dir()/checkpoints/<file>``) or a path to a local file. Nothing is ever downloaded and
    there is no silent fallback: a missing, unreadable or mismatching file raises :class:`CheckpointError`.
    All trunk keys must be present with the right shapes; ``fc.*`` is ignored; other extra keys are an error."""
    state = read_trunk_weights(extractor.backbone_name, spec, extractor.backbone.state_dict())
    if state is not None:
        extractor.backbone.load_state_dict(state, strict=True)


def load_agw_imagenet_weights(net: AgwNet, spec: str) -> None:
    """AGW's initialisation: both stems from the file's conv1 and bn1 (each of AGW's modality modules is a whole
    pretrained ResNet), the shared layer1 .. layer4 from its layers; the same file rules as
    :func:`load_imagenet_weights`."""
    stem, layers = net.visible.state_dict(), net.backbone.state_dict()
    state = read_trunk_weights(net.backbone_name, spec, {**stem, **layers})
    if state is None:
        return
    stem_state = {key: value for key, value in state.items() if key in stem}
    net.visible.load_state_dict(stem_state, strict=True)
    net.thermal.load_state_dict(stem_state, strict=True)
    net.backbone.load_state_dict({key: value for key, value in state.items() if key in layers}, strict=True)
