"""How well G_I's fake IR gets each garment's near-infrared grey level right, on synthetic data, where the
renderer knows the truth (docs/synthetic.md).

For every RGB image of a prepared split rendered by `pfanet prepare-data synthetic`, the ground-truth label
map (`visible_labels`, at the prepared size) says where each part of the person is. Per (image, part) with
enough pixels inside the part (eroded by one pixel, away from blurred edges) it compares the part's mean grey
level in G_I(RGB) with the IR intensity the renderer gives that part (`Identity.ir`), and does the same for
three references:

* `luma`: the RGB image's own luma (what a fixed grey conversion, no GAN, gives);
* `real_ir`: the same part in a real IR image of the same person (the first one in the split), i.e. how
  much the grey level of a part varies between real IR images (exposure, shading, noise, blur);
* `renderer_prediction`: the documented function of colour and material class (`nir.py`) without the
  residual: the best any RGB-to-IR mapping that also knew the material class could do.

Printed as one JSON line: the number of (image, part) pairs and, per source, the Pearson correlation with the
renderer's intensity and the mean absolute error after the best affine map (grey levels of different sources
live on different scales; the affine fit is over all pairs at once).

    python benchmarks/fidelity.py --checkpoint runs/demo/joint/checkpoints/last.pt --data runs/demo/prepared \\
        --raw runs/demo/raw
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pfanet_cli.data.augment import to_unit_range
from pfanet_cli.data.prepared import open_prepared
from pfanet_cli.data.synthetic import MARKER_FILE, draw_identity, nir, visible_labels
from pfanet_cli.data.synthetic.person import BAG, BOTTOM, HAIR, HAT, SHOES, SKIN, TOP, TOP_B
from pfanet_cli.engine.checkpoint import restore_networks
from pfanet_cli.modeling.build import GENERATOR_RGB2IR

PARTS = (SKIN, HAIR, TOP, TOP_B, BOTTOM, SHOES, BAG, HAT)
MIN_PIXELS = 6
LUMA = np.array([0.299, 0.587, 0.114])


def _parse(path: str) -> tuple[int, int, int]:
    cam, pid, name = path.split("/")
    return int(cam[3:]), int(pid), int(name.split(".")[0])


def _inner(labels: np.ndarray) -> np.ndarray:
    """Labels whose four neighbours carry the same label; 255 elsewhere."""
    out = labels.copy()
    for axis in (0, 1):
        for shift in (-1, 1):
            out[np.roll(labels, shift, axis=axis) != labels] = 255
    return out


@torch.inference_mode()
def _fake_ir(checkpoint: Path, images: np.ndarray, batch: int = 128) -> np.ndarray:
    """G_I in eval mode, as `extract` runs it; grey levels in [0, 1] (mean of the three channels)."""
    networks, _ = restore_networks(checkpoint, [GENERATOR_RGB2IR], "benchmarks/fidelity.py")
    generator = networks[GENERATOR_RGB2IR].eval()
    out = []
    for start in range(0, len(images), batch):
        x = to_unit_range(torch.from_numpy(np.array(images[start:start + batch])).permute(0, 3, 1, 2))
        out.append(((generator(x).mean(dim=1) + 1) / 2).numpy())
    return np.concatenate(out)


def translation_fidelity(checkpoint: Path, data: Path, raw: Path, split: str = "test",
                         max_images: int = 1500) -> dict:
    """The JSON line's content (module docstring)."""
    marker = json.loads((raw / MARKER_FILE).read_text(encoding="utf-8"))
    seed, share = int(marker["seed"]), float(marker.get("ir_residual", 1.0))
    rows = open_prepared(data).split(split)
    height, width = rows.image_size
    rgb = np.flatnonzero(~rows.is_ir)[:max_images]
    fake = _fake_ir(checkpoint, rows.images[rgb])
    first_ir = {}
    for row in np.flatnonzero(rows.is_ir):
        first_ir.setdefault(int(rows.pids[row]), int(row))
    sources: dict[str, list[float]] = {"fake_ir": [], "luma": [], "real_ir": [], "renderer_prediction": []}
    truth: list[float] = []
    identities = {}
    for index, row in enumerate(rgb):
        cam, pid, n = _parse(rows.paths[row])
        if pid not in first_ir:
            continue
        ident = identities.setdefault(pid, draw_identity(seed, pid, share))
        inner = _inner(visible_labels(seed, pid, cam, n, height, width, identity=ident))
        ir_cam, _, ir_n = _parse(rows.paths[first_ir[pid]])
        ir_inner = _inner(visible_labels(seed, pid, ir_cam, ir_n, height, width, identity=ident))
        image, ir_image = rows.images[row].astype(np.float64) / 255, rows.images[first_ir[pid]][..., 0] / 255
        for part in PARTS:
            here, there = inner == part, ir_inner == part
            if here.sum() < MIN_PIXELS or there.sum() < MIN_PIXELS:
                continue
            truth.append(float(ident.ir[part]))
            sources["fake_ir"].append(float(fake[index][here].mean()))
            sources["luma"].append(float((image[here] @ LUMA).mean()))
            sources["real_ir"].append(float(ir_image[there].mean()))
            sources["renderer_prediction"].append(nir.nir_reflectance(ident.rgb[part], ident.material[part]))
    y = np.asarray(truth)
    return {"pairs": len(y), "ir_residual": share,
            "corr": {name: _corr(np.asarray(x), y) for name, x in sources.items()},
            "mae_after_affine_fit": {name: _affine_mae(np.asarray(x), y) for name, x in sources.items()}}


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    return round(float(np.corrcoef(x, y)[0, 1]), 4) if len(y) > 2 else float("nan")


def _affine_mae(x: np.ndarray, y: np.ndarray) -> float:
    if len(y) < 3:
        return float("nan")
    slope, intercept = np.polyfit(x, y, 1)
    return round(float(np.abs(slope * x + intercept - y).mean()), 4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint holding G_I")
    parser.add_argument("--data", type=Path, required=True, help="prepared folder of a synthetic render")
    parser.add_argument("--raw", type=Path, required=True, help="the synthetic render itself (its marker)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-images", type=int, default=1500)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    result = translation_fidelity(args.checkpoint, args.data, args.raw, args.split, args.max_images)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps({"benchmark": "fidelity", "checkpoint": str(args.checkpoint), **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
