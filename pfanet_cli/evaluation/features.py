"""The features file that ``extract`` writes and ``evaluate`` reads (SPEC §1).

A ``.npz`` (no pickled objects) with

* ``features`` float32, N x D;
* ``pids`` int64, N;
* ``camids`` int64, N (SYSU-MM01: 1..6; RegDB: 1 visible, 2 thermal);
* ``paths`` str, N, relative to the raw dataset root (``cam3/0006/0001.jpg``);
* optional ``dataset``: ``"sysu"`` or ``"regdb"``;
* optional ``perm_mat``: the raw bytes of the official ``rand_perm_cam.mat`` as a uint8 vector, so
  the file carries the official gallery permutations and needs nothing else;
* optional ``provenance``: one JSON string saying how the features were made (the source half of the
  protocol card, ``evaluation/card.py``: split, flip, feature, method, augmentation, checkpoint); read by
  :func:`read_provenance`.

For SYSU-MM01 it holds every test image of both modalities (queries and every gallery candidate).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pfanet_cli.data.datasets import DATASETS
from pfanet_cli.data.sysu import RandPerm, load_rand_perm_cam
from pfanet_cli.errors import DataError
from pfanet_cli.utils.atomic import atomic_write

REQUIRED_KEYS = ("features", "pids", "camids", "paths")
OPTIONAL_KEYS = ("dataset", "perm_mat")


@dataclass
class FeatureSet:
    """A validated features file (or the same arrays from an extraction in memory)."""

    features: np.ndarray          # float32 (N, D)
    pids: np.ndarray              # int64 (N,)
    camids: np.ndarray            # int64 (N,)
    paths: list[str]
    dataset: str | None = None
    perm_mat_bytes: bytes | None = None
    source: Path | None = None
    provenance: dict | None = None
    """How the features were made (``extract`` records it; see :func:`read_provenance`)."""

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def perm(self) -> RandPerm | None:
        """The carried official permutation, or None when the file has none."""
        if self.perm_mat_bytes is None:
            return None
        try:
            return load_rand_perm_cam(self.perm_mat_bytes)
        except DataError as exc:
            raise DataError(f"the permutation carried in the features file is unusable: {exc}") from exc


def _where(source: str | Path | None) -> str:
    return f"{source}: " if source is not None else ""


def validate_arrays(features, pids, camids, paths, *, dataset: str | None = None,
                    source: str | Path | None = None, keep_float_dtype: bool = False) -> FeatureSet:
    """Check shapes, dtypes and values; returns a :class:`FeatureSet` with the contract's dtypes.

    ``paths=None`` skips the paths (protocols that need none); ``keep_float_dtype`` keeps float64
    features as they are (the evaluation API) instead of the file contract's float32.
    Raises :class:`DataError` naming the problem (and the file when ``source`` is given)."""
    at = _where(source)
    feats = np.asarray(features)
    if feats.ndim != 2:
        raise DataError(f"{at}'features' must be a 2-D N x D matrix, got {feats.ndim}-D shape {feats.shape}")
    if feats.shape[0] == 0 or feats.shape[1] == 0:
        raise DataError(f"{at}'features' is empty (shape {feats.shape})")
    if not np.issubdtype(feats.dtype, np.floating):
        raise DataError(f"{at}'features' must be floating point (float32), got {feats.dtype}")
    n = feats.shape[0]
    checked = {}
    for name, arr in (("pids", pids), ("camids", camids)):
        arr = np.asarray(arr)
        if arr.ndim != 1:
            raise DataError(f"{at}'{name}' must be a 1-D vector, got shape {arr.shape}")
        if not (np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_):
            raise DataError(f"{at}'{name}' must be integers (int64), got {arr.dtype}")
        checked[name] = arr.astype(np.int64)
    lengths = {"features": n, "pids": len(checked["pids"]), "camids": len(checked["camids"])}
    path_list = [] if paths is None else _path_list(paths, at)
    if paths is not None:
        lengths["paths"] = len(path_list)
    if len(set(lengths.values())) != 1:
        shown = ", ".join(f"{k} {v}" for k, v in lengths.items())
        raise DataError(f"{at}mismatched lengths ({shown}); every array needs one entry per image")
    _check_rows(feats, path_list, at)
    if dataset is not None and dataset not in DATASETS:
        raise DataError(f"{at}'dataset' is {dataset!r}, expected one of {', '.join(DATASETS)}")
    return FeatureSet(
        features=feats if keep_float_dtype else np.ascontiguousarray(feats, dtype=np.float32),
        pids=checked["pids"],
        camids=checked["camids"],
        paths=path_list,
        dataset=dataset,
        source=Path(source) if source is not None else None,
    )


def _check_rows(feats: np.ndarray, paths: list[str], at: str) -> None:
    """Every row finite and not all zero (neither has a direction to rank by), every path once."""
    for problem, bad in (("NaN or inf values", ~np.isfinite(feats).all(axis=1)),
                         ("only zeros", ~feats.any(axis=1))):
        rows = np.flatnonzero(bad)
        if len(rows):
            named = f", {paths[int(rows[0])]}" if paths else ""
            raise DataError(f"{at}'features' holds {problem} in {len(rows)} rows (first: row {int(rows[0])}{named}); "
                            "re-extract the features")
    if len(set(paths)) != len(paths):
        first = {}
        for row, path in enumerate(paths):
            if path in first:
                raise DataError(f"{at}path {path} appears twice (rows {first[path]} and {row}); every image must "
                                "appear once")
            first[path] = row


def _path_list(paths, at: str) -> list[str]:
    path_arr = np.asarray(paths)
    if path_arr.ndim != 1:
        raise DataError(f"{at}'paths' must be a 1-D vector of strings, got shape {path_arr.shape}")
    if path_arr.dtype.kind not in "US" and not (path_arr.size == 0 and path_arr.dtype.kind == "f"):
        raise DataError(f"{at}'paths' must be strings, got {path_arr.dtype}")
    try:
        return [p.decode("utf-8") if isinstance(p, bytes) else str(p) for p in path_arr.tolist()]
    except UnicodeDecodeError as exc:
        raise DataError(f"{at}'paths' holds bytes that are not UTF-8 text ({exc.reason})") from exc


def save_features(path: str | Path, features, pids, camids, paths, *, dataset: str | None = None,
                  perm_mat_bytes: bytes | None = None, provenance: dict | None = None) -> Path:
    """Validate and write a features file atomically (temporary file in the same folder, fsync, rename)."""
    path = Path(path)
    fs = validate_arrays(features, pids, camids, paths, dataset=dataset)
    arrays = {
        "features": fs.features,
        "pids": fs.pids,
        "camids": fs.camids,
        "paths": np.asarray(fs.paths, dtype=str) if fs.paths else np.zeros(0, dtype="<U1"),
    }
    if dataset is not None:
        arrays["dataset"] = np.asarray(dataset)
    if perm_mat_bytes is not None:
        arrays["perm_mat"] = np.frombuffer(bytes(perm_mat_bytes), dtype=np.uint8)
    if provenance is not None:
        arrays["provenance"] = np.asarray(json.dumps(provenance, sort_keys=True))
    with atomic_write(path, durable=True, size_hint=sum(a.nbytes for a in arrays.values())) as handle:
        np.savez(handle, **arrays)
    return path


def save_feature_set(path: str | Path, feature_set: FeatureSet) -> Path:
    """:func:`save_features` for a :class:`FeatureSet` (an extraction or a loaded file)."""
    return save_features(path, feature_set.features, feature_set.pids, feature_set.camids, feature_set.paths,
                         dataset=feature_set.dataset, perm_mat_bytes=feature_set.perm_mat_bytes,
                         provenance=feature_set.provenance)


def read_provenance(path: str | Path) -> dict | None:
    """The ``provenance`` a features file carries, None when it has none or it is unreadable (a file from
    another codebase, or written before the key existed: the card then says ``not recorded``)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "provenance" not in npz.files:
                return None
            value = npz["provenance"]
            parsed = json.loads(str(value.item())) if value.ndim == 0 and value.dtype.kind in "US" else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return None
    return parsed if isinstance(parsed, dict) else None


