"""Documentation that cannot rot: every Python example runs, and the site builds in strict mode.

The convention for pages (``docs/*.md`` and ``README.md``):

* every fenced ```` ```python ```` (or ``py``) block is executed; a page's blocks run in order in
  one fresh namespace, so a later block may use what an earlier one defined, with a temporary
  directory as the working directory and the Hugging Face Hub offline;
* a Python block that cannot run in a test (it needs a GPU, the network or real weights) starts
  with the line ``# doc: skip``; it is still shown, and still syntax-checked;
* commands go in ``bash`` blocks and diagrams or output in ``text`` blocks: those never run.

Examples use the tiny presets so every page runs in seconds on a CPU. Tracebacks name the page
and its line (each block is compiled with the page's path and its own line numbers).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import pali

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]
SKIP_MARK = "# doc: skip"
PYTHON = {"python", "py", "python3"}
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")

# Pages owned by others whose examples cannot run yet. strict: once fixed, the xfail itself fails,
# so the entry must be deleted rather than left to hide a future breakage.
KNOWN_BROKEN: dict[str, str] = {}

# Pages whose examples take more than a few seconds on a loaded CPU (the tutorial trains a model).
SLOW_PAGES = {"getting-started.md"}


@dataclass(frozen=True)
class Block:
    """One fenced code block: its language, the page line of its first code line, its code."""

    lang: str
    line: int
    code: str

    @property
    def skipped(self) -> bool:
        return self.code.lstrip().startswith(SKIP_MARK)


def code_blocks(text: str) -> list[Block]:
    """Fenced blocks of a Markdown page, including those indented inside admonitions or lists.

    A block closes at a line made only of the opening fence character, at least as long as the
    opening fence (CommonMark); an unclosed block runs to the end of the page, as Markdown reads it.
    """
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        lang = (opening["info"].split() or [""])[0].lstrip("{.").rstrip("}").lower()
        body, j = [], i + 1
        while j < len(lines):
            stripped = lines[j].strip()
            if stripped and set(stripped) == {fence[0]} and len(stripped) >= len(fence):
                break
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        blocks.append(Block(lang, i + 2, "\n".join(body)))
        i = j + 1
    return blocks


def python_blocks(path: Path) -> list[Block]:
    return [b for b in code_blocks(path.read_text(encoding="utf-8")) if b.lang in PYTHON]


def _page_param(path: Path):
    reason = KNOWN_BROKEN.get(path.name) if path.parent == DOCS else None
    marks = [pytest.mark.xfail(reason=f"{path.name}: {reason}", strict=True)] if reason else []
    if path.name in SLOW_PAGES:
        marks.append(pytest.mark.slow)
    return pytest.param(path, id=str(path.relative_to(ROOT)), marks=marks)


# -- the block reader itself -----------------------------------------------------------------------


def test_code_blocks_reader():
    page = "\n".join([
        "# Title",                     # 1
        "```python",                   # 2
        "x = 1",                       # 3
        "```",                         # 4
        '!!! note "inside"',           # 5
        "    ~~~~py title=\"a.py\"",   # 6
        "    y = x + 1",               # 7
        "    ```",                     # 8: shorter/other fence: still code
        "    ~~~~",                    # 9
        "```bash",                     # 10
        "pali presets",                # 11
        "```",                         # 12
        "````python",                  # 13
        "# doc: skip  (needs a GPU)",  # 14
        "```",                         # 15: too short to close a 4-backtick fence
        "````",                        # 16
    ])
    blocks = code_blocks(page)
    assert [(b.lang, b.line) for b in blocks] == [("python", 3), ("py", 7), ("bash", 11), ("python", 14)]
    assert blocks[1].code == "y = x + 1\n```"
    assert [b.skipped for b in blocks] == [False, False, False, True]
    assert blocks[3].code == "# doc: skip  (needs a GPU)\n```"


def test_an_unclosed_fence_runs_to_the_end():
    assert code_blocks("text\n```python\na = 1\nb = 2") == [Block("python", 3, "a = 1\nb = 2")]


# -- every page's examples ---------------------------------------------------------------------


@pytest.mark.parametrize("page", [_page_param(p) for p in PAGES])
def test_page_examples_run(page: Path, tmp_path, monkeypatch):
    blocks = python_blocks(page)
    # Skipped blocks must still be valid Python, so they rot no faster than the rest.
    for block in blocks:
        compile("\n" * (block.line - 1) + block.code, str(page), "exec")
    runnable = [b for b in blocks if not b.skipped]
    if not runnable:
        if page.name in KNOWN_BROKEN:
            return  # fixed by skipping its blocks: the strict xfail now flags the stale entry
        pytest.skip(f"{page.name} has no runnable python blocks")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # A real module, registered while it runs: dataclasses and pickling look classes up there.
    module = types.ModuleType("_docs_" + re.sub(r"\W", "_", page.stem))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    dtype = torch.get_default_dtype()
    built = _record_model_sizes(monkeypatch)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            for block in runnable:
                # Leading newlines make the line numbers in a traceback the page's own.
                code = compile("\n" * (block.line - 1) + block.code, str(page), "exec")
                try:
                    exec(code, module.__dict__)
                except Exception as e:
                    raise AssertionError(
                        f"{page.name}: the python block at line {block.line} raised {type(e).__name__}: {e}\n"
                        f"(a block that cannot run in a test starts with the line {SKIP_MARK!r})"
                    ) from e
    finally:
        torch.set_default_dtype(dtype)
    assert max(built, default=0) <= TINY, f"{page.name}: examples must use tiny models, one had {max(built):,} parameters"


TINY = 20_000_000  # parameters a doc example may materialize (meta-device builds are free)


def _record_model_sizes(monkeypatch) -> list[int]:
    """Parameters (off the meta device) of every PaliModel the page builds."""
    built: list[int] = []
    init = pali.PaliModel.__init__

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        built.append(sum(p.numel() for p in self.parameters() if not p.is_meta))

    monkeypatch.setattr(pali.PaliModel, "__init__", recording_init)
    return built


# -- the site ----------------------------------------------------------------------------------


def _nav_pages(nav) -> list[str]:
    """Markdown files named anywhere in mkdocs.yml's (nested) nav."""
    if isinstance(nav, str):
        return [nav] if nav.endswith(".md") else []
    if isinstance(nav, dict):
        return [p for value in nav.values() for p in _nav_pages(value)]
    return [p for item in nav for p in _nav_pages(item)]


