"""Where a training step's memory and time go: saved tensors, peak resident memory, per-layer timings.

The book compares one step of five methods on the same model and batch:

``"inference"``
    the forward pass and the loss, no gradient (the memory floor);
``"backprop"``
    forward pass, ``loss.backward()``, then θ ← θ − η ∇f in place (plain SGD);
``"checkpointing"``
    the same with activation checkpointing (``torch.utils.checkpoint.checkpoint_sequential`` with
    about √L segments for L layers): only the segment inputs (and the last segment's activations)
    are kept, the rest is recomputed during the backward pass;
``"forward gradient"``
    the plain weight-perturbation forward gradient, g = (∇f·v) v with v drawn whole (model-sized)
    and scaled in place into g (:func:`ffkit.methods.plain_forward_gradient_step`);
``"ForwardGradient"``
    the library's :class:`ffkit.ForwardGradient`, which scales v in place into ``.grad``, then
    θ ← θ − η ``.grad`` in place;
``"lean forward gradient"``
    the same update with tangents regenerated from a seed and applied in place
    (:func:`ffkit.methods.lean_forward_gradient_step`);
``"shared-seed lean forward gradient"``
    the lean step of :class:`ffkit.methods.SharedSeedForwardGradient` (one worker: its all-reduce
    of the K numbers is a no-op).

Two memory measures:

* :func:`saved_tensor_bytes` counts, through ``torch.autograd.graph.saved_tensors_hooks``, the
  bytes of the distinct tensors autograd keeps for the backward pass (the activations), leaving
  out the parameters themselves, which exist anyway.
* :func:`measure_step` runs one step in a fresh Python process and reads its peak resident set
  size (Linux ``VmHWM``, which ``/proc/self/clear_refs`` resets) relative to the process's
  baseline, the interpreter with torch loaded and warmed up. It reports the *footprint* (peak
  minus that baseline: model, batch and everything the step allocates) and the *working memory*
  (peak minus the resident size once model and batch exist).

For the timeline figures, :func:`layer_timings` times each layer's forward, backward, update
and forward-with-tangent work, and :func:`ffkit.pipeline.schedule` turns those durations into the start times
of a step on one or several workers.
"""

from __future__ import annotations

import gc
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint_sequential

from ffkit import tangents as tg
from ffkit.methods.forward_gradient import ForwardGradient
from ffkit.methods.lean import lean_forward_gradient_step, plain_forward_gradient_step, tangent_forward
from ffkit.methods.shared_seed import SharedSeedForwardGradient
from ffkit.models import mlp

METHODS = (
    "inference",
    "backprop",
    "checkpointing",
    "forward gradient",
    "ForwardGradient",
    "lean forward gradient",
    "shared-seed lean forward gradient",
)

_LR = 1e-4


# --------------------------------------------------------------------------- operator counts


