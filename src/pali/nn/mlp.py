"""The two-layer MLP of a transformer block (ViT, EVA, the Q-Former), by activation name."""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .gemv import inference_linear

# One function per name in ``vit_config.ACTIVATION_NAMES`` (what configs may name).
ACTIVATIONS = {
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
}


class MlpBlock(nn.Module):
    """``fc2(act(fc1(x)))``, with biases: the names every ViT-family checkpoint uses."""

    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = ACTIVATIONS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # At inference on a CPU, the fastest fp32 kernel for these rows (``pali.nn.gemv``).
        return inference_linear(self.act(inference_linear(x, self.fc1)), self.fc2)
