"""Tangents: the random directions v of every forward-gradient method, drawn in one place.

A forward gradient needs a random direction v ∈ Rⁿ with

    E[v vᵀ] = I,

because then E[(∇f·v) v] = E[v vᵀ] ∇f = ∇f: the guess is unbiased. This module holds everything
about v, so that every method of :mod:`ffkit.methods` (plain, memory-lean, shared-seed, local)
draws the same v from the same seed:

* **distributions**, a registry (:func:`register`, :func:`get`, :func:`names`). Each
  :class:`Distribution` fills a tensor in place and carries the moments the theory needs: for
  i.i.d. entries with E v_i² = 1, the fourth moment κ = E v_i⁴ decides the variance,
  tr Cov((∇f·v) v) = (n + κ − 2) ‖∇f‖² (:mod:`ffkit.theory`). Two are built in:
  ``"rademacher"`` (v_i = ±1, κ = 1: variance (n − 1)‖∇f‖², one random bit per entry) and
  ``"gaussian"`` (v ~ N(0, I), κ = 3: variance (n + 1)‖∇f‖²). Other packages register more
  (structured tangents, say) with :func:`register`.
* **one seeding scheme**: tangent k of step t of a run seeded with s comes from
  :func:`generator` ``(s, t, k)``, a ``torch.Generator`` seeded by mixing the three numbers with
  SplitMix64. A tangent is drawn parameter by parameter in a fixed order (the model's
  ``named_parameters`` order), so it can be drawn again, identically, whenever it is needed:
  slice by slice while the layers run (the memory-lean step), on every worker of a data-parallel
  run without sending it (the shared-seed step), or to apply the update after the directional
  derivatives are known.
* **one combination**: :func:`combine` forms g = (1/K) Σ_k d_k v_k from the K directional
  derivatives d_k = ∇f·v_k and their tangents.

A distribution named by a string is resolved once, at the public boundary (:func:`get`); inner
loops receive the :class:`Distribution` itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "DEFAULT",
    "Distribution",
    "combine",
    "draw",
    "generator",
    "get",
    "mix_seed",
    "names",
    "random_seed",
    "register",
    "stream",
]

#: The default tangent distribution of every forward-gradient method. Rademacher tangents have
#: the lower variance ((n − 1)‖∇f‖² against (n + 1)‖∇f‖² for Gaussian ones, :mod:`ffkit.theory`)
#: and cost one random bit per entry instead of a normal deviate; ``bench-step`` measures the
#: difference in step time (chapter 3).
DEFAULT = "rademacher"

Fill = Callable[[Tensor, "torch.Generator | None"], Tensor]


@dataclass(frozen=True)
class Distribution:
    """A tangent distribution with E[v] = 0 and E[v vᵀ] = I.

    Attributes:
        name: the registry key (lower case).
        fill_: ``fill_(out, generator)`` overwrites the floating-point tensor ``out`` with a draw
            and returns it.
        fourth_moment: κ = E v_i⁴ when the entries are i.i.d. with E v_i² = 1 (3 for Gaussian, 1
            for Rademacher); ``None`` for a distribution whose entries are not i.i.d., for which
            the closed forms of :mod:`ffkit.theory` do not apply.
        description: one line for tables and error messages.
    """

    name: str
    fill_: Fill
    fourth_moment: float | None
    description: str = ""

    def __repr__(self) -> str:
        return f"Distribution({self.name!r})"


_REGISTRY: dict[str, Distribution] = {}


def register(distribution: Distribution, *, replace: bool = False) -> Distribution:
    """Add ``distribution`` to the registry under its (lower-case) name and return it.

    Registering a name twice is an error unless ``replace=True``.
    """
    if not isinstance(distribution, Distribution):
        raise TypeError(f"register needs a Distribution, got {type(distribution).__name__}")
    key = distribution.name.lower()
    if not key or key != distribution.name:
        raise ValueError(f"a distribution's name must be non-empty and lower case, got {distribution.name!r}")
    if key in _REGISTRY and not replace:
        raise ValueError(f"a tangent distribution named {key!r} is registered already (pass replace=True)")
    if distribution.fourth_moment is not None and distribution.fourth_moment < 1:
        raise ValueError(f"E v⁴ >= (E v²)² = 1 for any distribution; got {distribution.fourth_moment}")
    _REGISTRY[key] = distribution
    return distribution


def names() -> tuple[str, ...]:
    """The registered distribution names."""
    return tuple(_REGISTRY)


def get(name: str | Distribution) -> Distribution:
    """The :class:`Distribution` called ``name`` (case-insensitive); a Distribution passes through.

    Raises ``ValueError`` naming the known distributions for an unknown name.
    """
    if isinstance(name, Distribution):
        return name
    if not isinstance(name, str) or name.lower() not in _REGISTRY:
        raise ValueError(f"unknown tangent distribution {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name.lower()]

# --------------------------------------------------------------------------- built-in distributions


def _fill_gaussian_(out: Tensor, gen: torch.Generator | None) -> Tensor:
    """v ~ N(0, I), drawn in place."""
    return out.normal_(generator=gen)


_SIGN_TABLES: dict[tuple[torch.dtype, torch.device], Tensor] = {}


def _sign_table(dtype: torch.dtype, device: torch.device) -> Tensor:
    """The 256 × 8 table whose row b holds the signs (−1)^(bit j of b), j = 0..7."""
    key = (dtype, device)
    if key not in _SIGN_TABLES:
        bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
        _SIGN_TABLES[key] = (1 - 2 * bits).to(dtype=dtype, device=device)
    return _SIGN_TABLES[key]


def _fill_rademacher_(out: Tensor, gen: torch.Generator | None) -> Tensor:
    """v uniform on {−1, +1}ⁿ, from one random bit per entry.

    Drawing a random float per entry would cost as much as a Gaussian. Instead ⌈n/64⌉ random
    64-bit words are drawn, read as bytes, and each byte b selects the row of eight signs
    (−1)^(bit j of b) of a 256 × 8 table: one gather that writes the n entries. A contiguous
    tensor whose size is a multiple of 8 is written in place; anything else goes through a
    buffer.
    """
    n = out.numel()
    if n == 0:
        return out
    rows = (n + 7) // 8
    words = torch.empty((rows + 7) // 8, dtype=torch.int64, device=out.device)
    words.random_(-(2**63), None, generator=gen)  # all 64 bits random
    index = words.view(torch.uint8)[:rows].to(torch.int32)
    table = _sign_table(out.dtype, out.device)
    if out.is_contiguous() and n % 8 == 0:
        torch.index_select(table, 0, index, out=out.view(rows, 8))
    else:
        out.copy_(torch.index_select(table, 0, index).view(-1)[:n].view(out.shape))
    return out


register(Distribution("rademacher", _fill_rademacher_, 1.0, "entries ±1 with probability ½ each"))
register(Distribution("gaussian", _fill_gaussian_, 3.0, "entries i.i.d. N(0, 1)"))

# --------------------------------------------------------------------------- seeding

_MASK64 = (1 << 64) - 1


def _check_index(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return value


def _splitmix(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def mix_seed(seed: int, step: int, direction: int = 0) -> int:
    """The 63-bit generator seed of tangent ``direction`` (k) at ``step`` (t) of a run seeded ``seed`` (s).

    (s, t, k) are folded in one after the other through SplitMix64, so neighbouring seeds, steps or
    directions give unrelated streams. Pure integer arithmetic: the same on every machine.
    """
    z = _splitmix(_check_index("seed", seed))
    z = _splitmix(z ^ _check_index("step", step))
    z = _splitmix(z ^ _check_index("direction", direction))
    return z & ((1 << 63) - 1)


def generator(seed: int, step: int, direction: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` that draws tangent ``direction`` of ``step`` of run ``seed``.

    Every method draws tangent k of step t from ``generator(seed, t, k)``, parameter after
    parameter in ``named_parameters`` order, so the same (seed, t, k) gives the same tangent in
    the plain, the memory-lean and the shared-seed step.
    """
    return torch.Generator(device=device).manual_seed(mix_seed(seed, step, direction))


