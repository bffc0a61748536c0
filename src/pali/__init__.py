"""PaLI in PyTorch: a ViT turns the image into visual words, mT5 reads them with the prompt.

>>> from pali import PaliModel
>>> model = PaliModel.from_preset("pali-tiny")

The names below are imported on first use (PEP 562), so ``import pali`` (and the ``pali``
command's ``--help``) costs no torch import; the registries import the built-in towers and heads
themselves the first time they are read.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from . import _moved
from ._kernels_path import bind_kernels as _bind_kernels

_bind_kernels()  # pali.kernels from this tree's kernels/, whatever else is installed
_moved.install()  # the module paths from before the sub-packages (pali.processing.prompts, pali.tasks.heads, ...)

from . import bundled  # noqa: F401  (bundled models and sample images: pali.bundled.SAMPLES)

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "ConnectorConfig": "config.base", "PaliConfig": "config.base", "TextConfig": "config.base",
    "VisionConfig": "config.base",
    "LinearConfig": "models.connectors.linear_config", "QFormerConfig": "models.connectors.qformer_config",
    "CheckpointError": "errors", "ConfigError": "errors", "InputError": "errors", "PaliError": "errors",
    "MissingFileError": "errors", "RegistryError": "errors",
    "HubError": "hub", "list_recipes": "hub",
    "GenerationConfig": "generation",
    "ImageProcessor": "processing.image",
    "PaliModel": "pretrained", "PaliOutput": "models.pali", "quantize": "models.quantize",
    "Pipeline": "tasks.pipeline", "pipeline": "tasks.pipeline", "run": "data.inference",
    "get_config": "config.presets", "list_presets": "config.presets",
    "PaliProcessor": "processing.processor", "ProcessorConfig": "processing.processor",
    "list_connectors": "config.registry", "list_heads": "config.registry", "list_text_stacks": "config.registry",
    "list_vision_encoders": "config.registry",
    "MT5Config": "models.text.mt5_config",
    "Tokenizer": "processing.tokenizer",
    "ViTConfig": "models.vision.vit_config",
}

__all__ = sorted(_EXPORTS)

# Sub-packages reachable as attributes on first use (``pali.io.list_tensors`` after ``import pali``).
_SUBPACKAGES = ("cli", "config", "convert", "data", "eval", "generation", "hub", "io", "models", "nn", "processing",
                "tasks", "train")


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        if f"{__name__}.{name}" in _moved.MOVED or name in _SUBPACKAGES:  # pali.processing.prompts, pali.eval, ...
            value = importlib.import_module(f".{name}", __name__)
            globals()[name] = value
            return value
        raise AttributeError(f"module 'pali' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_SUBPACKAGES})


class _Package(types.ModuleType):
    """``pali.tasks.pipeline`` is the function even once a module of that name is imported (the import
    system binds each submodule on its package, and the old path ``pali.tasks.pipeline`` is one)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.{_EXPORTS.get(name)}":
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:  # what static checkers and IDEs see
    from .config.base import ConnectorConfig, PaliConfig, TextConfig, VisionConfig  # noqa: F401
    from .config.presets import get_config, list_presets  # noqa: F401
    from .config.registry import list_connectors, list_heads, list_text_stacks, list_vision_encoders  # noqa: F401
    from .errors import (  # noqa: F401
        CheckpointError,
        ConfigError,
        InputError,
        MissingFileError,
        PaliError,
        RegistryError,
    )
    from .generation import GenerationConfig  # noqa: F401
    from .hub import HubError, list_recipes  # noqa: F401
    from .models.connectors.linear_config import LinearConfig  # noqa: F401
    from .models.connectors.qformer_config import QFormerConfig  # noqa: F401
    from .models.pali import PaliOutput  # noqa: F401
    from .models.quantize import quantize  # noqa: F401
    from .models.text.mt5_config import MT5Config  # noqa: F401
    from .models.vision.vit_config import ViTConfig  # noqa: F401
    from .pretrained import PaliModel  # noqa: F401
    from .processing.image import ImageProcessor  # noqa: F401
    from .processing.processor import PaliProcessor, ProcessorConfig  # noqa: F401
    from .processing.tokenizer import Tokenizer  # noqa: F401
    from .data.inference import run  # noqa: F401
    from .tasks.pipeline import Pipeline, pipeline  # noqa: F401
