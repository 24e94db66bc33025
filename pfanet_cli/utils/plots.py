"""Pictures: CMC curves, training-loss curves, image grids and the ranked lists of a few queries.

Images of the ranked-list picture come through a loader callable (relative path -> H x W x 3 uint8
array, or None when it cannot be found), so the caller decides whether they are read from the
prepared arrays (``PreparedSplit.image_loader``) or from the raw dataset (``raw_image_loader``).
Figures are drawn on matplotlib's Agg canvas (no display needed) and every file is written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw

from pfanet_cli.utils.atomic import atomic_write, save_image
from pfanet_cli.utils.images import ImageLoader

LossSeries = Mapping[str, Sequence[tuple[float, float]]]
"""Loss name -> (iteration, value) points of one training stage."""

GREEN = (40, 170, 60)
RED = (210, 40, 40)
QUERY = (60, 90, 200)
BACKGROUND = (255, 255, 255)


def save_cmc_plot(path: str | Path, curves: Mapping[str, np.ndarray], *, title: str = "CMC") -> Path:
    """One CMC curve per label (percent against rank 1..len) as a PNG."""
    path = Path(path)
    fig = Figure(figsize=(6.0, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    longest = 1
    for label, curve in curves.items():
        curve = np.asarray(curve, dtype=np.float64)
        ranks = np.arange(1, len(curve) + 1)
        longest = max(longest, len(curve))
        ax.plot(ranks, curve, marker="o", markersize=3, linewidth=1.5,
                label=f"{label} (R1 {curve[0]:.2f}%)" if len(curve) else label)
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_title(title)
    ax.set_xlim(1, max(2, longest))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, 100.5)
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(loc="lower right", fontsize=8)
    return _save_figure(fig, path)


def _save_figure(fig, path: Path) -> Path:
    """A matplotlib figure to PNG, laid out tightly and written atomically."""
    fig.tight_layout()
    with atomic_write(path) as handle:
        fig.savefig(handle, format="png")
    return path


def save_loss_curves(path: str | Path, runs: Mapping[str, LossSeries]) -> Path:
    """One panel per stage, one line per loss, against the iteration."""
    fig = Figure(figsize=(6.0 * len(runs), 4.0), dpi=100)
    FigureCanvasAgg(fig)
    for index, (stage, series) in enumerate(runs.items(), start=1):
        ax = fig.add_subplot(1, len(runs), index)
        for key in sorted(series):
            points = series[key]
            ax.plot([p[0] for p in points], [p[1] for p in points], label=key, linewidth=1.4)
        ax.set_title(stage)
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    return _save_figure(fig, Path(path))


def _cell(image: np.ndarray | None, size: tuple[int, int], border: int, colour: tuple[int, int, int]) -> np.ndarray:
    h, w = size
    cell = np.empty((h + 2 * border, w + 2 * border, 3), dtype=np.uint8)
    cell[...] = colour
    if image is None:
        cell[border:border + h, border:border + w] = 200
        return cell
    arr = _as_rgb(image)
    resized = arr if arr.shape[:2] == (h, w) else np.asarray(Image.fromarray(arr).resize((w, h), Image.BILINEAR))
    cell[border:border + h, border:border + w] = resized
    return cell


def save_ranked_lists(path: str | Path, rows: Sequence[tuple[str, int, Sequence[tuple[str, int]]]],
                      load_image: ImageLoader | None, *, cell_size: tuple[int, int] = (128, 64), border: int = 4,
                      title: str | None = None) -> int:
    """Draw one line per query: the query (blue border), a gap, then its ranked gallery images with
    a green border for the same identity and red otherwise.

    ``rows`` holds (query path, query pid, [(gallery path, gallery pid), ...]). A query whose image
    cannot be loaded is left out; gallery images that cannot be loaded are drawn grey. Returns the
    number of query lines drawn (nothing is written when it is 0, or when ``load_image`` is None).
    """
    path = Path(path)
    if load_image is None:
        return 0
    h, w = cell_size
    ch, cw = h + 2 * border, w + 2 * border
    gap, label_h = 12, 14
    drawn = []
    for query_path, query_pid, gallery in rows:
        query_image = load_image(query_path)
        if query_image is None:
            continue
        cells = [_cell(query_image, cell_size, border, QUERY)]
        for gallery_path, gallery_pid in gallery:
            colour = GREEN if gallery_pid == query_pid else RED
            cells.append(_cell(load_image(gallery_path), cell_size, border, colour))
        drawn.append((query_pid, cells))
    if not drawn:
        return 0
    columns = max(len(cells) for _, cells in drawn)
    top = label_h + (label_h if title else 0)
    width = cw + gap + (columns - 1) * (cw + 2) + 4
    height = top + len(drawn) * (ch + label_h + 4)
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[...] = BACKGROUND
    def column_x(col: int) -> int:
        return 0 if col == 0 else cw + gap + (col - 1) * (cw + 2)

    for line, (query_pid, cells) in enumerate(drawn):
        y = top + line * (ch + label_h + 4) + label_h
        for col, cell in enumerate(cells):
            canvas[y:y + ch, column_x(col):column_x(col) + cw] = cell
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    if title:
        draw.text((2, 1), title, fill=(0, 0, 0))
    for col in range(columns):
        draw.text((column_x(col) + 2, top - label_h + 1), "query" if col == 0 else str(col), fill=(0, 0, 0))
    for line, (query_pid, _) in enumerate(drawn):
        y = top + line * (ch + label_h + 4)
        draw.text((2, y + 1), f"id {query_pid}", fill=(0, 0, 0))
    save_image(picture, path)
    return len(drawn)


def save_image_grid(path: str | Path, columns: Sequence[Sequence[np.ndarray]], *,
                    titles: Sequence[str] | None = None, gap: int = 4, scale: int = 1) -> Path:
    """Rows of images side by side: row ``i`` shows ``columns[j][i]`` for every column ``j`` (e.g.
    RGB | fake IR | real IR). Images are H x W x 3 (or H x W) uint8; every cell takes the size of the
    first column's first image. Rows are as many as the shortest column. ``scale`` enlarges every
    image (nearest neighbour) so that small training images stay readable."""
    path = Path(path)
    if scale > 1:
        columns = [[np.asarray(image).repeat(scale, 0).repeat(scale, 1) for image in column] for column in columns]
    if not columns or min(len(c) for c in columns) == 0:
        raise ValueError("save_image_grid needs at least one image per column")
    h, w = np.asarray(columns[0][0]).shape[:2]
    rows = min(len(c) for c in columns)
    top = 14 if titles else 0
    canvas = np.full((top + rows * (h + gap) - gap, len(columns) * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for j, column in enumerate(columns):
        for i in range(rows):
            canvas[top + i * (h + gap): top + i * (h + gap) + h, j * (w + gap): j * (w + gap) + w] = (
                _cell(column[i], (h, w), 0, BACKGROUND) if np.asarray(column[i]).shape[:2] != (h, w)
                else _as_rgb(column[i]))
    picture = Image.fromarray(canvas)
    if titles:
        draw = ImageDraw.Draw(picture)
        for j, title in enumerate(titles):
            draw.text((j * (w + gap) + 2, 1), str(title), fill=(0, 0, 0))
    return save_image(picture, path)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return arr[:, :, :3].astype(np.uint8, copy=False)
