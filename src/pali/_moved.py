"""Module paths from before the sub-packages, kept importable: ``pali.prompts`` is
``pali.processing.prompts``, ``pali.heads`` is ``pali.tasks.heads``, and so on.

Code written against the old layout (``from pali.tokenizer import Tokenizer``,
``import pali.vision.vit``) and names that messages or older docs spell (``pali.prompts.LANGUAGES``)
keep working: a finder first on ``sys.meta_path`` answers each old name with the module now
holding it, the same object, so monkeypatching or ``isinstance`` through either name agree. pali's
own code uses the new paths only (the walls test checks it).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types

#: old module -> the module that holds it now; a package's submodules follow it.
MOVED = {
    "pali.registry": "pali.config.registry",
    "pali.presets": "pali.config.presets",
    "pali.attention": "pali.nn.attention",
    "pali.meta": "pali.nn.meta",
    "pali.model": "pali.models.pali",
    "pali.vision": "pali.models.vision",
    "pali.text": "pali.models.text",
    "pali.connectors": "pali.models.connectors",
    "pali.checkpoint": "pali.io",
    "pali.loading": "pali.io.loading",
    "pali.processor": "pali.processing.processor",
    "pali.hf_processing": "pali.processing.hf_processing",
    "pali.image_processing": "pali.processing.image",
    "pali.tokenizer_json": "pali.processing.tokenizer_json",
    "pali.tokenizer": "pali.processing.tokenizer",
    "pali.wordpiece": "pali.processing.wordpiece",
    "pali.prompts": "pali.processing.prompts",
    "pali.heads": "pali.tasks.heads",
    "pali.pipeline": "pali.tasks.pipeline",
    "pali.training": "pali.train.helpers",
    "pali.parallel": "pali.train.parallel",
}


def new_name(name: str) -> str | None:
    """Where the module once called ``name`` lives now (``None``: it did not move)."""
    if name == "pali.text.kv_cache":  # the one module that changed rooms inside a moved package
        return "pali.generation.kv_cache"
    for old, new in MOVED.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old):]
    return None


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers an old name with the module under its new name: the same object, not a copy."""

    def __init__(self) -> None:
        self._specs: dict[str, importlib.machinery.ModuleSpec] = {}

    def find_spec(self, name, path=None, target=None):
        return None if new_name(name) is None else importlib.machinery.ModuleSpec(name, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = importlib.import_module(new_name(spec.name))
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        """The module ran under its new name already. The import system has just given it the
        old name's spec; its own is put back (``find_spec``, ``reload`` and pickle read it)."""
        module.__spec__ = self._specs.pop(module.__spec__.name)


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once): before the path finder, which would
    otherwise load ``pali.models.vision.vit`` a second time, as a new module, from the moved folder."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())

