"""The protocol card: every choice behind an evaluation number, carried by every result the toolkit prints
or writes (table, ``--json``, the demo report).

A card has two halves. The protocol half is known where the numbers are computed
(``protocols.py``): dataset, sampler, trials, shot, mode or direction, the camera rule, de-duplication and
re-ranking. The source half says where the features came from: the split they cover, whether they are
flip-summed, which vector, how RGB images were translated (G_I's test-time normalisation), and the
checkpoint (path and how it was chosen: the last one, or the best on a validation split) or the features
file. ``extract`` records the source half in the features it returns
(:func:`extraction_provenance`); ``evaluation.run`` and the demo attach it (:func:`attach_source`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from pfanet_cli import __version__
from pfanet_cli.config import Recipe, build_recipe
from pfanet_cli.data import llcm, regdb, sysu
from pfanet_cli.errors import UsageError
from pfanet_cli.methods import describe_augmentation, describe_method

PROTOCOL_FIELDS = ("dataset", "split", "sampler", "trials", "shot", "mode", "direction", "camera_rule",
                   "deduplication", "rerank", "flip", "feature", "method", "augmentation", "checkpoint",
                   "features_file", "toolkit", "translation")
"""Every field a card may hold, in the order it is shown."""
SOURCE_FIELDS = ("split", "flip", "feature", "method", "augmentation", "checkpoint")
NOT_STATED = "not recorded"
TITLES = {"sysu": "SYSU-MM01", "regdb": "RegDB", "llcm": "LLCM",
          "sysu-same-modality": "SYSU-MM01 layout, same-modality diagnostic (not the SYSU-MM01 protocol)"}
CAMERA_RULES = {
    "sysu": "a cam3 (IR) query never sees cam2 gallery images (same room), whatever the identity; "
            "nothing else is removed",
    "regdb": "none (one visible and one thermal camera)",
    "llcm": "gallery images of the query's identity taken by the query's camera (the same camera number in "
            "either modality) are removed, as the reference eval_llcm does",
    "sysu-same-modality": "gallery images of the query's identity taken by the query's own camera are removed, so a "
                          "match must come from another camera of the same modality",
}
DEDUPLICATION = {
    "sysu": "CMC counts each identity once, at its first occurrence; mAP and mINP on the junk-filtered list",
    "regdb": "none: image-level CMC",
    "llcm": "CMC counts each identity once, at its first occurrence; mAP and mINP on the junk-filtered list",
    "sysu-same-modality": "CMC counts each identity once, at its first occurrence; mAP and mINP on the "
                          "junk-filtered list",
}
MODES = {"all": "all-search (gallery cameras 1, 2, 4, 5)", "indoor": "indoor-search (gallery cameras 1, 2)",
         "ir->ir": "IR queries (cameras 3, 6) against an IR gallery (cameras 3, 6)",
         "rgb->rgb": "RGB queries (cameras 1, 2, 4, 5) against an RGB gallery (cameras 1, 2, 4, 5)"}
SAMPLERS = {
    "official": "official: rows of rand_perm_cam.mat (the SYSU-MM01 MATLAB evaluation's galleries)",
    "agw": "agw: random.seed(trial), ids ascending, cameras in order, random.choice over sorted files "
           "(AGW's process_gallery_sysu)",
    "llcm-seeded": "llcm-seeded: random.seed(trial), ids ascending, cameras in order, random.choice over "
                   "sorted files (the LLCM reference's process_gallery_llcm)",
    "none": "none: the split's fixed query and gallery sets",
}
DIRECTIONS = {
    "v2t": "v2t: visible queries, thermal gallery",
    "t2v": "t2v: thermal queries, visible gallery",
    "ir2vis": "ir2vis: every NIR test image is a query; the visible gallery is drawn per trial "
              "(the reference's test_mode [1, 2])",
    "vis2ir": "vis2ir: the reference's test_mode [2, 1] with its role swap: the NIR images drawn per trial "
              "are scored as queries against every visible test image",
}
FEATURE = "pooled v: F's global-average-pooled feature map (after layer4 and MMM), the SPEC §3 test feature"
FLIP = "flip-summed: v(image) + v(horizontally flipped image), then L2-normalised"
AGW_FEATURES = {
    "fc": "fc: AGW's BN-neck output (BatchNorm1d of the pooled feature map), L2-normalised",
    "pool": "pool: AGW's pooled feature map (GeM or average, as trained), L2-normalised",
}
AGW_FLIP = {
    False: "not flipped (AGW's test.py); RGB images through the visible stem, IR through the thermal stem",
    True: "mean of the L2-normalised features of the image and of its horizontal flip, L2-normalised (CAJ's "
          "testa.py); RGB images through the visible stem, IR through the thermal stem",
}
TRANSLATIONS = {
    "running": "RGB -> fake IR by G_I in eval mode, its InstanceNorm with the running statistics of training "
               "(model.generator_test_norm = running)",
    "instance": "RGB -> fake IR by G_I in eval mode, its InstanceNorm with each image's own statistics, as in "
                "training (model.generator_test_norm = instance)",
}
NO_TRANSLATION = "none: RGB images go into F as they are"
GREY_TRANSLATION = "RGB -> grey by a fixed luma conversion (model.pixel_alignment = grey; no generator)"
AGW_TRANSLATION = "none: AGW's RGB images go through its visible stem"


def protocol_card(dataset: str, *, sampler: str, trials: int, shot: str | None = None, mode: str | None = None,
                  direction: str | None = None, rerank: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The protocol half of a card."""
    card: dict[str, Any] = {"dataset": TITLES.get(dataset, dataset), "sampler": SAMPLERS.get(sampler, sampler),
                            "trials": int(trials)}
    if shot is not None:
        card["shot"] = {"single": "single-shot (1 image per identity and camera)",
                        "multi": "multi-shot (10 images per identity and camera)"}.get(shot, shot)
    if mode is not None:
        card["mode"] = MODES.get(mode, mode)
    if direction is not None:
        card["direction"] = DIRECTIONS.get(direction, direction)
    card["camera_rule"] = CAMERA_RULES[dataset]
    card["deduplication"] = DEDUPLICATION[dataset]
    card["rerank"] = dict(rerank) if rerank else "off"
    card["toolkit"] = f"pfanet {__version__}"
    return card


