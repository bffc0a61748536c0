"""ViT specifics: position-embedding resampling and running at another resolution."""

import numpy as np
import pytest
import torch

from pali import InputError, get_config
from pali.models.vision.vit import ViT, resample_pos_embed


def _zoom_linear(grid: np.ndarray, new: int) -> np.ndarray:
    """scipy.ndimage.zoom(order=1) on the two grid axes, written out: corners map to corners."""
    old = grid.shape[0]
    coords = np.arange(new) * (old - 1) / (new - 1)
    lo = np.floor(coords).astype(int).clip(0, old - 2)
    t = coords - lo
    rows = grid[lo] * (1 - t)[:, None, None] + grid[lo + 1] * t[:, None, None]
    return rows[:, lo] * (1 - t)[None, :, None] + rows[:, lo + 1] * t[None, :, None]


def test_resample_matches_big_vision_zoom():
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(1, 16, 6, generator=g)
    new = resample_pos_embed(pos, 7)
    expected = _zoom_linear(pos[0].reshape(4, 4, 6).numpy(), 7).reshape(1, 49, 6)
    assert new.shape == (1, 49, 6)
    assert np.abs(new.numpy() - expected).max() < 1e-6
    assert torch.equal(resample_pos_embed(pos, 4), pos)


def test_resample_keeps_class_token_and_rejects_non_square():
    pos = torch.randn(1, 1 + 9, 4)
    new = resample_pos_embed(pos, 5, num_prefix_tokens=1)
    assert new.shape == (1, 26, 4) and torch.equal(new[:, :1], pos[:, :1])
    with pytest.raises(InputError, match="not a square"):
        resample_pos_embed(torch.randn(1, 10, 4), 5)


def test_checkpoint_at_one_resolution_runs_at_another():
    low = ViT(get_config("vit-tiny")).eval()
    high_config = get_config("vit-tiny", image_size=64)
    high = ViT(high_config).eval()
    state = low.state_dict()
    state["pos_embed"] = resample_pos_embed(state["pos_embed"], high_config.grid)
    high.load_state_dict(state)
    out = high(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 64, 32) and torch.isfinite(out).all()


def test_every_activation_a_config_may_name_is_implemented():
    from pali.nn.mlp import ACTIVATIONS
    from pali.models.vision.vit_config import ACTIVATION_NAMES

    assert sorted(ACTIVATIONS) == sorted(ACTIVATION_NAMES)
