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

import ast
import re
import sys
import types
import zlib
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

import pali
from docs_site import ROOT, SKIP_MARK, Block, build_site, code_blocks

DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]
PYTHON = {"python", "py", "python3"}

# Pages owned by others whose examples cannot run yet. strict: once fixed, the xfail itself fails,
# so the entry must be deleted rather than left to hide a future breakage.
KNOWN_BROKEN: dict[str, str] = {}

# Pages whose examples take more than a few seconds on a loaded CPU (the tutorial trains a model).
SLOW_PAGES = {"getting-started.md"}


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
    _isolate_registries(monkeypatch)
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


def _isolate_registries(monkeypatch) -> None:
    """What a page registers (plugins.md's toy towers and presets) is gone after it: each registry
    works on a copy of its tables while the page runs, so later tests in this process see only
    pali's own entries (a leaked preset of an unregistered tower broke `pali presets`)."""
    from pali import registry

    for reg in vars(registry).values():
        if isinstance(reg, registry.Registry):
            reg._load_plugins()  # loaded into the originals, so restoring them loses nothing
            for table in ("_entries", "_origins", "configs"):
                monkeypatch.setattr(reg, table, dict(getattr(reg, table)))


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


def _mkdocs_config() -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML comes with the docs extra")
    # mkdocs.yml names Python objects (`!!python/name:` for the Mermaid fence): load them as text.
    loader = type("_Loader", (yaml.SafeLoader,), {})
    loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: suffix)
    return yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=loader)


def test_every_page_is_in_the_nav():
    """An orphan page builds (mkdocs only logs it) but nobody can reach it: fail instead."""
    nav = _nav_pages(_mkdocs_config()["nav"])
    pages = sorted(p.name for p in DOCS.glob("*.md"))
    assert sorted(set(nav)) == pages, (
        f"add to mkdocs.yml's nav: {sorted(set(pages) - set(nav))}; "
        f"remove (no such page): {sorted(set(nav) - set(pages))}"
    )


@dataclass(frozen=True)
class Site:
    """A built site and its build log."""

    path: Path
    log: str


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Site:
    """The project's site, built once for every test here that reads it."""
    out = tmp_path_factory.mktemp("site")
    result = build_site(ROOT / "mkdocs.yml", out)
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{log}"
    return Site(out, log)


def test_site_builds_strict(site):
    """``mkdocs build --strict``: broken links, missing nav pages, unresolvable API objects,
    cross-references and docstring warnings fail the build. Offline: no plugin fetches anything."""
    api = site.path / "api" / "index.html"
    assert api.exists()
    html = api.read_text(encoding="utf-8")
    assert "from_preset" in html and "key_padding_mask" in html, "the API reference rendered no docstrings"


# -- docstrings render as written ------------------------------------------------------------------
#
# Docstrings are Google style (mkdocs.yml: docstring_style) and link with mkdocstrings' autorefs,
# [`PaliConfig`][pali.PaliConfig]; reST roles (:class:`PaliConfig`) show up on the site verbatim.

RAW_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc|ref):`")
FIELD_LIST = re.compile(r"\s*:(?:param|type|returns?|rtype|raises?|yields?|var|ivar|cvar)\b[^:]*:")
UNRESOLVED_REF = re.compile(r"\]\[")  # autorefs leaves a reference it cannot resolve as [text][id]
# An unparsed Google section reads "Args: name: text" (or "Raises: ValueError: ...") on the page.
RAW_SECTION = re.compile(
    r"(?<![\w`])(?:Args|Arguments|Parameters|Returns|Yields|Raises|Attributes): \w[\w.]*(?:, \w+)*(?: \([^)]*\))?:"
)
AUTOREF = re.compile(r"\[([^\[\]]+)\]\[([^\[\]]*)\]")
SOURCE_DIRS = ("src", "kernels", "benchmarks", "examples")


class _Prose(HTMLParser):
    """A page's prose: text outside ``<pre>``, ``<script>`` and ``<style>``, each inline ``<code>``
    in backticks (so a role that rendered verbatim reads as typed) and without its square
    brackets (``x[0][1]`` in code is no reference)."""

    HIDDEN = {"pre", "script", "style"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = self.code = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in self.HIDDEN:
            self.hidden += 1
        elif tag == "code" and not self.hidden:
            self.code += 1
            self.parts.append("`" if self.code == 1 else "")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag == "code" and self.code:
            self.code -= 1
            self.parts.append("`" if self.code == 0 else "")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data.replace("[", "").replace("]", "") if self.code else data)


def prose(html: str) -> str:
    """The prose of a page, whitespace collapsed."""
    parser = _Prose()
    parser.feed(html)
    parser.close()
    return " ".join("".join(parser.parts).split())


