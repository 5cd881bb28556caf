"""The book's figure style and the small plotting helpers that several chapters share.

Every figure in the book is a PNG on a white background with labelled axes. Chapters call
:func:`use_style` once (``ffkit.setup`` does it) and then draw with plain matplotlib or with the
helpers below.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

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
    "figure.figsize": (6.4, 4.0),
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
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
    """Apply the book's matplotlib style; inside IPython also make inline figures PNG."""
    mpl.rcParams.update(_STYLE)
    try:  # only meaningful inside a Jupyter kernel
        from IPython import get_ipython

        ip = get_ipython()
        if ip is not None and type(ip).__name__ == "ZMQInteractiveShell":
            # A notebook kernel: draw figures inline as PNG, even if MPLBACKEND says otherwise.
            ip.run_line_magic("matplotlib", "inline")
            from matplotlib_inline.backend_inline import set_matplotlib_formats

            set_matplotlib_formats("png")
    except ImportError:  # pragma: no cover - IPython is optional for library users
        pass


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

    ``labels``, if given, are written above each image.
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
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(scale * 1.1 * ncols, scale * 1.25 * nrows), squeeze=False
    )
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
