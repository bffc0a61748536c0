"""What a new user still tripped over in the first hour, second pass (issue 25): running from the
checkout root, module paths the docs and messages name, messages of the CLI, drawn detections,
padded vocabularies, fine-tuned model cards."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pali.config.registry import CONNECTORS, HEADS, TEXT_STACKS, VISION_ENCODERS

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def _fresh_python(code: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``python -c code`` as a user runs it: from ``cwd``, this checkout's ``src`` on the path, no
    safe-path flag (so the current folder, the repository root, comes first on ``sys.path``)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    env["PYTHONPATH"] = str(SRC)
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True)


# 2. Running from the checkout root ------------------------------------------------------------


def test_pali_and_transformers_import_from_the_checkout_root():
    """The repository's top-level ``kernels/`` must not shadow Hugging Face's ``kernels`` package,
    which transformers imports ("cannot import name 'CUDAProperties' from 'kernels'")."""
    pytest.importorskip("transformers")
    run = _fresh_python("import pali; from transformers import Blip2ForConditionalGeneration; print('ok')")
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


# 5. Every module path the docs, the README and pali's messages name is an attribute ----------------

NAME = re.compile(r"(?<![\w./-])pali(?:\.[A-Za-z_]\w*)+")
ENTRY_POINT_GROUPS = {r.entry_point_group for r in (HEADS, VISION_ENCODERS, TEXT_STACKS, CONNECTORS)}
# Names spelt like module paths that are not: safetensors metadata keys written by conversion.
METADATA_KEYS = {"pali.tower", "pali.dtype", "pali.source_format", "pali.subtree"}


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def named_paths() -> dict[str, str]:
    """``pali.x.y`` names in README.md, docs/*.md and the strings of pali's code (its messages;
    docstrings aside, and ``_moved``'s table of old names), each with where it was seen first."""
    found: dict[str, str] = {}
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for match in NAME.finditer(page.read_text()):
            found.setdefault(match.group(0), page.name)
    for path in sorted((SRC / "pali").rglob("*.py")):
        if path.name == "_moved.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                for match in NAME.finditer(node.value):
                    found.setdefault(match.group(0), str(path.relative_to(ROOT)))
    return {name: where for name, where in found.items() if name not in ENTRY_POINT_GROUPS | METADATA_KEYS}


def test_the_scan_finds_the_names_users_met():
    names = named_paths()
    assert {"pali.processing.prompts.LANGUAGES", "pali.cli.common.save_png", "pali.train.helpers"} <= set(names)


def test_every_named_module_path_is_an_attribute_after_import_pali():
    """In a fresh interpreter, as a user's ``import pali`` then ``pali.prompts.LANGUAGES``: each
    name is reached attribute by attribute, and the bare import still costs no torch."""
    names = named_paths() | {"pali.prompts.LANGUAGES": "issue 25 (the old path users typed)"}
    code = (
        "import sys, pali\n"
        "assert 'torch' not in sys.modules, 'import pali imported torch'\n"
        "for name in sys.argv[1:]:\n"
        "    obj = pali\n"
        "    for part in name.split('.')[1:]:\n"
        "        try:\n"
        "            obj = getattr(obj, part)\n"
        "        except Exception as e:\n"
        "            print(name, type(e).__name__, e)\n"
        "            break\n"
    )
    run = _fresh_python(code, *sorted(names))
    assert run.returncode == 0, run.stderr[-2000:]
    missing = [f"{line}  (named in {names[line.split()[0]]})" for line in run.stdout.splitlines()]
    assert not missing, "\n".join(missing)


def test_entry_point_groups_in_the_docs_are_the_registries_groups():
    """A plugin declared under the group the docs name must be found (the layout rename once
    turned ``pali.heads`` into ``pali.tasks.heads`` in the docs, not in the code)."""
    pages = "\n".join(p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
    declared = set(re.findall(r'\[project\.entry-points\."([^"]+)"\]', pages))
    table = dict(re.findall(r"\| `pali\.config\.registry\.(\w+)` \| `([\w.]+)` \|", (ROOT / "docs" / "plugins.md").read_text()))
    registries = {"HEADS": HEADS, "VISION_ENCODERS": VISION_ENCODERS, "TEXT_STACKS": TEXT_STACKS, "CONNECTORS": CONNECTORS}
    assert declared and declared <= ENTRY_POINT_GROUPS
    assert table == {name: r.entry_point_group for name, r in registries.items()}
