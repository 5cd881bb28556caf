"""The book's figure style and the small plotting helpers that several chapters share.

Every figure in the book is drawn for its text column: at most :data:`COLUMN_WIDTH` inches wide at
:data:`DPI` pixels per inch, so that it is shown at 1:1 (:data:`COLUMN_PX` CSS pixels is the
column of the book's theme in a 1280 px window), with fonts of 9-11 points (12-15 px), on white,
with labelled axes. Chapters call :func:`use_style` once (``ffkit.setup`` does it); in a notebook
it also makes every inline figure go through :func:`tidy` and come out as a 2x (high-resolution)
PNG. :func:`subplots` makes a column-wide figure; :func:`tidy` is what every figure gets on
display:

* a figure wider than the column is scaled down to it (and laid out again);
* tick labels that overlap are rotated (text labels) or thinned (every k-th label shown);
* a legend that covers data moves to a free corner of its axes, or else below them.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib import ticker
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.collections import LineCollection, PathCollection, PolyCollection
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.transforms import Bbox

#: Width of the book's text column in CSS pixels (sphinx-book-theme, 1280 px window).
COLUMN_PX = 688
#: Pixels per inch of a figure at 1:1 (matplotlib's ``figure.dpi``).
DPI = 100
#: Default width of a figure in inches: 640 px at 1:1, inside the column with room for margins.
COLUMN_WIDTH = 6.4
#: Image pixels per CSS pixel of the inline PNGs (2: sharp on high-resolution screens).
PIXEL_RATIO = 2

#: Colours for the methods the book compares, fixed so a method looks the same in every chapter.
METHOD_COLORS: dict[str, str] = {
    "backprop": "#1f77b4",
    "forward gradient": "#d62728",
    "sign step": "#2ca02c",
    "forward-forward": "#9467bd",
    "inference": "#7f7f7f",
    "checkpointing": "#ff7f0e",
    "lean forward gradient": "#8c564b",
}

_STYLE: dict[str, Any] = {
    "figure.facecolor": "white",
    "axes.facecolor": "white",
    "savefig.facecolor": "white",
    "savefig.format": "png",
    "savefig.bbox": "tight",
    "figure.figsize": (COLUMN_WIDTH, 4.0),
    "figure.dpi": DPI,
    "savefig.dpi": PIXEL_RATIO * DPI,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "font.size": 10,
    "figure.titlesize": 11,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "lines.linewidth": 1.6,
    "image.cmap": "viridis",
    "svg.hashsalt": "ffkit",
}


def use_style() -> None:
    """Apply the book's matplotlib style.

    Inside a Jupyter kernel it also draws figures inline, each passed through :func:`tidy` and
    stored as a PNG with :data:`PIXEL_RATIO` image pixels per CSS pixel (its output metadata give
    the size at 1:1, which the book uses).
    """
    mpl.rcParams.update(_STYLE)
    try:  # only meaningful inside a Jupyter kernel
        from IPython import get_ipython

        ip = get_ipython()
        if ip is not None and type(ip).__name__ == "ZMQInteractiveShell":
            # A notebook kernel: draw figures inline, even if MPLBACKEND says otherwise.
            ip.run_line_magic("matplotlib", "inline")
            from matplotlib_inline.backend_inline import set_matplotlib_formats

            set_matplotlib_formats("png")  # and no other format
            ip.display_formatter.formatters["image/png"].for_type(Figure, inline_png)
    except ImportError:  # pragma: no cover - IPython is optional for library users
        pass


def inline_png(fig: Figure) -> tuple[str, dict[str, int]] | None:
    """What a notebook stores for ``fig``: :func:`tidy` it, then a base64 PNG at
    :data:`PIXEL_RATIO` times its size, with ``{"width", "height"}`` at 1:1 (``None`` for an
    empty figure, which shows nothing)."""
    import base64
    import io

    if not fig.axes:
        return None
    tidy(fig)
    buffer = io.BytesIO()
    fig.canvas.print_figure(
        buffer,
        format="png",
        dpi=PIXEL_RATIO * fig.dpi,
        bbox_inches="tight",
        facecolor=fig.get_facecolor(),
        edgecolor=fig.get_edgecolor(),
    )
    data = buffer.getvalue()
    width, height = _png_size(data)
    return base64.b64encode(data).decode("ascii"), {"width": width // PIXEL_RATIO, "height": height // PIXEL_RATIO}


def _png_size(data: bytes) -> tuple[int, int]:
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def subplots(
    nrows: int = 1, ncols: int = 1, *, height: float | None = None, width: float = COLUMN_WIDTH, **kwargs: Any
) -> tuple[Figure, Any]:
    """``plt.subplots`` for the column: ``width`` inches wide (default :data:`COLUMN_WIDTH`),
    ``height`` inches high (default 4 for one row, 2.6 per row for more), laid out by
    matplotlib's constrained layout so that labels of neighbouring axes never collide."""
    if nrows < 1 or ncols < 1:
        raise ValueError(f"nrows and ncols must be positive, got {nrows} and {ncols}")
    if not 0 < width <= COLUMN_PX / DPI:
        raise ValueError(f"width must be in (0, {COLUMN_PX / DPI}] inches to fit the column, got {width}")
    if height is None:
        height = 4.0 if nrows == 1 else 2.6 * nrows
    kwargs.setdefault("layout", "constrained")
    return plt.subplots(nrows, ncols, figsize=(width, height), **kwargs)


