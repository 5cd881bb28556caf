"""Forward-Forward: the objective, the network, its data, the training step and the probes.

Gradients are checked against autograd on the layer's own loss (input detached), directional
derivatives against ``torch.func.jvp``, forward-gradient estimates by Monte Carlo against their
closed-form variance, and training against chance level on small problems.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import ffkit
from ffkit import ff_data, probes, variance
from ffkit import forward_forward as ff
from ffkit.methods import (
    DivergenceError,
    ForwardForward,
    ForwardGradientForwardForward,
    UnsupervisedForwardForward,
    create,
)

torch.set_default_dtype(torch.float32)


def _images(n: int = 12, side: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, side, side, generator=g)
    y = torch.arange(n) % 4
    return x, y


def _net(**kw: object) -> ff.FFNet:
    options = dict(classes=4, seed=1, threshold=2.0, peer=0.05)
    options.update(kw)
    return ff.FFNet(36, [7, 5, 6], **options)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the objective


def test_goodness_and_its_derivative_match_autograd() -> None:
    z = torch.rand(5, 8, dtype=torch.float64, requires_grad=True)
    for kind, expected in (("sum", z.square().sum(1)), ("mean", z.square().mean(1))):
        g = ff.goodness(z, kind)
        torch.testing.assert_close(g, expected)
        (grad,) = torch.autograd.grad(g.sum(), z)
        torch.testing.assert_close(grad, ff.goodness_derivative(kind, 8) * z)
    with pytest.raises(ValueError, match="goodness"):
        ff.goodness(z, "max")


def test_loss_is_the_logistic_loss_of_the_probability() -> None:
    g = torch.tensor([0.0, 3.0, 10.0, 1.0])
    sign = torch.tensor([1.0, 1.0, -1.0, -1.0])
    p = ff.positive_probability(g, 2.0)
    expected = -(torch.log(p[:2]).sum() + torch.log(1 - p[2:]).sum()) / 4
    torch.testing.assert_close(ff.ff_loss(g, 2.0, sign), expected)


@pytest.mark.parametrize("kind", ["rms", "length"])
def test_normalize_keeps_the_direction(kind: str) -> None:
    z = torch.rand(4, 9, dtype=torch.float64) + 0.1
    h = ff.normalize(z, kind)
    target = 9.0 if kind == "rms" else 1.0
    torch.testing.assert_close(h.square().sum(1), torch.full((4,), target, dtype=torch.float64))
    torch.testing.assert_close(h / h.norm(dim=1, keepdim=True), z / z.norm(dim=1, keepdim=True))
    assert torch.equal(ff.normalize(torch.zeros(2, 3), kind), torch.zeros(2, 3))
    assert torch.equal(ff.normalize(z, "none"), z)


# --------------------------------------------------------------------------- the data


def test_overlay_writes_the_label_and_the_neutral_label() -> None:
    x, y = _images(4)
    out = ff_data.overlay(x, y, 4, value=2.0)
    assert out.shape == (4, 36)
    assert torch.equal(out[:, :4], 2.0 * F.one_hot(y, 4).float())
    assert torch.equal(out[:, 4:], x.flatten(1)[:, 4:])
    neutral = ff_data.overlay(x, None, 4)
    assert torch.allclose(neutral[:, :4], torch.full((4, 4), 0.25))
    with pytest.raises(ValueError, match="cannot hold a label"):
        ff_data.overlay(torch.rand(3, 1, 3, 3), torch.zeros(3, dtype=torch.long), 10)
    with pytest.raises(ValueError, match="labels must lie"):
        ff_data.overlay(x, y + 4, 4)


def test_wrong_labels_are_never_true_and_uniform_over_the_others() -> None:
    n, c = 20000, 10
    y = torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(0))
    wrong = ff_data.wrong_labels(y, c, torch.Generator().manual_seed(1))
    assert not bool((wrong == y).any())
    shift = (wrong - y) % c
    counts = torch.bincount(shift, minlength=c).double()
    assert counts[0] == 0
    expected = n / (c - 1)
    sd = math.sqrt(expected * (1 - 1 / (c - 1)))
    assert float((counts[1:] - expected).abs().max()) < 5 * sd


def test_hard_labels_follow_the_softmax_over_wrong_labels() -> None:
    n = 20000
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])).repeat(n, 1)
    y = torch.zeros(n, dtype=torch.long)
    wrong = ff_data.hard_labels(logits, y, torch.Generator().manual_seed(0))
    assert not bool((wrong == y).any())
    freq = torch.bincount(wrong, minlength=4).double() / n
    expected = torch.tensor([0.0, 0.6, 0.3, 0.1], dtype=torch.float64)
    sd = torch.sqrt(expected * (1 - expected) / n)
    assert bool(((freq - expected).abs() <= 5 * sd + 1e-12).all())
    # a softmax with all its mass on the true label falls back to a uniform wrong label
    certain = torch.tensor([[0.0, -1e4, -1e4]]).repeat(3000, 1)
    w = ff_data.hard_labels(certain, torch.zeros(3000, dtype=torch.long), torch.Generator().manual_seed(2))
    assert set(w.tolist()) == {1, 2}


def test_hybrid_masks_have_large_regions_and_mix_two_images() -> None:
    masks = ff_data.hybrid_masks(200, (28, 28), blurs=6, generator=torch.Generator().manual_seed(0))
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert 0.35 < float(masks.mean()) < 0.65
    same_right = float((masks[:, :, 1:] == masks[:, :, :-1]).float().mean())
    raw = ff_data.hybrid_masks(200, (28, 28), blurs=0, generator=torch.Generator().manual_seed(0))
    raw_right = float((raw[:, :, 1:] == raw[:, :, :-1]).float().mean())
    assert same_right > 0.85 and abs(raw_right - 0.5) < 0.02
    x = torch.rand(5, 1, 28, 28)
    hyb, m, partner = ff_data.hybrids(x, generator=torch.Generator().manual_seed(3))
    assert not bool((partner == torch.arange(5)).any())
    torch.testing.assert_close(hyb, m * x + (1 - m) * x[partner])
    with pytest.raises(ValueError, match="N >= 2"):
        ff_data.hybrids(x[:1])


def test_hybrid_mask_share_after_one_blur_matches_its_closed_form() -> None:
    # One blur along rows and columns weights the 3 × 3 bits around an interior pixel by
    # (1, 2, 1) ⊗ (1, 2, 1) / 16, so the pixel is 1 iff the weighted count of ones exceeds 8.
    # By symmetry P(> 8) = (1 - P(= 8)) / 2, with P(= 8) counted over the 512 patterns.
    weights = [a * b for a in (1, 2, 1) for b in (1, 2, 1)]
    ties = sum(sum(w * bit for w, bit in zip(weights, bits)) == 8 for bits in itertools.product((0, 1), repeat=9))
    share = (1 - ties / 512) / 2  # 0.4395: ties at exactly one half go to the second image
    masks = ff_data.hybrid_masks(4000, (28, 28), blurs=1, generator=torch.Generator().manual_seed(5))
    inner = masks[:, 1:-1, 1:-1]
    # two pixels share bits only when their 3 × 3 patches overlap (a 5 × 5 neighbourhood), so the
    # variance of the mean is at most 25 times the independent one; 5 sd of that is the tolerance
    sd = math.sqrt(25 * share * (1 - share) / inner.numel())
    assert abs(float(inner.mean()) - share) < 5 * sd
    # more blurs, larger regions: neighbours agree more often
    agree = []
    for blurs in (1, 3, 6, 12, 24):
        m = ff_data.hybrid_masks(500, (28, 28), blurs=blurs, generator=torch.Generator().manual_seed(blurs))
        agree.append(float((m[:, :, 1:] == m[:, :, :-1]).float().mean()))
    assert agree == sorted(agree)


# --------------------------------------------------------------------------- the network


def test_overlay_input_products_equal_the_dense_matrix() -> None:
    x, y = _images(6)
    net = _net()
    labels = torch.cat([net.one_hot(y), net.neutral(6), net.one_hot((y + 1) % 4)])
    inp = net.overlay_input(x, labels)
    dense = inp.dense()
    expected_rows = torch.cat([ff_data.overlay(x, y, 4), ff_data.overlay(x, None, 4), ff_data.overlay(x, (y + 1) % 4, 4)])
    torch.testing.assert_close(dense, ff.normalize(expected_rows, "rms"))
    w = torch.randn(7, 36)
    d = torch.randn(18, 7)
    torch.testing.assert_close(inp.mm(w), dense @ w.t())
    torch.testing.assert_close(inp.tmm(d), d.t() @ dense)
    torch.testing.assert_close(inp.row_sqnorms(), dense.square().sum(1))


def test_label_goodness_equals_one_pass_per_label() -> None:
    x, _ = _images(5)
    net = _net()
    scores = net.label_goodness(x)
    for c in range(4):
        h = ff.normalize(ff_data.overlay(x, torch.full((5,), c), 4), "rms")
        total = torch.zeros(5)
        for i, layer in enumerate(net.layers):
            z = torch.relu(layer(h))
            if i in net.read_from:
                total += z.square().sum(1)
            h = ff.normalize(z, "rms")
        torch.testing.assert_close(scores[:, c], total)


def test_bad_networks_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="cannot hold a label"):
        ff.FFNet(9, [4], classes=10)
    with pytest.raises(ValueError, match="widths"):
        ff.FFNet(36, [4, 0], classes=4)
    with pytest.raises(ValueError, match="widths"):
        ff.FFNet(36, [-3], classes=4)
    with pytest.raises(ValueError, match="pixels"):
        _net().label_goodness(torch.rand(2, 1, 5, 5))
    with pytest.raises(ValueError, match="normalisation"):
        _net(norm="layer")


# --------------------------------------------------------------------------- the training step


def _reference_gradients(net: ff.FFNet, inputs: list[torch.Tensor], sign: torch.Tensor, b: int) -> dict[str, torch.Tensor]:
    """Autograd on each layer's own loss, the input detached; the peer term passes the ReLU straight through."""
    grads = {}
    h = inputs[0]
    for i, layer in enumerate(net.layers):
        w = layer.weight.detach().clone().requires_grad_(True)
        bias = layer.bias.detach().clone().requires_grad_(True)
        a = h.detach() @ w.t() + bias
        z = torch.relu(a)
        loss = ff.ff_loss(ff.goodness(z, net.goodness_kind), net.thresholds[i], sign)
        if net.peer:
            z_st = a + (z - a).detach()
            m = net.peer_momentum * net.peer_means()[i] + (1 - net.peer_momentum) * z_st[:b].mean(0)
            loss = loss + net.peer * (m - m.mean()).square().mean()
        gw, gb = torch.autograd.grad(loss, (w, bias))
        grads[f"layers.{i}.weight"], grads[f"layers.{i}.bias"] = gw, gb
        h = ff.normalize(z.detach(), net.norm)
    return grads


