"""Tests of ffkit.methods.local: the six algorithms of Ren et al. on a small LocalMixer.

The estimates are linear in the tangent, so feeding the unit vectors e_i one after the other and
summing gives Σ_i (∇L·e_i) e_i: the exact gradient for an unbiased estimator (E[v vᵀ] = I),
whatever the distribution. That checks the estimators exactly, without Monte Carlo.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ffkit import tangents as tg
from ffkit import variance
from ffkit.local_mixer import LocalMixer, MixerConfig, Trace
from ffkit.methods import Backprop, DivergenceError, create
from ffkit.methods.local import (
    ActivityPerturbation,
    LocalActivityPerturbation,
    LocalBackprop,
    LocalWeightPerturbation,
    WeightPerturbation,
    activity_gradient,
    local_losses,
    weight_gradient,
)
from ffkit.train import fit

GROUPED = MixerConfig(blocks=2, channels=6, patches=2, groups=2)
ONE_GROUP = MixerConfig(blocks=2, channels=4, patches=2, groups=1)


def _model(cfg: MixerConfig, seed: int = 0) -> LocalMixer:
    torch.manual_seed(seed)
    model = LocalMixer(cfg, (1, 4, 4), classes=3).double()
    for head in (*model.block_heads, model.head):
        torch.nn.init.normal_(head.weight)
        torch.nn.init.normal_(head.bias)
    return model


def _batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64), torch.tensor([0, 2])


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in model.named_parameters()}


def _reference(model: LocalMixer, x: torch.Tensor, y: torch.Tensor, local: bool) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss = local_losses(model, x, y)[0] if local else F.cross_entropy(model(x), y)
    loss.backward()
    out = _grads(model)
    model.zero_grad()
    return out


def _activity_basis_sum(model: LocalMixer, x, y, local: bool, engine: str) -> dict[str, torch.Tensor]:
    trace = Trace(local=local, tangents=lambda s: torch.zeros(s, dtype=torch.float64))
    with torch.no_grad(), torch.autograd.forward_ad.dual_level():
        model(x, trace=trace)
    total = sum(s.u.numel() for s in trace.sites)
    model.zero_grad()
    for i in range(total):
        seen = [0]

        def unit_vector(shape: torch.Size, i: int = i, seen: list[int] = seen) -> torch.Tensor:
            t = torch.zeros(shape, dtype=torch.float64)
            j = i - seen[0]
            if 0 <= j < t.numel():
                t.view(-1)[j] = 1.0
            seen[0] += t.numel()
            return t

        activity_gradient(model, x, y, unit_vector, local=local, fill_heads=i == 0, engine=engine)
    out = _grads(model)
    model.zero_grad()
    return out


def _weight_basis_sum(model: LocalMixer, x, y, local: bool, engine: str) -> dict[str, torch.Tensor]:
    params = [p for n, p in model.named_parameters() if n.startswith("blocks.")]
    model.zero_grad()
    first = True
    for a, p in enumerate(params):
        for j in range(p.numel()):
            v = [torch.zeros_like(q) for q in params]
            v[a].view(-1)[j] = 1.0
            weight_gradient(model, x, y, v, local=local, fill_heads=first, engine=engine)
            first = False
    out = _grads(model)
    model.zero_grad()
    return out


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str = "") -> None:
    for name in a:
        if name.startswith(prefix):
            torch.testing.assert_close(a[name], b[name], rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("local", [False, True])
def test_activity_perturbation_is_exact_in_expectation(local: bool, engine: str = "jvp") -> None:
    """Σ_i over unit tangents = ∇L (FG-A) or the local losses' gradient (LG-FG-A), heads exact."""
    model = _model(GROUPED)
    x, y = _batch()
    ref = _reference(model, x, y, local)
    got = _activity_basis_sum(model, x, y, local, engine)
    _close(got, ref, "blocks.")
    _close(got, ref, "head." if not local else "")


def test_global_weight_perturbation_is_exact_in_expectation(engine: str = "jvp") -> None:
    model = _model(GROUPED)
    x, y = _batch()
    _close(_weight_basis_sum(model, x, y, False, engine), _reference(model, x, y, False), "blocks.")


def test_local_weight_perturbation_without_groups_is_exact_in_expectation() -> None:
    """With one group, rows of the token-mixing weights go to their patch's loss only, unbiasedly."""
    model = _model(ONE_GROUP)
    x, y = _batch()
    _close(_weight_basis_sum(model, x, y, True, "jvp"), _reference(model, x, y, True), "blocks.")


