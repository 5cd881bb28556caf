"""Forward-mode automatic differentiation: a teaching dual-number type and ``jvp`` for PyTorch.

Two halves:

* :class:`Dual`, a small NumPy-backed dual number ``a + b ε`` with ``ε² = 0``. Its ``value`` is
  the point ``f(x)`` and its ``tangent`` is the directional derivative ``Df(x)[v]`` (for scalar
  ``f`` this is ``∇f(x)·v``). Every operation computes both at once, so one evaluation of
  ``f(Dual(x, v))`` yields the exact directional derivative. It is meant to be read: each method
  is one line of calculus.
* :func:`jvp` and :func:`module_jvp`, the same thing for real PyTorch code, through PyTorch's
  forward mode (``torch.autograd.forward_ad`` or ``torch.func.jvp``). ``jvp`` differentiates a
  function of a tensor or of a dict/tuple of tensors; ``module_jvp`` differentiates whatever a
  closure computes with respect to an ``nn.Module``'s parameters ``θ``, along a tangent ``v``.

Neither keeps a record of the computation: forward mode holds only the current value and its
tangent, which is why its memory is that of the evaluation itself.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Union

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn

# Only the entry points: the elementary functions (``exp``, ``sum``, ...) are used as
# ``ad.exp(x)`` after ``from ffkit import autodiff as ad``, so that a star import does not
# shadow the builtins ``sum`` and friends.
__all__ = ["Dual", "call_with", "jvp", "module_jvp"]

# --------------------------------------------------------------------------------------------
# Dual numbers
# --------------------------------------------------------------------------------------------

#: What a :class:`Dual` may be combined with: another Dual, a real number or a real array.
Operand = Union["Dual", numbers.Real, np.ndarray]


def _constant(other: object, op: str) -> np.ndarray | numbers.Real:
    """Check that ``other`` is a constant a Dual can be combined with, and return it."""
    if isinstance(other, (bool, np.bool_)):
        return float(other)
    if isinstance(other, (numbers.Real, np.floating, np.integer)):
        return other
    if isinstance(other, np.ndarray) and other.dtype.kind in "biuf":
        return other
    hint = " (convert a torch tensor with .numpy(), or use ffkit.jvp)" if isinstance(other, Tensor) else ""
    raise TypeError(
        f"unsupported operand for Dual {op}: {type(other).__name__}{hint}; "
        "a Dual combines only with Dual, real numbers and real numpy arrays"
    )


class Dual:
    """A dual number ``value + tangent·ε`` with ``ε² = 0``, elementwise over NumPy arrays.

    For f: Rⁿ → Rᵐ built from the operations below, ``f(Dual(x, v))`` is
    ``Dual(f(x), Df(x)[v])``: the value and the directional derivative (the Jacobian-vector
    product ``J_f(x) v``; for scalar ``f`` it is ``∇f(x)·v``), both exact up to rounding.

    ``value`` and ``tangent`` are float arrays of the same shape (``tangent`` defaults to zeros
    and may be anything that broadcasts to the value's shape); both get the common floating
    dtype of the two, and integers or booleans become float64. Operations broadcast like NumPy. Comparisons (``<``, ``<=``, ``>``, ``>=``, ``==``,
    ``!=``) compare values only and return boolean arrays. Outside a function's domain the
    result follows NumPy (``log`` of a negative number is ``nan`` with NumPy's
    ``RuntimeWarning``; division by zero gives ``inf``). Combining a Dual with anything other
    than a Dual, a real number or a real NumPy array raises ``TypeError``.
    """

    __slots__ = ("value", "tangent")
    # Make NumPy hand binary operators with an ndarray on the left over to Dual's reflected
    # methods (``array * dual`` calls ``Dual.__rmul__``) instead of looping over the array.
    __array_ufunc__ = None

    value: np.ndarray
    tangent: np.ndarray

    def __init__(self, value: Any, tangent: Any = None) -> None:
        for name, x in (("value", value), ("tangent", tangent)):
            if isinstance(x, Dual):
                raise TypeError(f"Dual {name} must be an array, not a Dual (nesting is not supported)")
            if isinstance(x, Tensor):
                raise TypeError(f"Dual {name} must be a numpy array, not a torch tensor (use .numpy())")
        value = np.asarray(value)
        if tangent is None:
            tangent = np.zeros(value.shape, dtype=value.dtype if value.dtype.kind == "f" else np.float64)
        tangent = np.asarray(tangent)
        for name, x in (("value", value), ("tangent", tangent)):
            if x.dtype.kind not in "biuf":
                raise TypeError(f"Dual {name} must hold real numbers, got dtype {x.dtype}")
        dtype = np.result_type(value.dtype, tangent.dtype)
        if dtype.kind != "f":  # integers and booleans become float64
            dtype = np.dtype(np.float64)
        if tangent.shape != value.shape:
            try:
                tangent = np.array(np.broadcast_to(tangent, value.shape))
            except ValueError:
                raise ValueError(
                    f"Dual tangent of shape {tangent.shape} does not fit a value of shape {value.shape}"
                ) from None
        self.value = value.astype(dtype, copy=False)
        self.tangent = tangent.astype(dtype, copy=False)

    # ---- array protocol ---------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the value (and of the tangent)."""
        return self.value.shape

    @property
    def ndim(self) -> int:
        """Number of dimensions of the value."""
        return self.value.ndim

    @property
    def dtype(self) -> np.dtype:
        """Floating dtype of value and tangent."""
        return self.value.dtype

    @property
    def T(self) -> Dual:
        """Transpose: linear, so the tangent is transposed too."""
        return Dual(self.value.T, self.tangent.T)

    def __len__(self) -> int:
        return len(self.value)

    def __getitem__(self, index: Any) -> Dual:
        return Dual(self.value[index], self.tangent[index])

    def __iter__(self) -> Iterator[Dual]:
        for i in range(len(self)):
            yield self[i]

    def reshape(self, *shape: Any) -> Dual:
        """Reshape value and tangent alike."""
        return Dual(self.value.reshape(*shape), self.tangent.reshape(*shape))

    def __repr__(self) -> str:
        return f"Dual(value={self.value!r}, tangent={self.tangent!r})"

    def __bool__(self) -> bool:
        return bool(self.value)

    # ---- arithmetic: one line of calculus each -------------------------------------------
    def __pos__(self) -> Dual:
        return self

    def __neg__(self) -> Dual:
        return Dual(-self.value, -self.tangent)

    def __abs__(self) -> Dual:
        return Dual(np.abs(self.value), np.sign(self.value) * self.tangent)

    def __add__(self, other: Operand) -> Dual:
        if isinstance(other, Dual):
            return Dual(self.value + other.value, self.tangent + other.tangent)
        c = _constant(other, "+")
        return Dual(self.value + c, self.tangent)

    def __radd__(self, other: Operand) -> Dual:
        return self + other

    def __sub__(self, other: Operand) -> Dual:
        if isinstance(other, Dual):
            return Dual(self.value - other.value, self.tangent - other.tangent)
        c = _constant(other, "-")
        return Dual(self.value - c, self.tangent)

    def __rsub__(self, other: Operand) -> Dual:
        c = _constant(other, "-")
        return Dual(c - self.value, -self.tangent)

    def __mul__(self, other: Operand) -> Dual:
        # (a + ȧε)(b + ḃε) = ab + (ȧb + aḃ)ε, because ε² = 0
        if isinstance(other, Dual):
            tangent = self.tangent * other.value + self.value * other.tangent
            return Dual(self.value * other.value, tangent)
        c = _constant(other, "*")
        return Dual(self.value * c, self.tangent * c)

    def __rmul__(self, other: Operand) -> Dual:
        return self * other

    def __truediv__(self, other: Operand) -> Dual:
        # d(a/b) = ȧ/b - a ḃ/b²
        if isinstance(other, Dual):
            quotient = self.value / other.value
            return Dual(quotient, (self.tangent - quotient * other.tangent) / other.value)
        c = _constant(other, "/")
        return Dual(self.value / c, self.tangent / c)

    def __rtruediv__(self, other: Operand) -> Dual:
        # d(c/b) = -c ḃ/b²
        c = _constant(other, "/")
        quotient = c / self.value
        return Dual(quotient, -quotient * self.tangent / self.value)

    def __pow__(self, other: Operand) -> Dual:
        if isinstance(other, Dual):  # a^b = exp(b log a): ḃ log(a) a^b + b a^(b-1) ȧ
            power = self.value**other.value
            return Dual(
                power,
                other.value * self.value ** (other.value - 1) * self.tangent
                + power * np.log(self.value) * other.tangent,
            )
        c = _constant(other, "**")  # constant exponent: c a^(c-1) ȧ, valid for negative a too
        return Dual(self.value**c, c * self.value ** (c - 1) * self.tangent)

    def __rpow__(self, other: Operand) -> Dual:
        c = _constant(other, "**")  # c^b: log(c) c^b ḃ
        power = np.asarray(c, dtype=self.dtype) ** self.value
        return Dual(power, power * np.log(c) * self.tangent)

    def __matmul__(self, other: Operand) -> Dual:
        # (A + Ȧε)(B + Ḃε) = AB + (ȦB + AḂ)ε, the product rule for matrices
        if isinstance(other, Dual):
            return Dual(self.value @ other.value, self.tangent @ other.value + self.value @ other.tangent)
        c = _matrix_constant(other)
        return Dual(self.value @ c, self.tangent @ c)

    def __rmatmul__(self, other: Operand) -> Dual:
        c = _matrix_constant(other)
        return Dual(c @ self.value, c @ self.tangent)

    # ---- comparisons look at the value only --------------------------------------------
    @staticmethod
    def _other_value(other: object, op: str) -> Any:
        return other.value if isinstance(other, Dual) else _constant(other, op)

    def __lt__(self, other: Operand) -> np.ndarray:
        return self.value < self._other_value(other, "<")

    def __le__(self, other: Operand) -> np.ndarray:
        return self.value <= self._other_value(other, "<=")

    def __gt__(self, other: Operand) -> np.ndarray:
        return self.value > self._other_value(other, ">")

    def __ge__(self, other: Operand) -> np.ndarray:
        return self.value >= self._other_value(other, ">=")

    def __eq__(self, other: object) -> Any:
        try:
            return self.value == self._other_value(other, "==")
        except TypeError:
            return NotImplemented

    def __ne__(self, other: object) -> Any:
        try:
            return self.value != self._other_value(other, "!=")
        except TypeError:
            return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable-array semantics, like ndarray

    # ---- reductions and elementary functions as methods ---------------------------------
    def sum(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Dual:
        """Sum over ``axis``: linear, so the tangent is summed too."""
        return sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Dual:
        """Mean over ``axis``: linear, so the tangent is averaged too."""
        return mean(self, axis=axis, keepdims=keepdims)

    def exp(self) -> Dual:
        """See :func:`exp`."""
        return exp(self)

    def log(self) -> Dual:
        """See :func:`log`."""
        return log(self)

    def sqrt(self) -> Dual:
        """See :func:`sqrt`."""
        return sqrt(self)

    def tanh(self) -> Dual:
        """See :func:`tanh`."""
        return tanh(self)


def _matrix_constant(other: object) -> np.ndarray:
    c = _constant(other, "@")
    if np.ndim(c) == 0:
        raise ValueError("matmul: a scalar is not a matrix; use * for scalar multiplication")
    return np.asarray(c)


# --------------------------------------------------------------------------------------------
# Elementary functions: f(a + ȧε) = f(a) + f'(a) ȧ ε. Each accepts a Dual or a plain array.
# --------------------------------------------------------------------------------------------


def _unary(x: Dual | np.ndarray | numbers.Real, name: str) -> Dual | None:
    """``None`` when ``x`` is a plain number or array (the caller then applies NumPy)."""
    if isinstance(x, Dual):
        return x
    _constant(x, name)
    return None


def exp(x: Dual | np.ndarray) -> Dual | np.ndarray:
    """exp: the tangent is ``exp(a) ȧ``."""
    d = _unary(x, "exp")
    if d is None:
        return np.exp(x)
    e = np.exp(d.value)
    return Dual(e, e * d.tangent)


def log(x: Dual | np.ndarray) -> Dual | np.ndarray:
    """Natural logarithm: the tangent is ``ȧ / a`` (``nan`` with NumPy's warning for ``a < 0``)."""
    d = _unary(x, "log")
    if d is None:
        return np.log(x)
    return Dual(np.log(d.value), d.tangent / d.value)


def sqrt(x: Dual | np.ndarray) -> Dual | np.ndarray:
    """Square root: the tangent is ``ȧ / (2 √a)``."""
    d = _unary(x, "sqrt")
    if d is None:
        return np.sqrt(x)
    r = np.sqrt(d.value)
    return Dual(r, d.tangent / (2 * r))


def sin(x: Dual | np.ndarray) -> Dual | np.ndarray:
    """Sine: the tangent is ``cos(a) ȧ``."""
    d = _unary(x, "sin")
    if d is None:
        return np.sin(x)
    return Dual(np.sin(d.value), np.cos(d.value) * d.tangent)


def cos(x: Dual | np.ndarray) -> Dual | np.ndarray:
    """Cosine: the tangent is ``-sin(a) ȧ``."""
    d = _unary(x, "cos")
    if d is None:
        return np.cos(x)
    return Dual(np.cos(d.value), -np.sin(d.value) * d.tangent)


def tanh(x: Dual | np.ndarray) -> Dual | np.ndarray:
    """Hyperbolic tangent: the tangent is ``(1 - tanh²(a)) ȧ``."""
    d = _unary(x, "tanh")
    if d is None:
        return np.tanh(x)
    t = np.tanh(d.value)
    return Dual(t, (1 - t * t) * d.tangent)


def _sigmoid(a: np.ndarray) -> np.ndarray:
    # 1 / (1 + e^(-a)) written through tanh, which never overflows
    return 0.5 * (1 + np.tanh(0.5 * a))


def sigmoid(x: Dual | np.ndarray) -> Dual | np.ndarray:
    """Logistic sigmoid σ(a) = 1/(1 + e^(-a)): the tangent is ``σ(a)(1 - σ(a)) ȧ``."""
    d = _unary(x, "sigmoid")
    if d is None:
        return _sigmoid(np.asarray(x))
    s = _sigmoid(d.value)
    return Dual(s, s * (1 - s) * d.tangent)


def relu(x: Dual | np.ndarray) -> Dual | np.ndarray:
    """max(a, 0): the tangent is ``ȧ`` where ``a > 0`` and 0 elsewhere (PyTorch's choice at 0)."""
    d = _unary(x, "relu")
    if d is None:
        return np.maximum(x, 0)
    return Dual(np.maximum(d.value, 0), np.where(d.value > 0, d.tangent, 0))


def softplus(x: Dual | np.ndarray) -> Dual | np.ndarray:
    """log(1 + e^a), computed without overflow: the tangent is ``σ(a) ȧ``."""
    d = _unary(x, "softplus")
    a = np.asarray(x) if d is None else d.value
    value = np.maximum(a, 0) + np.log1p(np.exp(-np.abs(a)))
    if d is None:
        return value
    return Dual(value, _sigmoid(a) * d.tangent)


def sum(x: Dual | np.ndarray, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Dual | np.ndarray:  # noqa: A001
    """Sum over ``axis`` (all axes by default); linear, so the tangent is summed the same way."""
    d = _unary(x, "sum")
    if d is None:
        return np.sum(x, axis=axis, keepdims=keepdims)
    return Dual(np.sum(d.value, axis=axis, keepdims=keepdims), np.sum(d.tangent, axis=axis, keepdims=keepdims))


def mean(x: Dual | np.ndarray, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Dual | np.ndarray:
    """Mean over ``axis`` (all axes by default); linear, so the tangent is averaged the same way."""
    d = _unary(x, "mean")
    if d is None:
        return np.mean(x, axis=axis, keepdims=keepdims)
    return Dual(np.mean(d.value, axis=axis, keepdims=keepdims), np.mean(d.tangent, axis=axis, keepdims=keepdims))


# --------------------------------------------------------------------------------------------
# PyTorch: Jacobian-vector products with true forward mode
# --------------------------------------------------------------------------------------------

#: A tensor, or a dict / tuple / list of tensors: the inputs θ of ``f`` and their tangents v.
Tensors = Union[Tensor, Mapping[str, Tensor], tuple[Tensor, ...], list[Tensor]]

_METHODS = ("forward_ad", "func")


def _leaves(tree: Any, name: str) -> list[tuple[str, Tensor]]:
    """``(label, tensor)`` pairs of a tensor or a flat dict/tuple/list of tensors."""
    if isinstance(tree, Tensor):
        pairs = [("", tree)]
    elif isinstance(tree, Mapping):
        pairs = [(f"[{k!r}]", t) for k, t in tree.items()]
    elif isinstance(tree, (tuple, list)):
        pairs = [(f"[{i}]", t) for i, t in enumerate(tree)]
    else:
        raise TypeError(f"{name} must be a tensor or a dict/tuple/list of tensors, got {type(tree).__name__}")
    for label, t in pairs:
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}{label} must be a tensor, got {type(t).__name__}")
    return pairs


def _check_pair(primals: Any, tangents: Any, pname: str = "primals", tname: str = "tangents") -> None:
    """Raise ValueError unless ``tangents`` has the structure, shapes and dtypes of ``primals``."""
    p, t = _leaves(primals, pname), _leaves(tangents, tname)
    if type(primals) is not type(tangents) and not (isinstance(primals, Mapping) and isinstance(tangents, Mapping)):
        raise ValueError(
            f"{pname} and {tname} must have the same structure: got {type(primals).__name__} "
            f"and {type(tangents).__name__}"
        )
    if [label for label, _ in p] != [label for label, _ in t]:
        if isinstance(primals, Mapping) and set(primals) == set(tangents):
            pass  # same keys in another order: fine, matched by key below
        else:
            raise ValueError(
                f"{pname} and {tname} must have the same keys/length: got {[lab for lab, _ in p]} "
                f"and {[lab for lab, _ in t]}"
            )
    tangent_of = dict(t)
    for label, x in p:
        v = tangent_of[label]
        if not x.is_floating_point():
            raise ValueError(f"{pname}{label} must be a floating-point tensor to be differentiated, got {x.dtype}")
        if v.shape != x.shape:
            raise ValueError(f"{tname}{label} has shape {tuple(v.shape)} but {pname}{label} has {tuple(x.shape)}")
        if v.dtype != x.dtype:
            raise ValueError(f"{tname}{label} has dtype {v.dtype} but {pname}{label} has {x.dtype}")
        if v.device != x.device:
            raise ValueError(f"{tname}{label} is on {v.device} but {pname}{label} is on {x.device}")


def _map(fn: Callable[[Tensor], Any], tree: Any) -> Any:
    """Apply ``fn`` to each tensor of a tensor / dict / tuple / list (nested)."""
    if isinstance(tree, Tensor):
        return fn(tree)
    if isinstance(tree, Mapping):
        return {k: _map(fn, v) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(_map(fn, v) for v in tree)
    if isinstance(tree, list):
        return [_map(fn, v) for v in tree]
    raise TypeError(f"f must return a tensor or a dict/tuple/list of tensors, got {type(tree).__name__}")


def _zip(fn: Callable[[Tensor, Tensor], Tensor], a: Any, b: Any) -> Any:
    """Combine two trees of the same structure leaf by leaf (``b`` is matched by key for dicts)."""
    if isinstance(a, Tensor):
        return fn(a, b)
    if isinstance(a, Mapping):
        return {k: fn(a[k], b[k]) for k in a}
    return type(a)(fn(x, y) for x, y in zip(a, b))


def _unpack(output: Tensor) -> tuple[Tensor, Tensor]:
    primal, tangent = fwAD.unpack_dual(output)
    return primal, torch.zeros_like(primal) if tangent is None else tangent


def jvp(
    f: Callable[..., Any],
    primals: tuple[Tensors, ...],
    tangents: tuple[Tensors, ...],
    *,
    method: str = "forward_ad",
) -> tuple[Any, Any]:
    """Evaluate ``f(*primals)`` and its directional derivative ``Df(θ)[v] = J_f(θ) v`` in one forward pass.

    The convention of ``torch.func.jvp`` and ``jax.jvp``: ``primals`` is the tuple of ``f``'s
    positional arguments θ = (θ₁, θ₂, …), each a floating tensor or a dict/tuple/list of them, and
    ``tangents`` is the tuple v = (v₁, v₂, …) with exactly the same structure, shapes and dtypes
    (a ``ValueError`` says which entry differs). ``f`` may return a tensor or a dict/tuple/list of
    tensors. For scalar ``f`` the tangent output is ∇f(θ)·v = Σ_i ∇_{θ_i} f · v_i. ::

        value, dot = ffkit.jvp(f, (x,), (v,))               # f(x)
        value, dot = ffkit.jvp(loss, (params,), (v,))        # params a dict of tensors
        value, dot = ffkit.jvp(g, (w, b), (w_dot, b_dot))    # g(w, b)

    ``method="forward_ad"`` (default) uses ``torch.autograd.forward_ad`` dual tensors;
    ``method="func"`` uses ``torch.func.jvp``. Both are true forward mode: the value and the
    tangent travel together and nothing is recorded for a backward pass (unlike
    ``torch.autograd.functional.jvp``, which is computed with two reverse passes).

    Returns ``(f(*primals), J_f(θ) v)`` with the structure of ``f``'s output.
    """
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    for name, args in (("primals", primals), ("tangents", tangents)):
        if not isinstance(args, tuple):
            raise TypeError(
                f"{name} must be a tuple of f's positional arguments, as in torch.func.jvp: "
                f"write jvp(f, (x,), (v,)) for one argument; got {type(args).__name__}"
            )
    if len(primals) != len(tangents):
        raise ValueError(f"primals has {len(primals)} arguments but tangents has {len(tangents)}")
    if not primals:
        raise ValueError("jvp needs at least one primal argument")
    matched = []
    for i, (p, t) in enumerate(zip(primals, tangents)):
        _check_pair(p, t, f"primals[{i}]", f"tangents[{i}]")
        matched.append({k: t[k] for k in p} if isinstance(p, Mapping) else t)  # same key order
    if method == "func":
        return torch.func.jvp(f, primals, tuple(matched))
    with fwAD.dual_level():
        out = f(*(_zip(fwAD.make_dual, p, t) for p, t in zip(primals, matched)))
        value = _map(lambda t: _unpack(t)[0], out)
        tangent_out = _map(lambda t: _unpack(t)[1], out)
    return value, tangent_out


class _Closure(nn.Module):
    """Holds ``model`` as a submodule so that ``functional_call`` can swap its parameters while
    an arbitrary ``closure`` (which calls ``model``) runs."""

    def __init__(self, model: nn.Module, closure: Callable[[], Any]) -> None:
        super().__init__()
        self.model = model
        self.closure = closure

    def forward(self) -> Any:
        return self.closure()


def call_with(model: nn.Module, closure: Callable[[], Any], params: Mapping[str, Tensor]) -> Any:
    """Run ``closure()`` with ``model``'s parameters named in ``params`` replaced by those tensors.

    Through ``torch.func.functional_call``: the module is left as it was, even if the closure
    raises; tied parameters take the replacement of either name; parameters left out keep
    their values.
    """
    runner = _Closure(model, closure)
    return torch.func.functional_call(runner, {f"model.{k}": v for k, v in params.items()}, ())


def module_jvp(
    model: nn.Module,
    closure: Callable[[], Any],
    tangents: Mapping[str, Tensor],
    *,
    method: str = "forward_ad",
) -> tuple[Any, Any]:
    """``closure()``'s value and its directional derivative along ``tangents`` in ``model``'s parameters.

    ``closure()`` runs ``model`` (for example on a batch) and returns f(θ), typically the scalar
    loss, where θ are the model's parameters. ``tangents`` maps parameter names (as in
    ``model.named_parameters()``) to v; parameters left out are held fixed (tangent 0). Returns
    ``(f(θ), ∇f(θ)·v)`` (for a non-scalar output, ``J_f(θ) v``), computed in one forward-mode
    pass. The model is not modified and no autograd graph is kept: the parameters enter as
    detached values.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(tangents, Mapping):
        raise TypeError(f"tangents must be a dict of parameter name -> tensor, got {type(tangents).__name__}")
    named = dict(model.named_parameters())
    unknown = sorted(set(tangents) - set(named))
    if unknown:
        raise ValueError(f"tangents name parameters the model does not have: {unknown}")
    primals = {name: named[name].detach() for name in tangents}
    _check_pair(primals, dict(tangents))
    return jvp(lambda params: call_with(model, closure, params), (primals,), (dict(tangents),), method=method)
