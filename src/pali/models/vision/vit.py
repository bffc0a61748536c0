"""Vision Transformer with big_vision semantics, plus the switches to host SigLIP and CLIP towers.

big_vision's ViT as PaLI uses it: patch-embedding conv with bias, learned position embedding, no
class token, pre-LayerNorm blocks with eps 1e-6, tanh-approximated GELU, a final norm, and every
patch token returned (no pooling). SigLIP towers share that layout. CLIP-style towers (OpenAI,
OpenCLIP) add a class token (dropped from the output here), a LayerNorm right after the embedding,
exact-erf or quick GELU, eps 1e-5 and no conv bias. BLIP-2's EVA ViT-g/14 is CLIP-like without the
pre-norm, keeps its class token in the output (every token goes on to the Q-Former, after the
final norm: ``keep_class_token``), and has biases on the query and value but not the key
(``key_bias=False``); the fused ``qkv`` of transformers' ``Blip2Attention`` is split on conversion.
"""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.utils.checkpoint

from ...config.registry import VISION_ENCODERS
from ...errors import InputError
from ...nn.attention import Attention
from ...nn.mlp import MlpBlock
from ...nn.pos_embed import resample_pos_embed  # noqa: F401  (what loaders at other resolutions call)
from .vit_config import ViTConfig


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.norm1 = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.attn = Attention(d, cfg.num_heads, d // cfg.num_heads, bias=cfg.qkv_bias, key_bias=cfg.qkv_bias and cfg.key_bias)
        self.norm2 = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.mlp = MlpBlock(d, cfg.mlp_dim, cfg.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Image ``[B, 3, H, W]`` in [-1, 1] -> patch tokens ``[B, N, hidden_size]``."""

    config_class = ViTConfig

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.config = cfg
        d = cfg.hidden_size
        self.patch_embed = nn.Conv2d(3, d, cfg.patch_size, cfg.patch_size, bias=cfg.patch_bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid**2 + int(cfg.class_token), d))
        self.norm_pre = nn.LayerNorm(d, eps=cfg.norm_eps) if cfg.pre_norm else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps) if cfg.final_norm else None
        self.gradient_checkpointing = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise like big_vision: normal(1/sqrt(D)) position embedding, LeCun patch kernel."""
        nn.init.normal_(self.pos_embed, std=self.config.hidden_size**-0.5)
        fan_in = self.patch_embed.weight[0].numel()
        nn.init.trunc_normal_(self.patch_embed.weight, std=math.sqrt(1.0 / fan_in))
        if self.cls_token is not None:
            nn.init.zeros_(self.cls_token)
        for block in self.blocks:
            for lin in (block.attn.q, block.attn.k, block.attn.v, block.attn.o, block.mlp.fc1, block.mlp.fc2):
                nn.init.xavier_uniform_(lin.weight)
                if lin.bias is not None:
                    nn.init.normal_(lin.bias, std=1e-6)

    def fsdp_units(self) -> list[nn.Module]:
        """What ``pali.train.parallel.apply_fsdp`` shards one by one: the blocks."""
        return list(self.blocks)

    def check_input(self, pixel_values: torch.Tensor) -> None:
        cfg = self.config
        expected = (3, cfg.image_size, cfg.image_size)
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise InputError(
                f"pixel_values must be [B, {expected[0]}, {expected[1]}, {expected[2]}] "
                f"(this model's image_size is {cfg.image_size}), got {list(pixel_values.shape)}"
            )
        if not pixel_values.is_floating_point():
            raise InputError(f"pixel_values must be a float tensor scaled to [-1, 1], got {pixel_values.dtype}")
        if not torch.compiler.is_compiling() and not bool(torch.isfinite(pixel_values).all()):
            raise InputError("pixel_values holds NaN or infinite values")

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self.check_input(pixel_values)
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))
        x = x.flatten(2).transpose(1, 2)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        if self.norm_pre is not None:
            x = self.norm_pre(x)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        if self.cls_token is not None and not self.config.keep_class_token:
            x = x[:, 1:]
        return x if self.norm is None else self.norm(x)


VISION_ENCODERS.register(ViTConfig.kind, ViT)

