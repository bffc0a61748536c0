"""mT5's config and its named sizes, apart from the module so a config.json reads without torch.

``pali.models.text.mt5`` builds the module; a saved model's config, the ``pali presets`` listing and
every preset lookup need only this file.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from ...config.base import TextConfig
from ...config.registry import Preset
from ...errors import ConfigError

#: The feed-forward blocks of the T5 family: T5 v1.1 / mT5 / Flan-T5 / mT0 gate a tanh-GELU
#: (``wo(gelu(wi_0 x) * wi_1 x)``); the original T5 (v1.0) has one ReLU layer (``wo(relu(wi x))``).
FEED_FORWARD = ("gated-gelu", "relu")


@dataclass
class MT5Config(TextConfig):
    kind = "mt5"
    shape_fields = (
        "vocab_size", "d_model", "d_ff", "num_heads", "d_kv", "num_encoder_layers", "num_decoder_layers", "feed_forward",
    )
    d_ff: int = 1024
    num_heads: int = 6
    d_kv: int = 64
    num_encoder_layers: int = 8
    num_decoder_layers: int = 8
    num_buckets: int = 32
    max_distance: int = 128
    norm_eps: float = 1e-6
    dropout: float = 0.0
    feed_forward: str = "gated-gelu"

    def __post_init__(self) -> None:
        self.require_positive(
            "vocab_size", "d_model", "d_ff", "num_heads", "d_kv", "num_encoder_layers",
            "num_decoder_layers", "num_buckets", "max_distance",
        )
        if self.num_buckets % 2:
            raise ConfigError("MT5Config.num_buckets must be even (half per direction in the encoder)")
        if self.feed_forward not in FEED_FORWARD:
            raise ConfigError(f"MT5Config.feed_forward must be one of {FEED_FORWARD}, got {self.feed_forward!r}")

    @property
    def gated(self) -> bool:
        """Whether the feed-forward block has two input projections (``wi_0``, ``wi_1``) or one (``wi``)."""
        return self.feed_forward.startswith("gated-")

    def num_parameters(self) -> int:
        d, inner = self.d_model, self.num_heads * self.d_kv
        attention, mlp = 4 * d * inner, (3 if self.gated else 2) * d * self.d_ff  # no biases; RMSNorms are d each
        encoder = self.num_encoder_layers * (attention + mlp + 2 * d)
        decoder = self.num_decoder_layers * (2 * attention + mlp + 3 * d)
        stacks = 2 * (self.num_heads * self.num_buckets + d)  # bias table + final norm each
        return 2 * self.vocab_size * d + encoder + decoder + stacks  # untied embedding and lm_head


def _mt5(name: str, description: str, **fields) -> Preset:
    return Preset(name, "text", partial(MT5Config, **fields), description)


def _size(size: str, d_model: int, d_ff: int, num_heads: int, layers: int) -> Preset:
    return _mt5(f"mt5-{size}", f"mT5-{size} (google/mt5-{size})", d_model=d_model, d_ff=d_ff, num_heads=num_heads,
                num_encoder_layers=layers, num_decoder_layers=layers)


PRESET_TABLE = (
    _size("small", d_model=512, d_ff=1024, num_heads=6, layers=8),
    _size("base", d_model=768, d_ff=2048, num_heads=12, layers=12),
    _size("large", d_model=1024, d_ff=2816, num_heads=16, layers=24),
    _size("xl", d_model=2048, d_ff=5120, num_heads=32, layers=24),
    _size("xxl", d_model=4096, d_ff=10240, num_heads=64, layers=24),
    _mt5(
        "mt5-tiny", "tiny mT5 for tests", vocab_size=256, d_model=32, d_ff=64, num_heads=4, d_kv=8,
        num_encoder_layers=2, num_decoder_layers=2,
    ),
)