def method_color(name: str) -> str | None:
    """The fixed colour of a method (``None`` lets matplotlib choose for unknown names)."""
    return METHOD_COLORS.get(name.lower())


def image_grid(
    images: torch.Tensor | np.ndarray,
    labels: Sequence[Any] | torch.Tensor | None = None,
    *,
    ncols: int = 8,
    cmap: str = "gray_r",
    title: str | None = None,
    scale: float = 1.0,
) -> Figure:
    """Show ``images`` (shape ``(N, H, W)``, ``(N, 1, H, W)`` or ``(N, 3, H, W)``) in a grid.

    ``labels``, if given, are written above each image. Each image is ``scale`` × 1.1 inches
    wide, less if ``ncols`` of them would not fit the column.
    """
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.ndim == 4 and arr.shape[1] in (1, 3):
        arr = arr[:, 0] if arr.shape[1] == 1 else arr.transpose(0, 2, 3, 1)
    if arr.ndim not in (3, 4) or len(arr) == 0:
        raise ValueError(f"image_grid expects a non-empty batch of images, got shape {arr.shape}")
    if ncols < 1:
        raise ValueError(f"ncols must be positive, got {ncols}")
    n = len(arr)
    ncols = min(ncols, n)
    nrows = (n + ncols - 1) // ncols
    if arr.ndim == 4:  # colour images are shown as they are, rescaled into [0, 1]
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo if hi > lo else 1.0)
    cell = min(scale * 1.1, COLUMN_WIDTH / ncols)  # never wider than the column
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols, cell * 1.25 / 1.1 * nrows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        ax.imshow(arr[k], cmap=None if arr.ndim == 4 else cmap, interpolation="nearest")
        if labels is not None:
            lab = labels[k]
            ax.set_title(str(lab.item() if isinstance(lab, torch.Tensor) else lab), fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def running_mean(y: Sequence[float] | np.ndarray, width: int) -> np.ndarray:
    """Means of ``width`` consecutive values: ``out[i] = mean(y[i : i + width])``.

    The result has ``len(y) - width + 1`` entries; ``out[i]`` belongs to the step of ``y[i + width - 1]``.
    """
    ys = np.asarray(y, dtype=float)
    if width < 1 or width > len(ys):
        raise ValueError(f"width must be between 1 and len(y) = {len(ys)}, got {width}")
    return np.convolve(ys, np.ones(width) / width, mode="valid")


def compare_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    xlabel: str,
    ylabel: str,
    ax: Axes | None = None,
    logx: bool = False,
    logy: bool = False,
    title: str | None = None,
    smooth: int = 1,
) -> Axes:
    """Draw one line per method: ``curves[name] = (x, y)``.

    Known method names (see :data:`METHOD_COLORS`) get their fixed colour. ``smooth > 1`` replaces
    ``y`` by its running mean over that many points (useful for noisy per-step losses).
    """
    if not curves:
        raise ValueError("compare_curves needs at least one curve")
    if smooth < 1:
        raise ValueError(f"smooth must be >= 1, got {smooth}")
    if ax is None:
        _, ax = plt.subplots()
    for name, (x, y) in curves.items():
        xs = np.asarray(x, dtype=float)
        ys = np.asarray(y, dtype=float)
        if xs.shape != ys.shape:
            raise ValueError(f"curve {name!r}: x has shape {xs.shape} but y has {ys.shape}")
        if smooth > 1 and len(ys) >= smooth:
            ys = running_mean(ys, smooth)
            xs = xs[smooth - 1 :]
        ax.plot(xs, ys, label=name, color=method_color(name))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.legend()
    return ax


