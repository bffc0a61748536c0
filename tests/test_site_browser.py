"""The built site, opened in headless Chromium: no console error, every image loads, every
Mermaid diagram is drawn (an <svg> replaces its code block), nothing fetched from a CDN.

The site is built with ``mkdocs build --strict`` and served from a loopback HTTP server; the
browser is driven over the DevTools protocol (``tests/browser.py``). Skipped, saying so, where no
Chromium binary exists (``apt-get install chromium``; ``PALI_CHROMIUM`` names another binary).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from browser import Chromium, find_chromium, serve
from docs_site import ROOT, build_site, code_blocks

PAGES = {"index.md": "", "model.md": "model/", "tasks.md": "tasks/", "benchmarks.md": "benchmarks/",
         "architecture.md": "architecture/"}
# Material asks GitHub for the repository's stars and latest release (``repo_url``); offline that
# request fails, which is expected. Any other request leaving the local server fails the test.
ALLOWED_EXTERNAL = ("https://api.github.com/repos/",)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    if find_chromium() is None:
        pytest.skip("no Chromium binary on PATH (apt-get install chromium): the site was not checked in a browser")
    out = tmp_path_factory.mktemp("site")
    result = build_site(ROOT / "mkdocs.yml", out)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.fixture(scope="module")
def reports(site, tmp_path_factory) -> dict:
    browser = Chromium(find_chromium(), tmp_path_factory.mktemp("profile"))
    try:
        with serve(site) as base:
            return {page: browser.load(base + url) for page, url in PAGES.items()}
    finally:
        browser.close()


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_in_a_browser(reports, page):
    report = reports[page]
    assert not report.errors, f"{page}: the browser reported errors:\n" + "\n".join(report.errors)
    outside = [url for url in report.external if not url.startswith(ALLOWED_EXTERNAL)]
    assert not outside, f"{page} fetched from outside the site (vendor it under docs/): {outside}"
    assert not report.broken_images, f"{page}: images that did not load: {report.broken_images}"
    shown = len([src for src in _markdown_images(page)])
    assert report.images >= shown, f"{page}: {shown} images in the Markdown, {report.images} in the page"
    diagrams = sum(b.lang == "mermaid" for b in code_blocks((ROOT / "docs" / page).read_text(encoding="utf-8")))
    assert report.unrendered_diagrams == 0, f"{page}: {report.unrendered_diagrams} Mermaid diagrams not drawn"
    assert report.diagrams == diagrams == len(report.diagram_svgs)
    for svg in report.diagram_svgs:
        assert "Syntax error" not in svg and "<g" in svg, f"{page}: a diagram drew an error: {svg[:300]}"


def test_the_home_page_has_a_diagram_and_the_demo_picture(reports):
    assert reports["index.md"].diagrams >= 1 and reports["index.md"].images >= 1
    assert reports["benchmarks.md"].images >= 3


def _markdown_images(page: str) -> list[str]:
    from test_figures import referenced_images

    return referenced_images(ROOT / "docs" / page)
