"""Sub-modules as attributes on first use: ``pali.hub.card`` after a bare ``import pali``.

Each sub-package ends with ``__getattr__ = submodules_on_demand(__name__)`` (PEP 562) instead of
importing all its modules up front, so a config still loads without torch and ``pali --help``
stays instant, while every module path the docs and messages spell resolves as an attribute.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Callable
import types


def submodules_on_demand(package: str) -> Callable[[str], types.ModuleType]:
    """A package's module ``__getattr__`` (PEP 562) that imports its submodule ``name`` on first use.

    The docs and pali's own messages spell module paths (``pali.hub.card``, ``pali.train.helpers``);
    each must work as an attribute after a bare ``import pali``, without every package importing
    all its modules up front (a config loads without torch)."""

    def __getattr__(name: str) -> types.ModuleType:
        if not name.startswith("__") and importlib.util.find_spec(f"{package}.{name}") is not None:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
