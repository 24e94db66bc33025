"""The datasets the toolkit knows, by name: their cameras, the size of their default training split and
how an image path names its person and camera."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pfanet_cli.data import llcm, regdb, sysu


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    title: str
    cameras: tuple[int, ...]
    ir_cameras: tuple[int, ...]
    train_classes: int
    """Identities of the default training split (what ``--dry-run`` builds the classifier for)."""
    parse_path: Callable[[str], "tuple[int, int] | None"]
    """Raw-relative path -> (pid, camid), None when the path does not follow the dataset's layout."""


DATASETS: dict[str, DatasetInfo] = {
    "sysu": DatasetInfo("sysu", "SYSU-MM01", sysu.ALL_CAMERAS, sysu.IR_CAMERAS, sysu.TRAIN_CLASSES, sysu.parse_path),
    "regdb": DatasetInfo("regdb", "RegDB", regdb.CAMERAS, (regdb.THERMAL,), regdb.TRAIN_CLASSES, regdb.parse_path),
    "llcm": DatasetInfo("llcm", "LLCM", llcm.CAMERAS, llcm.NIR_CAMERAS, llcm.TRAIN_CLASSES, llcm.parse_path),
}
PATH_ORDER = ("llcm", "regdb", "sysu")
"""The order paths are tried in: an LLCM path (``test_vis/cam1/0001/x.jpg``) also ends like a SYSU-MM01 one."""


def identity_from_path(path: str) -> tuple[int, int, str | None, str | None]:
    """(pid, camid, modality, dataset) read off a raw-layout path of any known dataset;
    (-1, -1, None, None) when the path follows none of them."""
    for name in PATH_ORDER:
        info = DATASETS[name]
        parsed = info.parse_path(path)
        if parsed is not None:
            pid, camid = parsed
            return pid, camid, "ir" if camid in info.ir_cameras else "rgb", info.name
    return -1, -1, None, None
