"""Model selection on the validation identities (SPEC §4): with SYSU-MM01 prepared with ``--train-split
train``, the 99 val ids are kept apart; every ``joint.validate_every`` iterations train-joint (``agw.validate_every``:
train-agw) runs the
SYSU-MM01 all-search single-shot protocol on them (IR queries, an RGB gallery sampled per trial with the
AGW rule, cam3 queries never matched with cam2) and keeps ``best.pt`` by val mAP beside ``last.pt``.
The test split is never opened here: it plays no part in choosing a model.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from pfanet_cli.data.prepared import PreparedData
from pfanet_cli.errors import DataError
from pfanet_cli.inference.feature_model import compute_features
from pfanet_cli.evaluation.protocols import evaluate_sysu_settings
from pfanet_cli.utils.console import console

VAL_SPLIT = "val"
BEST_NAME = "best.pt"
SELECTION_RULE = "best val mAP"
SELECTION_METRIC = "mAP"
VAL_SETTING = ("all", "single")


@contextlib.contextmanager
def evaluation_mode(*modules: nn.Module) -> Iterator[None]:
    """Inside: the modules in eval mode. After: every submodule back in the mode it had (training goes on
    exactly as if nothing had happened: eval-mode forwards change no running statistics)."""
    modes = [(module, module.training) for network in modules for module in network.modules()]
    try:
        for network in modules:
            network.eval()
        yield
    finally:
        for module, training in modes:
            module.training = training


@dataclass
class SelectionRecord:
    """The best validation so far (part of a checkpoint's state, so a resumed run keeps choosing the same)."""

    value: float | None = None
    global_iteration: int | None = None

    def improves(self, value: float) -> bool:
        return self.value is None or value > self.value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "global_iteration": self.global_iteration}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value, self.global_iteration = state["value"], state["global_iteration"]

    def selection(self) -> dict[str, Any]:
        """The ``"selection"`` entry of ``best.pt``: how the checkpoint was chosen."""
        return {"rule": SELECTION_RULE, "metric": SELECTION_METRIC, "value": float(self.value),
                "global_iteration": int(self.global_iteration), "split": VAL_SPLIT}


class Validator:
    """The val split of a prepared SYSU-MM01 folder and the protocol run on it."""

    def __init__(self, data: PreparedData, trials: int, device: torch.device, batch_size: int = 64,
                 key: str = "joint.validate_every") -> None:
        if data.dataset != "sysu" or VAL_SPLIT not in data.splits:
            raise DataError(
                f"{key} needs the SYSU-MM01 val identities kept apart, and {data.root} has no "
                f"'{VAL_SPLIT}' split; run 'pfanet prepare-data sysu --train-split train' "
                f"or set {key}=0"
            )
        self.split = data.split(VAL_SPLIT)
        self.trials, self.device, self.batch_size = trials, device, batch_size

    def evaluate(self, extractor: nn.Module, generator: nn.Module | None) -> dict[str, float]:
        """Metrics (percent) of the current F (and G_I for the RGB gallery) or AGW network, in eval mode as
        ``extract`` runs them; the networks are back in their training modes afterwards."""
        split = self.split
        networks = [extractor] + ([generator] if generator is not None else [])
        with evaluation_mode(*networks):
            features = compute_features(extractor, generator, split.images, ~split.is_ir, split.image_size,
                                        self.batch_size, self.device)
        result, = evaluate_sysu_settings(features, split.pids, split.camids, list(split.paths), [VAL_SETTING],
                                         trials=self.trials, sampler="agw")
        return dict(result.metrics)


def due(every: int, global_iteration: int, last: bool) -> bool:
    """Whether a stage validating ``every`` iterations validates after ``global_iteration`` (and at its end)."""
    return bool(every) and (global_iteration % every == 0 or last)


def record_validation(trainer: Any, phase_name: str, metrics: dict[str, float]) -> None:
    """Keep a stage's validation (rank 0): its ``metrics.jsonl`` row, a line on screen, and ``best.pt`` with its
    ``selection`` when val mAP beats every earlier one (``trainer.selection`` remembers it across resumes)."""
    global_iteration = trainer.global_iteration()
    best = trainer.selection.improves(metrics["mAP"])
    if best:
        trainer.selection.value, trainer.selection.global_iteration = metrics["mAP"], global_iteration
    trainer.run.append_metrics({"stage": trainer.stage, "phase": phase_name, "phase_order": trainer.phase_index,
                                "iteration": trainer.iteration, "global_iteration": global_iteration,
                                "val": metrics, "best": best})
    console.print(f"{trainer.stage} val at {global_iteration}: R1 {metrics['r1']:.2f}  mAP {metrics['mAP']:.2f}"
                  + (f"  (best so far -> {BEST_NAME})" if best else ""), soft_wrap=True)
    if best:
        trainer.write_selected_checkpoint(trainer.run.checkpoints / BEST_NAME, trainer.selection.selection())
