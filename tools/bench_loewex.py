"""Time supervised Forward-Forward in ffkit side by side with loeweX/Forward-Forward's code.

loeweX/Forward-Forward (the most cited PyTorch reimplementation of Hinton's supervised FF, MIT
licence) is not a dependency of ffkit: this script imports its model from a checkout given on
the command line, feeds it MNIST from ``FFKIT_DATA`` instead of torchvision, and times, in one
process and interleaved round by round (:func:`ffkit.bench.interleaved`):

* ``loeweX, as published``: their training loop over their ``DataLoader`` (their dataset class,
  which builds positive, negative and neutral images one example at a time, with their
  ``num_workers=4``), their model's forward pass, ``backward`` and SGD step, one epoch of their
  50 000 training images per sample;
* ``loeweX, model step only``: the same model and optimizer on batches built beforehand, so
  that their data pipeline is not counted;
* ``ffkit, random negatives`` and ``ffkit, hard negatives``: :class:`ffkit.methods.ForwardForward`
  with the same network (3 × 1000 by default), batch, optimizer settings and readout, on the
  same images.

Every sample is scaled to seconds per 60 000 images. The table prints each variant's median
and the ratio of ffkit's time to loeweX's; ``--out`` merges the timings into the ``bench``
entry of ``chapters/results/ff_mnist.json``.

Usage::

    git clone https://github.com/loeweX/Forward-Forward ../loewex
    FFKIT_DATA=../shared/data python tools/bench_loewex.py ../loewex --threads 2
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path
from typing import Any

import torch

from ffkit.bench import interleaved
from ffkit.data import load_dataset
from ffkit.experiments.ff_mnist import Config, build


def _stub(name: str, **attrs: Any) -> None:
    """An empty module standing in for an import the timed code never uses (hydra, torchvision)."""
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules.setdefault(name, module)


def load_reference(path: Path) -> types.ModuleType:
    """loeweX's ``src`` package from a checkout, with its unused imports stubbed."""
    if not (path / "src" / "ff_model.py").is_file():
        raise SystemExit(f"{path} is not a checkout of loeweX/Forward-Forward (no src/ff_model.py)")
    _stub("torchvision")
    _stub("hydra")
    _stub("hydra.utils", get_original_cwd=lambda: str(path))
    _stub("omegaconf", OmegaConf=None, DictConfig=dict)
    sys.path.insert(0, str(path))
    import src.ff_mnist
    import src.ff_model
    import src.utils

    return src


def namespace(**entries: Any) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{k: namespace(**v) if isinstance(v, dict) else v for k, v in entries.items()})


class _Images(torch.utils.data.Dataset):
    """(1 × 28 × 28 image in [0, 1], label) pairs, as torchvision's MNIST with ToTensor gives them."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x.reshape(-1, 1, 28, 28), y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("reference", type=Path, help="a checkout of loeweX/Forward-Forward")
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--width", type=int, default=1000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=4, help="loeweX's DataLoader workers (theirs: 4)")
    p.add_argument("--images", type=int, default=50000, help="training images per sample (theirs: 50 000)")
    p.add_argument("--out", type=Path, help="merge the timings into this ff_mnist.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    src = load_reference(args.reference)
    x, y = load_dataset("mnist", "train")
    if not args.batch <= args.images <= 50000:
        raise SystemExit(f"--images must be between --batch and 50000, got {args.images}")
    n = args.images
    train = _Images(x[:n], y[:n])  # their training partition: the first 50 000 images
    src.utils.get_MNIST_partition = lambda opt, partition: train
    opt = namespace(
        seed=42, device="cpu", input={"path": "", "batch_size": args.batch},
        model={"peer_normalization": 0.03, "momentum": 0.9, "hidden_dim": args.width, "num_layers": args.layers},
        training={"epochs": 100, "learning_rate": 1e-3, "weight_decay": 3e-4, "momentum": 0.9,
                  "downstream_learning_rate": 1e-2, "downstream_weight_decay": 3e-3},
    )
    model, optimizer = src.utils.get_model_and_optimizer(opt)
    dataset = src.ff_mnist.FF_MNIST(opt, "train")
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch, drop_last=True, shuffle=True, num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )
    prebuilt = [batch for batch in loader]

    def reference_step(inputs: dict, labels: dict) -> None:
        optimizer.zero_grad()
        outputs = model(inputs, labels)
        outputs["Loss"].backward()
        optimizer.step()
        for value in outputs.values():  # their log_results reads every scalar each step
            value if isinstance(value, float) else value.item()

    def published() -> None:
        for inputs, labels in loader:
            reference_step(*src.utils.preprocess_inputs(opt, inputs, labels))

    def model_only() -> None:
        for inputs, labels in prebuilt:
            reference_step(inputs, labels)

    chunks = [(x[i : i + args.batch].reshape(-1, 784), y[i : i + args.batch]) for i in range(0, n - args.batch + 1, args.batch)]

    def ours(negatives: str) -> Any:
        net, method, opt_ = build(Config(layers=args.layers, width=args.width, batch=args.batch, negatives=negatives))

        def go() -> None:
            for batch in chunks:
                opt_.zero_grad(set_to_none=True)
                method.step(net, batch)
                opt_.step()

        return go

    variants = {
        "loeweX, as published": published,
        "loeweX, model step only": model_only,
        "ffkit, random negatives": ours("random"),
        "ffkit, hard negatives": ours("hard"),
    }
    timings = interleaved(variants, rounds=args.rounds, warmup=1)
    per_epoch = {name: t.median * 60000 / (n // args.batch * args.batch) for name, t in timings.items()}
    base = per_epoch["loeweX, as published"]
    print(f"supervised FF, {args.layers} x {args.width}, batch {args.batch}, {args.threads} threads, "
          f"torch {torch.__version__}; seconds per 60 000 images (median of {args.rounds} interleaved rounds)")
    print(f"{'variant':28s} {'s/epoch':>8s} {'x loeweX':>9s} {'x loeweX step':>14s}")
    for name, sec in per_epoch.items():
        print(f"{name:28s} {sec:8.2f} {sec / base:9.2f} {sec / per_epoch['loeweX, model step only']:14.2f}")
    if args.out is not None:
        import json

        from ffkit.results import environment, write

        data = json.loads(args.out.read_text())
        key = f"loewex/{args.layers}x{args.width}/b{args.batch}/t{args.threads}"
        data["results"].setdefault("bench", {})[key] = {
            "command": "python tools/bench_loewex.py PATH-TO-loeweX-Forward-Forward " + " ".join(
                f"--{k} {v}" for k, v in (("threads", args.threads), ("rounds", args.rounds), ("images", n))),
            "reference": "loeweX/Forward-Forward",
            "threads": args.threads, "layers": args.layers, "width": args.width, "batch": args.batch,
            "rounds": args.rounds, "images": n, "workers": args.workers, "environment": environment(),
            "timings": {name: {"per_epoch": per_epoch[name], **t.as_dict()} for name, t in timings.items()},
        }
        write(args.out, data)


if __name__ == "__main__":
    main()