def load_features(path: str | Path) -> FeatureSet:
    """Read and validate a features file; every problem is a :class:`DataError` naming the file. Nothing is
    unpickled, and an array header that claims more data than the file holds is refused before any memory
    is allocated for it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"features file {path} not found (write one with `pfanet extract`)")
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - whatever a damaged file makes numpy raise
        raise DataError(f"{path}: not a readable features .npz ({_reason(exc)})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a single .npy array, expected an .npz with {', '.join(REQUIRED_KEYS)}")
    with npz:
        missing = [k for k in REQUIRED_KEYS if k not in npz.files]
        if missing:
            raise DataError(
                f"{path}: missing key{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                f"(a features file holds {', '.join(REQUIRED_KEYS)}; found {', '.join(npz.files) or 'nothing'})"
            )
        arrays = _read_arrays(npz, path, [k for k in REQUIRED_KEYS + OPTIONAL_KEYS if k in npz.files])
    dataset = None
    if "dataset" in arrays:
        value = arrays["dataset"]
        if value.ndim != 0 or value.dtype.kind not in "US":
            raise DataError(f"{path}: 'dataset' must be one string, got {value.dtype} shape {value.shape}")
        item = value.item()
        dataset = item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)
    fs = validate_arrays(arrays["features"], arrays["pids"], arrays["camids"], arrays["paths"], dataset=dataset,
                         source=path)
    if "perm_mat" in arrays:
        perm = arrays["perm_mat"]
        if perm.dtype != np.uint8 or perm.ndim != 1:
            raise DataError(f"{path}: 'perm_mat' must be the bytes of rand_perm_cam.mat as a 1-D uint8 array, "
                            f"got {perm.dtype} shape {perm.shape}")
        fs.perm_mat_bytes = perm.tobytes()
    return fs


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _read_arrays(npz: np.lib.npyio.NpzFile, path: Path, keys: list[str]) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of an open .npz, each header checked first (no Python objects, no more data
    claimed than the member holds)."""
    arrays = {}
    for key in keys:
        try:
            _check_member(npz, key, path)
            arrays[key] = npz[key]
        except DataError:
            raise
        except ValueError as exc:
            if "allow_pickle" in str(exc) or "object" in str(exc).lower():
                raise DataError(f"{path}: '{key}' holds Python objects, which are never unpickled; store it as a "
                                "plain array (paths as strings)") from None
            raise DataError(f"{path}: corrupt array '{key}' ({_reason(exc)})") from None
        except Exception as exc:  # noqa: BLE001 - zip, zlib, EOF and memory errors of a damaged file
            raise DataError(f"{path}: corrupt array '{key}' ({_reason(exc)})") from None
    return arrays


def _check_member(npz: np.lib.npyio.NpzFile, key: str, path: Path) -> None:
    name = key if key in npz.zip.namelist() else f"{key}.npy"
    info = npz.zip.getinfo(name)
    with npz.zip.open(name) as member:
        version = np.lib.format.read_magic(member)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise DataError(f"{path}: '{key}' has an unknown .npy format version {version}")
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = reader(member)
        header_size = member.tell()
    if dtype.hasobject:
        raise DataError(f"{path}: '{key}' holds Python objects, which are never unpickled; store it as a plain "
                        "array (paths as strings)")
    claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if claimed > info.file_size - header_size:
        raise DataError(f"{path}: '{key}' is truncated: its header claims {claimed:,} bytes of {shape} {dtype}, "
                        f"the file holds {max(info.file_size - header_size, 0):,}")