#: Colours of the pieces of a training step in :func:`timeline`.
TIMELINE_COLORS: dict[str, str] = {
    "forward": "#9ecae1",
    "backward": METHOD_COLORS["backprop"],
    "forward+tangent": "#fcae91",
    "update": "#2ca02c",
}


def timeline(
    tasks: Sequence[tuple[int, float, float, str]],
    *,
    ax: Axes | None = None,
    row_labels: Sequence[str] | None = None,
    colors: Mapping[str, str] | None = None,
    xlabel: str = "time (ms)",
    scale: float = 1e3,
    title: str | None = None,
    legend: bool = True,
) -> Axes:
    """A Gantt chart: one horizontal bar per task ``(row, start, duration, kind)``.

    Rows are drawn top to bottom (row 0 on top) and labelled by ``row_labels``; times are
    multiplied by ``scale`` (seconds to milliseconds by default). Bars of one ``kind`` share a
    colour (:data:`TIMELINE_COLORS` for the pieces of a training step, else matplotlib's cycle)
    and a legend entry. The tasks of :func:`ffkit.profile.schedule` plug in directly.
    """
    tasks = list(tasks)
    if not tasks:
        raise ValueError("timeline needs at least one task")
    if any(len(t) != 4 for t in tasks) or any(t[2] < 0 for t in tasks):
        raise ValueError("each task must be (row, start, duration, kind) with a non-negative duration")
    if ax is None:
        _, ax = plt.subplots()
    palette = {**TIMELINE_COLORS, **(colors or {})}
    cycle = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    rows = 1 + max(int(t[0]) for t in tasks)
    seen: set[str] = set()
    for row, start, duration, kind in tasks:
        if kind not in palette:
            palette[kind] = next(cycle)
        ax.broken_barh(
            [(start * scale, duration * scale)],
            (row - 0.4, 0.8),
            facecolors=palette[kind],
            edgecolor="white",
            linewidth=0.5,
            label=None if kind in seen else kind,
        )
        seen.add(kind)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.set_yticks(range(rows))
    if row_labels is not None:
        if len(row_labels) != rows:
            raise ValueError(f"row_labels has {len(row_labels)} entries for {rows} rows")
        ax.set_yticklabels(list(row_labels))
    ax.grid(axis="y", visible=False)
    ax.set_xlabel(xlabel)
    ax.set_xlim(left=0)
    if title:
        ax.set_title(title)
    if legend:
        ax.legend(loc="lower right")
    return ax


# ---------------------------------------------------------------------------------------------
# tidy: what every inline figure gets


def tidy(fig: Figure) -> Figure:
    """Make ``fig`` fit the column and remove the overlaps that make a figure hard to read.

    In order: :func:`fit_column` (scale a figure wider than the column down to it), then for
    every axes :func:`free_legend`; legends that still cover data become one figure legend
    below everything (:func:`legend_below`) when they all show the same entries or there is
    only one; then :func:`declutter_ticks` on both axes of every axes, and all of it once more
    if a second :func:`fit_column` had to shrink the figure again. Returns ``fig``, changed in
    place. Inline figures in notebooks get this automatically
    (:func:`use_style`).
    """
    if _renderer(fig) is None:
        return fig
    fit_column(fig)
    for _ in range(2):
        shown = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
        covering = [ax for ax in shown if free_legend(ax) == COVERS_DATA]  # may change y ranges
        if covering:
            with_legend = [ax for ax in shown if ax.get_legend() is not None]
            entries = {tuple(_legend_entries(ax.get_legend())[1]) for ax in with_legend}
            if len(entries) == 1:  # the same legend everywhere: one for the figure
                legend_below(fig, with_legend)
            elif len(covering) == 1 and len(with_legend) == 1:
                legend_below(fig, covering)
        for ax in shown:
            declutter_ticks(ax, "x")
            declutter_ticks(ax, "y")
        if not fit_column(fig):
            break
    return fig


