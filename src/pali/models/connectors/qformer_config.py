"""The Q-Former connector's config, apart from the module so a config.json reads without torch."""

from __future__ import annotations

from dataclasses import dataclass

from ...config.base import ConnectorConfig
from ...errors import ConfigError
from ..vision.vit_config import ACTIVATION_NAMES


@dataclass
class QFormerConfig(ConnectorConfig):
    """``vocab_size`` 0 is BLIP-2 (queries only); > 0 is InstructBLIP (reads instruction ids).

    ``image_token_index``: the ``<image>`` placeholder id that transformers >= 4.47 puts in
    ``input_ids`` for these checkpoints. PaliModel places the visual words itself, so a prompt
    holding that id is a batch made for transformers: [`pali.PaliModel`][] names the mistake
    instead of reading the placeholders as words.
    """

    kind = "qformer"
    num_query_tokens: int = 32
    hidden_size: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    cross_attention_frequency: int = 2
    act: str = "gelu"
    norm_eps: float = 1e-12
    vocab_size: int = 0
    max_position_embeddings: int = 512
    image_token_index: int | None = None

    def __post_init__(self) -> None:
        self.require_positive(
            "num_query_tokens", "hidden_size", "depth", "num_heads", "mlp_dim", "cross_attention_frequency",
            "max_position_embeddings",
        )
        if self.vocab_size:
            self.require_positive("vocab_size")
        elif self.vocab_size != 0:
            raise ConfigError(f"QFormerConfig.vocab_size must be >= 0, got {self.vocab_size!r}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"QFormerConfig.hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")
        if self.act not in ACTIVATION_NAMES:
            raise ConfigError(f"QFormerConfig.act {self.act!r} unknown; choose from {sorted(ACTIVATION_NAMES)}")

    def num_tokens(self, vision_tokens: int) -> int:
        return self.num_query_tokens
