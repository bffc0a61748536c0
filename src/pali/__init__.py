"""PaLI in PyTorch: a ViT turns the image into visual words, mT5 reads them with the prompt.

>>> from pali import PaliModel
>>> model = PaliModel.from_preset("pali-tiny")
"""

from . import bundled  # noqa: F401  (bundled models and sample images: pali.bundled.SAMPLES)
from . import text as _text  # noqa: F401  (registers the built-in towers)
from . import vision as _vision  # noqa: F401
from . import heads as _heads  # noqa: F401  (built-in heads, registered before any plugin is read)
from .config import PaliConfig, TextConfig, VisionConfig
from .errors import CheckpointError, ConfigError, InputError, PaliError, RegistryError
from .generation import GenerationConfig
from .hub import HubError, list_recipes
from .image_processing import ImageProcessor
from .model import PaliModel, PaliOutput
from .pipeline import Pipeline, pipeline
from .presets import get_config, list_presets
from .processor import PaliProcessor, ProcessorConfig
from .registry import list_heads, list_text_stacks, list_vision_encoders
from .text.mt5 import MT5Config
from .tokenizer import Tokenizer
from .vision.vit import ViTConfig

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "ConfigError", "GenerationConfig", "InputError", "MT5Config", "PaliConfig", "PaliError",
    "PaliModel", "PaliOutput", "RegistryError", "TextConfig", "ViTConfig", "VisionConfig",
    "HubError", "get_config", "list_presets", "list_recipes",
    "ImageProcessor", "PaliProcessor", "Pipeline", "ProcessorConfig", "Tokenizer", "list_heads",
    "list_text_stacks", "list_vision_encoders", "pipeline",
]
