"""A plugin vision tower for tests (not a test module): declared the way a third-party package
would, with no ``blocks`` attribute, its own ``shape_fields`` and its own ``fsdp_units()``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pali import VisionConfig
from pali.config.registry import VISION_ENCODERS


@dataclass
class ToyTowerConfig(VisionConfig):
    """``init`` is a layout switch: it changes no parameter's shape."""

    kind = "toy-tower"
    shape_fields = ("image_size", "patch_size", "hidden_size", "depth")
    image_size: int = 16
    patch_size: int = 8
    hidden_size: int = 16
    depth: int = 2
    init: str = "normal"

    @property
    def width(self) -> int:
        return self.hidden_size

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class ToyTower(nn.Module):
    """A linear patch embedding, then residual linear ``stages`` (its FSDP units)."""

    config_class = ToyTowerConfig

    def __init__(self, config: ToyTowerConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Linear(3 * config.patch_size**2, config.hidden_size)
        self.stages = nn.ModuleList(nn.Linear(config.hidden_size, config.hidden_size) for _ in range(config.depth))

    def fsdp_units(self) -> list[nn.Module]:
        return list(self.stages)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        p = self.config.patch_size
        x = self.embed(F.unfold(pixel_values, p, stride=p).transpose(1, 2))
        for stage in self.stages:
            x = x + stage(x)
        return x


def register() -> None:
    """Register the tower as its plugin's entry point would (once per process)."""
    if ToyTowerConfig.kind not in VISION_ENCODERS:
        VISION_ENCODERS.register(ToyTowerConfig.kind, ToyTower, origin=__name__)
