"""Reading the feature exports of other VI-ReID codebases into the features file (``features.py``), so a
published model's features go through the same protocols, samplers and card as pfanet's own.

Two exports are read (docs/protocols.md has the details):

* ``mat``: one MATLAB file with ``query_f``, ``query_label``, ``query_cam``, ``gallery_f``, ``gallery_label``,
  ``gallery_cam`` -- what Person_reID_baseline_pytorch's ``test.py`` writes (``pytorch_result.mat``) and the
  LLCM repository's ``Visualization/extract.py`` writes (``tsne.mat``).
* ``npy``: the arrays of the AGW-family ``test.py`` scripts (``mangye16/Cross-Modal-Re-ID-baseline``, DDAG,
  CAJ, DEEN, ...) saved under their variable names, as ``.npy`` files in one folder or as one ``.npz``:
  ``query_feat``, ``query_label``, ``query_cam``, ``gall_feat``, ``gall_label``, ``gall_cam``
  (``query_feat_pool`` / ``query_feat_fc`` with ``variant`` ``pool`` / ``fc``; DEEN's ``query_feat1`` ..
  ``query_feat6`` with ``1`` .. ``6``, or ``all`` joined). Camera vectors may be absent for RegDB.

Neither export holds image paths; the samplers need the order of the files inside each (camera, person)
folder. The exporting scripts list each folder's files sorted by name, so the n-th image of a folder in the
export is given the n-th name of that folder in the dataset's layout (``cam3/0006/0002.jpg``), unless a
``paths`` file (one raw-relative path per line: the query rows, then the gallery rows) gives the real ones.
Camera ids follow the toolkit's convention: SYSU-MM01 as exported (1..6, checked against each side's modality,
so another dataset's export is refused here); LLCM exports give the camera number 1..9 for both modalities, and
the side in ``query_modality`` says which is NIR (camid 10 + k); RegDB gets 1 (visible) and 2 (thermal) from the
sides' modalities, and which side is visible must be said (:data:`REGDB_QUERY_SIDES`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io

from pfanet_cli.data import llcm, regdb, sysu
from pfanet_cli.errors import DataError, UsageError
from pfanet_cli.evaluation.features import FeatureSet, validate_arrays

FORMATS = ("auto", "mat", "npy")
MODALITIES = ("ir", "rgb")
MAT_KEYS = {"query": ("query_f", "query_label", "query_cam"), "gallery": ("gallery_f", "gallery_label", "gallery_cam")}
NPY_SIDES = {"query": "query", "gallery": "gall"}
ALL_VARIANTS = "all"
NOTE_JOINED = ("--variant all joined {names} (and the gallery's) into one {dim}-d feature per image; pfanet ranks by "
               "the cosine similarity of the joined vectors, a script that sums the variants' dot products (DEEN's "
               "test.py) by that sum: the two rank alike when the joined vectors are equally long")
REGDB_QUERY_SIDES = ("the AGW baseline's test.py (mangye16/Cross-Modal-Re-ID-baseline) extracts the visible "
                     "images as its query arrays in both directions (rgb), DEEN's (ZYK100/LLCM, DEEN/test.py) the "
                     "thermal ones (ir)")
"""Which images the query arrays of RegDB exports hold (each script's process_test_regdb calls)."""
NOTE_ONE_TRIAL = ("the gallery holds one image per identity and camera (one trial's sample): every trial draws "
                  "that same gallery and multi-shot is not possible; export every gallery candidate to sample trials")


@dataclass
class Side:
    """The rows of one side of an export."""

    features: np.ndarray
    pids: np.ndarray
    cams: np.ndarray | None


def convert_export(source: Path, dataset: str, *, fmt: str = "auto", query_modality: str | None = None,
                   variant: str | None = None, paths_file: Path | None = None) -> tuple[FeatureSet, list[str]]:
    """The export at ``source`` as a validated :class:`FeatureSet` (queries first, then the gallery), and
    notes for the user. ``query_modality`` None: ``ir`` for SYSU-MM01 and LLCM; RegDB exports differ between
    codebases, so there it must be given (:data:`REGDB_QUERY_SIDES`)."""
    if dataset not in ("sysu", "regdb", "llcm"):
        raise UsageError(f"unknown dataset {dataset!r}: choose one of sysu, regdb, llcm")
    query_modality = _query_modality(dataset, query_modality)
    source = Path(source)
    fmt = _detect_format(source) if fmt == "auto" else fmt
    if fmt not in FORMATS[1:]:
        raise UsageError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    notes = []
    sides = _read_mat(source) if fmt == "mat" else _read_npy(source, variant, notes)
    modalities = {"query": query_modality, "gallery": "rgb" if query_modality == "ir" else "ir"}
    camids = {name: _camera_ids(dataset, side, modalities[name], name) for name, side in sides.items()}
    pids = np.concatenate([sides["query"].pids, sides["gallery"].pids])
    cams = np.concatenate([camids["query"], camids["gallery"]])
    paths = _read_paths(paths_file, len(pids)) if paths_file else _layout_paths(dataset, pids, cams)
    feats = np.concatenate([sides["query"].features, sides["gallery"].features])
    provenance = {"feature": f"as exported by another codebase ({fmt} export {source})",
                  "flip": "as exported (not recorded by the export)",
                  "checkpoint": "none: features exported by another codebase",
                  "split": f"converted from {source}: {len(sides['query'].pids):,} query rows ({query_modality}), "
                           f"{len(sides['gallery'].pids):,} gallery rows"}
    result = validate_arrays(feats, pids, cams, paths, dataset=dataset, source=source)
    result.provenance = provenance
    gallery = list(zip(sides["gallery"].pids.tolist(), camids["gallery"].tolist()))
    if dataset != "regdb" and len(set(gallery)) == len(gallery):
        notes.append(NOTE_ONE_TRIAL)
    return result, notes


def _query_modality(dataset: str, given: str | None) -> str:
    if given is None and dataset == "regdb":
        raise UsageError(f"RegDB exports differ in which side is the query: {REGDB_QUERY_SIDES}; pass --query-modality "
                         "rgb or ir")
    if given is not None and given not in MODALITIES:
        raise UsageError(f"--query-modality must be ir or rgb, got {given!r}")
    return given or "ir"


def _detect_format(source: Path) -> str:
    if source.suffix.lower() == ".mat":
        return "mat"
    if source.is_dir() or source.suffix.lower() == ".npz":
        return "npy"
    raise UsageError(f"cannot tell the export format of {source}: give a .mat file, a .npz file or a folder of "
                     ".npy files, or pass --format")


def _read_mat(source: Path) -> dict[str, Side]:
    if not source.is_file():
        raise DataError(f"export {source} not found")
    try:
        mat = scipy.io.loadmat(str(source))
    except Exception as exc:  # noqa: BLE001 - scipy raises many types for a bad file
        raise DataError(f"{source}: not a readable MATLAB file ({exc})") from exc
    return {name: _side(source, {k: mat.get(k) for k in keys}, keys) for name, keys in MAT_KEYS.items()}


def _read_npy(source: Path, variant: str | None, notes: list[str]) -> dict[str, Side]:
    arrays = _npy_arrays(source)
    sides = {}
    for name, prefix in NPY_SIDES.items():
        keys = _feature_keys(source, prefix, _variants(arrays, prefix), variant)
        feats = np.concatenate([np.asarray(arrays[k]).reshape(len(arrays[k]), -1) for k in keys], axis=1) \
            if len(keys) > 1 else arrays[keys[0]]
        joined = "+".join(keys)
        labels = (f"{prefix}_label", f"{prefix}_cam")
        sides[name] = _side(source, {joined: feats, **{k: arrays.get(k) for k in labels}}, (joined, *labels))
        if len(keys) > 1 and name == "query":
            notes.append(NOTE_JOINED.format(names=", ".join(keys), dim=feats.shape[1]))
    return sides


def _variants(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, str]:
    """Variant name -> array name of one side's feature arrays: ``query_feat_pool`` is ``pool``, DEEN's
    ``query_feat1`` is ``1``, a plain ``query_feat`` is ``""``."""
    stem = f"{prefix}_feat"
    found = {key[len(stem):].lstrip("_"): key for key in arrays if key.startswith(stem)}
    return dict(sorted(found.items(), key=lambda item: (len(item[0]), item[0])))


def _feature_keys(source: Path, prefix: str, found: dict[str, str], variant: str | None) -> list[str]:
    """The feature arrays ``variant`` names (``all``: every variant, joined)."""
    named = [v for v in found if v]
    if variant == ALL_VARIANTS and named:
        return [found[v] for v in named]
    wanted = "" if variant is None else variant.removeprefix("feat").lstrip("_")
    if wanted in found:
        return [found[wanted]]
    hint = ""
    if named:
        choices = ", ".join(named[:-1]) + (" or " if len(named) > 1 else "") + named[-1]
        joined = f", or {ALL_VARIANTS} to join them" if len(named) > 1 else ""
        hint = f" (found {', '.join(found.values())}: pass --variant {choices}{joined})"
    asked = f"{prefix}_feat" + (f" array of --variant {variant}" if variant else " array")
    raise DataError(f"{source}: no {asked}{hint}")


def _npy_arrays(source: Path) -> dict[str, np.ndarray]:
    try:
        if source.is_dir():
            return {p.stem: np.load(p, allow_pickle=False) for p in sorted(source.glob("*.npy"))}
        with np.load(source, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except FileNotFoundError as exc:
        raise DataError(f"export {source} not found") from exc
    except (OSError, ValueError) as exc:
        raise DataError(f"{source}: unreadable NumPy export ({exc})") from exc


def _side(source: Path, arrays: dict, keys: tuple[str, str, str]) -> Side:
    feat_key, label_key, cam_key = keys
    missing = [k for k in (feat_key, label_key) if arrays.get(k) is None]
    if missing:
        raise DataError(f"{source}: missing {', '.join(missing)} (an export holds {', '.join(keys)})")
    feats = np.asarray(arrays[feat_key])
    labels = np.asarray(arrays[label_key]).reshape(-1)
    cams = None if arrays.get(cam_key) is None else np.asarray(arrays[cam_key]).reshape(-1)
    if feats.ndim != 2 or len(feats) != len(labels) or (cams is not None and len(cams) != len(labels)):
        shown = f"{feat_key} {feats.shape}, {label_key} {labels.shape}"
        if cams is not None:
            shown += f", {cam_key} {cams.shape}"
        raise DataError(f"{source}: mismatched arrays ({shown}); each row needs a feature, a label and a camera")
    for name, values in ((label_key, labels), (cam_key, cams)):
        if values is not None and not np.issubdtype(values.dtype, np.number):
            raise DataError(f"{source}: {name} must be numbers, got {values.dtype}")
    return Side(feats, labels.astype(np.int64), None if cams is None else cams.astype(np.int64))


def _camera_ids(dataset: str, side: Side, modality: str, name: str) -> np.ndarray:
    if dataset == "regdb":
        return np.full(len(side.pids), regdb.THERMAL if modality == "ir" else regdb.VISIBLE, dtype=np.int64)
    if side.cams is None:
        raise DataError(f"the {name} side of the export has no camera vector ({dataset} needs one)")
    if dataset == "sysu":
        return _sysu_cameras(side.cams, modality, name)
    outside = side.cams[(side.cams < 1) | (side.cams > 9)]
    if outside.size:
        raise DataError(f"the {name} side holds camera {int(outside[0])}; LLCM exports number cameras 1..9")
    return np.array([llcm.camera_id(modality, int(c)) for c in side.cams], dtype=np.int64)


def _sysu_cameras(cams: np.ndarray, modality: str, name: str) -> np.ndarray:
    """SYSU-MM01's camera ids, checked against the side's modality (IR: 3, 6; RGB: 1, 2, 4, 5), so an export of
    another dataset (LLCM numbers cameras 1..9 in both modalities) stops here, not at evaluation."""
    allowed = sysu.IR_CAMERAS if modality == "ir" else sysu.RGB_CAMERAS
    wrong = np.setdiff1d(np.unique(cams), np.asarray(allowed))
    if wrong.size:
        shown = ", ".join(str(int(c)) for c in wrong[:6])
        hint = "an LLCM export? pass --dataset llcm" if (wrong > 6).any() else \
            "pass --query-modality for the side the export's queries come from, or --dataset for another dataset"
        raise DataError(f"the {name} side ({modality.upper()} images) holds cameras {shown}, which are not SYSU-MM01's "
                        f"{modality.upper()} cameras ({', '.join(map(str, allowed))}): {hint}")
    return cams


def _layout_paths(dataset: str, pids: np.ndarray, camids: np.ndarray) -> list[str]:
    """The n-th image of each (camera, person) folder, in export order, named as the dataset's n-th file."""
    seen: dict[tuple[int, int], int] = {}
    paths = []
    for pid, camid in zip(pids.tolist(), camids.tolist()):
        n = seen[(camid, pid)] = seen.get((camid, pid), 0) + 1
        if dataset == "sysu":
            paths.append(f"cam{camid}/{pid:04d}/{n:04d}.jpg")
        elif dataset == "llcm":
            paths.append(f"{llcm.image_folder('test', llcm.modality_of_camera(camid), camid, pid)}/{n:04d}.jpg")
        else:
            paths.append(f"{'Thermal' if camid == regdb.THERMAL else 'Visible'}/{pid}/{n:04d}.bmp")
    return paths


def _read_paths(path: Path, count: int) -> list[str]:
    if not Path(path).is_file():
        raise DataError(f"paths file {path} not found")
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(lines) != count:
        raise DataError(f"{path} lists {len(lines)} paths but the export holds {count} rows (query rows, then gallery)")
    return [line.replace("\\", "/") for line in lines]
