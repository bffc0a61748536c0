"""The docs' figures are drawn from committed data by ``docs/make_figures.py``, and all exist.

A figure that drifts from its data fails here: the manifest records a hash of every input, and
the charts are redrawn into a temporary folder and compared with the committed files (byte for
byte under the matplotlib version that drew them; by their text — titles, labels, tick values —
under another). ``pali demo``'s picture is redrawn by the CLI and compared pixel for pixel.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"
CARD = ROOT / "src" / "pali" / "bundled" / "pali-demo" / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md", CARD]
_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)[^)]*\)|<img[^>]*\bsrc=\"([^\"]+)\"")


def _make_figures():
    spec = importlib.util.spec_from_file_location("make_figures", ROOT / "docs" / "make_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def referenced_images(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    return [a or b for a, b in _IMAGE.findall(text) if not (a or b).startswith(("http:", "https:", "data:"))]


def test_image_reader():
    page = '![a](img/x.svg) text ![b c](../y.png "title") <img alt="z" src="img/z.png"> ![w](https://e.org/w.png)'
    assert _IMAGE.findall(page)[0] == ("img/x.svg", "")
    assert [a or b for a, b in _IMAGE.findall(page)] == ["img/x.svg", "../y.png", "img/z.png", "https://e.org/w.png"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_referenced_image_exists(page):
    missing = [src for src in referenced_images(page) if not (page.parent / src).is_file()]
    assert not missing, f"{page.relative_to(ROOT)} shows missing images {missing}: run python docs/make_figures.py"


def test_pages_show_the_figures():
    shown = {Path(src).name for page in PAGES for src in referenced_images(page)}
    drawn = {p.name for p in IMG.iterdir() if p.suffix in (".svg", ".png")}
    assert drawn <= shown, f"figures no page shows (stale? reference or delete them): {sorted(drawn - shown)}"
    assert {"demo.png", "demo-loss.svg", "demo-accuracy.svg"} <= shown


def test_manifest_matches_the_data():
    figures = _make_figures()
    manifest = json.loads((IMG / figures.MANIFEST).read_text())
    expected = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "benchmarks" / "results").glob("*.json"))
    expected += ["src/pali/bundled/pali-demo/loss_log.jsonl", "src/pali/bundled/pali-demo/evaluation.json"]
    assert sorted(manifest["inputs"]) == sorted(expected), "inputs changed: run python docs/make_figures.py"
    stale = [name for name, digest in manifest["inputs"].items() if figures._sha256(ROOT / name) != digest]
    assert not stale, f"data changed since the figures were drawn: {stale}; run python docs/make_figures.py"


def _svg_text(path: Path) -> list[str]:
    return re.findall(r"<text[^>]*>([^<]*)</text>", path.read_text(encoding="utf-8"))


def test_charts_are_reproduced_from_the_data(tmp_path):
    matplotlib = pytest.importorskip("matplotlib", reason="matplotlib comes with the docs extra")
    figures = _make_figures()
    figures.charts(tmp_path)
    drawn = sorted(p.name for p in tmp_path.glob("*.svg"))
    committed = sorted(p.name for p in IMG.glob("*.svg"))
    assert drawn == committed, "the committed charts are not the script's: run python docs/make_figures.py"
    same_version = json.loads((IMG / figures.MANIFEST).read_text())["matplotlib"] == matplotlib.__version__
    for name in drawn:
        if same_version:
            assert (tmp_path / name).read_bytes() == (IMG / name).read_bytes(), f"{name} differs from a fresh drawing"
        else:
            assert _svg_text(tmp_path / name) == _svg_text(IMG / name), f"{name}'s labels or values differ"
        assert _svg_text(IMG / name), f"{name} has no text: were fonts converted to paths?"


def test_drawing_twice_gives_the_same_bytes(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib comes with the docs extra")
    figures = _make_figures()
    figures.charts(tmp_path / "a")
    figures.charts(tmp_path / "b")
    for path in sorted((tmp_path / "a").iterdir()):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name


def test_the_card_shows_its_own_copies():
    figures = _make_figures()
    text = CARD.read_text(encoding="utf-8")
    assert figures.CARD_SECTION in text, "the model card lost its figures: run python docs/make_figures.py"
    for name in figures.CARD_FIGURES:
        assert (CARD.parent / name).read_bytes() == (IMG / name).read_bytes(), name


def test_update_card_replaces_its_section(tmp_path):
    figures = _make_figures()
    card = tmp_path / "README.md"
    card.write_text("# m\n\n## Evaluation\n\n| a |\n")
    figures.update_card(card)
    figures.update_card(card)
    text = card.read_text()
    assert text.count(figures.CARD_SECTION) == 1 and text.startswith("# m\n\n## Evaluation\n\n| a |\n\n")
    assert all(f"]({name})" in text for name in figures.CARD_FIGURES)


@pytest.mark.slow
def test_demo_picture_is_what_pali_demo_draws(tmp_path):
    from PIL import Image, ImageChops

    _make_figures().demo_picture(tmp_path / "demo.png")
    fresh, committed = Image.open(tmp_path / "demo.png"), Image.open(IMG / "demo.png")
    assert fresh.size == committed.size
    assert ImageChops.difference(fresh.convert("RGB"), committed.convert("RGB")).getbbox() is None, (
        "pali demo now draws another picture: run python docs/make_figures.py")
