"""Tests of ffkit.experiments.parallel (chapter 4's timelines and K tangents at once), on tiny sizes.

No timing is asserted. The variance of the K-direction estimate is a Monte Carlo mean of D
squared errors, checked against (n + κ − 2)‖∇f‖²/K within Z = 5 of its standard error (estimated
from the D >= 50 draws, good to about 20 %, which the margin absorbs; a 5-sigma bound fails by chance with probability about 6e-7).
"""

from __future__ import annotations

import pytest

from ffkit.experiments import parallel as exp

Z = 5.0


def test_layer_profile_has_every_piece_for_every_layer() -> None:
    out = exp.layer_profile(width=8, depth=3, batch=4, microbatches=2, repeats=1)
    pieces = {"forward", "backward", "update", "forward+tangent", "update (regenerated)"}
    for key in ("full_batch", "microbatch", "full_batch_median", "microbatch_median"):
        assert set(out[key]) == pieces
        assert all(len(v) == 3 and all(t > 0 for t in v) for v in out[key].values())
    assert set(out["whole_step_seconds"]) == {"inference", "backprop", "lean forward gradient"}


@pytest.mark.parametrize("sampler", ["gaussian", "rademacher"])
def test_directions_profile_variance_matches_theory(sampler: str) -> None:
    out = exp.directions_profile(width=6, depth=2, batch=4, ks=[4, 8], repeats=1, draws=10, sampler=sampler)
    assert out["n"] == 6 * 6 + 6 + 6 * 10 + 10 and out["sampler"] == sampler
    assert [r["K"] for r in out["rows"]] == [4, 8]
    for row in out["rows"]:
        assert row["draws"] == max(10, -(-400 // row["K"]))  # more draws where K is small
        assert abs(row["variance"] - row["variance_theory"]) < Z * row["variance_sem"]
        assert row["loop_seconds"] > 0 and row["vmap_seconds"] > 0
    # the theory itself: (n + κ − 2)‖∇f‖²/K
    kappa = 3.0 if sampler == "gaussian" else 1.0
    for row in out["rows"]:
        expected = (out["n"] + kappa - 2) * out["grad_norm_sq"] / row["K"]
        assert row["variance_theory"] == pytest.approx(expected, rel=1e-12)
