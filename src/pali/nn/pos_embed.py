"""Learned position embeddings at another resolution."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import InputError


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: int, num_prefix_tokens: int = 0) -> torch.Tensor:
    """Bilinearly resample a ``[1, P + g*g, D]`` position embedding to a ``new_grid`` square.

    Used when a checkpoint trained at one resolution runs at another (PaLI-17B goes 224 -> 588 px);
    prefix (class) tokens are kept as they are. Corner-aligned linear interpolation, as big_vision's
    ``resample_posemb`` does with ``scipy.ndimage.zoom(order=1)``.
    """
    prefix, grid_tokens = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old = math.isqrt(grid_tokens.shape[1])
    if old * old != grid_tokens.shape[1]:
        raise InputError(f"position embedding holds {grid_tokens.shape[1]} grid tokens: not a square")
    if old == new_grid:
        return pos_embed
    d = grid_tokens.shape[-1]
    grid = grid_tokens.reshape(1, old, old, d).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bilinear", align_corners=True)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, d).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)