def test_exact_step_equals_autograd_on_each_local_loss() -> None:
    x, y = _images(8)
    net = _net(readout=False)
    net.peer_means()[1].copy_(torch.rand(5))
    method = ForwardForward(seed=3)
    got = method.gradient_of(net, (x, y), data_step=2)
    wrong = ff_data.wrong_labels(y, 4, ffkit.tangents.generator(3 ^ 0x5EEDDA7A, 2, 0))
    rows = ff.normalize(torch.cat([ff_data.overlay(x, y, 4), ff_data.overlay(x, wrong, 4)]), "rms")
    sign = torch.cat([torch.ones(8), -torch.ones(8)])
    expected = _reference_gradients(net, [rows], sign, 8)
    assert set(got) == set(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6)


def test_readout_gradient_is_the_cross_entropy_gradient() -> None:
    x, y = _images(8)
    net = _net()
    torch.nn.init.normal_(net.readout.weight, 0, 0.3)
    got = ForwardForward(seed=0).gradient_of(net, (x, y))
    feats = net.features(net.activities(net.neutral_input(x)))
    w = net.readout.weight.detach().clone().requires_grad_(True)
    bias = net.readout.bias.detach().clone().requires_grad_(True)
    gw, gb = torch.autograd.grad(F.cross_entropy(feats @ w.t() + bias, y), (w, bias))
    torch.testing.assert_close(got["readout.weight"], gw, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got["readout.bias"], gb, rtol=1e-4, atol=1e-6)