def random_seed(gen: torch.Generator | None = None) -> int:
    """A seed for a run, drawn from ``gen`` (torch's default generator when ``None``), so that a
    method created without a seed still follows ``torch.manual_seed``."""
    return int(torch.randint(0, 2**62, (), generator=gen))


# --------------------------------------------------------------------------- drawing and combining


def draw(
    like: Sequence[Tensor],
    distribution: str | Distribution,
    gen: torch.Generator | None,
    *,
    out: Sequence[Tensor] | None = None,
) -> list[Tensor]:
    """One tangent shaped like the tensors ``like``, filled tensor after tensor from ``gen``.

    Fresh tensors, or the buffers ``out`` (one per entry of ``like``) overwritten in place.
    """
    dist = get(distribution)
    if out is None:
        return [dist.fill_(torch.empty_like(t), gen) for t in like]
    if len(out) != len(like):
        raise ValueError(f"out has {len(out)} buffers for {len(like)} tensors")
    for i, (buf, t) in enumerate(zip(out, like)):
        if buf.shape != t.shape:
            raise ValueError(f"out[{i}] has shape {tuple(buf.shape)}, the tensor it stands for {tuple(t.shape)}")
    return [dist.fill_(buf, gen) for buf in out]


def stream(like: Sequence[Tensor], distribution: str | Distribution, gen: torch.Generator | None) -> Iterator[Tensor]:
    """The slices of :func:`draw`, one at a time: the same numbers, never all in memory at once."""
    dist = get(distribution)
    for t in like:
        yield dist.fill_(torch.empty_like(t), gen)


