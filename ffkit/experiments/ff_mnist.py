"""One Forward-Forward experiment: train a network on MNIST-like data, evaluate it, probe its layers.

:func:`run` trains one configuration (:class:`Config`) with :func:`ffkit.train.fit`, one call
per epoch (so that the test error can be recorded, the results written and a checkpoint saved
between epochs), and returns a JSON-ready record: the test error per epoch under each
classification rule, the training time per epoch (``fit``'s clock: training steps only), the
mean local losses and goodness per epoch, and, at the end, a linear probe of every layer
(:mod:`ffkit.probes`). The variants:

* ``"supervised"``: :class:`~ffkit.methods.ForwardForward`, label overlay, random or hard
  wrong-label negatives; classified by goodness over all labels (and by the readout);
* ``"unsupervised"``: hybrid-image negatives, classified by the readout;
* ``"forward-gradient"``: supervised FF whose layers and readout learn from forward gradients of
  their own losses (weight or activity tangents);
* ``"backprop"``: the same layers (ReLU, then the same normalisation) with a linear output layer,
  trained end to end by backprop on the cross-entropy.

The optimizer is SGD with momentum (or Adam) with separate learning rates and weight decays for
the layers and the readout, and an optional linear cool-down of both over the second half.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from ffkit import probes
from ffkit.data import batches, load_dataset
from ffkit.forward_forward import FFNet, Normalize, normalize
from ffkit.methods import Backprop, ForwardForward, ForwardGradientForwardForward, Method, UnsupervisedForwardForward
from ffkit.tangents import mix_seed
from ffkit.train import History, fit

__all__ = ["VARIANTS", "Config", "bench", "build", "input_probe", "run", "run_key", "untrained_probes"]

#: The variants :func:`run` trains.
VARIANTS = ("supervised", "unsupervised", "forward-gradient", "backprop")


@dataclass(frozen=True)
class Config:
    """Everything that shapes one run (the record stores it as its settings).

    ``train_size`` keeps the first images of the training split (all by default); besides the
    test error every ``eval_every`` epochs, the error on the first ``eval_subset`` test images is
    recorded at the global steps ``eval_steps`` (a learning curve in steps); ``lr`` and
    ``weight_decay`` apply to the layers, ``readout_lr`` and ``readout_weight_decay`` to the
    readout (and the backprop network's output layer); ``blurs`` sets how often the masks of
    the unsupervised hybrid negatives are blurred (:func:`ffkit.ff_data.hybrid_masks`).
    """

    variant: str = "supervised"
    dataset: str = "mnist"
    layers: int = 3
    width: int = 1000
    epochs: int = 10
    batch: int = 100
    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 3e-4
    readout_lr: float = 1e-2
    readout_weight_decay: float = 3e-3
    cooldown: bool = True
    negatives: str = "random"
    goodness: str = "sum"
    norm: str = "rms"
    peer: float = 0.03
    blurs: int = 6
    perturb: str = "weight"
    directions: int = 1
    dtype: str = "float32"
    seed: int = 0
    train_size: int | None = None
    eval_every: int = 1
    eval_steps: tuple[int, ...] = ()
    eval_subset: int = 2000
    probes: bool = True
    probe_epochs: int = 10
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        for name in ("layers", "width", "epochs", "batch", "directions", "eval_every", "probe_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(self.blurs, bool) or not isinstance(self.blurs, int) or self.blurs < 0:
            raise ValueError(f"blurs must be a non-negative int, got {self.blurs!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        for name in ("lr", "readout_lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in self.eval_steps):
            raise ValueError(f"eval_steps must be positive ints, got {self.eval_steps!r}")
        if self.train_size is not None and (not isinstance(self.train_size, int) or self.train_size < self.batch):
            raise ValueError(f"train_size must be an int >= batch, got {self.train_size!r}")


def run_key(config: Config) -> str:
    """The key under which a run is stored: what distinguishes it from other runs of the file."""
    parts = [config.variant, config.dataset, f"{config.layers}x{config.width}", f"e{config.epochs}", f"seed{config.seed}"]
    if config.variant in ("supervised", "forward-gradient"):
        parts.append(config.negatives)
    if config.variant == "forward-gradient":
        parts.append(f"{config.perturb}-K{config.directions}")
    if config.variant == "unsupervised" and config.blurs != Config().blurs:
        parts.append(f"blurs={config.blurs}")
    parts.append(f"{config.optimizer}-lr{config.lr:g}")
    defaults = Config()
    for name in ("goodness", "peer", "readout_lr", "weight_decay", "cooldown", "batch", "dtype"):
        if getattr(config, name) != getattr(defaults, name):
            parts.append(f"{name}={getattr(config, name)}")
    if config.train_size is not None:
        parts.append(f"n{config.train_size}")
    parts += [f"{k}={v}" for k, v in sorted(config.extra.items())]
    return "/".join(parts)


def backprop_network(config: Config, in_features: int, classes: int) -> nn.Sequential:
    """The FF network's layers (normalised input, then Linear → ReLU → normalisation per layer)
    with a linear output layer, for backprop; initialised like :class:`FFNet`."""
    mods: list[nn.Module] = [Normalize(config.norm)]
    sizes = [in_features] + [config.width] * config.layers
    for a, b in zip(sizes[:-1], sizes[1:]):
        mods += [nn.Linear(a, b), nn.ReLU(), Normalize(config.norm)]
    mods.append(nn.Linear(config.width, classes))
    net = nn.Sequential(*mods)
    state = torch.random.get_rng_state()
    torch.manual_seed(config.seed)
    for m in net:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, m.in_features**-0.5)
            nn.init.zeros_(m.bias)
    torch.random.set_rng_state(state)
    return net


def build(config: Config, in_features: int = 784, classes: int = 10) -> tuple[nn.Module, Method, torch.optim.Optimizer]:
    """The network, the method and the optimizer of a configuration."""
    if config.variant == "backprop":
        model: nn.Module = backprop_network(config, in_features, classes)
        method: Method = Backprop()
        head = list(model)[-1]
        body = [p for m in list(model)[:-1] for p in m.parameters()]
        groups = [(body, config.lr, config.weight_decay), (list(head.parameters()), config.readout_lr, config.readout_weight_decay)]
    else:
        model = FFNet(
            in_features, [config.width] * config.layers, classes=classes, overlay=config.variant != "unsupervised",
            goodness=config.goodness, norm=config.norm, peer=config.peer, seed=config.seed,
        )
        if config.variant == "supervised":
            method = ForwardForward(negatives=config.negatives, seed=config.seed, dtype=config.dtype)
        elif config.variant == "unsupervised":
            method = UnsupervisedForwardForward(seed=config.seed, dtype=config.dtype, blurs=config.blurs)
        else:
            method = ForwardGradientForwardForward(
                gradient=config.perturb, negatives=config.negatives, directions=config.directions,
                seed=config.seed, dtype=config.dtype,
            )
        assert isinstance(model, FFNet) and model.readout is not None
        groups = [
            ([p for layer in model.layers for p in layer.parameters()], config.lr, config.weight_decay),
            (list(model.readout.parameters()), config.readout_lr, config.readout_weight_decay),
        ]
    model.to(config.device)
    params = [{"params": ps, "lr": lr, "weight_decay": wd, "initial_lr": lr} for ps, lr, wd in groups]
    kind = torch.optim.SGD if config.optimizer == "sgd" else torch.optim.Adam
    options: dict[str, Any] = {"momentum": config.momentum} if config.optimizer == "sgd" else {}
    try:  # the fused update reads and writes each parameter once (several times faster on a CPU)
        optimizer: torch.optim.Optimizer = kind(params, lr=config.lr, fused=True, **options)
    except (RuntimeError, TypeError, ValueError):
        optimizer = kind(params, lr=config.lr, **options)
    return model, method, optimizer


def cooldown_factor(epoch: int, epochs: int) -> float:
    """The learning-rate factor of epoch ``epoch`` (1-based): 1 over the first half, then falling
    linearly, 2(1 + E − e)/E, to 2/E in the last epoch."""
    return 1.0 if epoch <= epochs // 2 else 2.0 * (1 + epochs - epoch) / epochs


def _scores_error(model: nn.Module, x: Tensor, y: Tensor, rule: str, chunk: int = 1000) -> float:
    if isinstance(model, FFNet):
        return model.error(x, y, rule, batch_size=chunk)
    with torch.no_grad():
        wrong = sum(int((model(x[i : i + chunk]).argmax(1) != y[i : i + chunk]).sum()) for i in range(0, len(x), chunk))
    return wrong / len(x)


def evaluate(model: nn.Module, config: Config, x: Tensor, y: Tensor) -> dict[str, float]:
    """Test errors under every rule the variant has: ``goodness`` and ``readout`` for supervised
    FF, ``readout`` for unsupervised FF, ``output`` for backprop."""
    if config.variant == "backprop":
        return {"output": _scores_error(model, x, y, "output")}
    rules = ("goodness", "readout") if config.variant != "unsupervised" else ("readout",)
    return {rule: _scores_error(model, x, y, rule) for rule in rules}


def primary_rule(config: Config) -> str:
    """The rule whose error is the run's ``test_error``: goodness over all labels for supervised
    FF (Hinton's best rule), the readout for unsupervised FF, the output layer for backprop."""
    return {"supervised": "goodness", "forward-gradient": "goodness", "unsupervised": "readout", "backprop": "output"}[config.variant]


def layer_features(model: nn.Module, config: Config, x: Tensor, chunk: int = 1000) -> list[Tensor]:
    """What a probe of each layer sees: normalised activities on a neutral-label (supervised FF),
    plain (unsupervised FF) or ordinary (backprop) pass."""
    if isinstance(model, FFNet):
        return model.layer_features(x, chunk)
    mods = list(model)
    feats: list[list[Tensor]] = [[] for _ in range(config.layers)]
    with torch.no_grad():
        for i in range(0, len(x), chunk):
            h = x[i : i + chunk]
            k = 0
            for m in mods[:-1]:
                h = m(h)
                if isinstance(m, Normalize) and m is not mods[0]:
                    feats[k].append(h)
                    k += 1
    return [torch.cat(f) for f in feats]


def _step_evaluator(
    model: nn.Module, config: Config, x: Tensor, y: Tensor, offset: int, store: dict[str, list[list[float]]]
) -> Callable[[Any], None]:
    """A :func:`ffkit.train.fit` callback that records the test error on (x, y) at the global
    steps ``config.eval_steps`` (its time is not counted as training time)."""
    wanted = set(config.eval_steps)

    def callback(info: Any) -> None:
        step = offset + info.step
        if step in wanted:
            model.eval()
            for rule, err in evaluate(model, config, x, y).items():
                store.setdefault(rule, []).append([step, err])
            model.train()

    return callback


def run(
    config: Config,
    *,
    data: tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
    on_epoch: Callable[[dict[str, Any], Callable[[], dict[str, Any]]], None] | None = None,
    progress: Callable[[int, int], Any] | None = None,
    state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train, evaluate and probe one configuration; returns its record.

    Args:
        data: ``((x_train, y_train), (x_test, y_test))``; by default the dataset of the config.
        on_epoch: ``on_epoch(record, checkpoint)`` after every epoch, with the record so far (to
            write it out) and a function that returns a checkpoint (for ``state``).
        progress: ``progress(epoch, steps)`` returns a :func:`ffkit.train.fit` callback (a
            progress bar) for the epoch's steps, or ``None``.
        state: a checkpoint from an earlier, interrupted run of the same configuration
            (what ``checkpoint()`` returned), to continue it from the epoch after.

    The batches of epoch e are shuffled by a generator seeded with (seed, e), so a resumed run
    sees the same batches as an uninterrupted one.
    """
    if data is None:
        train = load_dataset(config.dataset, "train", limit=config.train_size)
        test = load_dataset(config.dataset, "test")
    else:
        train, test = data
    x, y = (t.to(config.device) for t in train)
    xt, yt = (t.to(config.device) for t in test)
    classes = int(max(int(y.max()), int(yt.max())) + 1)
    model, method, optimizer = build(config, x[0].numel(), classes)
    steps = len(x) // config.batch
    record: dict[str, Any] = {
        "key": run_key(config), "variant": config.variant, "layers": config.layers, "width": config.width,
        "dataset": config.dataset, "epochs": config.epochs, "settings": asdict(config),
        "parameters": sum(p.numel() for p in model.parameters()), "steps_per_epoch": steps,
        "epoch": [], "seconds": [], "test_errors": {}, "layer_loss": [], "goodness_positive": [],
        "goodness_negative": [], "train_loss": [], "complete": False,
    }
    first = 1
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if hasattr(method, "t"):
            method.t = state["method_t"]  # type: ignore[attr-defined]
        record = state["record"]
        first = len(record["epoch"]) + 1
    for epoch in range(first, config.epochs + 1):
        factor = cooldown_factor(epoch, config.epochs) if config.cooldown else 1.0
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        gen = torch.Generator().manual_seed(mix_seed(config.seed, epoch))
        order = batches(x, y, config.batch, generator=gen)
        callbacks = [progress(epoch, steps)] if progress is not None else []
        if config.eval_steps:
            callbacks.append(_step_evaluator(model, config, xt[: config.eval_subset], yt[: config.eval_subset],
                                             (epoch - 1) * steps, record.setdefault("step_errors", {})))
        history: History = fit(model, method, order, optimizer, steps=steps, callbacks=[c for c in callbacks if c])
        record["epoch"].append(epoch)
        record["seconds"].append(round(history.seconds[-1], 3))
        record["train_loss"].append(round(sum(history.loss) / len(history.loss), 5))
        if history.details:
            for key in ("layer_loss", "goodness_positive", "goodness_negative"):
                per_layer = torch.tensor([d[key] for d in history.details]).mean(0)
                record[key].append([round(float(v), 4) for v in per_layer])
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            model.eval()
            for rule, err in evaluate(model, config, xt, yt).items():
                record["test_errors"].setdefault(rule, []).append([epoch, err])
            model.train()
        record["seconds_per_epoch"] = round(sorted(record["seconds"])[len(record["seconds"]) // 2], 3)
        if on_epoch is not None:

            def checkpoint() -> dict[str, Any]:
                return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "method_t": getattr(method, "t", 0), "record": record}

            on_epoch(record, checkpoint)
    rule = primary_rule(config)
    record["test_error"] = record["test_errors"][rule][-1][1]
    record["rule"] = rule
    record["final_test_errors"] = {r: v[-1][1] for r, v in record["test_errors"].items()}
    if config.probes:
        train_f = layer_features(model, config, x)
        test_f = layer_features(model, config, xt)
        results = probes.probe_layers(train_f, y, test_f, yt, epochs=config.probe_epochs, seed=config.seed)
        record["probe_test_error"] = [r.test_error for r in results]
        record["probe_train_error"] = [r.train_error for r in results]
    record["complete"] = True
    return record


def input_probe(config: Config, data: tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None) -> probes.ProbeResult:
    """The linear probe of the normalised input pixels: the baseline every layer is compared with."""
    if data is None:
        train = load_dataset(config.dataset, "train", limit=config.train_size)
        test = load_dataset(config.dataset, "test")
    else:
        train, test = data
    f = normalize(train[0].flatten(1), config.norm)
    ft = normalize(test[0].flatten(1), config.norm)
    return probes.linear_probe((f, train[1]), (ft, test[1]), epochs=config.probe_epochs, seed=config.seed)


def untrained_probes(
    config: Config, data: tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None
) -> list[probes.ProbeResult]:
    """Linear probes of every layer of ``config``'s network *at initialisation*: random ReLU
    features, the control that tells what training added to a layer's probe."""
    if data is None:
        train = load_dataset(config.dataset, "train", limit=config.train_size)
        test = load_dataset(config.dataset, "test")
    else:
        train, test = data
    model, _, _ = build(replace(config, probes=True))
    x, y = (t.to(config.device) for t in train)
    xt, yt = (t.to(config.device) for t in test)
    return probes.probe_layers(layer_features(model, config, x), y, layer_features(model, config, xt), yt,
                               epochs=config.probe_epochs, seed=config.seed)


def quick(config: Config, **changes: Any) -> Config:
    """``config`` with some fields changed (a convenience for notebooks)."""
    return replace(config, **changes)


# --------------------------------------------------------------------------- timing


def _autograd_step(model: FFNet, x: Tensor, y: Tensor, gen: torch.Generator, all_labels: bool) -> None:
    """The straightforward implementation that :func:`bench` compares against: the overlaid
    inputs materialised, each layer's loss differentiated by autograd with the layer's input
    detached (``loss.backward()`` per layer), the readout likewise; with ``all_labels`` also the
    goodness of all C labels, one pass per label, at every step (a training-time accuracy monitor
    that some implementations run)."""
    from ffkit import ff_data
    from ffkit.forward_forward import ff_loss, goodness

    c, b = model.classes, x.shape[0]
    wrong = ff_data.wrong_labels(y, c, gen)
    rows = torch.cat([ff_data.overlay(x, y, c), ff_data.overlay(x, wrong, c)])
    h = normalize(rows, model.norm)
    sign = torch.cat([torch.ones(b, device=x.device), -torch.ones(b, device=x.device)])
    for i, layer in enumerate(model.layers):
        z = torch.relu(layer(h.detach()))
        ff_loss(goodness(z, model.goodness_kind), model.thresholds[i], sign).backward()
        h = normalize(z.detach(), model.norm)
    assert model.readout is not None
    with torch.no_grad():
        neutral = model.features(_dense_pass(model, normalize(ff_data.overlay(x, None, c), model.norm)))
    torch.nn.functional.cross_entropy(model.readout(neutral), y).backward()
    if all_labels:
        with torch.no_grad():
            for label in range(c):
                _dense_pass(model, normalize(ff_data.overlay(x, torch.full_like(y, label), c), model.norm))


def _dense_pass(model: FFNet, h: Tensor) -> list[Tensor]:
    out = []
    for layer in model.layers:
        z = torch.relu(layer(h))
        out.append(z)
        h = normalize(z, model.norm)
    return out


def bench(config: Config, *, steps: int = 30, rounds: int = 5) -> dict[str, dict[str, Any]]:
    """Seconds per training epoch of supervised FF on ``config``'s network, for the step as
    :class:`~ffkit.methods.ForwardForward` takes it (float32 and bfloat16 products) and for the
    straightforward autograd implementation (:func:`_autograd_step`, with and without a
    per-step all-label pass), and backprop on the same layers, timed side by side
    (:func:`ffkit.bench.interleaved`): each sample
    runs ``steps`` steps with the optimizer step included, and is scaled to the 60 000 images
    of an MNIST epoch."""
    from ffkit.bench import interleaved

    x, y = load_dataset(config.dataset, "train", limit=steps * config.batch)
    x, y = x.to(config.device), y.to(config.device)
    chunks = [(x[i : i + config.batch], y[i : i + config.batch]) for i in range(0, len(x), config.batch)]
    variants = {}

    def method_variant(variant: str, dtype: str | None = None) -> Callable[[], None]:
        model, method, optimizer = build(replace(config, variant=variant, dtype=dtype or config.dtype))

        def go() -> None:
            for batch in chunks:
                optimizer.zero_grad(set_to_none=True)
                method.step(model, batch)
                optimizer.step()

        return go

    def autograd_variant(all_labels: bool) -> Callable[[], None]:
        model, _, optimizer = build(replace(config, variant="supervised"))
        assert isinstance(model, FFNet)
        gen = torch.Generator(device=config.device).manual_seed(config.seed)

        def go() -> None:
            for bx, by in chunks:
                optimizer.zero_grad(set_to_none=True)
                _autograd_step(model, bx, by, gen, all_labels)
                optimizer.step()

        return go

    variants["ffkit, float32"] = method_variant("supervised", "float32")
    variants["ffkit, bfloat16 products"] = method_variant("supervised", "bfloat16")
    variants["autograd per layer"] = autograd_variant(False)
    variants["autograd per layer + all-label pass"] = autograd_variant(True)
    variants["backprop, same layers"] = method_variant("backprop")
    timings = interleaved(variants, rounds=rounds, warmup=1)
    per_epoch = 60000 / config.batch / len(chunks)
    return {name: {"per_epoch": t.median * per_epoch, "min_per_epoch": t.minimum * per_epoch, **t.as_dict()}
            for name, t in timings.items()}
