"""Tests of ffkit.tangents: the registry, the moments of every distribution, seeding, draw/stream/combine.

Monte Carlo tolerances: a mean of D i.i.d. terms lies within ``Z = 5`` standard errors of its
expectation except with probability about 6e-7 per check (Gaussian tail); the standard errors
come from the moments the registry states (E v_i² = 1, E v_i⁴ = κ), except for the fourth moment
itself, whose standard error needs E v⁸ and is estimated from the draws (D·d >= 10⁵ terms, so the
estimate is good to a few percent, which the 5-sigma margin absorbs). Every generator is seeded,
so the tests are deterministic; the tolerances say how far off a correct implementation may be.
"""

from __future__ import annotations

import math

import pytest
import torch

from ffkit import tangents as tg
from ffkit import theory

Z = 5.0
MASK64 = (1 << 64) - 1


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> dict:
    """A private copy of the registry, so that registering in a test leaves the others alone."""
    copy = dict(tg._REGISTRY)
    monkeypatch.setattr(tg, "_REGISTRY", copy)
    return copy


def _fill_uniform_(out: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """Uniform on [−√3, √3]: E v² = 1, E v⁴ = 9/5."""
    return out.uniform_(-math.sqrt(3.0), math.sqrt(3.0), generator=gen)


UNIFORM = tg.Distribution("uniform", _fill_uniform_, 9 / 5, "uniform on [−√3, √3]")


# --------------------------------------------------------------------------- registry


def test_builtins_are_registered_with_their_fourth_moments() -> None:
    assert tg.DEFAULT == "rademacher"
    assert {"rademacher", "gaussian"} <= set(tg.names())
    assert tg.get("rademacher").fourth_moment == 1.0  # v_i⁴ = 1
    assert tg.get("gaussian").fourth_moment == 3.0  # E z⁴ = 3 for z ~ N(0, 1)
    assert all(tg.get(name).description for name in tg.names())


def test_get_is_case_insensitive_and_passes_a_distribution_through() -> None:
    assert tg.get("Gaussian") is tg.get("gaussian") is tg.get("GAUSSIAN")
    dist = tg.get("rademacher")
    assert tg.get(dist) is dist
    assert repr(dist) == "Distribution('rademacher')"


@pytest.mark.parametrize("bad", ["sobol", "", None, 3])
def test_unknown_distribution_error_lists_the_known_names(bad: object) -> None:
    with pytest.raises(ValueError, match="unknown tangent distribution") as info:
        tg.get(bad)  # type: ignore[arg-type]
    for name in tg.names():
        assert name in str(info.value)


def test_register_adds_and_refuses_duplicates_and_bad_names(registry: dict) -> None:
    assert tg.register(UNIFORM) is UNIFORM
    assert "uniform" in tg.names() and tg.get("Uniform") is UNIFORM
    with pytest.raises(ValueError, match="registered already"):
        tg.register(tg.Distribution("uniform", _fill_uniform_, 1.8))
    other = tg.Distribution("uniform", _fill_uniform_, 1.8, "a replacement")
    assert tg.register(other, replace=True) is other and tg.get("uniform") is other
    with pytest.raises(ValueError, match="lower case"):
        tg.register(tg.Distribution("Uniform2", _fill_uniform_, 1.8))
    with pytest.raises(ValueError, match="non-empty"):
        tg.register(tg.Distribution("", _fill_uniform_, 1.8))
    with pytest.raises(ValueError, match="E v⁴ >= "):
        tg.register(tg.Distribution("impossible", _fill_uniform_, 0.5))  # Jensen: E v⁴ >= (E v²)² = 1
    with pytest.raises(TypeError, match="Distribution"):
        tg.register("gaussian")  # type: ignore[arg-type]
    assert "impossible" not in tg.names() and "uniform2" not in tg.names()


def test_registered_distribution_reaches_the_theory(registry: dict) -> None:
    tg.register(UNIFORM)
    assert theory.kurtosis("uniform") == pytest.approx(9 / 5)
    # tr Cov((∇f·v) v) / ‖∇f‖² = n + κ − 2
    assert theory.variance_factor(10, "uniform") == pytest.approx(10 + 9 / 5 - 2)
    tg.register(tg.Distribution("structured", _fill_uniform_, None, "entries not i.i.d."))
    with pytest.raises(ValueError, match="i.i.d."):
        theory.kurtosis("structured")


# --------------------------------------------------------------------------- moments


def _check_moments(dist: tg.Distribution, *, samples: int = 20_000, dim: int = 8, seed: int = 0) -> None:
    """E v = 0, E v vᵀ = I and E v_i⁴ = κ by Monte Carlo, each within Z standard errors.

    Over D samples, per entry: mean of v_i has variance E v_i² / D = 1/D; mean of v_i² has variance
    (E v_i⁴ − 1)/D = (κ − 1)/D; mean of v_i v_j (i ≠ j) has variance E v_i² E v_j² / D = 1/D.
    """
    kappa = dist.fourth_moment
    assert kappa is not None
    v = dist.fill_(torch.empty(samples, dim, dtype=torch.float64), tg.generator(seed, 0, 0))
    se = 1 / math.sqrt(samples)
    assert float(v.mean(0).abs().max()) < Z * se
    second = v.T @ v / samples
    off = second - torch.diag(torch.diagonal(second))
    assert float(off.abs().max()) < Z * se
    diagonal_se = math.sqrt((kappa - 1) / samples)
    # κ = 1 (Rademacher): v_i² = 1 exactly, so the diagonal is 1 up to rounding
    assert float((torch.diagonal(second) - 1).abs().max()) <= Z * diagonal_se + 1e-12
    fourth = v.pow(4).flatten()
    fourth_se = float(fourth.std()) / math.sqrt(fourth.numel())
    assert abs(float(fourth.mean()) - kappa) <= Z * fourth_se + 1e-12


@pytest.mark.parametrize("name", [n for n in tg.names() if tg.get(n).fourth_moment is not None])
def test_every_iid_distribution_has_mean_zero_identity_covariance_and_its_fourth_moment(name: str) -> None:
    _check_moments(tg.get(name))


def test_moment_check_holds_for_a_registered_distribution_and_has_power(registry: dict) -> None:
    _check_moments(tg.register(UNIFORM))
    # the same check rejects a distribution whose stated κ is wrong by 10 %...
    with pytest.raises(AssertionError):
        _check_moments(tg.Distribution("wrong-kappa", _fill_uniform_, 0.9 * 9 / 5))
    # ...and one whose variance is not 1 (scaled by 1.05)
    scaled = tg.Distribution("scaled", lambda out, gen: _fill_uniform_(out, gen).mul_(1.05), 9 / 5)
    with pytest.raises(AssertionError):
        _check_moments(scaled)


@pytest.mark.parametrize("size", [1, 7, 8, 31, 33, 64 * 500 + 7])
def test_rademacher_is_fair_in_every_bit_position(size: int) -> None:
    fill = tg.get("rademacher").fill_
    out = fill(torch.empty(size), tg.generator(0, 0, 0))
    assert bool(((out == 1) | (out == -1)).all())
    if size > 64 * 100:
        # entry i takes bit (i mod 64) of a random 64-bit word: each column of a (rows, 64) view is
        # a fair ±1 coin, so its mean has standard deviation 1/√rows
        rows = size // 64
        columns = out[: rows * 64].reshape(rows, 64).mean(dim=0)
        assert float(columns.abs().max()) < Z / math.sqrt(rows)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_rademacher_draws_the_same_signs_in_every_dtype(dtype: torch.dtype) -> None:
    fill = tg.get("rademacher").fill_
    for size in (13, 64):  # through the buffer (size not divisible by 8) and in place
        reference = fill(torch.empty(size), tg.generator(1, 2, 3))
        other = fill(torch.empty(size, dtype=dtype), tg.generator(1, 2, 3))
        assert other.dtype == dtype and torch.equal(other.float(), reference)


@pytest.mark.parametrize(
    ("shape", "view"),
    [
        ((16, 5), lambda t: t.t()),  # transposed: 80 entries, not contiguous
        ((10, 10), lambda t: t[:, ::2]),  # strided slice
        ((3, 7), lambda t: t[1:]),  # contiguous slice of 14 entries (not a multiple of 8)
        ((), lambda t: t),  # a scalar
    ],
)
def test_rademacher_fills_views_in_logical_order_and_nothing_else(shape: tuple[int, ...], view) -> None:
    fill = tg.get("rademacher").fill_
    base = torch.full(shape, math.nan)
    target = view(base)
    assert fill(target, tg.generator(4, 0, 0)) is target
    # the same signs as a contiguous tensor of that shape, in the same (row-major) order
    assert torch.equal(target, fill(torch.empty(target.shape), tg.generator(4, 0, 0)))
    inside = torch.zeros(shape, dtype=torch.bool)
    view(inside).fill_(True)
    assert bool(base[~inside].isnan().all())  # nothing outside the view was written


# --------------------------------------------------------------------------- seeding


def _splitmix64_output(state: int) -> int:
    """One output of the SplitMix64 generator (Steele, Lea and Flood 2014) whose state is ``state``:
    advance by the golden gamma, then the variant-13 finaliser, written from its definition."""
    z = (state + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def test_splitmix_reference_values() -> None:
    # the first two outputs of SplitMix64 seeded with 0, as published with Vigna's reference code
    assert _splitmix64_output(0) == 0xE220A8397B1DCDAF
    assert _splitmix64_output(0x9E3779B97F4A7C15) == 0x6E789E6AA1B965F4


@pytest.mark.parametrize(("seed", "step", "k"), [(0, 0, 0), (1, 2, 3), (2**40 + 5, 10**6, 63)])
def test_mix_seed_folds_seed_step_and_direction_through_splitmix(seed: int, step: int, k: int) -> None:
    z = _splitmix64_output(seed)
    z = _splitmix64_output(z ^ step)
    z = _splitmix64_output(z ^ k)
    assert tg.mix_seed(seed, step, k) == z & ((1 << 63) - 1)
    assert tg.mix_seed(seed, step) == tg.mix_seed(seed, step, 0)


def test_mix_seed_rejects_bad_indices() -> None:
    for bad in (-1, 1.0, True, "3", None):
        for args in ((bad, 0, 0), (0, bad, 0), (0, 0, bad)):
            with pytest.raises(ValueError, match="non-negative int"):
                tg.mix_seed(*args)  # type: ignore[arg-type]


def test_generator_is_on_cpu_and_seeded_by_mix_seed() -> None:
    gen = tg.generator(5, 6, 7)
    assert isinstance(gen, torch.Generator) and gen.device.type == "cpu"
    assert gen.initial_seed() == tg.mix_seed(5, 6, 7)


def test_same_seed_step_direction_same_tangent_and_any_change_a_new_one() -> None:
    like = [torch.empty(4, 3), torch.empty(5)]
    for name in ("rademacher", "gaussian"):
        a = tg.draw(like, name, tg.generator(1, 2, 3))
        b = tg.draw(like, name, tg.generator(1, 2, 3))
        assert all(torch.equal(x, y) for x, y in zip(a, b))  # bit for bit
        for other in ((2, 2, 3), (1, 3, 3), (1, 2, 4), (1, 2, 0)):
            c = tg.draw(like, name, tg.generator(*other))
            assert not all(torch.equal(x, y) for x, y in zip(a, c)), other
    # neighbouring (seed, step, k) give distinct generator seeds
    seeds = {tg.mix_seed(s, t, k) for s in range(4) for t in range(4) for k in range(4)}
    assert len(seeds) == 64


def test_random_seed_follows_torch_manual_seed() -> None:
    torch.manual_seed(123)
    a = tg.random_seed()
    torch.manual_seed(123)
    assert tg.random_seed() == a and 0 <= a < 2**62
    gen = torch.Generator().manual_seed(9)
    assert tg.random_seed(gen) == tg.random_seed(torch.Generator().manual_seed(9))


# --------------------------------------------------------------------------- draw, stream, combine


def test_draw_into_buffers_and_stream_give_the_same_numbers() -> None:
    like = [torch.zeros(3, 4), torch.zeros(5), torch.zeros(2, 2, 2, dtype=torch.float64)]
    for name in ("rademacher", "gaussian"):
        fresh = tg.draw(like, name, tg.generator(0, 1, 2))
        assert [t.shape for t in fresh] == [t.shape for t in like]
        assert [t.dtype for t in fresh] == [t.dtype for t in like]
        assert all(torch.equal(t, torch.zeros_like(t)) for t in like)  # `like` is not written
        buffers = [torch.full_like(t, 7.0) for t in like]
        into = tg.draw(like, name, tg.generator(0, 1, 2), out=buffers)
        assert all(a is b for a, b in zip(into, buffers))  # the buffers themselves, overwritten
        assert all(torch.equal(a, b) for a, b in zip(into, fresh))
        streamed = list(tg.stream(like, tg.get(name), tg.generator(0, 1, 2)))
        assert len(streamed) == len(like) and all(torch.equal(a, b) for a, b in zip(streamed, fresh))
    with pytest.raises(ValueError, match="buffers"):
        tg.draw(like, "gaussian", None, out=[torch.empty(3, 4)])
    with pytest.raises(ValueError, match="unknown tangent distribution"):
        tg.draw(like, "sobol", None)


def _tangents(k: int, seed: int = 0) -> list[list[torch.Tensor]]:
    like = [torch.empty(3, 2, dtype=torch.float64), torch.empty(4, dtype=torch.float64)]
    return [tg.draw(like, "gaussian", tg.generator(seed, 0, i)) for i in range(k)]


def test_combine_is_the_mean_of_dot_times_tangent() -> None:
    dots = [0.5, -2.0, 3.0]
    vs = _tangents(3)
    copies = [[t.clone() for t in v] for v in vs]
    expected = [sum(d * v[j] for d, v in zip(dots, copies)) / 3 for j in range(2)]
    g = tg.combine(dots, vs)
    for a, b in zip(g, expected):
        torch.testing.assert_close(a, b, rtol=1e-15, atol=1e-15)
    # out=None uses the buffers of tangents[0] for g (they are consumed); the others are untouched
    assert all(a is b for a, b in zip(g, vs[0]))
    assert all(torch.equal(a, b) for v, c in zip(vs[1:], copies[1:]) for a, b in zip(v, c))
    # dots as a tensor
    g2 = tg.combine(torch.tensor(dots), [[t.clone() for t in v] for v in copies])
    assert all(torch.equal(a, b) for a, b in zip(g, g2))


def test_combine_into_out_with_alpha_adds_alpha_g_and_leaves_the_tangents() -> None:
    dots = [1.5, -0.25]
    vs = _tangents(2, seed=1)
    copies = [[t.clone() for t in v] for v in vs]
    start = [torch.ones(3, 2, dtype=torch.float64), torch.arange(4.0, dtype=torch.float64)]
    out = [t.clone() for t in start]
    result = tg.combine(dots, vs, out=out, alpha=-0.1)
    assert all(a is b for a, b in zip(result, out))
    for j in range(2):
        expected = start[j] - 0.1 * (dots[0] * copies[0][j] + dots[1] * copies[1][j]) / 2
        torch.testing.assert_close(out[j], expected, rtol=1e-15, atol=1e-15)
    assert all(torch.equal(a, b) for v, c in zip(vs, copies) for a, b in zip(v, c))


def test_streaming_the_directions_one_at_a_time_equals_the_batch_form() -> None:
    k, dots = 4, [0.3, -1.0, 2.0, 0.7]
    batch = tg.combine(dots, [[t.clone() for t in v] for v in _tangents(k, seed=2)])
    streamed = tg.combine(dots[:1], _tangents(k, seed=2)[:1], directions=k)  # g from v_0 alone
    for i in range(1, k):
        tg.combine(dots[i : i + 1], _tangents(k, seed=2)[i : i + 1], out=streamed, directions=k)
    for a, b in zip(streamed, batch):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)


def test_combine_rejects_mismatched_input() -> None:
    vs = _tangents(2)
    with pytest.raises(ValueError, match="one tangent per directional derivative"):
        tg.combine([1.0], vs)
    with pytest.raises(ValueError, match="one tangent per directional derivative"):
        tg.combine([], [])
    with pytest.raises(ValueError, match="one tensor per parameter"):
        tg.combine([1.0, 2.0], [vs[0], vs[1][:1]])
    with pytest.raises(ValueError, match="one tensor per parameter"):
        tg.combine([1.0], [vs[0]], out=[torch.zeros(3, 2, dtype=torch.float64)])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="directions"):
            tg.combine([1.0], [vs[0]], directions=bad)  # type: ignore[arg-type]
