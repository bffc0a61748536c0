"""PaLI's connector: one Linear from the vision width to the text width, per visual token."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from ...config.registry import CONNECTORS
from .linear_config import LinearConfig

if TYPE_CHECKING:
    from ...config.base import PaliConfig


class LinearConnector(nn.Linear):
    """``[B, N, vision width]`` -> ``[B, N, d_model]``; its parameters are ``weight``/``bias``,
    so a PaliModel's state dict keeps the names ``projection.weight``/``projection.bias``."""

    config_class = LinearConfig
    #: Whether ``forward`` also takes instruction ids (InstructBLIP's Q-Former does).
    accepts_text = False

    def __init__(self, config: "PaliConfig") -> None:
        super().__init__(config.vision.width, config.text.d_model, bias=config.projection_bias)

    def reset_parameters(self) -> None:
        """LeCun normal: projected visual tokens start at the scale of mT5's unit-variance embeddings."""
        nn.init.normal_(self.weight, std=self.in_features**-0.5)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


CONNECTORS.register(LinearConfig.kind, LinearConnector)