def extraction_provenance(checkpoint: str, payload: Mapping[str, Any], translate: bool,
                          split: str | None = None, agw_test: tuple[str, bool] | None = None,
                          generator_norm: str = "running") -> dict[str, Any]:
    """The source half of a card for features ``extract`` computed with ``checkpoint`` (its loaded payload);
    ``agw_test``: the (vector, flip) of an AGW network's features; ``generator_norm``: what G_I's InstanceNorm
    used (``model.generator_test_norm``)."""
    recipe = payload.get("recipe") or {}
    if agw_test is not None:
        feature, flip = AGW_FEATURES[agw_test[0]], AGW_FLIP[agw_test[1]]
    else:
        triplet = (recipe.get("joint") or {}).get("triplet_feature")
        feature = FEATURE + (f"; the triplet loss trained joint.triplet_feature = {triplet}" if triplet else "")
        flip = FLIP + _rgb_input(recipe, translate)
    source = {"flip": flip, "feature": feature, **training_description(recipe, payload.get("stage")),
              "checkpoint": {"path": str(checkpoint), "chosen": checkpoint_choice(payload),
                             "stage": payload.get("stage"), "iteration": payload.get("iteration")},
              "translation": _translation(recipe, translate, agw_test is not None, generator_norm)}
    if split is not None:
        source["split"] = split
    return source


def _is_grey(recipe: Mapping[str, Any]) -> bool:
    """A checkpoint of the ablation without the GAN (``model.pixel_alignment: grey``): G_I is the luma conversion."""
    return (recipe.get("model") or {}).get("pixel_alignment") == "grey"


def _rgb_input(recipe: Mapping[str, Any], translate: bool) -> str:
    """What the flip line says the RGB images went through before F."""
    if not translate:
        return "; RGB images as they are"
    if _is_grey(recipe):
        return "; RGB images converted to grey first"
    return "; RGB images translated to fake IR by G_I first"


