"""Read the built book in a real browser, offline, and fail on what a reader would see broken.

Headless Chromium (the system's ``chromium``, driven by Playwright) opens every page of
``_build/html`` from disk, 1280 px wide, with every request that is not a local file blocked,
and reports, per page:

* JavaScript errors: uncaught exceptions and ``console.error`` messages;
* requests that fail, and any request that would need the network (the book must work offline);
* math: MathJax missing on a page with equations, equations left as raw TeX, MathJax errors;
* images that do not load;
* horizontal overflow: content wider than the text column, either hidden behind a horizontal
  scroll bar (a code cell, an output, a table, an equation) or sticking out of the column, and a
  page wider than the window;
* figures in cell outputs that are shrunk to fit the column (drawn wider than it) or that are
  not high resolution (fewer than 2 image pixels per CSS pixel);
* the width of the code-output column in characters, which must hold the ``--min-chars``
  characters that the notebooks' stored outputs may use (tests/test_notebooks.py).

It saves a full-page screenshot of each page (``--screenshots``), prints one line per page and
a closing ``pages: N passed, M failed`` line, and exits with 1 if any page failed.

Usage, after ``jupyter-book build -W --keep-going .``::

    python -m pip install -r tools/requirements-browser.txt   # Playwright, pinned
    apt-get install -y chromium                               # or point --browser at one
    python tools/check_book.py                                # _build/html, screenshots in _build/screenshots
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Browsers tried, in order, when --browser and $BOOK_BROWSER are not given.
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: Folders of the build that hold assets, not pages.
SKIP_DIRS = {"_static", "_sources", "_images", "_downloads"}

# Runs in the page once it has loaded and MathJax has finished: returns what the checks need.
INSPECT_JS = r"""
async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  if (document.fonts && document.fonts.ready) { await document.fonts.ready; }
  const out = {overflow: [], math: {}, images: [], figures: [], rawTex: [], columnChars: null};
  const article = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
  const cut = (text, n) => Array.from(text).slice(0, n).join('');
  const describe = (el) => {
    let d = el.tagName.toLowerCase();
    if (el.id) d += '#' + el.id;
    if (el.classList.length) d += '.' + [...el.classList].slice(0, 3).join('.');
    const text = (el.innerText || el.textContent || '').trim().replace(/\s+/g, ' ');
    return text ? `${d} "${cut(text, 70)}"` : d;
  };
  const visible = (el) => el.checkVisibility ? el.checkVisibility() : el.offsetParent !== null;
  const box = article.getBoundingClientRect();
  const right = box.right - parseFloat(getComputedStyle(article).paddingRight);
  const doc = document.documentElement;
  if (doc.scrollWidth > doc.clientWidth + 1) {
    out.overflow.push(`the page is ${doc.scrollWidth - doc.clientWidth}px wider than the window`);
  }
  // Walk the column once; `clipped`: an ancestor already scrolls or clips horizontally.
  const visit = (el, clipped) => {
    const s = getComputedStyle(el);
    if (s.display === 'none' || s.visibility === 'hidden') return;
    const scrolls = s.display !== 'inline' && (s.overflowX === 'auto' || s.overflowX === 'scroll');
    if (scrolls && el.scrollWidth > el.clientWidth + 1 && visible(el)) {
      out.overflow.push(`${el.scrollWidth - el.clientWidth}px hidden behind scrolling in ${describe(el)}`);
      return;  // one report per box
    }
    if (!clipped) {
      const r = el.getBoundingClientRect();
      if (r.width > 0 && r.right > right + 1 && visible(el)) {
        out.overflow.push(`${Math.round(r.right - right)}px past the column: ${describe(el)}`);
        return;
      }
    }
    if (el.tagName.toLowerCase() === 'mjx-container') return;  // its insides are MathJax's
    const clips = clipped || (s.display !== 'inline' && s.overflowX !== 'visible');
    for (const child of el.children) visit(child, clips);
  };
  for (const child of article.children) visit(child, false);
  // Math: every equation typeset, no MathJax error, no TeX left in the text.
  const maths = [...article.querySelectorAll('.math')];
  out.math.count = maths.length;
  out.math.mathjax = !!(window.MathJax && MathJax.version);
  out.math.version = window.MathJax && MathJax.version || null;
  out.math.untypeset = maths.filter(m => !m.querySelector('mjx-container')).map(m => cut((m.textContent || '').trim(), 70));
  out.math.errors = [...document.querySelectorAll('mjx-merror, [data-mjx-error]')].map(
    e => cut(e.getAttribute('data-mjx-error') || e.textContent || '', 70));
  out.math.undefined = [...document.querySelectorAll('mjx-mtext')].filter(
    e => /^\\[A-Za-z]+/.test(e.textContent || '') && getComputedStyle(e).color === 'rgb(255, 0, 0)').map(e => e.textContent);
  const walker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT, {
    acceptNode: (n) => n.parentElement.closest('pre, code, script, style, mjx-container, .math, textarea, kbd, samp')
      ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT});
  const tex = /\\\(|\\\[|\\begin\{|\$\$|(^|[^\\\w])\$[^$\s][^$\n]*[^$\s\\]\$/;
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (tex.test(n.textContent) && visible(n.parentElement)) out.rawTex.push(cut(n.textContent.trim(), 70));
  }
  // Images: loaded; figures in outputs drawn for the column and at high resolution.
  for (const img of document.images) {
    if (!img.complete || img.naturalWidth === 0) out.images.push(img.getAttribute('src'));
  }
  for (const img of article.querySelectorAll('.cell_output img, .output img')) {
    if (!visible(img) || img.naturalWidth === 0) continue;
    const shown = img.getBoundingClientRect().width;
    // the size at 1:1: the notebook's output metadata become an inline style (or a width attribute)
    const styled = img.style.width.endsWith('px') ? parseFloat(img.style.width) : 0;
    const meant = styled || parseFloat(img.getAttribute('width')) || img.naturalWidth;
    out.figures.push({src: (img.getAttribute('src') || '').split('/').pop(), shown: shown, meant: meant,
                      natural: img.naturalWidth});
  }
  // The code-output column in characters.
  const pre = article.querySelector('.cell_output pre, div.output pre');
  if (pre) {
    const s = getComputedStyle(pre);
    const probe = document.createElement('span');
    probe.style.font = s.font; probe.style.whiteSpace = 'pre'; probe.style.position = 'absolute';
    probe.textContent = '0'.repeat(200);
    document.body.appendChild(probe);
    const ch = probe.getBoundingClientRect().width / 200;
    probe.remove();
    const inner = pre.clientWidth - parseFloat(s.paddingLeft) - parseFloat(s.paddingRight);
    out.columnChars = Math.floor(inner / ch + 1e-6);
    out.columnPx = inner;
  }
  return out;
}
"""


@dataclass
class PageReport:
    """What went wrong on one page (nothing: it passed)."""

    page: str
    problems: list[str] = field(default_factory=list)
    column_chars: int | None = None
    equations: int = 0
    figures: int = 0


def find_browser(given: str | None) -> str:
    """The Chromium to drive: ``given``, ``$BOOK_BROWSER``, or the first of
    :data:`BROWSER_NAMES` on the PATH."""
    for candidate in (given, os.environ.get("BOOK_BROWSER")):
        if candidate:
            path = shutil.which(candidate) or candidate
            if not Path(path).is_file():
                raise SystemExit(f"check_book: browser {candidate!r} not found")
            return path
    for name in BROWSER_NAMES:
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit(
        "check_book: no Chromium found; install the distribution's package "
        "(`apt-get install -y chromium`) or pass --browser PATH"
    )


def pages(root: Path) -> list[Path]:
    """Every HTML page of the build, in a stable order."""
    found = [
        p
        for p in root.rglob("*.html")
        if not (set(p.relative_to(root).parts[:-1]) & SKIP_DIRS)
    ]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def redirect_target(path: Path) -> str | None:
    """Where a page that only forwards the reader (``<meta http-equiv="refresh">``) points."""
    match = re.search(
        r"""<meta\s+http-equiv=["']refresh["']\s+content=["'][^"']*url=([^"']+)["']""",
        path.read_text(encoding="utf-8", errors="replace")[:4000],
        flags=re.IGNORECASE,
    )
    return match.group(1).strip() if match else None


def judge(page: str, seen: dict[str, Any], errors: list[str], min_chars: int,
          shrink_tolerance: float = 0.97, min_density: float = 1.9) -> PageReport:
    """Turn what the page showed (``seen``, from INSPECT_JS) and the errors collected while
    loading it into a report."""
    report = PageReport(page, list(errors), seen.get("columnChars"))
    report.problems += [f"overflow: {o}" for o in seen["overflow"]]
    math = seen["math"]
    report.equations = math["count"]
    if math["count"] and not math["mathjax"]:
        report.problems.append(f"math: MathJax did not load ({math['count']} equations left as TeX)")
    else:
        report.problems += [f"math: not typeset: {t}" for t in math["untypeset"]]
    report.problems += [f"math: MathJax error: {e}" for e in math["errors"]]
    report.problems += [f"math: undefined macro {m}" for m in math["undefined"]]
    report.problems += [f"math: raw TeX in the text: {t}" for t in seen["rawTex"]]
    report.problems += [f"image did not load: {src}" for src in seen["images"]]
    for fig in seen["figures"]:
        report.figures += 1
        if fig["shown"] < shrink_tolerance * fig["meant"]:
            report.problems.append(
                f"figure {fig['src']}: drawn {fig['meant']:.0f}px wide, shrunk to {fig['shown']:.0f}px "
                "to fit the column (draw it for the column: ffkit.plot)"
            )
        if fig["natural"] < min_density * fig["shown"]:
            report.problems.append(
                f"figure {fig['src']}: {fig['natural']}px image shown {fig['shown']:.0f}px wide: "
                "not high resolution (ffkit.setup() makes inline figures 2x)"
            )
    chars = seen.get("columnChars")
    if chars is not None and chars < min_chars:
        report.problems.append(
            f"layout: the output column holds {chars} characters, fewer than the {min_chars} "
            "that stored outputs may use"
        )
    return report


def check(root: Path, shots: Path | None, browser: str, width: int, height: int,
          min_chars: int, only: list[str] | None = None) -> list[PageReport]:
    """Open every page under ``root`` (or those whose path contains one of ``only``)."""
    from playwright.sync_api import sync_playwright  # pinned in tools/requirements-browser.txt

    todo = [p for p in pages(root) if not only or any(o in p.relative_to(root).as_posix() for o in only)]
    if not todo:
        raise SystemExit(f"check_book: no HTML pages under {root}; build the book first")
    if shots is not None:
        shots.mkdir(parents=True, exist_ok=True)
    args = ["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    reports = []
    with sync_playwright() as pw:
        chrome = pw.chromium.launch(executable_path=browser, args=args)
        context = chrome.new_context(viewport={"width": width, "height": height}, device_scale_factor=1)
        blocked: list[str] = []

        def offline(route: Any) -> None:
            url = route.request.url
            if url.startswith(("file:", "data:", "blob:", "about:")):
                route.continue_()
            else:
                blocked.append(url)
                route.abort("internetdisconnected")

        context.route("**/*", offline)
        for path in todo:
            rel = path.relative_to(root).as_posix()
            target = redirect_target(path)
            if target is not None:  # index.html only forwards to the first page
                problems = [] if (path.parent / target).is_file() else [f"redirects to a missing page: {target}"]
                reports.append(PageReport(rel, problems))
                continue
            errors: list[str] = []
            blocked.clear()
            page = context.new_page()
            page.on("console", lambda m, e=errors: e.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda exc, e=errors: e.append(f"JavaScript error: {exc}"))
            page.on(
                "requestfailed",
                lambda r, e=errors: e.append(f"request failed: {r.url} ({r.failure})")
                if r.url.startswith("file:") else None,
            )
            page.goto(path.as_uri(), wait_until="load", timeout=60_000)
            seen = page.evaluate(INSPECT_JS)
            page.wait_for_timeout(200)  # late console messages
            errors += [f"needs the network: {url}" for url in blocked]
            # the console line that goes with a blocked request says the same again
            errors = [e for e in errors if not (e.startswith("console error: Failed to load resource") and blocked)]
            report = judge(rel, seen, errors, min_chars)
            if shots is not None:
                page.screenshot(path=str(shots / (rel.replace("/", "__")[: -len(".html")] + ".png")), full_page=True)
            page.close()
            reports.append(report)
        chrome.close()
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("build", nargs="?", type=Path, default=Path("_build/html"), help="the built HTML (default: _build/html)")
    parser.add_argument("--screenshots", type=Path, default=Path("_build/screenshots"),
                        help="folder for one full-page PNG per page (default: _build/screenshots)")
    parser.add_argument("--no-screenshots", action="store_true", help="take none")
    parser.add_argument("--browser", help="Chromium executable (default: $BOOK_BROWSER or chromium on the PATH)")
    parser.add_argument("--width", type=int, default=1280, help="window width in CSS px (default 1280)")
    parser.add_argument("--height", type=int, default=900, help="window height in CSS px (default 900)")
    parser.add_argument("--min-chars", type=int, default=80,
                        help="characters the output column must hold (default 80, the notebooks' limit)")
    parser.add_argument("--only", nargs="*", help="check only pages whose path contains one of these")
    args = parser.parse_args(argv)
    root = args.build.resolve()
    if not (root / "index.html").is_file():
        print(f"check_book: {root / 'index.html'} not found; build the book first", file=sys.stderr)
        return 2
    shots = None if args.no_screenshots else args.screenshots.resolve()
    reports = check(root, shots, find_browser(args.browser), args.width, args.height, args.min_chars, args.only)
    failed = 0
    for r in reports:
        extra = f"{r.equations} equations, {r.figures} figures"
        if r.column_chars is not None:
            extra += f", output column {r.column_chars} characters"
        if r.problems:
            failed += 1
            print(f"FAIL {r.page} ({extra}): {len(r.problems)} problems")
            for p in r.problems:
                print(f"     - {p.encode('utf-8', 'replace').decode('utf-8')}")
        else:
            print(f"ok   {r.page} ({extra})")
    if shots is not None:
        print(f"screenshots in {shots}")
    print(f"pages: {len(reports) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
