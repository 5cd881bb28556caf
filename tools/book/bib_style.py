"""Bibliography labels in the author-year form of the citations: "Baydin et al., 2022".

The book cites author-year (``bibtex_reference_style: author_year``), so the bibliography labels
its entries the same way instead of with alphabetic codes such as ``[BPS+22]``. The pybtex
formatting style ``authoryear`` is pybtex's ``plain`` style (entries sorted by author, year and
title) with these labels; ``_config.yml`` selects it with ``bibtex_default_style``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from pybtex.plugin import register_plugin
from pybtex.richtext import Text
from pybtex.style.formatting.plain import Style as PlainStyle
from pybtex.style.labels import BaseLabelStyle
from sphinx.application import Sphinx

STYLE_NAME = "authoryear"


def _last_name(person: Any) -> str:
    parts = [*person.prelast_names, *person.last_names]
    return " ".join(Text.from_latex(p).render_as("text") for p in parts)


def author_year(entry: Any) -> str:
    """The label of one entry: one author "Hinton, 2022", two "Griewank and Walther, 2008",
    more "Baydin et al., 2022" (editors stand in for missing authors)."""
    persons = entry.persons.get("author") or entry.persons.get("editor") or []
    names = [_last_name(p) for p in persons if str(p) != "others"]
    year = entry.fields.get("year", "n.d.")
    if not names:
        who = entry.fields.get("organization") or entry.fields.get("institution") or entry.key
    elif len(names) == 1 and len(persons) == 1:
        who = names[0]
    elif len(names) == 2 and len(persons) == 2:
        who = f"{names[0]} and {names[1]}"
    else:
        who = f"{names[0]} et al."
    return f"{who}, {year}"


class AuthorYearLabels(BaseLabelStyle):
    """Author-year labels; equal ones get a letter after the year (2022a, 2022b)."""

    def format_labels(self, sorted_entries: Iterable[Any]) -> Iterator[str]:
        entries = list(sorted_entries)
        labels = [author_year(e) for e in entries]
        counts = Counter(labels)
        seen: Counter[str] = Counter()
        for label in labels:
            if counts[label] > 1:
                yield label + "abcdefghijklmnopqrstuvwxyz"[seen[label]]
                seen[label] += 1
            else:
                yield label


class AuthorYearStyle(PlainStyle):
    """pybtex's plain style with :class:`AuthorYearLabels`."""

    default_label_style = AuthorYearLabels


register_plugin("pybtex.style.formatting", STYLE_NAME, AuthorYearStyle)


def setup(app: Sphinx) -> dict[str, object]:
    return {"parallel_read_safe": True, "parallel_write_safe": True}
