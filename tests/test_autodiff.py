"""Tests of ffkit.autodiff: Dual numbers, jvp (the torch.func convention), module_jvp and call_with
against torch autograd."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

import ffkit
from ffkit import autodiff as ad
from ffkit.autodiff import Dual, call_with, jvp, module_jvp
from ffkit.models import mlp, small_cnn

SETTINGS = settings(max_examples=120, deadline=None, derandomize=True)
RTOL, ATOL = 1e-9, 1e-11  # float64 throughout: only rounding separates the two computations


# ---------------------------------------------------------------------------------------------
# Random expressions, evaluated side by side on Dual (numpy) and on torch tensors
# ---------------------------------------------------------------------------------------------

def _positive(x):  # a strictly positive function of x, for log / sqrt / powers / division
    return x * x + 0.5


# name -> (on Dual, on torch): every function is smooth where it is evaluated
UNARY = {
    "neg": (lambda x: -x, lambda x: -x),
    "sin": (ad.sin, torch.sin),
    "cos": (ad.cos, torch.cos),
    "tanh": (ad.tanh, torch.tanh),
    "sigmoid": (ad.sigmoid, torch.sigmoid),
    "relu": (ad.relu, torch.relu),
    "softplus": (ad.softplus, F.softplus),
    "exp": (lambda x: ad.exp(ad.tanh(x)), lambda x: torch.exp(torch.tanh(x))),
    "log": (lambda x: ad.log(_positive(x)), lambda x: torch.log(_positive(x))),
    "sqrt": (lambda x: ad.sqrt(_positive(x)), lambda x: torch.sqrt(_positive(x))),
    "pow_const": (lambda x: _positive(x) ** 1.5, lambda x: _positive(x) ** 1.5),
    "square": (lambda x: x**2, lambda x: x**2),
    "rpow": (lambda x: 2.0 ** ad.tanh(x), lambda x: 2.0 ** torch.tanh(x)),
    "rdiv": (lambda x: 1.0 / _positive(x), lambda x: 1.0 / _positive(x)),
    "rsub": (lambda x: 3.0 - x, lambda x: 3.0 - x),
    "sum_last": (lambda x: x.sum(axis=-1, keepdims=True), lambda x: x.sum(dim=-1, keepdim=True)),
    "mean_first": (lambda x: ad.mean(x, axis=0, keepdims=True), lambda x: x.mean(dim=0, keepdim=True)),
    "abs": (abs, torch.abs),
}
BINARY = {
    "add": (lambda a, b: a + b, lambda a, b: a + b),
    "sub": (lambda a, b: a - b, lambda a, b: a - b),
    "mul": (lambda a, b: a * b, lambda a, b: a * b),
    "div": (lambda a, b: a / _positive(b), lambda a, b: a / _positive(b)),
    "pow": (lambda a, b: _positive(a) ** ad.tanh(b), lambda a, b: _positive(a) ** torch.tanh(b)),
}


@st.composite
def programs(draw):
    """Leaves of broadcast-compatible random shapes, a random sequence of operations on them,
    and constant arrays mixed in (on either side of an operator)."""
    ndim = draw(st.integers(1, 3))
    full = draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim))
    n_leaves = draw(st.integers(1, 3))
    shapes = []
    for _ in range(n_leaves):
        drop = draw(st.integers(0, ndim - 1))  # fewer leading dims broadcast too
        shape = [s if draw(st.booleans()) else 1 for s in full[drop:]]
        shapes.append(tuple(shape))
    steps = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["unary", "binary", "const"]))
        if kind == "unary":
            steps.append(("unary", draw(st.sampled_from(sorted(UNARY))), None))
        elif kind == "binary":
            steps.append(("binary", draw(st.sampled_from(sorted(BINARY))), draw(st.integers(0, 100))))
        else:
            steps.append(("const", draw(st.sampled_from(["add", "sub", "mul", "div"])), draw(st.booleans())))
    seed = draw(st.integers(0, 2**31 - 1))
    return shapes, steps, seed


def _run(shapes, steps, seed, lift_leaf, lift_const, unary_index):
    """Evaluate a program; ``unary_index`` picks the Dual (0) or torch (1) implementation."""
    rng = np.random.default_rng(seed)
    values = [lift_leaf(i, s) for i, s in enumerate(shapes)]
    for kind, name, arg in steps:
        x = values[-1]
        if kind == "unary":
            values.append(UNARY[name][unary_index](x))
        elif kind == "binary":
            values.append(BINARY[name][unary_index](x, values[arg % len(values)]))
        else:
            c = lift_const(rng.uniform(0.5, 1.5, size=shapes[0]))
            op = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b,
                  "mul": lambda a, b: a * b, "div": lambda a, b: a / b}[name]
            values.append(op(x, c) if arg else op(c, x))
    return values[-1]


@SETTINGS
@given(programs())
def test_dual_matches_torch_on_random_expressions(program):
    shapes, steps, seed = program
    rng = np.random.default_rng(seed + 1)
    xs = [rng.normal(size=s) for s in shapes]
    vs = [rng.normal(size=s) for s in shapes]

    out = _run(shapes, steps, seed, lambda i, s: Dual(xs[i], vs[i]), lambda c: c, 0)

    leaves = [torch.tensor(x, requires_grad=True) for x in xs]
    ref = _run(shapes, steps, seed, lambda i, s: leaves[i], torch.from_numpy, 1)
    # reverse mode: u · (J v) = (Jᵀ u) · v for a random u
    u = torch.from_numpy(rng.normal(size=tuple(ref.shape)))
    grads = torch.autograd.grad(ref, leaves, grad_outputs=u, allow_unused=True)
    uJv = sum(float((g * torch.from_numpy(v)).sum()) for g, v in zip(grads, vs) if g is not None)

    assert out.shape == tuple(ref.shape)
    np.testing.assert_allclose(out.value, ref.detach().numpy(), rtol=RTOL, atol=ATOL)
    assert float((out.tangent * u.numpy()).sum()) == pytest.approx(uJv, rel=1e-8, abs=1e-9)
    # forward mode, elementwise: the whole tangent J v
    _, jv = torch.func.jvp(
        lambda *p: _run(shapes, steps, seed, lambda i, s: p[i], torch.from_numpy, 1),
        tuple(torch.from_numpy(x) for x in xs),
        tuple(torch.from_numpy(v) for v in vs),
    )
    np.testing.assert_allclose(out.tangent, jv.numpy(), rtol=1e-8, atol=1e-10)


@st.composite
def matmul_shapes(draw):
    m, k, n = (draw(st.integers(1, 4)) for _ in range(3))
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    case = draw(st.sampled_from(["mat-mat", "batch-mat", "vec-mat", "mat-vec", "vec-vec"]))
    left = {"mat-mat": (m, k), "batch-mat": batch + (m, k), "vec-mat": (k,), "mat-vec": batch + (m, k), "vec-vec": (k,)}[case]
    right = {"mat-mat": (k, n), "batch-mat": (k, n), "vec-mat": (k, n), "mat-vec": (k,), "vec-vec": (k,)}[case]
    which = draw(st.sampled_from(["both", "left", "right"]))  # which operands carry a tangent
    return left, right, which, draw(st.integers(0, 2**31 - 1))


@SETTINGS
@given(matmul_shapes())
def test_matmul_matches_torch(case):
    left, right, which, seed = case
    rng = np.random.default_rng(seed)
    a, b, va, vb = rng.normal(size=left), rng.normal(size=right), rng.normal(size=left), rng.normal(size=right)
    da = Dual(a, va) if which != "right" else a
    db = Dual(b, vb) if which != "left" else b
    out = da @ db
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    zero_a = torch.zeros_like(ta) if which == "right" else torch.from_numpy(va)
    zero_b = torch.zeros_like(tb) if which == "left" else torch.from_numpy(vb)
    ref, ref_t = torch.func.jvp(lambda x, y: x @ y, (ta, tb), (zero_a, zero_b))
    np.testing.assert_allclose(out.value, ref.numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(out.tangent, ref_t.numpy(), rtol=RTOL, atol=ATOL)


def test_small_mlp_directional_derivative_matches_backprop():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 5))
    y = rng.integers(0, 3, size=16)
    W1, b1, W2, b2 = rng.normal(size=(5, 7)), rng.normal(size=7), rng.normal(size=(7, 3)), rng.normal(size=3)
    V = [rng.normal(size=p.shape) for p in (W1, b1, W2, b2)]

    def loss(W1, b1, W2, b2, lib):
        h = lib.tanh(x @ W1 + b1)
        z = h @ W2 + b2
        log_p = z - lib.log(lib.exp(z).sum(axis=1, keepdims=True))
        return -(log_p * np.eye(3)[y]).sum(axis=1).mean()

    out = loss(*(Dual(p, v) for p, v in zip((W1, b1, W2, b2), V)), ad)
    params = [torch.tensor(p, requires_grad=True) for p in (W1, b1, W2, b2)]
    z = torch.tanh(torch.from_numpy(x) @ params[0] + params[1]) @ params[2] + params[3]
    ref = F.cross_entropy(z, torch.from_numpy(y))
    grads = torch.autograd.grad(ref, params)
    assert float(out.value) == pytest.approx(float(ref.detach()), rel=1e-12)
    assert float(out.tangent) == pytest.approx(sum(float((g * torch.from_numpy(v)).sum()) for g, v in zip(grads, V)), rel=1e-10)


# ---------------------------------------------------------------------------------------------
# Dual: construction, edges of the domain, errors
# ---------------------------------------------------------------------------------------------

def test_dual_algebra_epsilon_squared_is_zero():
    eps = Dual(0.0, 1.0)
    sq = eps * eps
    assert float(sq.value) == 0.0 and float(sq.tangent) == 0.0
    z = Dual(2.0, 3.0) * Dual(5.0, 7.0)  # (2 + 3ε)(5 + 7ε) = 10 + 29ε
    assert (float(z.value), float(z.tangent)) == (10.0, 29.0)


def test_dual_construction_dtypes_and_broadcast_tangent():
    assert Dual(3).dtype == np.float64
    assert Dual(np.ones(2, np.float32), np.ones(2, np.float32)).dtype == np.float32
    assert Dual(np.ones(2, np.float32)).dtype == np.float32
    d = Dual(np.zeros((2, 3)), 1.0)
    assert d.tangent.shape == (2, 3) and np.all(d.tangent == 1.0)
    d.tangent[0, 0] = 5.0  # an owned, writeable array, not a broadcast view
    with pytest.raises(ValueError, match="tangent of shape"):
        Dual(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="tangent of shape"):
        Dual(np.zeros(3), np.zeros((2, 3)))  # the tangent may not enlarge the value


def test_comparisons_use_the_value_only():
    a, b = Dual(np.array([1.0, 2.0, 3.0]), np.array([9.0, 9.0, 9.0])), Dual(np.array([2.0, 2.0, 2.0]))
    np.testing.assert_array_equal(a < b, [True, False, False])
    np.testing.assert_array_equal(a <= 2.0, [True, True, False])
    np.testing.assert_array_equal(a > b, [False, False, True])
    np.testing.assert_array_equal(a >= np.array([1.0, 3.0, 3.0]), [True, False, True])
    np.testing.assert_array_equal(a == b, [False, True, False])
    np.testing.assert_array_equal(a != b, [True, False, True])
    assert (a == "text") is False


def test_log_and_sqrt_of_negative_give_nan_with_numpys_warning():
    with pytest.warns(RuntimeWarning, match="invalid value"):
        out = ad.log(Dual(np.array([-1.0, 1.0]), np.array([1.0, 1.0])))
    assert np.isnan(out.value[0]) and out.value[1] == 0.0 and out.tangent[1] == 1.0
    with pytest.warns(RuntimeWarning, match="invalid value"):
        out = ad.sqrt(Dual(-4.0, 1.0))
    assert np.isnan(out.value)


# 0 * inf in the tangent of x / 0 warns "invalid value", as it does in numpy
@pytest.mark.filterwarnings("ignore:invalid value encountered in multiply:RuntimeWarning")
def test_log_of_zero_and_division_by_zero_give_inf_like_numpy():
    with pytest.warns(RuntimeWarning, match="divide by zero"):
        out = ad.log(Dual(0.0, 1.0))
    assert out.value == -np.inf
    with pytest.warns(RuntimeWarning, match="divide by zero"):
        out = Dual(1.0, 2.0) / 0.0
    assert out.value == np.inf and out.tangent == np.inf
    with pytest.warns(RuntimeWarning, match="divide by zero"):
        out = Dual(np.array([1.0, -1.0]), np.zeros(2)) / Dual(np.zeros(2), np.zeros(2))
    np.testing.assert_array_equal(out.value, [np.inf, -np.inf])
    with pytest.warns(RuntimeWarning, match="divide by zero"):
        out = 1.0 / Dual(0.0, 1.0)
    assert out.value == np.inf


def test_elementary_functions_accept_plain_arrays_like_numpy():
    x = np.linspace(-3, 3, 7)
    np.testing.assert_allclose(ad.exp(x), np.exp(x))
    np.testing.assert_allclose(ad.sigmoid(x), 1 / (1 + np.exp(-x)), rtol=1e-14)
    np.testing.assert_allclose(ad.softplus(x), np.log1p(np.exp(x)), rtol=1e-14)
    np.testing.assert_array_equal(ad.relu(x), np.maximum(x, 0))
    assert ad.sum(x) == pytest.approx(0.0, abs=1e-15)


def test_stable_at_large_arguments():
    big = Dual(np.array([-800.0, 800.0]), np.ones(2))
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # no overflow anywhere
        s, sp = ad.sigmoid(big), ad.softplus(big)
    np.testing.assert_array_equal(s.value, [0.0, 1.0])
    np.testing.assert_array_equal(sp.value, [0.0, 800.0])
    np.testing.assert_array_equal(sp.tangent, [0.0, 1.0])


def test_relu_tangent_is_zero_at_and_below_zero_like_torch():
    out = ad.relu(Dual(np.array([-1.0, 0.0, 2.0]), np.ones(3)))
    x = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64)
    _, ref = torch.func.jvp(torch.relu, (x,), (torch.ones(3, dtype=torch.float64),))
    np.testing.assert_array_equal(out.tangent, ref.numpy())


@pytest.mark.parametrize(
    "operand", ["text", None, [1.0, 2.0], torch.ones(3), np.array(["a", "b", "c"]), 1 + 2j]
)
def test_unsupported_operands_raise_type_error(operand):
    d = Dual(np.ones(3), np.ones(3))
    for op in (lambda: d + operand, lambda: operand - d, lambda: d * operand, lambda: operand / d, lambda: d**operand):
        with pytest.raises(TypeError, match="unsupported operand for Dual"):
            op()
    with pytest.raises(TypeError):
        d < operand  # noqa: B015


def test_bad_construction_and_functions_on_wrong_types_raise_type_error():
    with pytest.raises(TypeError, match="torch tensor"):
        Dual(torch.ones(2))
    with pytest.raises(TypeError, match="real numbers"):
        Dual(np.array(["a"]))
    with pytest.raises(TypeError, match="nesting"):
        Dual(Dual(1.0))
    with pytest.raises(TypeError, match="unsupported operand for Dual exp"):
        ad.exp("x")
    with pytest.raises(ValueError, match="scalar is not a matrix"):
        Dual(np.ones(2)) @ 2.0


def test_numpy_array_on_the_left_defers_to_dual():
    d = Dual(np.ones(3), np.arange(3.0))
    for out in (np.full(3, 2.0) * d, np.full(3, 2.0) + d, np.full(3, 2.0) - d, np.ones((2, 3)) @ d.reshape(3, 1)):
        assert isinstance(out, Dual)
    np.testing.assert_array_equal((np.full(3, 2.0) * d).tangent, [0.0, 2.0, 4.0])


# ---------------------------------------------------------------------------------------------
# jvp / module_jvp against the autograd Jacobian
# ---------------------------------------------------------------------------------------------

def _jacobian_times(f, params: dict[str, torch.Tensor], tangents: dict[str, torch.Tensor]) -> torch.Tensor:
    """J_f(θ) v from the full reverse-mode Jacobian (the reference)."""
    names = list(params)
    jac = torch.autograd.functional.jacobian(lambda *p: f(dict(zip(names, p))), tuple(params[n] for n in names))
    return sum(torch.tensordot(j, tangents[n], dims=tangents[n].ndim) for j, n in zip(jac, names))


def _random_tangents(model, seed):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in model.named_parameters()}


@pytest.mark.parametrize("method", ["forward_ad", "func"])
@pytest.mark.parametrize("seed", range(3))
def test_module_jvp_matches_jacobian_on_random_mlps(method, seed):
    g = torch.Generator().manual_seed(seed)
    sizes = [int(s) for s in torch.randint(1, 6, (int(torch.randint(2, 5, (1,), generator=g)),), generator=g)]
    model = mlp(sizes, activation=[torch.nn.Tanh, torch.nn.ReLU, torch.nn.Sigmoid][seed], flatten=False,
                generator_seed=seed).double()
    x = torch.randn(4, sizes[0], generator=g, dtype=torch.float64)
    v = _random_tangents(model, seed)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    out, tangent = module_jvp(model, lambda: model(x), v, method=method)
    ref = _jacobian_times(lambda p: torch.func.functional_call(model, p, (x,)),
                          {n: p.detach() for n, p in model.named_parameters()}, v)
    torch.testing.assert_close(out, model(x).detach())
    torch.testing.assert_close(tangent, ref, rtol=1e-10, atol=1e-12)
    assert not out.requires_grad and not tangent.requires_grad  # nothing kept for a backward pass
    for n, p in model.named_parameters():  # the model is untouched
        assert torch.equal(p, before[n]) and isinstance(p, torch.nn.Parameter)


@pytest.mark.parametrize("method", ["forward_ad", "func"])
def test_module_jvp_of_a_loss_on_a_small_cnn_matches_backprop(method):
    model = small_cnn(channels=1, classes=3, width=2, image_size=8).double()
    ffkit.models.reinitialize(model, 1)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(5, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (5,), generator=g)
    v = _random_tangents(model, 2)
    loss, dd = module_jvp(model, lambda: F.cross_entropy(model(x), y), v, method=method)
    model.zero_grad()
    ref = F.cross_entropy(model(x), y)
    ref.backward()
    assert float(loss) == pytest.approx(float(ref.detach()), rel=1e-12)
    assert float(dd) == pytest.approx(sum(float((p.grad * v[n]).sum()) for n, p in model.named_parameters()), rel=1e-9)
    # and the full output against the reverse-mode Jacobian
    _, out_t = module_jvp(model, lambda: model(x), v, method=method)
    ref_t = _jacobian_times(lambda p: torch.func.functional_call(model, p, (x,)),
                            {n: p.detach() for n, p in model.named_parameters()}, v)
    torch.testing.assert_close(out_t, ref_t, rtol=1e-9, atol=1e-12)


def test_module_jvp_holds_parameters_left_out_fixed():
    model = mlp([3, 4, 2], flatten=False, generator_seed=0).double()
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    v = _random_tangents(model, 0)
    _, partial = module_jvp(model, lambda: model(x), {"0.weight": v["0.weight"]})
    zero = {n: (t if n == "0.weight" else torch.zeros_like(t)) for n, t in v.items()}
    _, full = module_jvp(model, lambda: model(x), zero)
    torch.testing.assert_close(partial, full)


@pytest.mark.parametrize("method", ["forward_ad", "func"])
def test_jvp_of_a_tensor_argument(method):
    g = torch.Generator().manual_seed(3)
    model = small_cnn(channels=2, classes=4, width=2, image_size=8).double()
    x = torch.randn(2, 2, 8, 8, generator=g, dtype=torch.float64)
    vx = torch.randn(x.shape, generator=g, dtype=torch.float64)
    out, t = jvp(model, (x,), (vx,), method=method)  # derivative in the image
    ref = torch.autograd.functional.jacobian(model, x)
    torch.testing.assert_close(t, torch.tensordot(ref, vx, dims=4), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out, model(x))


def _tanh_layer(inputs: torch.Tensor):
    return lambda p: torch.tanh(inputs @ p["w"] + p["b"])


@pytest.mark.parametrize("method", ["forward_ad", "func"])
def test_jvp_of_a_dict_argument_with_tangents_in_another_key_order(method):
    g = torch.Generator().manual_seed(4)
    params = {"w": torch.randn(3, 4, generator=g, dtype=torch.float64), "b": torch.randn(4, generator=g, dtype=torch.float64)}
    v = {"b": torch.randn(4, generator=g, dtype=torch.float64), "w": torch.randn(3, 4, generator=g, dtype=torch.float64)}
    f = _tanh_layer(torch.randn(5, 3, generator=g, dtype=torch.float64))
    out, t = jvp(f, (params,), (v,), method=method)
    torch.testing.assert_close(out, f(params))
    torch.testing.assert_close(t, _jacobian_times(f, params, v), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["forward_ad", "func"])
def test_jvp_of_a_tuple_argument_with_a_tuple_output(method):
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    va, vb = torch.randn(4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    (o1, o2), (t1, t2) = jvp(lambda p: (p[0] * p[1], p[0].sin().sum()), ((a, b),), ((va, vb),), method=method)
    torch.testing.assert_close(o1, a * b)
    torch.testing.assert_close(t1, va * b + a * vb)  # the product rule
    torch.testing.assert_close(t2, (a.cos() * va).sum())


@pytest.mark.parametrize("method", ["forward_ad", "func"])
def test_jvp_of_several_arguments_sums_their_contributions(method):
    """f(W, b, x) with three positional arguments of different kinds: J v = Σ_i ∂_i f · v_i, checked
    against the reverse-mode gradient (f is scalar) and against one argument at a time."""
    g = torch.Generator().manual_seed(6)
    w = {"w": torch.randn(3, 4, generator=g, dtype=torch.float64)}
    b = torch.randn(4, generator=g, dtype=torch.float64)
    x = (torch.randn(5, 3, generator=g, dtype=torch.float64),)
    vw = {"w": torch.randn(3, 4, generator=g, dtype=torch.float64)}
    vb = torch.randn(4, generator=g, dtype=torch.float64)
    vx = (torch.randn(5, 3, generator=g, dtype=torch.float64),)

    def f(wd, bias, xs):
        return torch.tanh(xs[0] @ wd["w"] + bias).pow(2).mean()

    value, dot = jvp(f, (w, b, x), (vw, vb, vx), method=method)
    leaves = [w["w"].clone().requires_grad_(), b.clone().requires_grad_(), x[0].clone().requires_grad_()]
    ref = f({"w": leaves[0]}, leaves[1], (leaves[2],))
    grads = torch.autograd.grad(ref, leaves)
    expected = sum(float((gr * t).sum()) for gr, t in zip(grads, (vw["w"], vb, vx[0])))
    assert float(value) == pytest.approx(float(ref.detach()), rel=1e-14)
    assert float(dot) == pytest.approx(expected, rel=1e-10)
    zero = lambda t: torch.zeros_like(t)  # noqa: E731
    parts = [
        jvp(f, (w, b, x), (vw, zero(b), (zero(x[0]),)), method=method)[1],
        jvp(f, (w, b, x), ({"w": zero(w["w"])}, vb, (zero(x[0]),)), method=method)[1],
        jvp(f, (w, b, x), ({"w": zero(w["w"])}, zero(b), vx), method=method)[1],
    ]
    assert float(sum(parts)) == pytest.approx(float(dot), rel=1e-12)


def test_jvp_output_that_does_not_depend_on_the_input_has_zero_tangent():
    c = torch.ones(3)
    out, t = jvp(lambda x: (x.sum(), c * 2), (torch.zeros(2),), (torch.ones(2),))
    assert float(t[0]) == 2.0 and torch.equal(t[1], torch.zeros(3))


@pytest.mark.parametrize(
    ("primals", "tangents", "match"),
    [
        ((torch.zeros(3),), (torch.zeros(4),), "shape"),
        ((torch.zeros(3),), (torch.zeros(3, dtype=torch.float64),), "dtype"),
        (({"a": torch.zeros(2)},), ({"a": torch.zeros(2, 1)},), "shape"),
        (({"a": torch.zeros(2)},), ({"b": torch.zeros(2)},), "keys"),
        (((torch.zeros(2),),), ((torch.zeros(2), torch.zeros(2)),), "length"),
        (((torch.zeros(2),),), ([torch.zeros(2)],), "structure"),
        ((torch.zeros(2),), ({"a": torch.zeros(2)},), "structure"),
        ((torch.zeros(2), {"a": torch.zeros(2)}), (torch.zeros(2), (torch.zeros(2),)), "structure"),
        ((torch.zeros(2, dtype=torch.int64),), (torch.zeros(2, dtype=torch.int64),), "floating"),
        ((torch.zeros(2),), (torch.zeros(2), torch.zeros(2)), "primals has 1 arguments but tangents has 2"),
        ((torch.zeros(2), torch.zeros(2)), (torch.zeros(2),), "primals has 2 arguments but tangents has 1"),
        ((), (), "at least one"),
    ],
)
def test_jvp_rejects_mismatched_primals_and_tangents(primals, tangents, match):
    with pytest.raises(ValueError, match=match):
        jvp(lambda *p: p[0], primals, tangents)


def test_jvp_names_the_argument_that_differs():
    with pytest.raises(ValueError, match=r"tangents\[1\] has shape \(3,\) but primals\[1\] has \(2,\)"):
        jvp(lambda a, b: a + b, (torch.zeros(2), torch.zeros(2)), (torch.zeros(2), torch.zeros(3)))
    with pytest.raises(ValueError, match=r"tangents\[0\]\['w'\] has shape"):
        jvp(lambda p: p["w"], ({"w": torch.zeros(2)},), ({"w": torch.zeros(1)},))


@pytest.mark.parametrize("bare", [torch.zeros(2), [torch.zeros(2)], {"a": torch.zeros(2)}])
def test_jvp_needs_tuples_of_arguments_not_a_bare_argument(bare):
    with pytest.raises(TypeError, match=r"must be a tuple of f's positional arguments.*jvp\(f, \(x,\), \(v,\)\)"):
        jvp(lambda p: p, bare, bare)
    with pytest.raises(TypeError, match="tangents must be a tuple"):
        jvp(lambda p: p, (torch.zeros(2),), torch.zeros(2))


def test_jvp_and_module_jvp_argument_errors():
    with pytest.raises(TypeError, match="tensor"):
        jvp(lambda p: p, ([1.0, 2.0],), ([1.0, 2.0],))
    with pytest.raises(TypeError, match="callable"):
        jvp(3, (torch.zeros(1),), (torch.zeros(1),))
    with pytest.raises(ValueError, match="method"):
        jvp(lambda p: p, (torch.zeros(1),), (torch.zeros(1),), method="double_vjp")
    with pytest.raises(TypeError, match="f must return"):
        jvp(lambda p: 3.0, (torch.zeros(1),), (torch.zeros(1),))
    model = mlp([2, 2], flatten=False)
    with pytest.raises(ValueError, match="does not have"):
        module_jvp(model, lambda: model(torch.zeros(1, 2)), {"nope": torch.zeros(2)})
    with pytest.raises(ValueError, match="shape"):
        module_jvp(model, lambda: model(torch.zeros(1, 2)), {"0.bias": torch.zeros(3)})
    with pytest.raises(TypeError, match="nn.Module"):
        module_jvp(lambda: 0, lambda: 0, {})
    with pytest.raises(TypeError, match="dict of parameter name"):
        module_jvp(model, lambda: model(torch.zeros(1, 2)), [torch.zeros(2)])


def test_scalar_directional_derivative_is_gradient_dot_v():
    g = torch.Generator().manual_seed(0)
    theta, v = torch.randn(10, generator=g, dtype=torch.float64), torch.randn(10, generator=g, dtype=torch.float64)

    def rosenbrock(x):
        return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()

    _, dd = jvp(rosenbrock, (theta,), (v,))
    grad = torch.func.grad(rosenbrock)(theta)
    assert float(dd) == pytest.approx(float(grad @ v), rel=1e-12)
    assert math.isfinite(float(dd))


# ---------------------------------------------------------------------------------------------
# call_with
# ---------------------------------------------------------------------------------------------


def test_call_with_runs_the_closure_with_the_given_parameters_and_leaves_the_model_alone():
    model = mlp([3, 4, 2], flatten=False, generator_seed=0).double()
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    new = {n: torch.randn_like(p) for n, p in before.items()}
    out = call_with(model, lambda: model(x), new)
    torch.testing.assert_close(out, torch.func.functional_call(model, new, (x,)), rtol=0, atol=0)
    assert not torch.equal(out, model(x))
    # parameters left out keep their values
    partial = call_with(model, lambda: model(x), {"2.bias": new["2.bias"]})
    torch.testing.assert_close(partial, model(x) - before["2.bias"] + new["2.bias"], rtol=1e-14, atol=1e-14)
    for n, p in model.named_parameters():
        assert isinstance(p, torch.nn.Parameter) and torch.equal(p, before[n])


def test_call_with_restores_the_model_when_the_closure_raises():
    model = mlp([3, 2], flatten=False, generator_seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def failing():
        model(torch.zeros(1, 3))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        call_with(model, failing, {n: torch.zeros_like(p) for n, p in before.items()})
    for n, p in model.named_parameters():
        assert isinstance(p, torch.nn.Parameter) and torch.equal(p, before[n])


def test_call_with_replaces_a_tied_parameter_under_either_name():
    first = torch.nn.Linear(3, 3, bias=False)
    model = torch.nn.Sequential(first, torch.nn.Tanh(), torch.nn.Linear(3, 3, bias=False))
    model[2].weight = first.weight
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    w = torch.randn(3, 3, generator=torch.Generator().manual_seed(2))
    expected = torch.tanh(x @ w.T) @ w.T  # both layers use the replacement
    for name in ("0.weight", "2.weight"):
        torch.testing.assert_close(call_with(model, lambda: model(x), {name: w}), expected)
