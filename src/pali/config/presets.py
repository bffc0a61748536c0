"""The paper's PaLI sizes as named presets, composed from the towers' own presets.

Unimodal presets (``vit-g14``, ``mt5-large``, ...) are tables in each tower's config module;
this module's table holds the PaLI combinations, and the lookup helpers read them all through
``pali.config.registry.PRESETS``. Nothing here needs torch.
"""

from __future__ import annotations

from functools import partial

from ..errors import ConfigError
from .base import Config, PaliConfig, VisionConfig
from .registry import PRESETS, Preset


def get_config(name: str, *, image_size: int | None = None) -> Config:
    """A fresh config for preset ``name``; ``image_size`` overrides the vision resolution.

    >>> get_config("pali-17b", image_size=588).vision.num_tokens
    1764
    """
    config = PRESETS.get(name).build()
    if image_size is not None:
        if isinstance(config, PaliConfig):
            config.vision = config.vision.replace(image_size=image_size)
        elif isinstance(config, VisionConfig):
            config = config.replace(image_size=image_size)
        else:
            raise ConfigError(f"preset {name!r} has no image to resize")
    return config


def list_presets(family: str | None = None) -> list[str]:
    """Names of the registered presets, optionally only one family ("pali", "vision", "text")."""
    return [n for n in PRESETS.names() if family is None or PRESETS.get(n).family == family]


def _build_pali(name: str, vision: str, text: str) -> PaliConfig:
    return PaliConfig(vision=get_config(vision), text=get_config(text), preset=name)


def _pali(name: str, vision: str, text: str, description: str) -> Preset:
    return Preset(name, "pali", partial(_build_pali, name, vision, text), description)


PRESET_TABLE = (
    _pali("pali-3b", "vit-g14", "mt5-large", "PaLI-3B: ViT-G/14 + mT5-Large"),
    _pali("pali-15b", "vit-g14", "mt5-xxl", "PaLI-15B: ViT-G/14 + mT5-XXL"),
    _pali("pali-17b", "vit-e14", "mt5-xxl", "PaLI-17B: ViT-e/14 + mT5-XXL"),
    _pali("pali-tiny", "vit-tiny", "mt5-tiny", "tiny PaLI for tests"),
)
