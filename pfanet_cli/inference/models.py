"""Which feature model a command runs: a pfanet checkpoint (PyTorch) or an ONNX export folder (onnxruntime)."""

from __future__ import annotations

from pathlib import Path

from pfanet_cli.engine.checkpoint import FEATURE_STAGES
from pfanet_cli.engine.rundir import newest_checkpoint
from pfanet_cli.errors import UsageError
from pfanet_cli.inference.feature_model import CheckpointModel, FeatureModel
from pfanet_cli.inference.onnx_model import OnnxModel


def open_feature_model(checkpoint: Path | None, onnx: Path | None = None, *, translate: bool = True,
                       device: str = "cpu", runs_root: Path = Path("runs"), purpose: str = "extract",
                       require_rgb: bool = True, feature: str | None = None,
                       generator_norm: str | None = None) -> FeatureModel:
    """The export folder ``onnx``, else ``checkpoint``, else the newest train-joint or train-agw checkpoint under
    ``runs_root``. ``require_rgb``: a model without G_I is an error when ``translate`` is on. ``feature``: AGW's
    test vector, ``generator_norm``: G_I's test-time InstanceNorm (checkpoints only)."""
    if onnx is not None and checkpoint is not None:
        raise UsageError("give --checkpoint or --onnx, not both")
    if onnx is not None:
        if feature is not None:
            raise UsageError("--feature chooses an AGW checkpoint's test vector; an ONNX export has its feature built in")
        if generator_norm is not None:
            raise UsageError(f"--generator-norm {generator_norm}: an ONNX export's G_I norm was fixed at export "
                             "(its model.json names it); export the checkpoint again to change it")
        return OnnxModel(Path(onnx), translate=translate, device=device, require_rgb=require_rgb)
    checkpoint = Path(checkpoint) if checkpoint else newest_checkpoint(runs_root, FEATURE_STAGES, purpose)
    return CheckpointModel(checkpoint, translate, device, purpose, require_rgb, feature, generator_norm)
