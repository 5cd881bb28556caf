"""The results of the longer experiments: one JSON envelope for every command, found from anywhere.

Every ``python -m ffkit`` experiment or benchmark writes one file with four parts::

    {
      "command":     "python -m ffkit fg-mnist --seeds 3",       # what to run to reproduce it
      "settings":    {...},                                      # every option that shaped it
      "environment": {"torch": ..., "threads": ..., "device": ..., ...},
      "results":     {...},                                      # the measurements
      "comparisons": [ {...}, ... ]                              # optional, see below
    }

``comparisons`` lists the numbers that reproduce a paper's, each a dict with ``quantity`` (what
is compared), ``ours``, ``paper``, ``unit``, ``source`` (the table or section) and ``cite`` (the
bibliography key); the book's Results page collects them from every file.

The notebooks read a file with :func:`load`, which looks in ``$FFKIT_RESULTS``, in the
``chapters/results`` folder of the repository that ffkit was installed from, and in
``results/`` and ``chapters/results/`` below the current folder, and otherwise downloads the
committed file from the book's repository (so a notebook opened alone, on Colab, finds it).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "REPOSITORY",
    "command_line",
    "environment",
    "envelope",
    "find",
    "load",
    "paths",
    "results_dir",
    "write",
]

#: The GitHub repository the book is published from (``owner/name``).
REPOSITORY = "ffkit-book/understanding-forward-forward"
_RAW = "https://raw.githubusercontent.com/{repo}/main/chapters/results/{name}.json"
_REQUIRED = ("command", "settings", "environment", "results")
_COMPARISON_KEYS = ("quantity", "ours", "paper", "unit", "source", "cite")


def environment(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Where a result was measured: versions, processor, thread count and device."""
    dev = torch.device(device)
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "system": platform.system(),
        "processor": _processor(),
        "threads": torch.get_num_threads(),
        "device": str(dev),
    }
    if dev.type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info


def _processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def command_line(argv: Sequence[str] | None = None, *, name: str | None = None) -> str:
    """The command as a reader would type it: ``python -m ffkit NAME ARGS``."""
    args = list(sys.argv[1:] if argv is None else argv)
    prefix = ["python", "-m", "ffkit"] + ([name] if name else [])
    return " ".join(shlex.quote(a) for a in prefix + args)


def _check_comparisons(comparisons: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, c in enumerate(comparisons):
        missing = [k for k in _COMPARISON_KEYS if k not in c]
        if missing:
            raise ValueError(f"comparison {i} lacks {missing}; each needs {list(_COMPARISON_KEYS)}")
        out.append(dict(c))
    return out


def envelope(
    command: str,
    settings: Mapping[str, Any],
    results: Mapping[str, Any],
    *,
    env: Mapping[str, Any] | None = None,
    comparisons: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The dict a command writes: command, settings, environment (``env``, by default
    :func:`environment` of this process), results and, where a paper is reproduced, comparisons."""
    if not isinstance(command, str) or not command.strip():
        raise ValueError("command must be the non-empty command line that reproduces the result")
    data: dict[str, Any] = {
        "command": command,
        "settings": dict(settings),
        "environment": dict(env) if env is not None else environment(),
        "results": dict(results),
    }
    if comparisons:
        data["comparisons"] = _check_comparisons(comparisons)
    return data


def _check_envelope(data: object, where: str) -> dict[str, Any]:
    if not isinstance(data, dict) or any(k not in data for k in _REQUIRED):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{where} is not a results file: need the keys {list(_REQUIRED)}, found {keys}")
    return data


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by ``None`` (JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write(path: str | os.PathLike[str], data: Mapping[str, Any]) -> Path:
    """Write ``data`` (an :func:`envelope`) as JSON to ``path`` atomically: a temporary file in
    the same folder is renamed over ``path`` only once it is complete, so an interrupted run
    leaves the old file, never half a new one. NaN and infinite numbers are stored as ``null``."""
    target = Path(path)
    _check_envelope(dict(data), str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_finite(data), indent=1, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def results_dir() -> Path | None:
    """The first existing folder of the search path (see the module docstring), or ``None``."""
    for folder in _search_path():
        if folder.is_dir():
            return folder
    return None


def _search_path() -> list[Path]:
    folders = []
    env = os.environ.get("FFKIT_RESULTS")
    if env:
        folders.append(Path(env))
    folders.append(Path(__file__).resolve().parents[1] / "chapters" / "results")
    folders += [Path.cwd() / "results", Path.cwd() / "chapters" / "results"]
    return folders


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"a results name is a file stem such as 'fg_mnist', got {name!r}")
    return name[:-5] if name.endswith(".json") else name


def find(name: str) -> Path | None:
    """The local file ``NAME.json`` on the search path, or ``None``."""
    stem = _check_name(name)
    for folder in _search_path():
        candidate = folder / f"{stem}.json"
        if candidate.is_file():
            return candidate
    return None


def load(name: str, *, download: bool = True) -> dict[str, Any]:
    """The results file ``NAME.json`` (e.g. ``load("fg_mnist")``) as a dict with the keys
    ``command``, ``settings``, ``environment`` and ``results``.

    Looks on the search path first; otherwise, with ``download=True``, fetches the committed file
    from the book's repository. Raises ``FileNotFoundError`` saying where it looked, and
    ``ValueError`` for a file that is not a results envelope.
    """
    stem = _check_name(name)
    path = find(stem)
    if path is not None:
        return _check_envelope(json.loads(path.read_text(encoding="utf-8")), str(path))
    looked = ", ".join(str(p) for p in _search_path())
    if not download:
        raise FileNotFoundError(f"no {stem}.json in {looked}")
    url = _RAW.format(repo=REPOSITORY, name=stem)
    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - fixed https URL
            data = json.loads(response.read().decode("utf-8"))
    except (urllib.error.URLError, OSError, json.JSONDecodeError) as err:
        raise FileNotFoundError(
            f"no {stem}.json in {looked}, and downloading {url} failed ({err}); "
            "set FFKIT_RESULTS to the folder that holds the book's results"
        ) from err
    return _check_envelope(data, url)


def paths() -> list[Path]:
    """Every results file in :func:`results_dir`, sorted by name."""
    folder = results_dir()
    return sorted(folder.glob("*.json")) if folder is not None else []