def test_step_updates_the_peer_means_and_gradient_of_leaves_the_model_alone() -> None:
    x, y = _images(8)
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ForwardForward(seed=0).gradient_of(net, (x, y))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())
    result = ForwardForward(seed=0).step(net, (x, y))
    assert not torch.equal(net.peer_means()[0], before["peer_mean_0"])
    assert len(result.details["layer_loss"]) == 3
    assert result.loss == pytest.approx(sum(result.details["layer_loss"]) + result.details["readout_loss"])


def test_directional_derivatives_equal_jvp() -> None:
    """L̇ of each layer equals ∇L_l·v for the tangent that was drawn, and, for the first layer,
    torch.func.jvp of that layer's loss along it."""
    x, y = _images(8)
    net = _net(readout=False, peer=0.0)
    exact = ForwardForward(seed=5).gradient_of(net, (x, y), data_step=0)
    result = ForwardGradientForwardForward(gradient="weight", seed=5).step(net, (x, y))  # step 0
    for p in net.parameters():
        p.grad = None
    dots = [d[0] for d in result.details["directional"]]
    gen = ffkit.tangents.generator(5, 0, 0)
    tangents = [ffkit.tangents.draw([layer.weight, layer.bias], "rademacher", gen) for layer in net.layers]
    for i, (v_w, v_b) in enumerate(tangents):
        expected = float((exact[f"layers.{i}.weight"] * v_w).sum() + (exact[f"layers.{i}.bias"] * v_b).sum())
        assert dots[i] == pytest.approx(expected, rel=1e-4, abs=1e-7)
    wrong = ff_data.wrong_labels(y, 4, ffkit.tangents.generator(5 ^ 0x5EEDDA7A, 0, 0))
    rows = ff.normalize(torch.cat([ff_data.overlay(x, y, 4), ff_data.overlay(x, wrong, 4)]), "rms")
    sign = torch.cat([torch.ones(8), -torch.ones(8)])

    def loss(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ff.ff_loss(ff.goodness(torch.relu(rows @ w.t() + b)), net.thresholds[0], sign)

    layer = net.layers[0]
    _, jvp = torch.func.jvp(loss, (layer.weight.detach(), layer.bias.detach()), tuple(tangents[0]))
    assert dots[0] == pytest.approx(float(jvp), rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("gradient", ["weight", "activity"])
def test_forward_gradient_is_unbiased_with_the_predicted_variance(gradient: str) -> None:
    """Monte Carlo over tangents: per layer, no bias beyond the noise floor and tr Cov equal to
    ForwardForward.predicted_variance within 5 standard errors."""
    x, y = _images(6)
    net = _net(peer=0.05)
    torch.nn.init.normal_(net.readout.weight, 0, 0.3)
    batch = (x, y)
    truth = ForwardForward(seed=2).gradient_of(net, batch, data_step=1)
    method = ForwardGradientForwardForward(gradient=gradient, seed=2)
    counter = iter(range(10**6))
    stats = variance.measure(
        lambda: method.gradient_of(net, batch, data_step=1, tangent_step=next(counter)),
        truth, draws=400, groups=variance.by_module,
    )
    predicted = method.predicted_variance(net, batch, data_step=1)
    assert set(predicted) == set(stats.groups)
    for name, group in stats.groups.items():
        assert abs(group.variance - predicted[name]) < 5 * group.variance_se, name
        assert math.sqrt(group.bias_sq) < 4 * math.sqrt(group.variance / stats.draws) + 1e-12, name


def test_forward_gradient_step_uses_no_autograd_graph() -> None:
    x, y = _images(6)
    net = _net()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: pytest.fail("a tensor was saved for backward"), lambda t: t):
        for gradient in ("weight", "activity"):
            ForwardGradientForwardForward(gradient=gradient, seed=0).step(net, (x, y))
        ForwardForward(seed=0).step(net, (x, y))


def test_bfloat16_products_stay_close_to_float32() -> None:
    x, y = _images(8)
    net = _net()
    g32 = ForwardForward(seed=0).gradient_of(net, (x, y))
    g16 = ForwardForward(seed=0, dtype="bfloat16").gradient_of(net, (x, y))
    for name in g32:
        err = float((g16[name] - g32[name]).norm() / g32[name].norm().clamp_min(1e-12))
        assert err < 0.05, (name, err)


def test_registry_names() -> None:
    assert isinstance(create("ff"), ForwardForward)
    assert isinstance(create("ff-unsupervised"), UnsupervisedForwardForward)
    fg = create("ff-fg", gradient="activity")
    assert isinstance(fg, ForwardGradientForwardForward) and fg.gradient == "activity"
    with pytest.raises(ValueError, match="unknown negatives"):
        ForwardForward(negatives="easy")
    with pytest.raises(ValueError, match="gradient="):
        ForwardGradientForwardForward(gradient="exact")
    with pytest.raises(ValueError, match="supervised"):
        ForwardForward(data="unsupervised", negatives="hard")


def test_overflowing_goodness_stops_with_the_layer_and_the_step() -> None:
    x, y = _images(8)
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with torch.no_grad():
        net.layers[1].weight.fill_(1e30)
    with pytest.raises(DivergenceError, match=r"step 1 .*layer 2"):
        ffkit.fit(net, ForwardForward(seed=0), iter([(x, y)]), opt, steps=1)


def test_mismatched_network_and_data_are_clear_errors() -> None:
    x, y = _images(8)
    with pytest.raises(ValueError, match="without label overlay"):
        UnsupervisedForwardForward().step(_net(), (x, y))
    with pytest.raises(ValueError, match="label overlay"):
        ForwardForward().step(_net(overlay=False), (x, y))
    with pytest.raises(ValueError, match="no readout"):
        ForwardForward(negatives="hard").step(_net(readout=False), (x, y))
    with pytest.raises(TypeError, match="FFNet"):
        ForwardForward().step(torch.nn.Linear(36, 4), (x, y))


# --------------------------------------------------------------------------- learning


def _mnist(n: int, test: int = 1000) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    return ffkit.load_dataset("mnist", "train", limit=n), ffkit.load_dataset("mnist", "test", limit=test)


def test_supervised_ff_learns_mnist_far_beyond_chance() -> None:
    from ffkit.experiments import ff_mnist as fe

    cfg = fe.Config(layers=2, width=100, epochs=4, batch=50, train_size=2000, optimizer="adam", goodness="mean",
                    lr=1e-3, readout_lr=1e-2, probes=True, probe_epochs=3)
    record = fe.run(cfg, data=_mnist(2000))
    assert record["test_error"] < 0.7  # chance is 0.9; goodness needs many more steps than the readout
    assert record["final_test_errors"]["readout"] < 0.3
    assert len(record["probe_test_error"]) == 2 and max(record["probe_test_error"]) < 0.35
    assert record["epoch"] == [1, 2, 3, 4] and len(record["seconds"]) == 4


def test_unsupervised_ff_and_backprop_runs_learn() -> None:
    from ffkit.experiments import ff_mnist as fe

    data = _mnist(2000)
    for variant in ("unsupervised", "backprop"):
        cfg = fe.Config(variant=variant, layers=2, width=64, epochs=2, batch=50, train_size=2000, probes=False,
                        **({"lr": 0.05} if variant == "backprop" else {}))
        record = fe.run(cfg, data=data)
        assert record["test_error"] < 0.45, variant


def test_resumed_run_equals_an_uninterrupted_one() -> None:
    from ffkit.experiments import ff_mnist as fe

    data = _mnist(600, 200)
    cfg = fe.Config(layers=1, width=16, epochs=2, batch=100, train_size=600, probes=False, negatives="hard")
    full = fe.run(cfg, data=data)
    saved = {}

    def keep(record: dict, checkpoint) -> None:  # type: ignore[no-untyped-def]
        if record["epoch"][-1] == 1:
            import copy

            saved["state"] = copy.deepcopy(checkpoint())

    fe.run(cfg, data=data, on_epoch=keep)
    resumed = fe.run(cfg, data=data, state=saved["state"])
    assert resumed["test_errors"] == full["test_errors"]
    assert resumed["train_loss"] == full["train_loss"]


def test_untrained_probes_beat_chance_but_not_training() -> None:
    from ffkit.experiments import ff_mnist as fe

    data = _mnist(2000)
    cfg = fe.Config(layers=2, width=64, epochs=3, batch=50, train_size=2000, probe_epochs=5, optimizer="adam",
                    goodness="mean", lr=1e-3, readout_lr=1e-2)
    before = fe.untrained_probes(cfg, data)
    assert len(before) == 2 and all(r.test_error < 0.5 for r in before)  # random features are informative
    after = fe.run(cfg, data=data)["probe_test_error"]
    assert min(after) < min(r.test_error for r in before)


def test_config_rejects_bad_values() -> None:
    from ffkit.experiments import ff_mnist as fe

    with pytest.raises(ValueError, match="unknown variant"):
        fe.Config(variant="reverse")
    with pytest.raises(ValueError, match="width"):
        fe.Config(width=0)
    with pytest.raises(ValueError, match="unknown dataset"):
        fe.run(fe.Config(dataset="svhn", epochs=1))
    with pytest.raises(ValueError, match="blurs"):
        fe.Config(variant="unsupervised", blurs=-1)


def test_blurs_reach_the_method_and_name_the_run() -> None:
    from ffkit.experiments import ff_mnist as fe

    cfg = fe.Config(variant="unsupervised", layers=1, width=8, blurs=12)
    _, method, _ = fe.build(cfg)
    assert method.blurs == 12  # type: ignore[attr-defined]
    assert "blurs=12" in fe.run_key(cfg)
    assert "blurs" not in fe.run_key(fe.Config(variant="unsupervised"))  # the default keeps older keys


def test_linear_probe_separates_separable_features() -> None:
    g = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(3, 5, generator=g)
    y = torch.randint(0, 3, (900,), generator=g)
    f = centres[y] + 0.3 * torch.randn(900, 5, generator=g)
    res = probes.linear_probe((f[:600], y[:600]), (f[600:], y[600:]), epochs=20, batch_size=100, lr=0.05)
    assert res.train_error < 0.01 and res.test_error < 0.02
    noise = probes.linear_probe((torch.randn(600, 5, generator=g), y[:600]), (f[600:], y[600:]), epochs=5, batch_size=100)
    assert noise.test_error > 0.4


# --------------------------------------------------------------------------- the command


def _ff_mnist(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "ffkit", "ff-mnist", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd, env=env)


def test_ff_mnist_command_accumulates_runs_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "ff.json"
    common = ["--layers", "1", "--width", "16", "--epochs", "2", "--train-size", "300", "--batch", "100",
              "--threads", "1", "--out", str(out), "--checkpoint", str(tmp_path / "ckpt"), "--no-probes"]
    first = _ff_mnist("--variant", "supervised,unsupervised", *common, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    second = _ff_mnist("--variant", "supervised", "--negatives", "hard", *common, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    data = json.loads(out.read_text())
    runs = data["results"]["runs"]
    assert [r["variant"] for r in runs] == ["supervised", "unsupervised", "supervised"]
    for r in runs:
        assert {"variant", "layers", "width", "dataset", "epochs", "test_error", "seconds_per_epoch", "command"} <= set(r)
        assert 0 <= r["test_error"] <= 1 and r["complete"]
        assert "--checkpoint" not in r["command"]
        assert r["environment"]["device"] == "cpu" and r["environment"]["threads"] == 1
    assert "--checkpoint" not in data["command"]
    # a finished run found in the checkpoint folder is not trained again
    again = _ff_mnist("--variant", "supervised", "--negatives", "hard", *common, cwd=tmp_path)
    assert "resuming after epoch 2" in again.stderr
    assert json.loads(out.read_text())["results"]["runs"][-1]["test_errors"] == runs[-1]["test_errors"]


def test_ff_mnist_bench_is_keyed_by_the_kernels_it_ran(tmp_path: Path) -> None:
    out = tmp_path / "ff.json"
    result = _ff_mnist("--bench", "--layers", "1", "--width", "16", "--bench-steps", "2", "--rounds", "1",
                       "--threads", "1", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (key, entry), = json.loads(out.read_text())["results"]["bench"].items()
    capability = entry["cpu_capability"]
    assert key == f"1x16/b100/t1/{capability.lower()}"
    # the subprocess inherits this process's environment, so it dispatched to the same kernels
    assert capability == os.environ.get("ATEN_CPU_CAPABILITY", capability).upper()
    assert entry["environment"]["threads"] == 1 and entry["environment"]["device"] == "cpu"
    assert "backprop, same layers" in entry["timings"] and "ffkit, bfloat16 products" in entry["timings"]
    assert all(t["per_epoch"] > 0 for t in entry["timings"].values())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--variant", "sideways"], "unknown variant"),
        (["--dataset", "svhn"], "unknown dataset"),
        (["--width", "0"], "--width must be a positive int"),
        (["--layers", "-1"], "--layers must be a positive int"),
    ],
)
def test_ff_mnist_command_rejects_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    result = _ff_mnist(*args, "--out", str(tmp_path / "x.json"), cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "x.json").exists()


def test_comparisons_take_the_largest_configuration_as_a_mean_over_seeds() -> None:
    from ffkit.commands.ff_mnist import _comparisons

    def record(variant: str, width: int, epochs: int, seed: int, error: float, blurs: int = 6) -> dict:
        key = f"{variant}/mnist/3x{width}/e{epochs}/seed{seed}/" + (f"blurs={blurs}/" if blurs != 6 else "") + "sgd"
        return {"key": key, "variant": variant, "dataset": "mnist", "layers": 3, "width": width, "epochs": epochs,
                "complete": True, "test_error": error, "settings": {"seed": seed, "blurs": blurs, "train_size": None}}

    runs = [record("supervised", 1000, 60, s, e) for s, e in ((0, 0.014), (1, 0.013), (2, 0.0145))]
    runs += [record("supervised", 500, 60, 0, 0.001),  # smaller network: not the comparison, however good
             record("unsupervised", 1000, 100, 0, 0.019), record("unsupervised", 1000, 100, 0, 0.0179, blurs=3),
             {**record("unsupervised", 2000, 100, 0, 0.05), "complete": False}]  # unfinished: left out
    sup, unsup = _comparisons(runs)
    assert sup["ours"] == pytest.approx(100 * (0.014 + 0.013 + 0.0145) / 3, abs=0.005)
    assert "3 × 1000, 60 epochs, mean of 3 seeds" in sup["quantity"]
    assert unsup["ours"] == pytest.approx(1.79) and "masks of 3 blurs, one run" in unsup["quantity"]
