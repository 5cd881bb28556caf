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
