"""Tests of ffkit.results: the envelope, its atomic write, and where load finds a results file.

Nothing here touches the network: the download is replaced by a fake ``urlopen``.
"""

from __future__ import annotations

import io
import json
import math
import os
import urllib.error
from pathlib import Path

import pytest

from ffkit import results

COMPARISON = {"quantity": "test accuracy", "ours": 0.9, "paper": 0.92, "unit": "", "source": "Table 2",
              "cite": "baydin2022"}


def _envelope(**results_part: object) -> dict:
    return results.envelope("python -m ffkit demo --x 1", {"x": 1}, results_part or {"y": 2}, env={"torch": "t"})


# --------------------------------------------------------------------------- envelope


def test_envelope_has_the_four_parts_and_optional_comparisons() -> None:
    data = results.envelope("python -m ffkit demo", {"x": 1}, {"y": [1, 2]})
    assert list(data) == ["command", "settings", "environment", "results"]
    assert {"python", "torch", "threads", "device", "processor"} <= set(data["environment"])
    assert data["settings"] == {"x": 1} and data["results"] == {"y": [1, 2]}
    with_cmp = results.envelope("python -m ffkit demo", {}, {}, env={}, comparisons=[COMPARISON])
    assert with_cmp["comparisons"] == [COMPARISON] and with_cmp["environment"] == {}


def test_envelope_validation() -> None:
    for bad in ("", "   ", None):
        with pytest.raises(ValueError, match="command"):
            results.envelope(bad, {}, {})  # type: ignore[arg-type]
    incomplete = {k: v for k, v in COMPARISON.items() if k not in ("paper", "cite")}
    with pytest.raises(ValueError, match=r"comparison 1 lacks \['paper', 'cite'\]"):
        results.envelope("python -m ffkit demo", {}, {}, comparisons=[COMPARISON, incomplete])


def test_command_line_is_what_a_reader_types() -> None:
    assert results.command_line(["--x", "a b", "--y"], name="demo") == "python -m ffkit demo --x 'a b' --y"
    assert results.command_line([], name="demo") == "python -m ffkit demo"


# --------------------------------------------------------------------------- write


def test_write_is_atomic_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "demo.json"
    assert results.write(path, _envelope()) == path  # creates the folder
    assert json.loads(path.read_text()) == _envelope()
    assert os.listdir(path.parent) == ["demo.json"]
    results.write(path, _envelope(y=3))
    assert json.loads(path.read_text())["results"] == {"y": 3} and os.listdir(path.parent) == ["demo.json"]


def test_non_finite_numbers_are_written_as_null(tmp_path: Path) -> None:
    path = results.write(tmp_path / "demo.json", _envelope(y=[1.0, math.nan], z={"a": math.inf}, w=(-math.inf,)))
    assert json.loads(path.read_text())["results"] == {"y": [1.0, None], "z": {"a": None}, "w": [None]}


def test_a_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "demo.json"
    results.write(path, _envelope())
    old = path.read_text()
    with pytest.raises(TypeError):  # not JSON: refused before anything is written
        results.write(path, _envelope(y=object()))
    assert path.read_text() == old and os.listdir(tmp_path) == ["demo.json"]

    def broken_replace(src: str, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(results.os, "replace", broken_replace)  # fails after the temporary file is complete
    with pytest.raises(OSError, match="disk full"):
        results.write(path, _envelope(y=3))
    assert path.read_text() == old and os.listdir(tmp_path) == ["demo.json"]


def test_write_refuses_what_is_not_an_envelope(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a results file"):
        results.write(tmp_path / "x.json", {"results": {}})
    assert not (tmp_path / "x.json").exists()


# --------------------------------------------------------------------------- load


@pytest.fixture
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A search path with nothing on it: FFKIT_RESULTS unset, a fake repository without results,
    the working directory empty; and a download that fails the test if it is attempted."""
    monkeypatch.delenv("FFKIT_RESULTS", raising=False)
    fake_repo = tmp_path / "repo"
    (fake_repo / "ffkit").mkdir(parents=True)
    monkeypatch.setattr(results, "__file__", str(fake_repo / "ffkit" / "results.py"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("load tried to download")

    monkeypatch.setattr(results.urllib.request, "urlopen", no_network)
    return tmp_path


def test_load_from_ffkit_results(nowhere: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = nowhere / "mine"
    results.write(folder / "demo.json", _envelope())
    monkeypatch.setenv("FFKIT_RESULTS", str(folder))
    assert results.load("demo") == _envelope() == results.load("demo.json")
    assert results.find("demo") == folder / "demo.json" and results.find("other") is None
    assert results.results_dir() == folder and results.paths() == [folder / "demo.json"]


def test_load_from_the_repository_and_the_working_directory(nowhere: Path) -> None:
    repo_results = nowhere / "repo" / "chapters" / "results"
    results.write(repo_results / "demo.json", _envelope(y="repo"))
    results.write(nowhere / "work" / "results" / "local.json", _envelope(y="cwd"))
    assert results.load("demo")["results"] == {"y": "repo"}
    assert results.load("local")["results"] == {"y": "cwd"}


def test_the_real_search_path_includes_this_repositorys_results() -> None:
    repo = Path(__file__).resolve().parents[1]
    assert repo / "chapters" / "results" in results._search_path()


def test_load_refuses_bad_names_and_files(nowhere: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ("", "../demo", "a/b", ".hidden", None):
        with pytest.raises(ValueError, match="results name"):
            results.load(bad)  # type: ignore[arg-type]
    monkeypatch.setenv("FFKIT_RESULTS", str(nowhere))
    (nowhere / "raw.json").write_text(json.dumps({"loss": [1, 2]}))
    with pytest.raises(ValueError, match="not a results file"):
        results.load("raw")
    with pytest.raises(FileNotFoundError, match="no missing.json in"):
        results.load("missing", download=False)


class _Response(io.BytesIO):
    def __enter__(self) -> _Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def test_load_downloads_the_committed_file_when_none_is_found(nowhere: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def fake_urlopen(url: str, timeout: float) -> _Response:
        asked.append(url)
        return _Response(json.dumps(_envelope(y="downloaded")).encode())

    monkeypatch.setattr(results.urllib.request, "urlopen", fake_urlopen)
    assert results.load("demo")["results"] == {"y": "downloaded"}
    assert asked == [f"https://raw.githubusercontent.com/{results.REPOSITORY}/main/chapters/results/demo.json"]


@pytest.mark.parametrize(
    "failure",
    [urllib.error.URLError("no route to host"), urllib.error.HTTPError("u", 404, "Not Found", None, None), TimeoutError("slow")],
)
def test_a_failed_download_is_a_clear_error(nowhere: Path, monkeypatch: pytest.MonkeyPatch, failure: Exception) -> None:
    def fake_urlopen(url: str, timeout: float) -> _Response:
        raise failure

    monkeypatch.setattr(results.urllib.request, "urlopen", fake_urlopen)
    with pytest.raises(FileNotFoundError, match="no demo.json in .*downloading .*demo.json failed") as info:
        results.load("demo")
    assert "set FFKIT_RESULTS" in str(info.value)


def test_a_downloaded_file_that_is_not_an_envelope_is_refused(nowhere: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(results.urllib.request, "urlopen", lambda url, timeout: _Response(b"<html>404</html>"))
    with pytest.raises(FileNotFoundError, match="downloading"):
        results.load("demo")
    monkeypatch.setattr(results.urllib.request, "urlopen", lambda url, timeout: _Response(b'{"loss": 1}'))
    with pytest.raises(ValueError, match="not a results file"):
        results.load("demo")
