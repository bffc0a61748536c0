"""The walls between the rooms, kept by the code and not by convention.

Every module's imports are read with ``ast`` (imports inside functions too, relative imports
resolved to absolute names; ``if TYPE_CHECKING:`` blocks aside, since they never run) and checked
against the layer table below: an import may only reach its own layer or one below it, and the
import graph has no cycle at all. The layers on top (tasks, data, eval, CLI) use the model's public
API. See docs/architecture.md, whose rooms table is this one.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pali import PaliModel

ROOT = Path(__file__).resolve().parents[1]

# Low to high. A module may import modules of its own layer or of the layers below it, never above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("leaves", ("pali.errors", "pali.defaults", "pali.lazy", "pali._moved", "pali._kernels_path", "pali.bundled")),
    ("kernels", ("pali.kernels",)),
    ("config", ("pali.config",)),
    ("nn", ("pali.nn",)),
    ("generation", ("pali.generation",)),
    ("models", ("pali.models",)),
    ("io", ("pali.io",)),
    ("convert", ("pali.convert",)),
    ("hub", ("pali.hub",)),
    ("processing", ("pali.processing",)),
    ("pretrained", ("pali.pretrained",)),
    ("tasks", ("pali.tasks",)),
    ("train, data, eval", ("pali.train", "pali.data", "pali.eval")),
    ("cli", ("pali.cli", "pali.__main__")),
    ("testing", ("pali.testing",)),
]
ON_TOP = ("pali.tasks", "pali.data", "pali.eval", "pali.cli")
FOREIGN_FORMATS = ("huggingface_hub", "safetensors", "transformers")

# (who imports, what it may not import, why): rules the layer order alone does not say.
WALLS = [
    (("pali.kernels",), ("pali", "transformers"),
     "kernels know nothing of models: tensors in, tensors out"),
    (("pali.config", "pali.nn", "pali.generation", "pali.models"), FOREIGN_FORMATS,
     "configs, layers, decoding and the model know nothing of files or the Hub"),
]
# Imports a rule allows although they match one of its prefixes: a room importing itself.
SELF = {"pali.kernels": ("pali.kernels",)}


def _matches(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def layer_of(module: str) -> int | None:
    """Index in ``LAYERS`` of ``module``'s room (``None``: the ``pali`` package itself)."""
    return next((i for i, (_, rooms) in enumerate(LAYERS) if _matches(module, rooms)), None)


def _module_name(path: Path, root: Path) -> str:
    if path.is_relative_to(root / "kernels"):
        parts = ("pali", "kernels", *path.relative_to(root / "kernels").with_suffix("").parts)
        parts = parts[:-1] if parts[-1] == "_package" else parts  # kernels/_package.py is pali.kernels
    else:
        parts = path.relative_to(root / "src").with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = ROOT) -> dict[str, Path]:
    files = [*(root / "src" / "pali").rglob("*.py"), *(root / "kernels").rglob("*.py")]
    return {_module_name(p, root): p for p in files}


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    return skip