def _renderer(fig: Figure) -> Any:
    get = getattr(fig.canvas, "get_renderer", None)
    return get() if get is not None else None


def _draw(fig: Figure) -> Any:
    """Lay out and draw ``fig`` without output; its renderer."""
    fig.draw_without_rendering()
    return _renderer(fig)


def _relayout(fig: Figure) -> None:
    """Lay ``fig`` out again after a change of size: its layout engine does it when it has one;
    otherwise tight_layout (quietly: a figure it cannot handle keeps its layout)."""
    engine = fig.get_layout_engine()
    if engine is not None and engine.adjust_compatible is False:
        return  # constrained layout runs at every draw
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig.tight_layout()


def fit_column(fig: Figure, max_px: float = COLUMN_PX) -> bool:
    """Scale ``fig`` down, keeping its aspect ratio and its fonts, so that its saved image
    (tight bounding box) is at most ``max_px`` CSS pixels wide; True if it did.

    Fonts keep their size in points, so they stay readable at 1:1; the figure is laid out
    again. If that cannot work (something of fixed size, such as a legend of five columns, is
    wider than the column, or the axes would shrink to less than half their scaled size), the
    figure is left as it was: it then has to be redrawn for the column.
    """
    renderer = _draw(fig)
    pad = mpl.rcParams["savefig.pad_inches"]
    width_px = (fig.get_tightbbox(renderer).width + 2 * pad) * fig.dpi
    if width_px <= max_px + 0.5:
        return False
    size = fig.get_size_inches().copy()
    positions = [ax.get_position() for ax in fig.axes]
    boxes = [ax.get_window_extent(renderer) for ax in fig.axes]
    factor = max_px / width_px
    for _ in range(3):  # a new layout changes the tight box a little: converge
        w, h = fig.get_size_inches()
        fig.set_size_inches(w * factor * 0.995, h * factor * 0.995)
        _relayout(fig)
        renderer = _draw(fig)
        width_px = (fig.get_tightbbox(renderer).width + 2 * pad) * fig.dpi
        if width_px <= max_px + 0.5:
            break
        factor = max_px / width_px
    scale = fig.get_size_inches()[0] / size[0]
    shrunk = [ax.get_window_extent(renderer) for ax in fig.axes]
    collapsed = any(
        new.width < 0.5 * scale * old.width or new.height < 0.5 * scale * old.height
        for old, new in zip(boxes, shrunk)
        if old.width > 0 and old.height > 0
    )
    if width_px > max_px + 0.5 or collapsed:
        fig.set_size_inches(size)
        for ax, position in zip(fig.axes, positions):
            ax.set_position(position)
        return False
    return True


def _overlaps(boxes: Sequence[Bbox], along: str, pad: float) -> bool:
    """Whether consecutive boxes (sorted along ``along``, "x" or "y") touch, with ``pad`` px."""
    lo, hi = ("x0", "x1") if along == "x" else ("y0", "y1")
    ordered = sorted(boxes, key=lambda b: getattr(b, lo))
    return any(getattr(b, lo) < getattr(a, hi) + pad for a, b in zip(ordered, ordered[1:]))


def _label_boxes(axis: Axis, renderer: Any) -> list[Bbox]:
    labels = [t for t in axis.get_ticklabels() if t.get_visible() and t.get_text()]
    return [t.get_window_extent(renderer) for t in labels]


class EveryKth(ticker.Formatter):
    """A tick formatter that shows the labels of ``base`` for every ``k``-th tick only."""

    def __init__(self, base: ticker.Formatter, k: int) -> None:
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        self.base, self.k = base, k

    def set_axis(self, axis: Axis | None) -> None:
        super().set_axis(axis)
        self.base.set_axis(axis)

    def set_locs(self, locs: Sequence[float]) -> None:
        self.base.set_locs(locs)

    def format_ticks(self, values: Sequence[float]) -> list[str]:
        labels = self.base.format_ticks(values)
        return [label if i % self.k == 0 else "" for i, label in enumerate(labels)]

    def __call__(self, x: float, pos: int | None = None) -> str:
        text = self.base(x, pos)
        return text if pos is None or pos % self.k == 0 else ""

    def get_offset(self) -> str:
        return self.base.get_offset()


