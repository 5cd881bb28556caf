"""Tests of ffkit.local_mixer: shapes, parameter counts, layer rules and the hand-written forward mode."""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

from ffkit.local_mixer import (
    PAPER_PARAMETERS,
    VARIANTS,
    DenseLinear,
    GroupLinear,
    LocalMixer,
    MixerConfig,
    TokenLinear,
    Trace,
    layer_norm,
    layer_norm_jvp,
    layer_norm_vjp,
    parameter_count,
    tangent_forward,
)

SMALL = MixerConfig(blocks=2, channels=8, patches=2, groups=2)


def _small(cfg: MixerConfig = SMALL, seed: int = 0) -> LocalMixer:
    torch.manual_seed(seed)
    model = LocalMixer(cfg, (1, 4, 4), classes=3).double()
    for head in (*model.block_heads, model.head):  # non-zero heads, so that every path carries a gradient
        torch.nn.init.normal_(head.weight)
        torch.nn.init.normal_(head.bias)
    return model


@pytest.mark.parametrize("name", list(PAPER_PARAMETERS))
def test_parameter_counts_match_ren_et_al(name: str) -> None:
    paper, shape, classes = PAPER_PARAMETERS[name]
    count = parameter_count(name, shape, classes)
    assert abs(count / paper - 1) < 0.005  # the paper rounds to three significant digits
    if count < 2_000_000:
        model = LocalMixer(name, shape, classes)
        assert sum(p.numel() for p in model.parameters()) == count
        assert model.arch == name


def test_variant_shapes() -> None:
    m = LocalMixer("M/1/16")
    assert (m.tokens, m.patch_dim, m.groups) == (1, 784, 16)
    assert len(list(m.units())) == 2 and len(m.block_heads) == 1
    cifar = LocalMixer("M/8/16", (3, 32, 32))
    assert (cifar.tokens, cifar.patch_dim) == (64, 48)
    kinds = [type(u.linear).__name__ for u in cifar.units()]
    assert kinds == ["DenseLinear", "GroupLinear"] + ["TokenLinear", "DenseLinear", "GroupLinear"] * 3
    assert [u.residual for u in cifar.units()] == [False, False] + [False, False, True] * 3
    out = cifar(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown LocalMixer architecture"):
        LocalMixer("XL/1/1")
    with pytest.raises(ValueError, match="do not divide the 28 × 28 image"):
        LocalMixer("M/8/16", (1, 28, 28))
    with pytest.raises(ValueError, match="groups do not divide"):
        MixerConfig(blocks=1, channels=10, patches=1, groups=3)
    with pytest.raises(ValueError, match="positive int"):
        MixerConfig(blocks=0, channels=8, patches=1, groups=1)
    with pytest.raises(ValueError, match="got input of shape"):
        LocalMixer("S/1/1")(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="classes"):
        LocalMixer("S/1/1", classes=1)


def test_patches_are_row_major_blocks_of_the_image() -> None:
    m = LocalMixer(MixerConfig(1, 4, 2, 1), (3, 4, 6))
    x = torch.randn(2, 3, 4, 6)
    t = m.patchify(x)
    assert t.shape == (2, 4, 3 * 2 * 3)
    # patch (row 1, column 0), pixel (0, 2), channel 1: index (pixel row * width + column) * channels + channel
    assert t[1, 2, (0 * 3 + 2) * 3 + 1] == x[1, 1, 2, 2]


@pytest.mark.parametrize("size", [12, 4])
def test_layer_norm_rules_match_autograd(size: int) -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3, 2, 12, generator=g, dtype=torch.float64)
    dz = torch.randn(3, 2, 12, generator=g, dtype=torch.float64)
    gy = torch.randn(3, 2, 12, generator=g, dtype=torch.float64)
    y_ref, dy_ref = torch.func.jvp(lambda t: layer_norm(t, size), (z,), (dz,))
    y, dy, _, _ = layer_norm_jvp(z, dz, size)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(dy, dy_ref)
    _, pullback = torch.func.vjp(lambda t: layer_norm(t, size), z)
    torch.testing.assert_close(layer_norm_vjp(z, gy, size), pullback(gy)[0])


