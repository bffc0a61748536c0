"""Helpers for the tests that read the documentation: its fenced code blocks and a built site."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_MARK = "# doc: skip"  # first line of a Python block the docs tests show but do not run
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")


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


def _missing_docs_tools() -> list[str]:
    return [m for m in ("mkdocs", "material", "mkdocstrings_handlers.python") if _find(m) is None]


def _find(module: str):
    try:
        return importlib.util.find_spec(module)
    except ModuleNotFoundError:
        return None


MKDOCS_ENV = {"NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}


def build_site(config: Path, out: Path, *, strict: bool = True) -> subprocess.CompletedProcess:
    """``mkdocs build`` of ``config`` into ``out``, offline; the log is the result's stdout + stderr."""
    missing = _missing_docs_tools()
    if missing:
        pytest.skip(f"docs tools not installed ({', '.join(missing)}): pip install -e '.[docs]'")
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", *(["--strict"] if strict else []), "-f", str(config),
         "-d", str(out)],
        cwd=config.parent, env={**os.environ, **MKDOCS_ENV}, capture_output=True, text=True,
    )