def imports(source: str, module: str, is_package: bool, known: set[str] | None = None) -> set[str]:
    """Absolute names ``module`` imports (``from a import b`` gives ``a`` and ``a.b``), at any
    depth of the code except ``if TYPE_CHECKING:`` blocks. With ``known`` (the modules that
    exist), ``from a import b`` gives ``a.b`` alone when that is a module: ``from . import x``
    imports ``x``, not the package's ``__init__``."""
    package = module if is_package else module.rpartition(".")[0]
    tree = ast.parse(source)
    skip = _type_checking_blocks(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module
            names = {f"{base}.{alias.name}" for alias in node.names}
            if known is None or not names <= known:
                found.add(base)
            found.update(names)
    return found


def graph(found: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the pali modules it imports (names that are attributes map to their module; the
    bare package ``pali``, which imports only the leaves, is left out of its children's edges)."""
    edges = {}
    for module, path in found.items():
        targets = set()
        for name in imports(path.read_text(), module, path.name in ("__init__.py", "_package.py"), set(found)):
            while name and name not in found:
                name = name.rpartition(".")[0]
            if name and name != module and name != "pali":
                targets.add(name)
        edges[module] = targets
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def violations(module: str, names: set[str]) -> list[str]:
    out = []
    mine = layer_of(module)
    for name in sorted(names):
        theirs = layer_of(name)
        if mine is not None and theirs is not None and theirs > mine:
            out.append(f"{module} imports {name}: {LAYERS[mine][0]} sits below {LAYERS[theirs][0]}")
    for importers, forbidden, why in WALLS:
        if not _matches(module, importers):
            continue
        allowed = next((SELF[i] for i in importers if i in SELF), ())
        for name in sorted(names):
            if _matches(name, forbidden) and not _matches(name, allowed):
                out.append(f"{module} imports {name}: {why}")
    return out


def test_every_module_has_a_room():
    found = modules()
    assert {"pali.kernels.api", "pali.models.text.mt5", "pali.models.pali", "pali.cli", "pali.io.safetensors"} <= set(found)
    homeless = [m for m in found if m != "pali" and layer_of(m) is None]
    assert not homeless, homeless
    top_level = sorted(p.name for p in (ROOT / "src" / "pali").glob("*.py"))
    assert len(top_level) <= 10, top_level


def test_the_walls_hold():
    found = []
    for module, path in sorted(modules().items()):
        found += violations(module, imports(path.read_text(), module, path.name in ("__init__.py", "_package.py")))
    assert not found, "\n".join(found)


def test_the_import_graph_has_no_cycle():
    assert cycles(graph(modules())) == []


def test_the_package_imports_only_the_leaves():
    """``import pali`` stays light: its ``__init__`` imports the leaves, everything else on first use."""
    edges = graph(modules())
    assert {layer_of(m) for m in edges["pali"]} <= {0}, edges["pali"]


def test_a_planted_cycle_is_found(tmp_path):
    """The cycle check is not vacuous: two modules of a fake tree that import each other, one of
    them inside a function, are reported; a ``TYPE_CHECKING`` import closes no cycle."""
    package = tmp_path / "src" / "pali"
    (package / "sub").mkdir(parents=True)
    (tmp_path / "kernels").mkdir()
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "a.py").write_text("from . import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from .a import g\n")
    (package / "sub" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n")
    (package / "sub" / "d.py").write_text("from . import c\n")
    (package / "sub" / "a.py").write_text("from . import b\nfrom . import d\n")
    assert cycles(graph(modules(tmp_path))) == [["pali.sub.a", "pali.sub.b"]]


@pytest.mark.parametrize("module, source, is_package, bad", [
    ("pali.models.text.mt5", "def f():\n    from ...hub import load\n", False, "pali.hub"),  # function-level
    ("pali.models.vision.vit", "from ... import cli\n", False, "pali.cli"),
    ("pali.nn.attention", "import pali.tasks.heads.classify\n", False, "pali.tasks.heads.classify"),
    ("pali.kernels", "from .. import model\n", True, "pali"),
    ("pali.kernels.api", "from pali.errors import InputError\n", False, "pali.errors"),
    ("pali.models.pali", "from ..convert.hf import x\n", False, "pali.convert.hf"),
    ("pali.generation.search", "import safetensors.torch\n", False, "safetensors.torch"),
    ("pali.io.loading", "from ..hub.card import model_card\n", False, "pali.hub.card"),
    ("pali.convert.plan", "from ..processing.processor import PaliProcessor\n", False, "pali.processing.processor"),
    ("pali.config.base", "def f():\n    from ..nn.meta import meta_device\n", False, "pali.nn.meta"),
])
def test_the_checker_sees_each_kind_of_breach(module, source, is_package, bad):
    """The walls test is not vacuous: each kind of import it must catch is caught."""
    assert any(f"imports {bad}:" in v for v in violations(module, imports(source, module, is_package)))


def test_the_checker_lets_rooms_import_what_they_may():
    assert not violations("pali.kernels.api", imports("from . import t5_attention\n", "pali.kernels.api", False))
    assert not violations("pali.pretrained", imports("from .models.pali import PaliModel\n", "pali.pretrained", False))
    assert not violations("pali.models.pali", imports(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..hub import x\n", "pali.models.pali", False))


# -- each on-disk format has one writer --------------------------------------------------------------

# Calls that write or replace a file, and the one module each format may be written from.
WRITERS = {
    "config.json": "pali.io.layout", "the shard index": "pali.io.layout", "safetensors": "pali.io.safetensors",
    "atomic replacement": "pali.io.atomic",
}


def _writes(source: str) -> dict[str, list[int]]:
    """Lines of ``source`` that write one of the formats in ``WRITERS`` (by what they name)."""
    out: dict[str, list[int]] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        call = ast.unparse(node)
        target = ast.unparse(node.func)
        writes = target.endswith((".write_text", ".write_bytes", "json.dump")) or (
            target == "open" and any(m in call for m in ("'w", '"w')))
        if writes and re.search(r"\bCONFIG_NAME\b|['\"]config\.json", call):
            out.setdefault("config.json", []).append(node.lineno)
        if writes and ("INDEX_NAME" in call or "index.json" in call):
            out.setdefault("the shard index", []).append(node.lineno)
        if target.endswith(("os.replace", "os.rename", "mkstemp", "mkdtemp", "renameat2")):
            out.setdefault("atomic replacement", []).append(node.lineno)
        if target.endswith("struct.pack") and "<Q" in call:
            out.setdefault("safetensors", []).append(node.lineno)
    return out


def test_each_format_has_one_writer():
    found = []
    for module, path in sorted(modules().items()):
        if layer_of(module) == layer_of("pali.testing"):
            continue  # fixtures write foreign formats on purpose
        for what, lines in _writes(path.read_text()).items():
            if module != WRITERS[what]:
                found.append(f"{module} writes {what} (lines {lines}); only {WRITERS[what]} may")
    assert not found, "\n".join(found)


def test_the_writer_check_sees_a_second_writer():
    assert _writes("(tmp / CONFIG_NAME).write_text(text)\n") == {"config.json": [1]}
    assert _writes("def f(a, b):\n    os.replace(a, b)\n") == {"atomic replacement": [2]}
    assert _writes("json.dump(index, open(d / INDEX_NAME, 'w'))\n").keys() == {"the shard index"}


# -- kernels/ shadows nothing -------------------------------------------------------------------------


def test_the_kernels_folder_shadows_no_installed_kernels_package(tmp_path):
    """From the checkout root (where ``python`` puts the working directory first on ``sys.path``,
    no ``-P``), an installed ``kernels`` package is the one ``import kernels`` finds, and
    ``pali.kernels`` is still ours."""
    site = tmp_path / "site"
    (site / "kernels").mkdir(parents=True)
    (site / "kernels" / "__init__.py").write_text("CUDAProperties = 'the installed one'\n")
    code = ("import kernels, pali, pali.kernels; print(kernels.CUDAProperties); "
            "print(pali.kernels.attention.__module__)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT / "src")])
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["the", "installed", "one", "pali.kernels.api"]


# -- the layers on top use the model's public API ----------------------------------------------------

# What heads, pipeline and CLI may touch on a model: its class's public methods and properties
# (nn.Module's included) and its config; not its towers (model.text, model.vision, ...).
PUBLIC_MODEL = {name for name in dir(PaliModel) if not name.startswith("_")} | {"config"}


def private_uses(source: str) -> list[str]:
    """Private pali names imported, and non-public attributes read off ``model`` / ``self.model``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("pali")):
            for part in [*(node.module or "").split("."), *(a.name for a in node.names)]:
                if part.startswith("_") and not part.endswith("__"):  # dunders are public
                    out.append(f"line {node.lineno}: imports private {part}")
        if isinstance(node, ast.Attribute) and node.attr not in PUBLIC_MODEL:
            owner = node.value
            if (isinstance(owner, ast.Name) and owner.id == "model") or (
                isinstance(owner, ast.Attribute) and owner.attr == "model"
            ):
                out.append(f"line {node.lineno}: model.{node.attr} is not the model's public API")
    return out


def test_heads_pipeline_and_cli_use_the_public_api_only():
    found_modules = modules()
    on_top = [m for m in found_modules if _matches(m, ON_TOP)]
    assert {"pali.tasks.heads.classify", "pali.tasks.pipeline", "pali.cli"} <= set(on_top)
    found = [f"{m} {use}" for m in sorted(on_top) for use in private_uses(found_modules[m].read_text())]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("source", [
    "def f(model):\n    return model.text.decode(x)\n",
    "def f(self):\n    return self.model.vision(x)\n",
    "from ..models.pali import _batch_size\n",
    "from pali._kernels_path import kernels_dir\n",
])
def test_the_public_api_check_sees_private_uses(source):
    assert private_uses(source)


def test_the_public_api_check_allows_the_public_api():
    assert not private_uses("def f(model):\n    model.score(x, targets=t)\n    model.generate(x)\n    model.config.text\n")
