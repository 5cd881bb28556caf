"""Tests of ffkit.experiments.local_mnist, ffkit.experiments.step_costs and the local-mnist and bench-local commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ffkit.experiments.local_mnist import (
    ALGORITHMS,
    PAPER_TABLE3,
    comparisons,
    merge_runs,
    method_for,
    run_key,
    summary,
    train_run,
)
from ffkit.methods import Backprop, LocalActivityPerturbation
from ffkit.experiments.step_costs import mixer_variants, mlp_variants, ratios, time_steps

REPO = Path(__file__).resolve().parents[1]


def _run(**overrides: object) -> dict:
    base = {"arch": "M/1/16", "algorithm": "LG-FG-A", "dataset": "mnist", "epochs": 2, "seed": 0,
            "directions": 1, "test_error": 0.03, "train_error": 0.01, "seconds_per_epoch": 1.0}
    base.update(overrides)
    return base


def test_a_short_run_records_what_the_table_needs() -> None:
    record = train_run("S/1/1", "LG-FG-A", epochs=1, lr=1e-3, seed=0, limit=512, batch_size=64, validation=128)
    for key in ("arch", "algorithm", "dataset", "epochs", "test_error", "seconds_per_epoch", "train_error", "lr"):
        assert key in record
    assert record["arch"] == "S/1/1" and record["algorithm"] == "LG-FG-A" and record["epochs"] == 1
    assert 0.0 <= record["test_error"] <= 1.0 and len(record["test_errors"]) == 1
    again = train_run("S/1/1", "LG-FG-A", epochs=1, lr=1e-3, seed=0, limit=512, batch_size=64, validation=128)
    assert again["test_error"] == record["test_error"]  # the seed fixes everything


def test_bad_names_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown algorithm"):
        train_run("S/1/1", "FF", epochs=1, lr=1e-3)
    with pytest.raises(ValueError, match="unknown LocalMixer architecture"):
        train_run("XL/9/9", "BP", epochs=1, lr=1e-3)
    with pytest.raises(ValueError, match="unknown dataset"):
        train_run("S/1/1", "BP", dataset="cifar100", epochs=1, lr=1e-3)
    with pytest.raises(ValueError, match="epochs"):
        train_run("S/1/1", "BP", epochs=0, lr=1e-3)
    assert isinstance(method_for("bp", seed=0), Backprop)
    assert isinstance(method_for("lg-fg-a", seed=0), LocalActivityPerturbation)
    assert set(ALGORITHMS) == {alg for _, alg in PAPER_TABLE3}


def test_merge_summary_and_comparisons() -> None:
    old = [_run(seed=0, test_error=0.03), _run(seed=1, test_error=0.05), _run(algorithm="BP", seed=0, test_error=0.02)]
    new = [_run(seed=1, test_error=0.01), _run(seed=1, directions=4, test_error=0.02)]
    merged = merge_runs(old, new)
    assert len(merged) == 4  # seed 1 replaced, K = 4 kept apart
    assert [r["algorithm"] for r in merged] == ["BP", "LG-FG-A", "LG-FG-A", "LG-FG-A"]
    assert run_key(merged[2]) != run_key(merged[3])
    rows = {(r["algorithm"], r["directions"]): r for r in summary(merged)}
    assert rows["LG-FG-A", 1]["test_error"] == pytest.approx(0.02)
    assert rows["LG-FG-A", 1]["seeds"] == [0, 1]
    assert (rows["LG-FG-A", 1]["test_error_min"], rows["LG-FG-A", 1]["test_error_max"]) == (0.01, 0.03)
    comps = comparisons(merged)
    assert {c["quantity"].split(", ")[2].split()[0] for c in comps} == {"BP", "LG-FG-A"}
    for c in comps:
        assert set(c) >= {"quantity", "ours", "paper", "unit", "source", "cite"}
        assert c["paper"] == PAPER_TABLE3["M/1/16", c["quantity"].split(", ")[2].split()[0]][0]
    lg = next(c for c in comps if "LG-FG-A" in c["quantity"])
    assert lg["ours"] == pytest.approx(2.0)  # K = 4 runs are not compared with the paper


def test_step_cost_variants_run_and_ratios_are_relative() -> None:
    variants = mlp_variants((20, 16, 4), 8)
    assert set(variants) == {"backprop", "FG (forward AD)", "FG full, written out", "FG rank 1"}
    timings = time_steps(variants, rounds=2, warmup=1)
    r = ratios(timings, "backprop")
    assert r["backprop"] == {"median": 1.0, "minimum": 1.0}
    assert all(v["minimum"] > 0 for v in r.values())
    names = set(mixer_variants("S/1/1", 4, estimators=True))
    assert {"BP", "LG-BP", "FG-W", "FG-A", "LG-FG-W", "LG-FG-A", "FG-W, rank 1"} <= names
    with pytest.raises(ValueError, match="baseline"):
        ratios(timings, "LG-BP")


def _ffkit(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "ffkit", *args], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=600)


def test_local_mnist_command_writes_and_merges_runs(tmp_path: Path) -> None:
    out = tmp_path / "local.json"
    common = ["--arch", "S/1/1", "--epochs", "1", "--limit", "256", "--batch", "64", "--lr", "1e-3", "--out", str(out)]
    done = _ffkit("local-mnist", "--algorithm", "LG-FG-A", "--seeds", "0", *common, tmp=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "S/1/1 LG-FG-A seed 0" in done.stderr and "it/s" in done.stderr  # the progress bar, on stderr
    data = json.loads(out.read_text())
    assert data["command"].startswith("python -m ffkit local-mnist")
    (run,) = data["results"]["runs"]
    assert run["arch"] == "S/1/1" and run["algorithm"] == "LG-FG-A" and run["dataset"] == "mnist"
    done = _ffkit("local-mnist", "--algorithm", "BP", "--seeds", "0", *common, tmp=tmp_path)
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert {r["algorithm"] for r in data["results"]["runs"]} == {"BP", "LG-FG-A"}
    assert all(c["cite"] == "ren2023scaling" for c in data["comparisons"])


@pytest.mark.parametrize(
    "args,message",
    [
        (["--arch", "XL/1/1"], "unknown architecture"),
        (["--algorithm", "FF"], "unknown algorithm"),
        (["--arch", "M/8/16"], "do not divide the 28"),
        (["--dataset", "cifar10"], "invalid choice"),
        (["--lr", "1e-3", "--tune"], "give one of"),
    ],
)
def test_local_mnist_command_refuses_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    done = _ffkit("local-mnist", *args, "--out", str(tmp_path / "x.json"), tmp=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr
    assert not (tmp_path / "x.json").exists()


def test_bench_local_command_refuses_unknown_parts(tmp_path: Path) -> None:
    done = _ffkit("bench-local", "--part", "gpu", "--out", str(tmp_path / "b.json"), tmp=tmp_path)
    assert done.returncode == 2 and "unknown parts" in done.stderr


def test_divergence_stops_with_the_step_and_rate(tmp_path: Path) -> None:
    done = _ffkit("local-mnist", "--arch", "S/1/1", "--algorithm", "FG-W", "--epochs", "1", "--limit", "256",
                  "--batch", "64", "--lr", "1e38", "--out", str(tmp_path / "d.json"), tmp=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "diverged: at step 2 (learning rate" in done.stderr and "lower the learning rate" in done.stderr