def count_ops(fn: Callable[[], Any]) -> dict[str, int]:
    """How many ATen operators ``fn()`` runs, by name (``"aten.mm.default"``: 3, ...).

    Every operator is one dispatch through PyTorch and, on a GPU, at least one kernel launch. When
    tensors are small these fixed costs, not the arithmetic, set the time of a step, so the count
    explains timings that multiply-adds do not. Operators that autograd runs in the backward pass
    are counted too. Counted with ``torch.utils._python_dispatch.TorchDispatchMode``, which sees
    every operator below autograd."""
    from torch.utils._python_dispatch import TorchDispatchMode

    counts: dict[str, int] = {}

    class _Count(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            name = str(func)
            counts[name] = counts.get(name, 0) + 1
            return func(*args, **(kwargs or {}))

    with _Count():
        fn()
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


# --------------------------------------------------------------------------- saved tensors


def saved_tensor_bytes(fn: Callable[[], Any], *, exclude: Iterable[Tensor] = ()) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn()`` runs.

    Every tensor that an operation stores for its backward pass goes through the pack hook of
    ``torch.autograd.graph.saved_tensors_hooks``; the same storage saved twice (a ReLU's output
    that the next linear layer also saves as its input) is counted once, and storages shared
    with a tensor of ``exclude`` (pass the model's parameters) are not counted. Under
    ``torch.no_grad()`` or in forward mode nothing is saved and the result is 0. For one linear
    layer whose input x of shape (N, d) does not require a gradient, it is N·d·4 bytes in float32:
    only x is needed, for ∂f/∂W = (∂f/∂z)ᵀ x.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # tensor subclasses without a plain storage
            seen[id(t)] = t.numel() * t.element_size()
            return t
        ptr = storage.data_ptr()
        if ptr not in skip:
            seen[ptr] = max(seen.get(ptr, 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return int(sum(seen.values()))


# --------------------------------------------------------------------------- one step


def problem(width: int, depth: int, batch: int, *, classes: int = 10, seed: int = 0) -> tuple[nn.Sequential, Tensor, Tensor]:
    """The benchmark's model and batch: an MLP of ``depth`` linear layers on inputs of ``width``.

    Sizes ``width → width → … → width → classes`` (``depth − 1`` hidden ReLU layers of ``width``),
    a standard-normal batch x of shape ``(batch, width)`` and random labels, all from ``seed``.
    """
    for name, value in (("width", width), ("depth", depth), ("batch", batch)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    model = mlp([width] * depth + [classes], flatten=False, generator_seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, width, generator=g)
    y = torch.randint(0, classes, (batch,), generator=g)
    return model, x, y


class StepRunner:
    """One training step of ``method`` on a fixed model and batch, with the loss cross-entropy.

    :meth:`forward` computes the loss as the method's step does (keeping whatever the method
    keeps for its backward pass); :meth:`step` runs the whole step including the in-place SGD
    update θ ← θ − η·(gradient or estimate).
    """

    def __init__(self, method: str, model: nn.Sequential, inputs: Tensor, targets: Tensor, *, lr: float = _LR, seed: int = 0) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
        if not isinstance(model, nn.Sequential):
            raise TypeError(f"model must be an nn.Sequential, got {type(model).__name__}")
        self.method, self.model, self.inputs, self.targets = method, model, inputs, targets
        self.lr, self.seed, self.t = lr, seed, 0
        self._fg = ForwardGradient(seed=seed)
        self._shared = SharedSeedForwardGradient(seed=seed, lean=True, lr=lr)
        self.segments = max(1, round(math.sqrt(len(layers(model)))))

    def _loss(self, out: Tensor) -> Tensor:
        return nn.functional.cross_entropy(out, self.targets)

    def forward(self) -> Tensor:
        """The loss f(θ), computed the way the step computes it."""
        if self.method == "inference":
            with torch.no_grad():
                return self._loss(self.model(self.inputs))
        if self.method == "backprop":
            return self._loss(self.model(self.inputs))
        if self.method == "checkpointing":
            out = checkpoint_sequential(self.model, self.segments, self.inputs, use_reentrant=False)
            return self._loss(out)
        return torch.tensor(self.step())

    def step(self) -> float:
        """Run one full step (for the gradient methods, update the parameters); return f(θ)."""
        if self.method == "inference":
            return float(self.forward())
        if self.method in ("backprop", "checkpointing"):
            for p in self.model.parameters():
                p.grad = None
            loss = self.forward()
            loss.backward()
            with torch.no_grad():
                for p in self.model.parameters():
                    p.sub_(p.grad, alpha=self.lr)
                    p.grad = None
            return float(loss.detach())
        if self.method == "ForwardGradient":
            for p in self.model.parameters():
                p.grad = None
            loss = self._fg(self.model, lambda: self._loss(self.model(self.inputs)))
            with torch.no_grad():
                for p in self.model.parameters():
                    p.sub_(p.grad, alpha=self.lr)
                    p.grad = None
            return float(loss)
        if self.method == "shared-seed lean forward gradient":
            return self._shared.step(self.model, (self.inputs, self.targets)).loss
        stepper = lean_forward_gradient_step if self.method == "lean forward gradient" else plain_forward_gradient_step
        self.t += 1
        return stepper(self.model, self.inputs, self._loss, lr=self.lr, seed=self.seed, step=self.t).loss

    def saved_bytes(self) -> int:
        """Bytes autograd keeps for backward at the end of this method's forward pass (parameters excluded)."""
        return saved_tensor_bytes(self.forward, exclude=list(self.model.parameters()))


# --------------------------------------------------------------------------- resident memory


def _status(key: str) -> int | None:
    """A ``/proc/self/status`` field in bytes, or None where there is no such file (not Linux)."""
    try:
        with open("/proc/self/status") as fh:
            text = fh.read()
    except OSError:
        return None
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def _reset_peak() -> bool:
    """Reset the peak resident size (``VmHWM``) to the current one; False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def _maxrss() -> int:
    """Process-wide peak resident size in bytes from ``getrusage`` (kB on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


@dataclass
class StepProfile:
    """One method's step, measured in a fresh process (bytes, seconds)."""

    method: str
    width: int
    depth: int
    batch: int
    parameters: int
    #: bytes autograd keeps for backward (activations), parameters excluded
    saved_bytes: int
    #: resident bytes that building the model and the batch added
    model_bytes: int
    #: peak resident bytes during the step above the resident size with model and batch built
    working_bytes: int
    #: peak resident bytes during the step above the process baseline (model + batch + working)
    footprint_bytes: int
    #: median wall-clock seconds of one step over the timed repeats (nan if none)
    seconds: float
    #: False where the peak could not be reset and is a lower bound from ``getrusage``
    exact: bool
    #: the allocator policy of the measuring process (see :func:`measure_step`)
    allocator: str = "release"


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """What the fresh process runs (see :func:`measure_step`)."""
    torch.set_num_threads(int(spec["threads"]))
    method, seed = spec["method"], int(spec["seed"])
    # warm up the same code paths on a tiny problem, so that one-time allocations (thread pools,
    # kernel scratch space, lazily loaded libraries) belong to the baseline and not to the step
    tiny = problem(8, 4, 4, seed=seed)  # 4 layers: deep enough for checkpointing to checkpoint
    StepRunner(method, *tiny).step()
    del tiny
    gc.collect()
    exact = _reset_peak() and _status("VmHWM") is not None
    base0 = _status("VmRSS") if exact else _maxrss()
    model, x, y = problem(spec["width"], spec["depth"], spec["batch"], seed=seed)
    runner = StepRunner(method, model, x, y, seed=seed)
    gc.collect()
    if exact:
        _reset_peak()
        base1 = _status("VmRSS")
    else:
        base1 = _maxrss()
    runner.step()
    peak = _status("VmHWM") if exact else _maxrss()
    assert base0 is not None and base1 is not None and peak is not None
    saved = runner.saved_bytes()
    times = []
    for _ in range(int(spec["repeats"])):
        start = time.perf_counter()
        runner.step()
        times.append(time.perf_counter() - start)
    return asdict(
        StepProfile(
            method=method,
            width=spec["width"],
            depth=spec["depth"],
            batch=spec["batch"],
            parameters=sum(p.numel() for p in model.parameters()),
            saved_bytes=saved,
            model_bytes=max(0, base1 - base0),
            working_bytes=max(0, peak - base1),
            footprint_bytes=max(0, peak - base0),
            seconds=statistics.median(times) if times else float("nan"),
            exact=exact,
        )
    )


def _child_main() -> None:  # pragma: no cover - runs in the subprocess
    spec = json.loads(sys.stdin.read())
    print(json.dumps(_child(spec)))


def measure_step(
    method: str,
    *,
    width: int,
    depth: int,
    batch: int,
    repeats: int = 3,
    seed: int = 0,
    threads: int = 2,
    allocator: str = "release",
    timeout: float = 600.0,
) -> StepProfile:
    """Measure one step of ``method`` on :func:`problem` ``(width, depth, batch)`` in a fresh process.

    The process imports torch, warms the method up on a tiny problem, resets its peak resident
    size and records the baseline, builds model and batch (resident size again), runs one step
    and reads the peak; then counts the saved bytes and times ``repeats`` more steps (median).
    A fresh process is needed because a process's allocator keeps freed memory and its peak
    counter only grows. Raises ``RuntimeError`` with the child's error output if it fails.

    ``allocator="release"`` (the default) sets glibc's ``MALLOC_MMAP_THRESHOLD_`` in the child so
    that every allocation of 64 KiB or more is its own memory mapping, returned to the system
    when the tensor is freed: the resident size then follows the bytes of live tensors, as
    ``torch.cuda.max_memory_allocated`` does on a GPU. ``allocator="default"`` keeps glibc's
    adaptive policy, under which freed blocks may stay resident and be reused later, so the peak
    also counts memory that the step freed earlier.
    """
    if allocator not in ("release", "default"):
        raise ValueError(f"allocator must be 'release' or 'default', got {allocator!r}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if not isinstance(repeats, int) or repeats < 0:
        raise ValueError(f"repeats must be a non-negative int, got {repeats!r}")
    for name, value in (("width", width), ("depth", depth), ("batch", batch), ("threads", threads)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    spec = {"method": method, "width": width, "depth": depth, "batch": batch, "repeats": repeats, "seed": seed, "threads": threads}
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if allocator == "release":
        env["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)
    done = subprocess.run(
        [sys.executable, "-c", "from ffkit.profile import _child_main; _child_main()"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"measuring {method!r} failed in the child process:\n{done.stderr[-2000:]}")
    fields = json.loads(done.stdout.strip().splitlines()[-1])
    fields["allocator"] = allocator
    return StepProfile(**fields)


# --------------------------------------------------------------------------- per-layer timings


def layers(model: nn.Sequential) -> list[nn.Sequential]:
    """Group ``model``'s children into layers: each starts at a child with parameters and takes the
    parameter-free children after it (activations); parameter-free children at the front join the
    first layer."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"model must be an nn.Sequential, got {type(model).__name__}")
    groups: list[list[nn.Module]] = []
    pending: list[nn.Module] = []
    for child in model:
        if any(True for _ in child.parameters()):
            groups.append(pending + [child])
            pending = []
        elif groups:
            groups[-1].append(child)
        else:
            pending.append(child)
    if not groups:
        raise ValueError("the model has no layer with parameters")
    groups[-1].extend(pending)
    return [nn.Sequential(*g) for g in groups]


def layer_timings(
    model: nn.Sequential,
    inputs: Tensor,
    loss_fn: Callable[[Tensor], Tensor],
    *,
    repeats: int = 5,
    lr: float = _LR,
    seed: int = 0,
    statistic: str = "median",
    sampler: str | tg.Distribution = tg.DEFAULT,
) -> dict[str, list[float]]:
    """Seconds per layer (see :func:`layers`) of each piece of a training step, over ``repeats`` runs.

    ``statistic`` is ``"median"`` or ``"min"``; on a machine shared with other work the minimum
    estimates the cost of the work itself, undisturbed by what else runs. ``sampler`` names the
    tangent distribution of the forward-mode pieces.

    Keys: ``"forward"`` (the layer's forward pass recording what backward needs; the last layer
    includes the loss), ``"backward"`` (``torch.autograd.grad`` of the layer's output for its
    parameters and its input), ``"update"`` (θ_p ← θ_p − η g_p for its parameters),
    ``"forward+tangent"`` (the layer in forward mode with a freshly drawn tangent, as in the lean
    step) and ``"update (regenerated)"`` (redrawing the layer's tangent and applying the update in
    place), with the same code as :func:`ffkit.lean.lean_forward_gradient_step`. Each layer runs
    on a detached copy of the previous layer's output, so that its own work is timed alone.
    """
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    reducers: dict[str, Callable[[list[float]], float]] = {"median": statistics.median, "min": min}
    if statistic not in reducers:
        raise ValueError(f"statistic must be 'median' or 'min', got {statistic!r}")
    dist = tg.get(sampler)
    blocks = layers(model)
    n = len(blocks)
    samples: dict[str, list[list[float]]] = {
        k: [[] for _ in range(n)] for k in ("forward", "backward", "update", "forward+tangent", "update (regenerated)")
    }
    clock = time.perf_counter
    for r in range(repeats):
        # backprop, layer by layer
        h_in: list[Tensor] = []
        outs: list[Tensor] = []
        h = inputs
        for i, block in enumerate(blocks):
            x = h.detach().requires_grad_(i > 0)
            t0 = clock()
            out = block(x)
            if i == n - 1:
                out = loss_fn(out)
            samples["forward"][i].append(clock() - t0)
            h_in.append(x)
            outs.append(out)
            h = out
        grad_out: Tensor | None = None
        grads: list[list[Tensor]] = [[] for _ in range(n)]
        for i in reversed(range(n)):
            params = list(blocks[i].parameters())
            wrt = params + ([h_in[i]] if i > 0 else [])
            t0 = clock()
            got = torch.autograd.grad(outs[i], wrt, grad_outputs=grad_out)
            samples["backward"][i].append(clock() - t0)
            grads[i] = list(got[: len(params)])
            grad_out = got[-1] if i > 0 else None
        del h_in, outs
        with torch.no_grad():
            for i in range(n):
                t0 = clock()
                for p, g in zip(blocks[i].parameters(), grads[i]):
                    p.sub_(g, alpha=lr)
                samples["update"][i].append(clock() - t0)
        del grads
        # forward gradient, layer by layer (tangents drawn from a seeded generator)
        with torch.no_grad(), fwAD.dual_level():
            gen = tg.generator(seed, r, 0)
            h = inputs
            for i, block in enumerate(blocks):
                t0 = clock()
                for child in block:
                    h = tangent_forward(child, h, dist, gen)
                if i == n - 1:
                    h = loss_fn(h)
                samples["forward+tangent"][i].append(clock() - t0)
            dot = float(fwAD.unpack_dual(h).tangent)
            del h
        with torch.no_grad():
            gen = tg.generator(seed, r, 0)
            for i, block in enumerate(blocks):
                t0 = clock()
                for p in block.parameters():
                    tg.combine([dot], [[dist.fill_(torch.empty_like(p), gen)]], out=[p], alpha=-lr)
                samples["update (regenerated)"][i].append(clock() - t0)
    return {k: [reducers[statistic](s) for s in v] for k, v in samples.items()}


# --------------------------------------------------------------------------- many directions


def directional_derivatives(
    f: Callable[[dict[str, Tensor]], Tensor],
    params: dict[str, Tensor],
    tangents: dict[str, Tensor],
    *,
    batched: bool,
) -> Tensor:
    """The K numbers ∇f(θ)·v_k for tangents stacked along a leading dimension of size K.

    ``batched=False`` runs one ``torch.func.jvp`` per direction in a Python loop;
    ``batched=True`` runs them all at once with ``torch.func.vmap`` over the JVP (each
    operation then works on K tangents together, at K times the tangent memory).
    """
    sizes = {v.shape[0] for v in tangents.values()}
    if len(sizes) != 1 or set(tangents) != set(params):
        raise ValueError("tangents must have one entry per parameter, all with the same leading size K")

    def one(v: dict[str, Tensor]) -> Tensor:
        return torch.func.jvp(f, (params,), (v,))[1]

    with torch.no_grad():
        if batched:
            return torch.func.vmap(one)(tangents)
        k = sizes.pop()
        return torch.stack([one({name: t[i] for name, t in tangents.items()}) for i in range(k)])