def combine(
    dots: Sequence[float] | Tensor,
    tangents: Sequence[Sequence[Tensor]],
    *,
    out: Sequence[Tensor] | None = None,
    alpha: float = 1.0,
    directions: int | None = None,
) -> list[Tensor]:
    """The forward gradient g = (1/K) Σ_k d_k v_k, tensor by tensor.

    Args:
        dots: the directional derivatives d_k = ∇f·v_k (numbers or a 1-D tensor).
        tangents: ``tangents[k]`` is v_k as a list of tensors (one per parameter).
        out: add ``alpha · g`` into these tensors in place and return them. With ``out=None`` the
            buffers of ``tangents[0]`` are scaled in place and become g (the tangents are used up),
            so forming g allocates nothing.
        alpha: a factor on g (``-lr`` applies an SGD step straight into the parameters).
        directions: K, the divisor; ``len(dots)`` by default. A caller that streams the K
            directions one at a time passes ``dots=[d_k]``, ``tangents=[v_k]`` and ``directions=K``.
    """
    d = [float(x) for x in (dots.tolist() if isinstance(dots, Tensor) else dots)]
    if not d or len(d) != len(tangents):
        raise ValueError(f"combine needs one tangent per directional derivative, got {len(d)} and {len(tangents)}")
    if directions is not None and (isinstance(directions, bool) or not isinstance(directions, int) or directions < 1):
        raise ValueError(f"directions must be an int >= 1 (the number K of tangents), got {directions!r}")
    k = len(d) if directions is None else directions
    scale = alpha / k
    if out is None:
        result = [t.mul_(d[0] * scale) for t in tangents[0]]
        rest = range(1, len(d))
    else:
        result = list(out)
        rest = range(len(d))
    for i in rest:
        if len(tangents[i]) != len(result):
            raise ValueError("every tangent must have one tensor per parameter")
        for acc, v in zip(result, tangents[i]):
            acc.add_(v, alpha=d[i] * scale)
    return result