def _translation(recipe: Mapping[str, Any], translate: bool, agw: bool, generator_norm: str) -> str:
    """How RGB images reached the feature network: AGW's visible stem, as they are, the grey ablation's luma
    conversion, or G_I with its test-time InstanceNorm."""
    if agw:
        return AGW_TRANSLATION
    if not translate:
        return NO_TRANSLATION
    if _is_grey(recipe):
        return GREY_TRANSLATION
    return TRANSLATIONS.get(generator_norm, generator_norm)


def training_description(recipe: Mapping[str, Any], stage: str | None) -> dict[str, str]:
    """The card's ``method`` and ``augmentation`` from a checkpoint's stored recipe (keys it lacks take their
    defaults, which is what the code that wrote it did); nothing when the recipe is not understood."""
    try:
        parsed: Recipe = build_recipe(dict(recipe), "the checkpoint's recipe")
    except (UsageError, TypeError, ValueError):
        return {}
    return {"method": describe_method(parsed), "augmentation": describe_augmentation(parsed, stage)}


def checkpoint_choice(payload: Mapping[str, Any]) -> str:
    """How a checkpoint was chosen: ``last`` (no selection recorded), or the rule and value of its selection."""
    selection = payload.get("selection")
    if not isinstance(selection, Mapping):
        return "last (the end of training; no model selection recorded)"
    value = selection.get("value")
    shown = f" = {float(value):.2f}" if isinstance(value, (int, float)) else ""
    where = selection.get("global_iteration")
    at = f" at iteration {where}" if where is not None else ""
    return f"{selection.get('rule', 'selected')} ({selection.get('metric', 'metric')}{shown} on the " \
           f"{selection.get('split', 'validation')} split{at})"


def prepared_split(dataset: str, manifest: Mapping[str, Any], root: str, split: str) -> str:
    """Which split of which prepared folder features were extracted from (RegDB: with its trial)."""
    trial = (manifest.get("settings") or {}).get("trial")
    where = f" (trial {trial})" if dataset == "regdb" and trial is not None else ""
    return f"the {split} split of {root}{where}"


def split_summary(dataset: str, pids: np.ndarray, camids: np.ndarray, stated: str | None = None) -> str:
    """The test split the features cover: its id list and size (and where it was extracted from)."""
    ids = len(np.unique(pids))
    if dataset == "sysu":
        ir = int(np.isin(camids, sysu.IR_CAMERAS).sum())
        text = f"SYSU-MM01 test ids (exp/test_id.txt): {ids} ids, {ir:,} IR and {len(camids) - ir:,} RGB images"
    elif dataset == "llcm":
        ir = int(np.isin(camids, llcm.NIR_CAMERAS).sum())
        text = f"LLCM test ids (idx/test_id.txt): {ids} ids, {ir:,} NIR and {len(camids) - ir:,} visible images"
    else:
        thermal = int((camids == regdb.THERMAL).sum())
        text = f"RegDB test split (idx/test_{{visible,thermal}}_T.txt): {ids} ids, {len(camids) - thermal:,} " \
               f"visible and {thermal:,} thermal images"
    return f"{text}; {stated}" if stated else text


def attach_source(results: Sequence, source: Mapping[str, Any]) -> None:
    """Add the source half (split, flip, feature, checkpoint or features file) to every result's card."""
    for result in results:
        result.card.update({key: value for key, value in source.items() if key in PROTOCOL_FIELDS})


def complete_card(card: Mapping[str, Any]) -> dict[str, Any]:
    """The card in field order, every source field present (``not recorded`` when nothing said it)."""
    full = dict(card)
    for key in SOURCE_FIELDS:
        full.setdefault(key, NOT_STATED)
    return {key: full[key] for key in PROTOCOL_FIELDS if key in full}


def describe(value: Any) -> str:
    """One line for a card value (a dict such as the checkpoint or the re-ranking as ``key value`` pairs)."""
    if isinstance(value, Mapping):
        return ", ".join(f"{key} {item}" for key, item in value.items() if item is not None)
    return str(value)


def card_rows(cards: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(field, value) rows of several results' cards; a field whose value differs lists each, in order."""
    rows = []
    completed = [complete_card(card) for card in cards]
    for key in PROTOCOL_FIELDS:
        values = [describe(card[key]) for card in completed if key in card]
        if values:
            distinct = list(dict.fromkeys(values))
            rows.append((key.replace("_", " "), distinct[0] if len(distinct) == 1 else " | ".join(distinct)))
    return rows
