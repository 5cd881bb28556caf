"""Tests of ffkit.experiments.comm's figures: bytes and step times of both schemes against n.

The measurement itself (worker processes) is exercised by the 2-process runs of
test_methods_shared_seed.py; here the plots draw what the records say.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from ffkit.experiments import comm  # noqa: E402


def _record(n: int, world_size: int = 2, k: int = 4) -> dict:
    return {
        "world_size": world_size, "n": n, "directions": k,
        "shared_seed": {"bytes_per_step": 4 * k, "step_seconds": 0.01, "isolated_comm_seconds": 1e-4},
        "all_reduce": {"bytes_per_step": 4 * n, "step_seconds": 0.02, "isolated_comm_seconds": 1e-3},
    }


def test_plots_draw_both_schemes() -> None:
    # records out of order and of two world sizes: a plot takes one world size, sorted by n
    sizes = [_record(1000), _record(100), _record(100, world_size=4)]
    ax = comm.plot_communication({"sizes": sizes})
    labels = [line.get_label() for line in ax.get_lines()]
    assert len(labels) == 4 and "predicted 4n" in labels and "predicted 4K = 16" in labels
    assert list(ax.get_lines()[0].get_xdata()) == [100, 1000]
    assert list(ax.get_lines()[0].get_ydata()) == [400, 4000]  # the all-reduced gradient: 4n bytes
    assert list(ax.get_lines()[1].get_ydata()) == [16, 16]  # the shared seed: 4K bytes
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert "2 workers" in ax.get_title()
    ax = comm.plot_step_time({"sizes": sizes}, world_size=4)
    assert len(ax.get_lines()) == 4 and "4 workers" in ax.get_title()
    assert list(ax.get_lines()[2].get_ydata()) == [1e-3]  # the all-reduce alone, dashed
    plt.close("all")


def test_plots_reject_records_they_cannot_draw() -> None:
    with pytest.raises(ValueError, match="world size 4"):
        comm.plot_communication({"sizes": [_record(100)]}, world_size=4)
    with pytest.raises(ValueError, match="sizes"):
        comm.plot_step_time({})
    plt.close("all")
