"""Tests of ffkit.experiments.modes (forward against reverse mode) and its command, on tiny sizes.

No timing is asserted: only the bookkeeping, which follows from the definitions (every ratio is a
time over the forward pass's time of the same round, so the forward pass's own ratio is 1).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ffkit import results
from ffkit.experiments import modes


def test_cost_ratios_bookkeeping() -> None:
    costs = modes.cost_ratios([6, 5, 3], batch=4, rounds=3)
    variants = {"forward pass", "JVP, forward_ad", "JVP, torch.func.jvp", "VJP, backward()", "autograd.functional.jvp"}
    assert costs["n_parameters"] == 6 * 5 + 5 + 5 * 3 + 3
    assert costs["sizes"] == [6, 5, 3] and costs["batch"] == 4 and costs["rounds"] == 3
    assert set(costs["median_seconds"]) == set(costs["median_ratio"]) == set(costs["ratio_quartiles"]) == variants
    assert costs["median_ratio"]["forward pass"] == 1.0
    assert costs["R_f"] == costs["median_ratio"]["JVP, forward_ad"]
    assert costs["R_b"] == costs["median_ratio"]["VJP, backward()"]
    assert all(t > 0 for t in costs["median_seconds"].values())
    assert all(len(q) == 2 and q[0] <= q[1] for q in costs["ratio_quartiles"].values())


def test_full_gradient_times_bookkeeping() -> None:
    full = modes.full_gradient_times([1, 2], rounds=1)
    assert full["n"] == [13 * 1 + 4, 13 * 2 + 4]  # an 8-h-4 MLP: 8h + h + 4h + 4 parameters
    assert all(len(full[k]) == 2 and all(t > 0 for t in full[k]) for k in ("n JVPs, loop", "n JVPs, vmap", "one VJP"))


@pytest.fixture
def restore_torch_settings():
    """The command calls ffkit.setup (threads, deterministic algorithms): undo it for the other tests."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def test_bench_modes_command_writes_an_envelope(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, restore_torch_settings: None
) -> None:
    from ffkit.commands import bench_modes

    out = tmp_path / "bench_modes.json"
    argv = ["--sizes", "4", "3", "2", "--batch", "2", "--rounds", "3", "--hidden", "1",
            "--gradient-rounds", "1", "--out", str(out)]
    assert bench_modes.main(argv) == 0
    assert "R_f =" in capsys.readouterr().out
    monkeypatch.setenv("FFKIT_RESULTS", str(tmp_path))
    data = results.load("bench_modes")
    assert data["command"] == "python -m ffkit bench-modes " + " ".join(argv)
    assert data["settings"]["sizes"] == [4, 3, 2] and data["settings"]["rounds"] == 3
    assert set(data["results"]) == {"cost", "full_gradient"}
    assert data["results"]["cost"]["n_parameters"] == 4 * 3 + 3 + 3 * 2 + 2
    assert {"torch", "threads", "device"} <= set(data["environment"])
    with pytest.raises(SystemExit):
        bench_modes.main(["--rounds", "1"])
