"""Forward-Forward on MNIST: supervised, unsupervised, forward-gradient and backprop runs, probes, timing.

Each run trains one fully connected network (``--layers`` × ``--width``) and records the test
error per epoch under each classification rule, the training seconds per epoch, and a linear
probe of every layer. Runs accumulate in ``chapters/results/ff_mnist.json`` under a key made of
their settings (a run with the same key replaces the old one), each with the environment it ran
in (processor, threads, device); the file is rewritten atomically
after every epoch, so a long run can be inspected while it trains, and with ``--checkpoint DIR``
an interrupted run continues where it stopped::

    python -m ffkit ff-mnist --variant supervised --negatives hard --epochs 60
    python -m ffkit ff-mnist --variant unsupervised,backprop --epochs 30 --seeds 0,1,2
    python -m ffkit ff-mnist --variant forward-gradient --perturb activity --epochs 10
    python -m ffkit ff-mnist --bench --threads 2      # seconds per epoch, side by side
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ffkit import results
from ffkit.data import DATASETS
from ffkit.experiments.ff_mnist import VARIANTS, Config, bench, input_probe, run, run_key, untrained_probes
from ffkit.train import progress

DEFAULT_OUT = Path("chapters/results/ff_mnist.json")

#: Numbers of the papers and reimplementations the runs are compared with (test error, %).
PAPER = {
    "supervised": (1.36, "Hinton (2022), §3.3: 4 hidden layers of 2000 ReLUs, 60 epochs", "hinton2022forward"),
    "unsupervised": (1.37, "Hinton (2022), §3.2: 4 × 2000, 100 epochs, hybrid-image negatives", "hinton2022forward"),
}


def _csv(text: str, kind: type = str) -> list[Any]:
    return [kind(t.strip()) for t in text.split(",") if t.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ffkit ff-mnist", description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="supervised", help="comma-separated subset of " + ", ".join(VARIANTS))
    p.add_argument("--dataset", default="mnist", help="mnist or fashion-mnist")
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--width", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--negatives", default="random", choices=("random", "hard"))
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    p.add_argument("--lr", type=float, default=None, help="learning rate of the layers")
    p.add_argument("--readout-lr", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--readout-weight-decay", type=float, default=None)
    p.add_argument("--no-cooldown", action="store_true", help="constant learning rate (no linear cool-down)")
    p.add_argument("--goodness", default="sum", choices=("sum", "mean"))
    p.add_argument("--peer", type=float, default=0.03, help="weight of peer normalisation (0: off)")
    p.add_argument("--blurs", type=int, default=6, help="blurs of the hybrid masks (unsupervised; more: larger regions)")
    p.add_argument("--perturb", default="weight", choices=("weight", "activity"), help="forward-gradient tangents")
    p.add_argument("--directions", type=int, default=1, help="K tangents per step (forward-gradient)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--seeds", default="0", help="comma-separated seeds, one run each")
    p.add_argument("--train-size", type=int, default=None, help="keep the first N training images")
    p.add_argument("--eval-every", type=int, default=1, help="test every N epochs (and after the last)")
    p.add_argument("--eval-steps", default="", help="comma-separated global steps at which to test on a subset")
    p.add_argument("--eval-subset", type=int, default=2000, help="test images used at --eval-steps")
    p.add_argument("--no-probes", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--checkpoint", type=Path, default=None, help="folder for per-run checkpoints (resume)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--untrained", action="store_true", help="probe the layers at initialisation instead of training")
    p.add_argument("--bench", action="store_true", help="time the step variants side by side instead of training")
    p.add_argument("--bench-steps", type=int, default=30, help="steps per timed sample (--bench)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (--bench)")
    return p


def _load(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    import json

    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) and "results" in data else None


def _comparisons(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per paper number, our largest finished configuration (most multiply-adds × epochs), as the
    mean over its seeds (never the best seed)."""
    out = []
    for variant, (paper, source, cite) in PAPER.items():
        done = [r for r in runs if r["variant"] == variant and r["dataset"] == "mnist" and r.get("complete")
                and r["settings"].get("train_size") is None]
        if not done:
            continue
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in done:
            groups.setdefault(r["key"].replace(f"/seed{r['settings']['seed']}/", "/"), []).append(r)
        best = max(groups.values(), key=lambda g: (g[0]["layers"] * g[0]["width"] ** 2 * g[0]["epochs"], len(g),
                                                   -sum(r["test_error"] for r in g) / len(g)))
        first = best[0]
        mean = sum(r["test_error"] for r in best) / len(best)
        seeds = f"mean of {len(best)} seeds" if len(best) > 1 else "one run"
        blurs = first["settings"].get("blurs", Config().blurs)
        masks = f", masks of {blurs} blurs" if variant == "unsupervised" and blurs != Config().blurs else ""
        out.append({
            "quantity": f"MNIST test error, {variant} FF ({first['layers']} × {first['width']}, "
                        f"{first['epochs']} epochs{masks}, {seeds})",
            "ours": round(100 * mean, 2), "paper": paper, "unit": "%", "source": source, "cite": cite,
        })
    return out