def test_local_weight_perturbation_with_groups_is_the_group_diagonal_gradient() -> None:
    """With groups, entry i of a group-g row gets ∂L_{p,g}/∂θ_i only: the gradient that ignores how
    a row of group g moves the other groups' features through the post-linear layer norm."""
    model = _model(GROUPED)
    x, y = _batch()
    got = _weight_basis_sum(model, x, y, True, "jvp")
    # reference: for every block, patch p and group g, backprop the loss that sees only (p, g)
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    trace = Trace(local=True)
    model(x, trace=trace)
    groups, size = model.groups, model.config.channels // model.groups
    for b, h in enumerate(trace.blocks):
        f = model.block_features(h)
        for p in range(f.shape[1]):
            for g in range(groups):
                keep = torch.zeros_like(f)
                keep[:, p, g * size : (g + 1) * size] = 1
                f_pg = f.detach() + keep * (f - f.detach())
                loss = F.cross_entropy(model.block_heads[b](f_pg.mean(1)), y)
                names = [n for n, _ in model.named_parameters() if n.startswith(f"blocks.{b}.")]
                grads = torch.autograd.grad(loss, [model.get_parameter(n) for n in names], retain_graph=True)
                for n, gr in zip(names, grads):
                    layer = model.get_submodule(n.rsplit(".", 1)[0])
                    mask = _entries_reaching(layer, n.endswith("weight"), p, g, groups, size, gr.shape)
                    expected[n] += gr * mask
    _close(got, expected, "blocks.")
    diff = max(float((got[n] - _reference(model, x, y, True)[n]).abs().max()) for n in got if n.startswith("blocks."))
    assert diff > 1e-3  # and that differs from the local losses' gradient (the bias is real)


def _entries_reaching(layer: torch.nn.Module, weight: bool, p: int, g: int, groups: int, size: int, shape) -> torch.Tensor:
    """Which entries of a layer's parameter the directional derivative d_{p,g} scales."""
    mask = torch.zeros(shape, dtype=torch.float64)
    kind = type(layer).__name__
    if kind == "TokenLinear":
        mask[p] = 1
    elif kind == "DenseLinear":
        mask[g * size : (g + 1) * size] = 1
    else:  # GroupLinear
        mask[g] = 1
    return mask


@pytest.mark.parametrize("cls", [ActivityPerturbation, LocalActivityPerturbation, WeightPerturbation, LocalWeightPerturbation])
def test_engines_give_the_same_step(cls: type) -> None:
    """The hand-written tangent rules and torch.autograd.forward_ad give the same estimate (and
    the basis tests above make the hand-written one exact, hence both)."""
    x, y = _batch()
    grads = []
    for engine in ("jvp", "forward-ad"):
        model = _model(GROUPED)
        result = cls(directions=2, sampler="gaussian", seed=5, engine=engine).step(model, (x, y))
        assert math.isfinite(result.loss)
        grads.append(_grads(model))
    _close(grads[0], grads[1])


def test_k_directions_average_the_seeded_passes() -> None:
    x, y = _batch()
    model = _model(GROUPED)
    LocalActivityPerturbation(directions=3, seed=7).step(model, (x, y))
    together = _grads(model)
    model.zero_grad()
    dist = tg.get("rademacher")
    for k in range(3):
        gen = tg.generator(7, 0, k)
        activity_gradient(model, x, y, lambda s: dist.fill_(torch.empty(s, dtype=torch.float64), gen),
                          local=True, scale=1 / 3, fill_heads=k == 0)
    _close(together, _grads(model))


def test_heads_and_reproducibility() -> None:
    x, y = _batch()
    for cls, local in ((ActivityPerturbation, False), (LocalActivityPerturbation, True),
                       (WeightPerturbation, False), (LocalWeightPerturbation, True)):
        a, b = _model(GROUPED), _model(GROUPED)
        cls(seed=3).step(a, (x, y))
        cls(seed=3).step(b, (x, y))
        _close(_grads(a), _grads(b))
        c = _model(GROUPED)
        cls(seed=4).step(c, (x, y))
        assert not torch.equal(_grads(a)["blocks.0.0.linear.weight"], _grads(c)["blocks.0.0.linear.weight"])
        ref = _reference(_model(GROUPED), x, y, local)
        heads = [n for n in ref if not n.startswith("blocks.")]
        for n in heads:
            if local or n.startswith("head."):
                torch.testing.assert_close(_grads(a)[n], ref[n], msg=n)  # exact head gradients
            else:
                assert a.get_parameter(n).grad is None  # global methods never read the block heads