def declutter_ticks(ax: Axes, axis: str = "x", *, pad_px: float = 3.0) -> str | None:
    """Stop the tick labels of one axis (``"x"`` or ``"y"``) from overlapping.

    Text labels on the x axis are rotated by 30 degrees; other labels that overlap, and
    rotated ones still too close, are thinned: only every k-th is shown, with the smallest k
    that separates them (the ticks stay). Returns what was done: ``None``, ``"rotated"``,
    ``"rotated, every k"`` or ``"every k"``.
    """
    if axis not in ("x", "y"):
        raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
    target = ax.xaxis if axis == "x" else ax.yaxis
    renderer = _draw(ax.figure)
    boxes = _label_boxes(target, renderer)
    if len(boxes) < 2 or not _overlaps(boxes, axis, pad_px):
        return None
    formatter = target.get_major_formatter()
    textual = isinstance(formatter, ticker.FixedFormatter) or type(formatter).__name__ == "StrCategoryFormatter"
    if axis == "x" and textual:
        labels = [t for t in target.get_ticklabels() if t.get_visible() and t.get_text()]
        for label in labels:
            label.set_rotation(30)
            label.set_horizontalalignment("right")
            label.set_rotation_mode("anchor")
        # Rotated labels are parallel lines of text: they clear each other when the distance
        # between neighbouring ticks, times sin 30°, exceeds the height of a line.
        xs = np.sort([ax.transData.transform((t.get_position()[0], 0))[0] for t in labels])
        gap = float(np.min(np.diff(xs))) * 0.5 if len(xs) > 1 else np.inf
        line = max(t.get_fontsize() for t in labels) * ax.figure.dpi / 72 * 1.2
        k = max(1, int(np.ceil((line + pad_px) / gap))) if gap > 0 else len(labels)
        if k == 1:
            return "rotated"
        target.set_major_formatter(EveryKth(formatter, k))
        return f"rotated, every {k}"
    k = len(boxes)
    for k in range(2, len(boxes) + 1):
        if not _overlaps(boxes[::k], axis, pad_px):
            break
    target.set_major_formatter(EveryKth(formatter, k))
    return f"every {k}"