@pytest.mark.parametrize("layer", [DenseLinear(6, 8, groups=2), GroupLinear(8, 2), TokenLinear(3)])
def test_layer_rules_match_autograd(layer: torch.nn.Module) -> None:
    layer = layer.double()
    g = torch.Generator().manual_seed(2)
    c_in = 6 if isinstance(layer, DenseLinear) else 8
    h = torch.randn(4, 3, c_in, generator=g, dtype=torch.float64)
    dh = torch.randn_like(h)
    z = layer(h)
    gz = torch.randn(z.shape, generator=g, dtype=torch.float64)
    # the outer-product rules of the weight gradient
    (z * gz).sum().backward()
    gw, gb = layer.param_grads(h, gz)
    torch.testing.assert_close(gw, layer.weight.grad)
    torch.testing.assert_close(gb, layer.bias.grad)
    # tangents through the input and through the weights
    params = {k: v.detach() for k, v in layer.named_parameters()}
    dw = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in params.items()}
    _, ref_in = torch.func.jvp(lambda t: torch.func.functional_call(layer, params, (t,)), (h,), (dh,))
    _, ref_w = torch.func.jvp(lambda p: torch.func.functional_call(layer, p, (h,)), (params,), (dw,))
    with torch.no_grad():
        torch.testing.assert_close(layer.input_tangent(dh), ref_in)
        torch.testing.assert_close(layer.weight_tangent(h, dw["weight"], dw["bias"]), ref_w)


@pytest.mark.parametrize("local", [False, True])
def test_hand_written_forward_mode_equals_torch_forward_ad(local: bool) -> None:
    model = _small()
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    units = list(model.units())
    tangents = [torch.randn(3, 4, 8, generator=g, dtype=torch.float64) for _ in units]
    weights = {u.linear: (torch.randn_like(u.linear.weight), torch.randn_like(u.linear.bias)) for u in units}
    it = iter(tangents)
    ours = tangent_forward(model, x, local=local, tangents=lambda s: next(it).clone(), weight_tangents=weights)
    it2 = iter(tangents)
    trace = Trace(local=local, tangents=lambda s: next(it2).clone())
    names = {u.linear: n.rsplit(".", 1)[0] for n, _ in model.named_parameters() for u in units
             if n.startswith("blocks.") and model.get_submodule(n.rsplit(".", 1)[0]) is u.linear}
    with torch.no_grad(), fwAD.dual_level():
        duals = {}
        for layer, (dw, db) in weights.items():
            duals[f"{names[layer]}.weight"] = fwAD.make_dual(layer.weight.detach(), dw)
            duals[f"{names[layer]}.bias"] = fwAD.make_dual(layer.bias.detach(), db)
        torch.func.functional_call(model, duals, (x,), {"trace": trace}, strict=False)
        reference = [fwAD.unpack_dual(h) for h in trace.blocks]
        for (p_ref, t_ref), p, t in zip(reference, ours.blocks, ours.block_tangents):
            torch.testing.assert_close(p, p_ref)
            torch.testing.assert_close(t, t_ref)
    assert len(ours.sites) == len(trace.sites) == len(units)
    for a, b in zip(ours.sites, trace.sites):
        assert torch.equal(a.mask, b.mask)
        torch.testing.assert_close(a.h, b.h)
        torch.testing.assert_close(a.z, b.z)


def test_local_trace_cuts_the_graph_between_blocks() -> None:
    model = _small()
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    trace = Trace(local=True)
    logits = model(x, trace=trace)
    first = [p for n, p in model.named_parameters() if n.startswith("blocks.0.")]
    grads = torch.autograd.grad(model.block_logits(1, trace.blocks[1]).sum() + logits.sum(), first, allow_unused=True)
    assert all(g is None for g in grads)
    # without the cut the same quantity reaches block 0
    trace = Trace(local=False)
    logits = model(x, trace=trace)
    grads = torch.autograd.grad(logits.sum(), first, allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    # the trace does not change the prediction
    torch.testing.assert_close(model(x), model(x, trace=Trace(local=True)))


def test_block_features_normalise_each_group() -> None:
    model = _small()
    h = torch.randn(2, 4, 8, dtype=torch.float64)
    f = model.block_features(h).unflatten(-1, (2, 4))
    torch.testing.assert_close(f.mean(-1), torch.zeros(2, 4, 2, dtype=torch.float64))
    v = h.unflatten(-1, (2, 4)).var(-1, unbiased=False)
    torch.testing.assert_close(f.var(-1, unbiased=False), v / (v + 1e-5))  # variance 1 up to the ε of the norm
    torch.testing.assert_close(model.head_features(h), F.layer_norm(h.mean(1), (8,), eps=1e-5))
    assert set(VARIANTS) >= {"S/1/1", "M/1/16", "M/8/16"}