def test_unbiased_by_monte_carlo_within_the_noise_floor() -> None:
    """Random Rademacher tangents: the mean of many LG-FG-A estimates approaches LG-BP's gradient."""
    model = _model(GROUPED)
    x, y = _batch()
    truth = _reference(model, x, y, True)
    method = LocalActivityPerturbation(seed=11)
    blocks = [n for n in truth if n.startswith("blocks.")]

    def draw() -> dict[str, torch.Tensor]:
        model.zero_grad()
        method.step(model, (x, y))
        return {n: model.get_parameter(n).grad.clone() for n in blocks}

    stats = variance.measure(draw, {n: truth[n] for n in blocks}, draws=200)
    assert stats.relative_bias < 3 * stats.bias_floor


def test_lg_bp_and_bp_fill_what_they_should() -> None:
    x, y = _batch()
    model = _model(GROUPED)
    LocalBackprop().step(model, (x, y))
    _close(_grads(model), _reference(_model(GROUPED), x, y, True))
    assert isinstance(create("lg-bp"), LocalBackprop)
    assert isinstance(create("LG-FG-A"), LocalActivityPerturbation)
    assert isinstance(create("fg-a"), ActivityPerturbation)
    assert isinstance(create("lg-fg-w"), LocalWeightPerturbation)
    assert isinstance(create("mixer-fg-w"), WeightPerturbation)


def test_bad_input() -> None:
    x, y = _batch()
    with pytest.raises(TypeError, match="LocalMixer"):
        LocalActivityPerturbation().step(torch.nn.Linear(2, 2), (x, y))
    with pytest.raises(ValueError, match="directions"):
        ActivityPerturbation(directions=0)
    with pytest.raises(ValueError, match="unknown engine"):
        WeightPerturbation(engine="reverse")
    with pytest.raises(ValueError, match="unknown tangent distribution"):
        ActivityPerturbation(sampler="uniform")
    model = _model(GROUPED)
    with pytest.raises(ValueError, match="tensors for"):
        weight_gradient(model, x, y, [torch.zeros(1)], local=False)
    with pytest.raises(TypeError, match="batches"):
        LocalBackprop().step(model, x)


def test_a_diverging_run_names_the_step_and_the_learning_rate() -> None:
    model = _model(GROUPED)
    x, y = _batch()
    bad = x.clone()
    bad[0, 0, 0, 0] = math.nan
    data = iter([(x, y), (bad, y)])
    with pytest.raises(DivergenceError, match=r"at step 2 \(learning rate 0\.01\)"):
        fit(model, LocalActivityPerturbation(seed=0), data, torch.optim.SGD(model.parameters(), lr=0.01), steps=2)


def test_fit_with_any_optimizer_lowers_the_losses() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 1, 4, 4, generator=g, dtype=torch.float64)
    y = x.flatten(1)[:, :3].argmax(1)
    for method in (LocalBackprop(), LocalActivityPerturbation(seed=1, directions=4), Backprop()):
        model = _model(ONE_GROUP)

        @torch.no_grad()
        def objective() -> float:
            if isinstance(method, Backprop):
                return float(F.cross_entropy(model(x), y))
            return float(local_losses(model, x, y)[0])

        before = objective()
        fit(model, method, iter([(x, y)] * 40), torch.optim.Adam(model.parameters(), lr=0.01), steps=40)
        assert objective() < 0.7 * before


def test_one_block_one_patch_one_group_local_and_global_methods_coincide() -> None:
    """With one block, one patch and one group (S/1/1), the block head reads the final head's
    features, so LG-BP, LG-FG-W and LG-FG-A train exactly like BP, FG-W and FG-A."""
    cfg = MixerConfig(blocks=1, channels=8, patches=1, groups=1)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 1, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g))
            for _ in range(6)]
    pairs = [(Backprop(), LocalBackprop()),
             (WeightPerturbation(seed=1), LocalWeightPerturbation(seed=1)),
             (ActivityPerturbation(seed=1), LocalActivityPerturbation(seed=1))]
    for global_method, local_method in pairs:
        logits = []
        for method in (global_method, local_method):
            torch.manual_seed(0)
            model = LocalMixer(cfg, (1, 4, 4), classes=3).double()
            fit(model, method, iter(data), torch.optim.Adam(model.parameters(), lr=0.01), steps=len(data))
            with torch.no_grad():
                logits.append(model(data[0][0]))
        torch.testing.assert_close(logits[0], logits[1], rtol=1e-9, atol=1e-9)
