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

from ._kernels_path import bind_kernels as _bind_kernels

_bind_kernels()  # pali.kernels from this tree's kernels/, whatever else is installed

from . import bundled  # noqa: F401  (bundled models and sample images: pali.bundled.SAMPLES)

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "ConnectorConfig": "config", "PaliConfig": "config", "TextConfig": "config", "VisionConfig": "config",
    "LinearConfig": "connectors.linear_config", "QFormerConfig": "connectors.qformer_config",
    "CheckpointError": "errors", "ConfigError": "errors", "InputError": "errors", "PaliError": "errors",
    "MissingFileError": "errors", "RegistryError": "errors",
    "HubError": "hub", "list_recipes": "hub",
    "GenerationConfig": "generation",
    "ImageProcessor": "image_processing",
    "PaliModel": "model", "PaliOutput": "model",
    "Pipeline": "pipeline", "pipeline": "pipeline",
    "get_config": "presets", "list_presets": "presets",
    "PaliProcessor": "processor", "ProcessorConfig": "processor",
    "list_connectors": "registry", "list_heads": "registry", "list_text_stacks": "registry", "list_vision_encoders": "registry",
    "MT5Config": "text.mt5_config",
    "Tokenizer": "tokenizer",
    "ViTConfig": "vision.vit_config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pali' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


class _Package(types.ModuleType):
    """``pali.pipeline`` is the function even once the submodule of that name is imported (the
    import system binds each submodule on its package; eager imports used to rebind it)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:  # what static checkers and IDEs see
    from .config import ConnectorConfig, PaliConfig, TextConfig, VisionConfig  # noqa: F401
    from .connectors.linear_config import LinearConfig  # noqa: F401
    from .connectors.qformer_config import QFormerConfig  # noqa: F401
    from .errors import CheckpointError, ConfigError, InputError, MissingFileError, PaliError, RegistryError  # noqa: F401
    from .hub import HubError, list_recipes  # noqa: F401
    from .generation import GenerationConfig  # noqa: F401
    from .image_processing import ImageProcessor  # noqa: F401
    from .model import PaliModel, PaliOutput  # noqa: F401
    from .pipeline import Pipeline, pipeline  # noqa: F401
    from .presets import get_config, list_presets  # noqa: F401
    from .processor import PaliProcessor, ProcessorConfig  # noqa: F401
    from .registry import list_connectors, list_heads, list_text_stacks, list_vision_encoders  # noqa: F401
    from .text.mt5_config import MT5Config  # noqa: F401
    from .tokenizer import Tokenizer  # noqa: F401
    from .vision.vit_config import ViTConfig  # noqa: F401
