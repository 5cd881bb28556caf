"""The book's own Sphinx extensions (tools/book/) and its table of contents.

A small Sphinx build (basic theme, no notebooks) renders the API reference and a Results page
from results files made here, so the tests read what a reader would get.
"""

from __future__ import annotations

import html
import io
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import ffkit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools" / "book"))

import api_page  # noqa: E402
import bib_style  # noqa: E402
import offline_mathjax  # noqa: E402
import page_fixes  # noqa: E402
import results_page  # noqa: E402

ENVELOPE = {
    "command": "python -m ffkit demo --seeds 3",
    "settings": {"seeds": 3},
    "environment": {"device": "cpu", "processor": "Test CPU", "threads": 2, "torch": "2.13.0"},
    "results": {"accuracy": 0.97},
    "comparisons": [
        {"quantity": "test error, MNIST MLP", "ours": 2.512, "paper": 2.41, "unit": "%",
         "source": "Table 3", "cite": "ren2023scaling"},
    ],
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Sphinx build of the API reference and of a Results page over three results files: an
    envelope with a comparison, one without comparisons and a file from before the envelope."""
    from sphinx.application import Sphinx

    src = tmp_path_factory.mktemp("src")
    (src / "chapters" / "results").mkdir(parents=True)
    (src / "chapters" / "results" / "demo.json").write_text(json.dumps(ENVELOPE))
    plain = {k: v for k, v in ENVELOPE.items() if k != "comparisons"}
    (src / "chapters" / "results" / "plain.json").write_text(json.dumps(plain))
    (src / "chapters" / "results" / "old.json").write_text(json.dumps({"command": "python -m ffkit old", "machine": {"threads": 1}}))
    (src / "chapters" / "uses.md").write_text(
        '# Uses\n\n{py:class}`ffkit.ForwardGradient` and {py:func}`ffkit.tangents.draw`.\n\n'
        '```python\nffkit.results.load("demo")\n```\n'
    )
    shutil.copy(ROOT / "references.bib", src / "references.bib")
    shutil.copy(ROOT / "reference" / "api.rst", src / "api.rst")
    shutil.copy(ROOT / "reference" / "results.rst", src / "results.rst")
    (src / "index.rst").write_text(
        "Book\n====\n\n.. toctree::\n\n   api\n   results\n   chapters/uses\n\n.. bibliography::\n"
    )
    out = src / "_out"
    warnings = io.StringIO()
    book = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))["sphinx"]["config"]
    book = {k: v for k, v in book.items() if not k.startswith("nb_")}  # no notebooks here
    app = Sphinx(
        str(src), None, str(out), str(src / "_doctrees"), "html",
        confoverrides={
            **book,  # the book's settings (autodoc, Napoleon, bibliography style)
            "extensions": ["myst_parser", "sphinxcontrib.bibtex", "api_page", "results_page", "bib_style"],
            "bibtex_bibfiles": ["references.bib"],
            "html_theme": "basic",
            "exclude_patterns": ["_out", "_doctrees"],
            "suppress_warnings": ["myst.header"],
        },
        status=None, warning=warnings, freshenv=True, warningiserror=True, keep_going=True,
    )
    app.build()
    assert app.statuscode == 0, warnings.getvalue()
    return out


def _ids(page: Path) -> set[str]:
    return set(re.findall(r'id="([^"]+)"', page.read_text(encoding="utf-8")))


def test_api_reference_lists_every_public_name(site: Path) -> None:
    ids = _ids(site / "api.html")
    for name in ffkit.__all__:
        value = getattr(ffkit, name)
        if isinstance(value, type(ffkit)):
            assert f"module-{value.__name__}" in ids, f"submodule {name} missing from the API reference"
        else:
            assert f"ffkit.{name}" in ids, f"ffkit.{name} missing from the API reference"


def test_api_reference_documents_submodule_members(site: Path) -> None:
    ids = _ids(site / "api.html")
    for module_name, entries in api_page.plan("ffkit").modules:
        for member in entries:
            assert f"{module_name}.{member}" in ids, f"{module_name}.{member} missing"


def test_chapters_link_to_the_api_reference(site: Path) -> None:
    page = (site / "chapters" / "uses.html").read_text(encoding="utf-8")
    assert 'href="../api.html#ffkit.ForwardGradient"' in page
    assert 'href="../api.html#ffkit.tangents.draw"' in page


def test_plan_puts_each_shared_object_in_one_home() -> None:
    result = api_page.plan("ffkit")
    assert result.missing == []
    top = {name: home for name, _, home in result.top}
    assert top["setup"] is None  # defined in a private module: documented at the top
    assert top["ForwardGradient"] == "ffkit.methods.ForwardGradient"
    modules = dict(result.modules)
    # DivergenceError is exported by ffkit.methods (where it is defined) and ffkit.train
    assert modules["ffkit.methods"]["DivergenceError"] is None
    assert modules["ffkit.train"]["DivergenceError"] == "ffkit.methods.DivergenceError"


def test_api_reference_fails_loudly_on_a_missing_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ffkit, "__all__", [*ffkit.__all__, "no_such_name"])
    assert api_page.plan("ffkit").missing == ["no_such_name"]


def test_results_page_lists_comparisons_commands_and_compute(site: Path) -> None:
    text = html.unescape(re.sub(r"<[^>]+>", " ", (site / "results.html").read_text(encoding="utf-8")))
    text = re.sub(r"\s+", " ", text)
    assert re.search(r"test error, MNIST MLP 2\.41% 2\.512% Table 3 \W*Ren et al\W*2023\W*demo\.json", text)
    assert "Command : python -m ffkit demo --seeds 3" in text
    assert "Computed on : cpu, Test CPU, 2 threads, torch 2.13.0" in text
    assert "Command : python -m ffkit old" in text and "predates the results envelope" in text
    assert "Loaded by : Uses" in text


def test_results_read_and_format(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text(json.dumps(ENVELOPE))
    f = results_page.read(path)
    assert f.envelope and f.command == ENVELOPE["command"] and len(f.comparisons) == 1
    bad = dict(ENVELOPE, comparisons=[{"quantity": "q", "ours": 1}])
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="lacks"):
        results_page.read(path)
    path.write_text(json.dumps({"runs": {}}))
    old = results_page.read(path)
    assert not old.envelope and old.command is None and old.comparisons == []
    assert results_page.fmt_value(0.123456, "%") == "0.1235%"
    assert results_page.fmt_value(1234567) == "1\u2009234\u2009567"
    assert results_page.fmt_value([1, 3], "x") == "1–3 x"
    assert results_page.fmt_value(float("nan")) == "n/a"


def test_bibliography_has_complete_authors_and_unique_author_year_labels() -> None:
    from pybtex.database import parse_file

    entries = parse_file(str(ROOT / "references.bib")).entries
    for key, entry in entries.items():
        authors = [str(p) for p in entry.persons.get("author", [])]
        assert authors, f"{key} has no authors"
        assert "others" not in authors, f"{key}: incomplete author list"
        for person in entry.persons["author"]:
            assert person.first_names, f"{key}: {person} has no first name"
    labels = list(bib_style.AuthorYearLabels().format_labels(entries.values()))
    assert len(set(labels)) == len(labels)
    by_key = dict(zip(entries, labels))
    assert by_key["baydin2022gradients"] == "Baydin et al., 2022"
    assert by_key["griewank2008evaluating"] == "Griewank and Walther, 2008"
    assert by_key["hinton2022forward"] == "Hinton, 2022"
    assert by_key["rike2023forward"] == "Rike and Førland, 2022"


def test_duplicate_scripts_are_dropped() -> None:
    from sphinx.builders.html._assets import _JavaScript

    body = "const THEBE_JS_URL = 1"
    scripts = [_JavaScript(None, body=body), _JavaScript("a.js"), _JavaScript("", body=body), _JavaScript("a.js", defer="defer")]
    assert page_fixes.unique_scripts(scripts) == [scripts[0], scripts[1], scripts[3]]


def test_mathjax_ships_with_the_book() -> None:
    es5 = offline_mathjax.source_dir()
    entry = (es5 / offline_mathjax.ENTRY).read_text(encoding="utf-8", errors="replace")
    assert re.search(r'version\s*[:=]\s*"?3\.2\.2', entry) or "3.2.2" in entry
    assert all((es5 / part).is_dir() for part in offline_mathjax.ON_DEMAND)
    assert (es5 / "output" / "chtml" / "fonts" / "woff-v2").is_dir()
    pins = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    assert re.search(r"^django-static-mathjax==3\.2\.2\.\d+$", pins, flags=re.M)


def _chapters(toc: dict[str, Any]) -> list[tuple[str, bool]]:
    return [(c["file"], bool(part.get("numbered"))) for part in toc["parts"] for c in part["chapters"]]


def test_chapter_numbers_match_file_numbers() -> None:
    """chapters/NN_name is the NN-th numbered chapter (numbers run on across parts), so the
    sidebar and titles say what the prose says; the quickstart (00) is unnumbered."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    number = 0
    seen = 0
    for file, numbered in _chapters(toc):
        match = re.fullmatch(r"chapters/(\d\d)_\w+", file)
        if numbered:
            number += 1
            assert match and int(match.group(1)) == number, f"{file} is numbered {number}"
            seen += 1
        elif match:
            assert int(match.group(1)) == 0, f"{file} is a chapter but its part is not numbered"
    assert seen >= 5
    on_disk = {p.stem for p in (ROOT / "chapters").glob("[0-9][0-9]_*.ipynb")}
    assert on_disk <= {Path(f).name for f, _ in _chapters(toc)}, "a chapter notebook is not in _toc.yml"
