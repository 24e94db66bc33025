"""The same-modality diagnostic of a SYSU-MM01-layout features file: how well the features match people within
one modality (IR to IR, RGB to RGB), to set beside the cross-modality protocol and show the modality gap.

It is not the SYSU-MM01 protocol and its numbers are never mixed into the protocol's (``pfanet evaluate
--same-modality`` prints and writes them apart, and the demo reports them in their own section):

* ``ir->ir``: every IR test image (cameras 3, 6) is a query; the gallery of each trial holds one IR image per
  (identity, camera), drawn as the AGW sampler draws SYSU-MM01's RGB gallery (``random.seed(trial)``, ids
  ascending, cameras in order, ``random.choice`` over the folder's sorted files).
* ``rgb->rgb``: the same with every RGB test image (cameras 1, 2, 4, 5) and an RGB gallery.
* A gallery image of the query's identity taken by the query's own camera is junk (removed from that query's
  list; the query itself may be drawn into the gallery and is removed by this rule), so a match must come
  from another camera of the same modality: the single-modality ReID rule (Market-1501's). CMC is
  de-duplicated by identity, mAP and mINP are computed on the junk-filtered list, as in the protocol.
"""

from __future__ import annotations

import numpy as np

from pfanet_cli.data.sysu import ALL_CAMERAS, IR_CAMERAS, RGB_CAMERAS
from pfanet_cli.errors import DataError
from pfanet_cli.evaluation.card import protocol_card
from pfanet_cli.evaluation.galleries import camera_folders, check_trials, seeded_draws
from pfanet_cli.evaluation.protocols import EvalResult, check_arrays, check_max_rank, result_of_trials
from pfanet_cli.evaluation.ranking import DEFAULT_MEMORY_BUDGET, RankingEngine, cosine_normalise

DIAGNOSTIC = "sysu-same-modality"
"""The dataset name of the diagnostic's results and cards (never ``sysu``: it is not that protocol)."""
SAME_MODALITY_SETTINGS = {"ir->ir": IR_CAMERAS, "rgb->rgb": RGB_CAMERAS}
"""Setting name -> the cameras of its queries and gallery."""


def evaluate_same_modality(features, pids, camids, paths, *, trials: int = 10, max_rank: int = 20,
                           memory_budget: int = DEFAULT_MEMORY_BUDGET) -> list[EvalResult]:
    """The ``ir->ir`` and ``rgb->rgb`` diagnostics (module docstring) of every test image of a SYSU-MM01-layout
    features file; results with dataset ``sysu-same-modality``, mode the setting's name."""
    feats, pids, camids, paths = check_arrays(features, pids, camids, paths)
    if paths is None:
        raise DataError("the same-modality diagnostic needs the image paths to draw the gallery")
    unknown = np.setdiff1d(np.unique(camids), np.asarray(ALL_CAMERAS))
    if unknown.size:
        raise DataError(f"the same-modality diagnostic is defined on SYSU-MM01 cameras 1..6; the features file "
                        f"holds camera ids {', '.join(str(int(c)) for c in unknown[:8])}")
    check_trials(trials)
    max_rank = check_max_rank(max_rank)
    return [_setting(name, cameras, feats, pids, camids, paths, trials, max_rank, memory_budget)
            for name, cameras in SAME_MODALITY_SETTINGS.items()]


def _setting(name: str, cameras: tuple[int, ...], feats: np.ndarray, pids: np.ndarray, camids: np.ndarray,
             paths: list[str], trials: int, max_rank: int, memory_budget: int) -> EvalResult:
    queries = np.flatnonzero(np.isin(camids, np.asarray(cameras)))
    if queries.size == 0:
        raise DataError(f"same-modality {name}: the features file holds no images of cameras "
                        f"{', '.join(map(str, cameras))}")
    galleries = seeded_draws(camera_folders(pids, camids, paths, cameras), cameras, 1, trials)
    candidates = np.unique(np.concatenate(galleries))
    unit = cosine_normalise(feats)
    engine = RankingEngine(unit[queries], pids[queries], unit[candidates], pids[candidates],
                           query_cameras=camids[queries], candidate_cameras=camids[candidates],
                           memory_budget=memory_budget)
    outcomes = engine.evaluate([([np.searchsorted(candidates, g) for g in galleries], True)])[0]
    card = protocol_card(DIAGNOSTIC, sampler="agw", trials=trials, shot="single", mode=name)
    return result_of_trials(DIAGNOSTIC, name, "single", "agw", outcomes, len(queries), [len(g) for g in galleries],
                            max_rank, card)