def _merge(current: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """The results besides the runs: what the file has now, with this invocation's entries added
    (dicts merged key by key, so that input probes and benchmarks of other invocations stay)."""
    merged = {k: v for k, v in current.items() if k != "runs"}
    for key, value in ours.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _write(path: Path, argv: list[str], runs: list[dict[str, Any]], extra: dict[str, Any], env: dict[str, Any]) -> None:
    data = results.envelope(
        command=results.command_line(argv, name="ff-mnist"),
        settings={"threads": env["threads"], "device": env["device"],
                  "note": "runs accumulate from several invocations; each run stores its own command, "
                          "settings and environment"},
        results={"runs": runs, **extra},
        env=env, comparisons=_comparisons(runs),
    )
    results.write(path, data)


def _shown(argv: list[str]) -> list[str]:
    """The arguments as the results file records them: without ``--checkpoint`` (a local folder
    that does not change the results)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--checkpoint":
            skip = True
        elif not arg.startswith("--checkpoint="):
            out.append(arg)
    return out


def main(argv: list[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    shown = _shown(argv)
    variants = _csv(args.variant)
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        p.error(f"unknown variant(s) {bad or args.variant!r}; choose from {', '.join(VARIANTS)}")
    if args.dataset not in ("mnist", "fashion-mnist") or args.dataset not in DATASETS:
        p.error(f"unknown dataset {args.dataset!r}; choose mnist or fashion-mnist")
    for name in ("layers", "width", "epochs", "batch", "directions", "eval_every", "bench_steps", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive int, got {getattr(args, name)}")
    try:
        seeds = _csv(args.seeds, int)
        eval_steps = tuple(_csv(args.eval_steps, int))
    except ValueError:
        p.error(f"--seeds and --eval-steps must be comma-separated ints, got {args.seeds!r} and {args.eval_steps!r}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    # runs of several invocations share the file, so each run records where it was made
    env = results.environment(args.device)

    configs = []
    for variant in variants:
        for seed in seeds:
            options: dict[str, Any] = dict(
                variant=variant, dataset=args.dataset, layers=args.layers, width=args.width, epochs=args.epochs,
                batch=args.batch, optimizer=args.optimizer, cooldown=not args.no_cooldown, negatives=args.negatives,
                goodness=args.goodness, peer=args.peer, blurs=args.blurs, perturb=args.perturb, directions=args.directions,
                dtype=args.dtype, seed=seed, train_size=args.train_size, eval_every=args.eval_every,
                probes=not args.no_probes, device=args.device, eval_steps=eval_steps, eval_subset=args.eval_subset,
            )
            for name in ("lr", "readout_lr", "weight_decay", "readout_weight_decay"):
                if getattr(args, name) is not None:
                    options[name] = getattr(args, name)
            try:
                configs.append(Config(**options))
            except ValueError as err:
                p.error(str(err))

    existing = _load(args.out)
    runs: list[dict[str, Any]] = list(existing["results"]["runs"]) if existing else []
    extra: dict[str, Any] = {k: v for k, v in existing["results"].items() if k != "runs"} if existing else {}

    if args.bench:
        config = configs[0]
        timings = bench(config, steps=args.bench_steps, rounds=args.rounds)
        print(f"{threads} threads, {config.layers} × {config.width}, batch {config.batch}: seconds per "
              "MNIST epoch (median over rounds) and the ratio to the autograd step")
        base = timings["autograd per layer"]["per_epoch"]
        for name, t in timings.items():
            print(f"  {name:<36} {t['per_epoch']:7.2f} s   x{t['per_epoch'] / base:5.2f}")
        # processors differ in the kernels they run (bfloat16 products above all), so a CPU timing is
        # keyed by the instruction set PyTorch dispatched to, and every timing records its machine
        capability = torch.backends.cpu.get_cpu_capability()
        where = f"/{capability.lower()}" if args.device == "cpu" else f"/{args.device}"
        extra.setdefault("bench", {})[f"{config.layers}x{config.width}/b{config.batch}/t{threads}{where}"] = {
            "command": results.command_line(shown, name="ff-mnist"), "threads": threads,
            "layers": config.layers, "width": config.width, "batch": config.batch,
            "steps_per_sample": args.bench_steps, "rounds": args.rounds, "device": args.device, "timings": timings,
            "environment": env, "cpu_capability": capability,
        }
        current = _load(args.out)
        _write(args.out, shown, current["results"]["runs"] if current else [],
               _merge(current["results"] if current else {}, extra), env)
        return 0
    if args.untrained:
        found: dict[str, Any] = {}
        for config in configs:
            key = f"{config.dataset}/{config.layers}x{config.width}/seed{config.seed}"
            res = untrained_probes(config)
            found[key] = {"test_error": [r.test_error for r in res], "train_error": [r.train_error for r in res],
                          "command": results.command_line(shown, name="ff-mnist")}
            print(f"untrained {key}: probes " + " ".join(f"{100 * r.test_error:.2f}" for r in res) + " %")
        current = _load(args.out)
        _write(args.out, shown, current["results"]["runs"] if current else [],
               _merge(current["results"] if current else {}, {"untrained_probes": found}), env)
        return 0

    if not args.no_probes and args.dataset not in extra.get("input_probes", {}):
        res = input_probe(configs[0])
        extra.setdefault("input_probes", {})[args.dataset] = {"train_error": res.train_error, "test_error": res.test_error}

    def store(record: dict[str, Any]) -> None:
        # re-read the file first: another invocation may have added runs in the meantime
        current = _load(args.out)
        others = [r for r in (current["results"]["runs"] if current else runs) if r.get("key") != record["key"]]
        merged = _merge(current["results"] if current else {}, extra)
        saved = copy.deepcopy(record)
        saved["command"] = results.command_line(shown, name="ff-mnist")
        saved["environment"] = env
        _write(args.out, shown, others + [saved], merged, env)

    for config in configs:
        key = run_key(config)
        ckpt = args.checkpoint / (key.replace("/", "_") + ".pt") if args.checkpoint else None
        state = torch.load(ckpt, weights_only=False) if ckpt is not None and ckpt.is_file() else None
        if state is not None:
            print(f"{key}: resuming after epoch {len(state['record']['epoch'])}", file=sys.stderr)

        def on_epoch(record: dict[str, Any], checkpoint: Any, ckpt: Path | None = ckpt) -> None:
            store(record)
            if ckpt is not None:
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                tmp = ckpt.with_suffix(".tmp")
                torch.save(checkpoint(), tmp)
                tmp.replace(ckpt)
            errs = ", ".join(f"{rule} {100 * v[-1][1]:.2f} %" for rule, v in record["test_errors"].items()
                             if v and v[-1][0] == record["epoch"][-1])
            print(f"{key} epoch {record['epoch'][-1]}: {record['seconds'][-1]:.1f} s"
                  + (f", test error {errs}" if errs else ""), file=sys.stderr, flush=True)

        started = time.perf_counter()
        record = run(
            config, on_epoch=on_epoch, state=state,
            progress=lambda epoch, steps, c=config: progress(steps, desc=f"epoch {epoch}/{c.epochs}"),
        )
        record["wall_seconds"] = round(time.perf_counter() - started, 1)
        store(record)
        probes = record.get("probe_test_error")
        print(f"{key}: test error {100 * record['test_error']:.2f} % ({record['rule']}), "
              f"{record['seconds_per_epoch']:.1f} s per epoch"
              + (", probes " + " ".join(f"{100 * e:.2f}" for e in probes) + " %" if probes else ""), flush=True)
    print(f"wrote {args.out}")
    return 0