def test_every_page_is_in_the_nav():
    """An orphan page builds (mkdocs only logs it) but nobody can reach it: fail instead."""
    yaml = pytest.importorskip("yaml", reason="PyYAML comes with the docs extra")
    nav = _nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"])
    pages = sorted(p.name for p in DOCS.glob("*.md"))
    assert sorted(set(nav)) == pages, (
        f"add to mkdocs.yml's nav: {sorted(set(pages) - set(nav))}; "
        f"remove (no such page): {sorted(set(nav) - set(pages))}"
    )


def _missing_docs_tools() -> list[str]:
    return [m for m in ("mkdocs", "material", "mkdocstrings_handlers.python") if _find(m) is None]


def _find(module: str):
    try:
        return importlib.util.find_spec(module)
    except ModuleNotFoundError:
        return None


def test_site_builds_strict(tmp_path):
    """``mkdocs build --strict``: broken links, missing nav pages, unresolvable API objects and
    docstring warnings fail the build. Offline: no plugin fetches anything."""
    missing = _missing_docs_tools()
    if missing:
        pytest.skip(f"docs tools not installed ({', '.join(missing)}): pip install -e '.[docs]'")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
         "-d", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{log}"
    assert (tmp_path / "site" / "api" / "index.html").exists()
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    assert "from_preset" in api and "key_padding_mask" in api, "the API reference rendered no docstrings"
