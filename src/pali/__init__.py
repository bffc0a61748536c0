"""PaLI in PyTorch: a ViT turns the image into visual words, mT5 reads them with the prompt.

>>> from pali import PaliModel
>>> model = PaliModel.from_preset("pali-tiny")
"""

from . import text as _text  # noqa: F401  (registers the built-in towers)
from . import vision as _vision  # noqa: F401
from .config import PaliConfig, TextConfig, VisionConfig
from .errors import CheckpointError, ConfigError, InputError, PaliError, RegistryError
from .model import PaliModel, PaliOutput
from .presets import get_config, list_presets
from .text.mt5 import MT5Config
from .vision.vit import ViTConfig

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "ConfigError", "InputError", "MT5Config", "PaliConfig", "PaliError",
    "PaliModel", "PaliOutput", "RegistryError", "TextConfig", "ViTConfig", "VisionConfig",
    "get_config", "list_presets",
]
