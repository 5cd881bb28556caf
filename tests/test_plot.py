"""The plotting helpers draw what they are given, in the book's style."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from ffkit import plot  # noqa: E402


def test_style_is_white_png() -> None:
    plot.use_style()
    assert matplotlib.rcParams["figure.facecolor"] == "white"
    assert matplotlib.rcParams["savefig.format"] == "png"


def test_image_grid_layout_and_labels() -> None:
    images = torch.rand(10, 1, 5, 5)
    fig = plot.image_grid(images, labels=list(range(10)), ncols=4)
    axes = fig.axes
    assert len(axes) == 12  # 3 rows x 4 columns, two left empty
    shown = [ax for ax in axes if ax.images]
    assert len(shown) == 10
    np.testing.assert_allclose(shown[3].images[0].get_array(), images[3, 0].numpy())
    assert shown[3].get_title() == "3"
    plt.close(fig)
    colour = plot.image_grid(torch.rand(2, 3, 4, 4))
    assert colour.axes[0].images[0].get_array().shape == (4, 4, 3)
    plt.close(colour)
    with pytest.raises(ValueError):
        plot.image_grid(torch.rand(0, 5, 5))


def test_compare_curves_colours_labels_and_smoothing() -> None:
    ax = plot.compare_curves(
        {"backprop": ([1, 2, 3, 4], [4.0, 3.0, 2.0, 1.0]), "mine": ([1, 2], [1.0, 1.0])},
        xlabel="step", ylabel="loss", smooth=2,
    )
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert lines["backprop"].get_color() == plot.METHOD_COLORS["backprop"]
    np.testing.assert_allclose(lines["backprop"].get_ydata(), [3.5, 2.5, 1.5])
    assert ax.get_xlabel() == "step" and ax.get_ylabel() == "loss"
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="shape"):
        plot.compare_curves({"a": ([1, 2], [1.0])}, xlabel="x", ylabel="y")


def test_running_mean_matches_direct_means() -> None:
    y = np.array([1.0, 3.0, 2.0, 6.0, 4.0])
    np.testing.assert_allclose(plot.running_mean(y, 2), [2.0, 2.5, 4.0, 5.0])
    np.testing.assert_allclose(plot.running_mean(y, 5), [y.mean()])
    with pytest.raises(ValueError, match="width"):
        plot.running_mean(y, 6)


def _label_boxes(ax, axis: str) -> list:
    ax.figure.draw_without_rendering()
    renderer = ax.figure.canvas.get_renderer()
    target = ax.xaxis if axis == "x" else ax.yaxis
    return [t.get_window_extent(renderer) for t in target.get_ticklabels() if t.get_visible() and t.get_text()]


def _apart(boxes: list, axis: str) -> bool:
    lo, hi = ("x0", "x1") if axis == "x" else ("y0", "y1")
    ordered = sorted(boxes, key=lambda b: getattr(b, lo))
    return all(getattr(b, lo) >= getattr(a, hi) for a, b in zip(ordered, ordered[1:]))


def test_subplots_fit_the_column() -> None:
    plot.use_style()
    fig, axes = plot.subplots(2, 3)
    assert tuple(fig.get_size_inches()) == (plot.COLUMN_WIDTH, 5.2)
    assert axes.shape == (2, 3)
    plt.close(fig)
    with pytest.raises(ValueError, match="column"):
        plot.subplots(width=plot.COLUMN_PX / plot.DPI + 0.1)


def test_inline_png_is_2x_and_a_wide_figure_shrinks_to_the_column() -> None:
    plot.use_style()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    for ax in axes:
        ax.plot(np.arange(10), np.arange(10) ** 2)
        ax.set_xlabel("step")
    data, meta = plot.inline_png(fig)
    import base64

    png = base64.b64decode(data)
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert meta["width"] <= plot.COLUMN_PX
    assert abs(width - plot.PIXEL_RATIO * meta["width"]) <= 1 and abs(height - plot.PIXEL_RATIO * meta["height"]) <= 1
    assert fig.get_size_inches()[0] < 12
    plt.close(fig)
    empty = plt.figure()
    assert plot.inline_png(empty) is None
    plt.close(empty)


def test_declutter_thins_crowded_numeric_ticks() -> None:
    plot.use_style()
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1e6], [0, 1])
    ax.set_xticks(np.arange(0, 1_000_001, 50_000))
    assert not _apart(_label_boxes(ax, "x"), "x")  # crowded to begin with
    done = plot.declutter_ticks(ax, "x")
    assert done is not None and done.startswith("every ")
    boxes = _label_boxes(ax, "x")
    assert len(boxes) >= 2 and _apart(boxes, "x")
    assert len(ax.get_xticks()) == 21  # the ticks stay, only labels are thinned
    plt.close(fig)
    with pytest.raises(ValueError):
        plot.EveryKth(plt.NullFormatter(), 0)


def test_declutter_rotates_text_labels() -> None:
    plot.use_style()
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.bar([f"a long category {i}" for i in range(6)], np.arange(6))
    assert plot.declutter_ticks(ax, "x", pad_px=0) in ("rotated", "rotated, every 2", "rotated, every 3")
    assert all(t.get_rotation() == 30 for t in ax.get_xticklabels())
    assert plot.declutter_ticks(ax, "y") is None  # nothing to do
    plt.close(fig)


def _points_inside(ax, box, xs, ys) -> int:
    xy = ax.transData.transform(np.column_stack([xs, ys]))
    return int(np.sum((xy[:, 0] >= box.x0) & (xy[:, 0] <= box.x1) & (xy[:, 1] >= box.y0) & (xy[:, 1] <= box.y1)))


def test_free_legend_moves_a_legend_off_the_data() -> None:
    plot.use_style()
    fig, ax = plt.subplots()
    xs = np.linspace(0, 1, 400)
    ax.plot(xs, 1 - xs, label="falling")  # through the upper left and lower right corners
    ax.plot(xs, 0.5 + 0 * xs, label="flat")
    ax.legend(loc="upper left")
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()
    before = ax.get_legend().get_window_extent(renderer)
    assert _points_inside(ax, before, xs, 1 - xs) > 0
    moved = plot.free_legend(ax)
    assert moved is not None
    fig.draw_without_rendering()
    after = ax.get_legend().get_window_extent(renderer)
    assert _points_inside(ax, after, xs, 1 - xs) == 0 and _points_inside(ax, after, xs, 0.5 + 0 * xs) == 0
    assert plot.free_legend(ax) is None  # already free
    plt.close(fig)


def test_free_legend_makes_headroom_when_data_fill_the_axes() -> None:
    plot.use_style()
    fig, ax = plt.subplots()
    rng = np.random.default_rng(0)
    xs = rng.uniform(0, 1, 3000)
    ys = rng.uniform(0, 1, 3000)
    ax.plot(xs, ys, ".", label="everywhere")
    ax.legend(loc="upper right")
    top = ax.get_ylim()[1]
    assert plot.free_legend(ax).startswith("headroom")
    assert ax.get_ylim()[1] > top
    fig.draw_without_rendering()
    box = ax.get_legend().get_window_extent(fig.canvas.get_renderer())
    assert _points_inside(ax, box, xs, ys) == 0
    plt.close(fig)


def test_tidy_shares_one_legend_when_panels_repeat_it() -> None:
    plot.use_style()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    xs = np.linspace(0, 1, 100)
    for ax in axes:
        for k in range(8):  # a legend too tall for headroom in its panel
            ax.plot(xs, np.sin(6 * xs + k), label=f"curve number {k}")
        ax.legend(loc="upper right")
    fig.tight_layout()
    plot.tidy(fig)
    assert all(ax.get_legend() is None for ax in axes)
    assert len(fig.legends) == 1
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [f"curve number {k}" for k in range(8)]
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    legend = fig.legends[0].get_window_extent(renderer)
    assert all(legend.y1 <= ax.get_window_extent(renderer).y0 for ax in axes)  # below the panels
    plt.close(fig)


def test_image_grid_fits_the_column() -> None:
    fig = plot.image_grid(torch.rand(16, 1, 5, 5), ncols=16)
    assert fig.get_size_inches()[0] <= plot.COLUMN_WIDTH + 1e-9
    plt.close(fig)


def test_timeline_draws_a_schedule() -> None:
    from ffkit.pipeline import schedule

    tasks = schedule("backprop", [1.0, 1.0], [2.0, 2.0], [0.5, 0.5])
    ax = plot.timeline(tasks, row_labels=["layer 1", "layer 2"])
    assert len(ax.collections) == len(tasks)
    assert ax.get_xlim()[1] >= 1e3 * max(t.start + t.duration for t in tasks)
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"forward", "backward", "update"}
    with pytest.raises(ValueError, match="row_labels"):
        plot.timeline(tasks, row_labels=["only one"])
    with pytest.raises(ValueError, match="at least one"):
        plot.timeline([])
    plt.close("all")
