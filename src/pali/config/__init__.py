"""Configs: torch-free dataclasses (``base``), the registries keyed by kind (``registry``) and the
named presets (``presets``). Nothing here builds a module or imports torch: a config.json is read,
checked and written without either."""

from .base import SIZE_LIMITS, Config, ConnectorConfig, PaliConfig, TextConfig, VisionConfig, size_limit

__all__ = ["SIZE_LIMITS", "Config", "ConnectorConfig", "PaliConfig", "TextConfig", "VisionConfig", "size_limit"]

from ..lazy import submodules_on_demand  # noqa: E402

__getattr__ = submodules_on_demand(__name__)  # pali.config.<module> after a bare ``import pali``