def _data_points(ax: Axes, step_px: float = 3.0) -> np.ndarray:
    """Display coordinates of the drawn data of ``ax``: points along every line (at most
    ``step_px`` apart) and every marker of scatter-like collections."""
    points = []
    for line in ax.get_lines():
        if not line.get_visible():
            continue
        xy = line.get_transform().transform(line.get_path().vertices)
        xy = xy[np.all(np.isfinite(xy), axis=1)]
        if len(xy) == 0:
            continue
        points.append(xy)
        if len(xy) > 1 and line.get_linestyle() not in ("None", "", " "):
            seg = np.diff(xy, axis=0)
            length = np.hypot(seg[:, 0], seg[:, 1])
            for i in np.flatnonzero(length > step_px)[:5000]:
                t = np.linspace(0, 1, int(length[i] // step_px) + 2)[1:-1, None]
                points.append(xy[i] + t * seg[i])
    for collection in ax.collections:
        if collection.get_visible() and isinstance(collection, PathCollection):  # scatter markers
            xy = collection.get_offset_transform().transform(np.asarray(collection.get_offsets()))
            points.append(xy[np.all(np.isfinite(xy), axis=1)])
    return np.concatenate(points) if points else np.zeros((0, 2))


def _covered(ax: Axes, box: Bbox, points: np.ndarray, renderer: Any) -> int:
    """How much data ``box`` (display coordinates) hides: data points inside it, plus bars,
    patches, filled areas and texts of ``ax`` that it touches."""
    box = box.padded(2)
    inside = 0
    if len(points):
        inside = int(
            np.count_nonzero(
                (points[:, 0] >= box.x0) & (points[:, 0] <= box.x1) & (points[:, 1] >= box.y0) & (points[:, 1] <= box.y1)
            )
        )
    for patch in ax.patches:
        if patch.get_visible() and patch.get_window_extent(renderer).overlaps(box):
            inside += 1
    for collection in ax.collections:
        # filled areas (fill_between, broken_barh) and segments (errorbar, vlines)
        if not collection.get_visible() or not isinstance(collection, (PolyCollection, LineCollection)):
            continue
        filled = isinstance(collection, PolyCollection)
        transform = collection.get_transform()
        for path in collection.get_paths():
            if path.transformed(transform).intersects_bbox(box, filled=filled):
                inside += 1
    for text in ax.texts:
        if text.get_visible() and text.get_text() and text.get_window_extent(renderer).overlaps(box):
            inside += 1
    return inside


_INSIDE = ("upper right", "upper left", "lower left", "lower right", "center left", "center right",
           "lower center", "upper center", "center")


def free_legend(ax: Axes) -> str | None:
    """Move the legend of ``ax`` off its data, if it covers any.

    A legend anchored elsewhere (``bbox_to_anchor``) is left alone. Otherwise it moves to the
    first of the nine positions inside the axes that covers no data (lines, markers, bars,
    filled areas, texts); if none is free, the y axis grows at the top by the legend's height
    (headroom) and the legend goes into that free band; if the legend is too tall for that, it
    stays where it covers least. Returns the new location (``"headroom, upper right"``, say),
    or ``None`` if the legend did not move.
    """
    legend = ax.get_legend()
    if legend is None or not legend.get_visible():
        return None
    if legend.get_bbox_to_anchor().bounds != ax.bbox.bounds:
        return None  # placed deliberately, usually outside the axes
    renderer = _draw(ax.figure)
    points = _data_points(ax)

    def cover() -> int:
        return _covered(ax, legend.get_window_extent(renderer), points, renderer)

    if cover() == 0:
        return None
    original = legend._loc  # noqa: SLF001 - restored if nothing better is found
    least = (cover(), original)
    for loc in _INSIDE:
        legend.set_loc(loc)
        covered = cover()
        if covered == 0:
            return loc
        least = min(least, (covered, legend._loc), key=lambda c: c[0])  # noqa: SLF001
    fraction = legend.get_window_extent(renderer).height / ax.bbox.height + 0.04
    if fraction < 0.6 and not ax.yaxis_inverted():
        _add_headroom(ax, fraction)
        renderer = _draw(ax.figure)
        points = _data_points(ax)
        for loc in ("upper right", "upper left", "upper center"):
            legend.set_loc(loc)
            if cover() == 0:
                return f"headroom, {loc}"
    legend._loc = least[1]  # noqa: SLF001
    return COVERS_DATA


#: What :func:`free_legend` returns when no place inside the axes is free.
COVERS_DATA = "covers data"


def _legend_entries(legend: Legend) -> tuple[list[Any], list[str]]:
    return list(legend.legend_handles), [t.get_text() for t in legend.get_texts()]


def legend_below(fig: Figure, axes: Sequence[Axes]) -> Legend:
    """Replace the legends of ``axes`` (one axes, or several showing the same entries) by one
    figure legend below everything, in as many columns (up to 4) as fit the figure's width."""
    legends = [ax.get_legend() for ax in axes if ax.get_legend() is not None]
    if not legends:
        raise ValueError("legend_below: none of the axes has a legend")
    handles, labels = _legend_entries(legends[0])
    fontsize = legends[0]._fontsize  # noqa: SLF001 - the size the caller chose
    title = legends[0].get_title().get_text() or None
    for legend in legends:
        legend.remove()
    renderer = _draw(fig)
    bottom = fig.transFigure.inverted().transform((0, fig.get_tightbbox(renderer).y0 * fig.dpi))[1]
    new = None
    for ncols in range(min(4, len(labels)), 0, -1):
        if new is not None:
            new.remove()
        new = fig.legend(
            handles, labels, title=title, fontsize=fontsize, ncols=ncols,
            loc="upper center", bbox_to_anchor=(0.5, bottom), bbox_transform=fig.transFigure,
        )
        if new.get_window_extent(_draw(fig)).width <= fig.bbox.width:
            break
    return new


def _add_headroom(ax: Axes, fraction: float) -> None:
    """Grow the y axis at the top so that its old range fills ``1 - fraction`` of the axes."""
    bottom, top = ax.get_ylim()
    if ax.get_yscale() == "log" and bottom > 0 and top > 0:
        top = bottom * (top / bottom) ** (1 / (1 - fraction))
    else:
        top = bottom + (top - bottom) / (1 - fraction)
    ax.set_ylim(bottom, top)
