"""BLIP-2's Querying Transformer (Q-Former) as a connector, with InstructBLIP's instruction input.

A fixed set of learned query tokens reads the image: a BERT-shaped stack of post-norm blocks
(``LayerNorm(x + sublayer(x))``) whose self-attention mixes the queries (and, in InstructBLIP, the
instruction's WordPiece tokens), whose every ``cross_attention_frequency``-th layer lets the
queries attend to all the vision tower's tokens, and whose feed-forward nets differ for query and
text positions. Only the query outputs go on, through a Linear (``language_projection``) to the
text width: ``num_query_tokens`` visual words per image whatever the image resolution.

Semantics follow transformers' ``Blip2QFormerModel`` / ``InstructBlipQFormerModel``: a LayerNorm
on the embeddings (queries, or queries + word and position embeddings of the instruction) before
the first block, exact-erf GELU, LayerNorm eps 1e-12, scale ``1/sqrt(head_dim)``, every
projection with a bias, instruction padding masked as keys of the self-attention.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ...config.registry import CONNECTORS
from ...errors import InputError
from ...nn.attention import Attention
from ...nn.mlp import MlpBlock
from .qformer_config import QFormerConfig

if TYPE_CHECKING:
    from ...config.base import PaliConfig


class QFormerLayer(nn.Module):
    """Self-attention over queries (+ text), cross-attention of the queries to the image when
    ``cross``, then separate feed-forward nets for query and text positions; all post-norm."""

    def __init__(self, cfg: QFormerConfig, vision_width: int, cross: bool) -> None:
        super().__init__()
        d, heads = cfg.hidden_size, cfg.num_heads
        self.self_attn = Attention(d, heads, d // heads, bias=True)
        self.self_attn_norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.cross_attn = Attention(d, heads, d // heads, bias=True, kv_dim=vision_width) if cross else None
        self.cross_attn_norm = nn.LayerNorm(d, eps=cfg.norm_eps) if cross else None
        self.query_mlp = MlpBlock(d, cfg.mlp_dim, cfg.act)
        self.query_mlp_norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        text = cfg.vocab_size > 0
        self.text_mlp = MlpBlock(d, cfg.mlp_dim, cfg.act) if text else None
        self.text_mlp_norm = nn.LayerNorm(d, eps=cfg.norm_eps) if text else None

    def forward(
        self, x: torch.Tensor, visual: torch.Tensor, mask: torch.Tensor | None, num_queries: int
    ) -> torch.Tensor:
        x = self.self_attn_norm(x + self.self_attn(x, key_padding_mask=mask))
        queries, text = x[:, :num_queries], x[:, num_queries:]
        if self.cross_attn is not None:
            kv = self.cross_attn.project_kv(visual)
            queries = self.cross_attn_norm(queries + self.cross_attn(queries, kv))
        queries = self.query_mlp_norm(queries + self.query_mlp(queries))
        if not text.shape[1]:
            return queries
        text = self.text_mlp_norm(text + self.text_mlp(text))
        return torch.cat([queries, text], dim=1)


class QFormer(nn.Module):
    """Vision tokens ``[B, N, vision width]`` (+ instruction ids) -> ``[B, num_query_tokens, d_model]``."""

    config_class = QFormerConfig

    def __init__(self, config: "PaliConfig") -> None:
        super().__init__()
        cfg = config.connector
        self.config = cfg
        d = cfg.hidden_size
        self.query_tokens = nn.Parameter(torch.zeros(1, cfg.num_query_tokens, d))
        self.word_embed = nn.Embedding(cfg.vocab_size, d) if cfg.vocab_size else None
        self.pos_embed = nn.Embedding(cfg.max_position_embeddings, d) if cfg.vocab_size else None
        self.embed_norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.layers = nn.ModuleList(
            QFormerLayer(cfg, config.vision.width, i % cfg.cross_attention_frequency == 0) for i in range(cfg.depth)
        )
        self.out = nn.Linear(d, config.text.d_model)
        self.reset_parameters()

    @property
    def accepts_text(self) -> bool:
        """Whether ``forward`` reads instruction ids (InstructBLIP), see ``PaliModel.encode``."""
        return self.word_embed is not None

    def reset_parameters(self) -> None:
        """BERT's initialisation: normal(0.02) weights, zero biases, unit LayerNorms."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.query_tokens, std=0.02)

    def fsdp_units(self) -> list[nn.Module]:
        """What ``pali.train.parallel.apply_fsdp`` shards one by one: the layers."""
        return list(self.layers)

    def embed(self, batch: int, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None):
        """The normalized query (+ instruction) embeddings and the self-attention key mask."""
        queries = self.query_tokens.expand(batch, -1, -1)
        if input_ids is None:
            if attention_mask is not None:
                raise InputError("qformer_attention_mask given without qformer_input_ids")
            return self.embed_norm(queries), None
        self._check_text(batch, input_ids, attention_mask)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        text = self.word_embed(input_ids) + self.pos_embed(positions)
        x = self.embed_norm(torch.cat([queries, text.to(queries.dtype)], dim=1))
        if attention_mask is None or bool(attention_mask.all()):
            return x, None
        ones = attention_mask.new_ones(batch, queries.shape[1], dtype=torch.bool)
        return x, torch.cat([ones, attention_mask.bool()], dim=1)

    def _check_text(self, batch: int, ids: torch.Tensor, mask: torch.Tensor | None) -> None:
        cfg = self.config
        if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32) or ids.shape[0] != batch:
            raise InputError(
                f"qformer_input_ids must be integer ids [B={batch}, T], got {ids.dtype} {list(ids.shape)}"
            )
        if ids.shape[1] > cfg.max_position_embeddings:
            raise InputError(
                f"qformer_input_ids holds {ids.shape[1]} tokens; the Q-Former has "
                f"{cfg.max_position_embeddings} positions"
            )
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= cfg.vocab_size):
            raise InputError(f"qformer_input_ids holds ids outside the Q-Former vocabulary [0, {cfg.vocab_size})")
        if mask is not None:
            if mask.shape != ids.shape:
                raise InputError(f"qformer_attention_mask {list(mask.shape)} != qformer_input_ids {list(ids.shape)}")
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise InputError("qformer_attention_mask must hold only 0/1 (or False/True)")

    def forward(
        self,
        visual: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        num_queries = self.config.num_query_tokens
        x, mask = self.embed(visual.shape[0], input_ids, attention_mask)
        visual = visual.to(x.dtype)
        for layer in self.layers:
            x = layer(x, visual, mask, num_queries)
        return self.out(x[:, :num_queries])


CONNECTORS.register(QFormerConfig.kind, QFormer)
