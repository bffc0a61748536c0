"""The linear connector's config, apart from the module so a config.json reads without torch."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ConnectorConfig


@dataclass
class LinearConfig(ConnectorConfig):
    """No fields of its own: the bias switch is ``PaliConfig.projection_bias`` (older configs)."""

    kind = "linear"

    def num_tokens(self, vision_tokens: int) -> int:
        return vision_tokens