def site_problems(site: Path) -> list[str]:
    """Raw reST roles, unresolved cross-references and unparsed docstring sections (``Args:``
    rendered as text: mkdocs.yml's docstring_style is not the docstrings') in every built page."""
    problems = []
    for page in sorted(site.rglob("*.html")):
        text = prose(page.read_text(encoding="utf-8"))
        for pattern, what in ((RAW_ROLE, "a raw reST role"), (UNRESOLVED_REF, "an unresolved cross-reference"),
                              (RAW_SECTION, "a docstring section as plain text")):
            problems += [f"{page.relative_to(site)} shows {what}: ...{text[max(0, m.start() - 50):m.end() + 50]}..."
                         for m in pattern.finditer(text)]
    return problems


def test_site_shows_no_raw_roles_or_broken_references(site):
    """Docstrings render as written: no role, section or reference shows up as its source text."""
    assert "cross-reference" not in site.log, site.log
    problems = site_problems(site.path)
    assert not problems, "\n".join(problems)


def test_the_checks_catch_a_broken_docstring(tmp_path):
    """A throwaway project whose one docstring has a raw role, an unresolved and a resolved
    reference, built with the same handler options as ours: the log names the unresolved target
    (``--strict`` fails on it), and the page check flags the role and the leftover ``[text][id]``."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# Example\n\n::: broken_example\n")
    (tmp_path / "broken_example.py").write_text(
        'def documented():\n'
        '    """Uses a :class:`Role`, [`nothing`][no.such.object] and [`itself`][broken_example.documented]."""\n'
    )
    options = _mkdocstrings_options()
    (tmp_path / "mkdocs.yml").write_text(
        "site_name: broken\ntheme: {name: material, font: false}\nplugins:\n  - mkdocstrings:\n"
        f"      handlers: {{python: {{paths: [.], options: {options}}}}}\n"
    )
    result = build_site(tmp_path / "mkdocs.yml", tmp_path / "site", strict=False)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "Could not find cross-reference target 'no.such.object'" in log
    problems = site_problems(tmp_path / "site")
    assert len(problems) == 2, "\n".join(problems)
    assert "raw reST role" in problems[0] and ":class:`Role`" in problems[0]
    assert "[`nothing`][no.such.object]" in problems[1] and "broken_example.documented" not in problems[1]


def test_an_unparsed_docstring_section_is_recognised():
    """What a Google ``Args:`` section looks like when the configured style does not parse it,
    and prose that merely says "Arguments:" before a code name (docs/hub.md does)."""
    assert RAW_SECTION.search(prose("<p>Same semantics.</p><p>Args:\n    q, k, v: fp16, bf16 or fp32</p>"))
    assert RAW_SECTION.search(prose("<p>Raises:\n    ValueError: on a bad shape</p>"))
    assert not RAW_SECTION.search(prose("<p>Arguments: <code>revision</code> (branch, tag or commit)</p>"))


def _mkdocstrings_options() -> str:
    """Our python handler options (mkdocs.yml), as a YAML flow mapping."""
    import yaml

    config = _mkdocs_config()
    (plugin,) = [p["mkdocstrings"] for p in config["plugins"] if isinstance(p, dict) and "mkdocstrings" in p]
    return yaml.safe_dump(plugin["handlers"]["python"]["options"], default_flow_style=True).strip()


def _docstrings(path: Path):
    """(line, docstring) of a Python file's module, classes and functions."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc is not None:
                yield node.body[0].lineno, doc


def _python_sources() -> list[Path]:
    return sorted(p for d in SOURCE_DIRS for p in (ROOT / d).rglob("*.py"))


def test_no_rest_roles_or_field_lists_in_source():
    """Cheap guard (no site build): a role or ``:param x:`` field would render verbatim."""
    found = []
    for path in _python_sources():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if RAW_ROLE.search(line) or FIELD_LIST.match(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, (
        "write [`Name`][pali.full.path] (an object on the API page) or ``name`` instead of reST roles and "
        "Args:/Returns: sections instead of field lists:\n" + "\n".join(found)
    )


def test_docstring_references_name_objects_on_the_site(site):
    """Every [text][id] in a docstring, rendered on the site or not, names an object the API page
    documents (the build checks only the docstrings it renders)."""
    documented = _inventory(site.path / "objects.inv")
    broken = []
    for path in _python_sources():
        for line, doc in _docstrings(path):
            for ref in AUTOREF.finditer(re.sub(r"``.*?``", "", doc, flags=re.S)):
                target = ref[2] or ref[1].strip("`")
                if target not in documented:
                    broken.append(f"{path.relative_to(ROOT)}:{line}: {ref[0]}")
    assert not broken, "cross-references to objects the API page does not document:\n" + "\n".join(broken)


def _inventory(path: Path) -> set[str]:
    """Python object names in a Sphinx ``objects.inv`` (four header lines, then zlib)."""
    body = zlib.decompress(path.read_bytes().split(b"\n", 4)[4]).decode()
    return {line.split(" ", 1)[0] for line in body.splitlines() if " py:" in line}
