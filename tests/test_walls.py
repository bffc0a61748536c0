"""The walls between the rooms, kept by the code and not by convention.

Every module's imports are read with ``ast`` (imports inside functions and ``if TYPE_CHECKING:``
blocks too, relative imports resolved to absolute names) and checked against the table below; the
layers on top (heads, pipeline, CLI) must use the model's public API. See docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pali import PaliModel

ROOT = Path(__file__).resolve().parents[1]

MODEL_CODE = ("pali.vision", "pali.text", "pali.connectors", "pali.attention", "pali.generation")
FILES = ("pali.hub", "pali.convert", "pali.checkpoint", "pali.loading")
ON_TOP = ("pali.heads", "pali.pipeline", "pali.cli")
PROCESSING = ("pali.processor", "pali.tokenizer", "pali.tokenizer_json", "pali.image_processing", "pali.hf_processing",
              "pali.wordpiece")
FOREIGN_FORMATS = ("huggingface_hub", "safetensors", "transformers")

# (who imports, what it may not import, why). A name matches a prefix when it is the prefix or a
# submodule of it. pali.pretrained is the one bridge from PaliModel to files and the Hub: its
# methods import hub code when called, so the model itself names none of it.
WALLS = [
    (("pali.kernels",), ("pali", "transformers"),
     "kernels know nothing of models: tensors in, tensors out"),
    (MODEL_CODE, FILES + ON_TOP + PROCESSING + FOREIGN_FORMATS + ("pali.pretrained", "pali.model"),
     "towers, connectors, attention and generation know nothing of files, the Hub, the CLI, heads "
     "or processing, nor of the model that assembles them"),
    (("pali.model",), FILES + ON_TOP + PROCESSING + FOREIGN_FORMATS,
     "PaliModel reaches files and the Hub only through pali.pretrained"),
    (FILES, ON_TOP,
     "conversion and Hub code turn files into state dicts and configs; they serve the top, not use it"),
]
# Imports a rule allows although they match one of its prefixes: a room importing itself.
SELF = {"pali.kernels": ("pali.kernels",)}


def _module_name(path: Path) -> str:
    if path.is_relative_to(ROOT / "kernels"):
        parts = ("pali", "kernels", *path.relative_to(ROOT / "kernels").with_suffix("").parts)
    else:
        parts = path.relative_to(ROOT / "src").with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    files = [*(ROOT / "src" / "pali").rglob("*.py"), *(ROOT / "kernels").rglob("*.py")]
    return {_module_name(p): p for p in files}


def imports(source: str, module: str, is_package: bool) -> set[str]:
    """Absolute names ``module`` imports: ``from a import b`` gives ``a`` and ``a.b``."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _matches(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(module: str, names: set[str]) -> list[str]:
    out = []
    for importers, forbidden, why in WALLS:
        if not _matches(module, importers):
            continue
        allowed = next((SELF[i] for i in importers if i in SELF), ())
        for name in sorted(names):
            if _matches(name, forbidden) and not _matches(name, allowed):
                out.append(f"{module} imports {name}: {why}")
    return out


def test_the_walls_hold():
    modules = _modules()
    assert {"pali.kernels.api", "pali.text.mt5", "pali.model", "pali.cli"} <= set(modules)
    found = []
    for module, path in sorted(modules.items()):
        found += violations(module, imports(path.read_text(), module, path.name == "__init__.py"))
    assert not found, "\n".join(found)


@pytest.mark.parametrize("module, source, is_package, bad", [
    ("pali.text.mt5", "def f():\n    from ..hub import load\n", False, "pali.hub"),  # function-level
    ("pali.vision.vit", "from .. import cli\n", False, "pali.cli"),
    ("pali.attention", "import pali.heads.classify\n", False, "pali.heads.classify"),
    ("pali.kernels", "from .. import model\n", True, "pali"),
    ("pali.kernels.api", "from pali.errors import InputError\n", False, "pali.errors"),
    ("pali.model", "from .convert.hf import x\n", False, "pali.convert.hf"),
    ("pali.generation", "import safetensors.torch\n", False, "safetensors.torch"),
])
def test_the_checker_sees_each_kind_of_breach(module, source, is_package, bad):
    """The walls test is not vacuous: each kind of import it must catch is caught."""
    assert any(f"imports {bad}:" in v for v in violations(module, imports(source, module, is_package)))


def test_the_checker_lets_rooms_import_what_they_may():
    assert not violations("pali.kernels.api", imports("from . import t5_attention\n", "pali.kernels.api", False))
    assert not violations("pali.model", imports("from .pretrained import PretrainedMixin\n", "pali.model", False))


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
    modules = _modules()
    on_top = [m for m in modules if _matches(m, ON_TOP)]
    assert {"pali.heads.classify", "pali.pipeline", "pali.cli"} <= set(on_top)
    found = [f"{m} {use}" for m in sorted(on_top) for use in private_uses(modules[m].read_text())]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("source", [
    "def f(model):\n    return model.text.decode(x)\n",
    "def f(self):\n    return self.model.vision(x)\n",
    "from ..model import _batch_size\n",
    "from pali._kernels_path import kernels_dir\n",
])
def test_the_public_api_check_sees_private_uses(source):
    assert private_uses(source)


def test_the_public_api_check_allows_the_public_api():
    assert not private_uses("def f(model):\n    model.score(x, targets=t)\n    model.generate(x)\n    model.config.text\n")
