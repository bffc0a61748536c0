"""The linear connector's config, apart from the module so a config.json reads without torch."""

from __future__ import annotations

from dataclasses import dataclass

from ...config.base import ConnectorConfig


@dataclass
class LinearConfig(ConnectorConfig):
    """No fields of its own: the bias switch is ``PaliConfig.projection_bias`` (older configs)."""

    kind = "linear"

    def num_tokens(self, vision_tokens: int) -> int:
        return vision_tokens

    def num_parameters(self, model) -> int:
        """``vision.width x text.d_model``, plus the bias when ``model.projection_bias``."""
        width = model.text.d_model
        return model.vision.width * width + (width if model.projection_bias else 0)
