"""Where ``pali.kernels`` comes from: the ``kernels/`` folder of the same tree as this package.

The repository keeps ``kernels/`` at the top level (it knows nothing of models) and ships it as
``pali.kernels``. A wheel puts it inside the package (``pali/kernels/``); a checkout has it at the
root, beside ``src/`` (``src/pali/`` -> ``kernels/``). Binding it here, by path, before anything
imports it, is the one rule for every way of running: a checkout on ``PYTHONPATH`` imports
without being installed, and never picks up the kernels of another checkout that an editable
install's import hook points at.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
import sys

NAME = "pali.kernels"
#: The file that plays the package's ``__init__``: see its docstring for why it has another name.
INIT = "_package.py"


def kernels_dir() -> Path:
    """The ``kernels`` folder belonging to this copy of ``pali`` (installed or a checkout)."""
    here = Path(__file__).parent
    candidates = [here / "kernels"]
    if here.parent.name == "src":  # a checkout: src/pali beside kernels/
        candidates.append(here.parent.parent / "kernels")
    for candidate in candidates:
        if (candidate / INIT).is_file():
            return candidate
    raise ImportError(
        f"pali at {here} has no kernels package: looked in {', '.join(map(str, candidates))}; "
        "reinstall pali-vlm, or run from a complete checkout"
    )


def bind_kernels() -> None:
    """Bind ``kernels_dir()`` as ``pali.kernels`` unless it is already imported.

    The module is loaded lazily (its code runs on first attribute access), so ``import pali``
    still costs no torch import.
    """
    if NAME in sys.modules:
        return
    folder = kernels_dir()
    spec = importlib.util.spec_from_file_location(
        NAME, folder / INIT, submodule_search_locations=[str(folder)]
    )
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[NAME] = module
    spec.loader.exec_module(module)
    setattr(sys.modules["pali"], "kernels", module)
