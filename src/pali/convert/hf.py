"""Key maps from Hugging Face transformers checkpoints to pali's tower state dicts.

Targets are relative to the tower (``patch_embed.weight``, ``encoder.layers.0.attn.q.weight``);
prefix them with ``vision.`` / ``text.`` for a whole [`pali.PaliModel`][].
"""

from __future__ import annotations

from typing import Any, Mapping

from ..errors import CheckpointError
from ..models.text.mt5_config import MT5Config
from ..models.vision.vit_config import ViTConfig
from .keymap import KeyMap, Rule


def _transpose(t):
    return t.t().contiguous()


def _unsqueeze0(t):
    return t.unsqueeze(0)


def _class_token(t):
    return t.reshape(1, 1, -1)


_LAYER = r"(?:vision_model\.)?encoder\.layers\.(\d+)\."
_HF_VIT_BLOCK = [
    Rule(_LAYER + r"layer_norm1\.(weight|bias)", r"blocks.\1.norm1.\2"),
    Rule(_LAYER + r"layer_norm2\.(weight|bias)", r"blocks.\1.norm2.\2"),
    Rule(_LAYER + r"self_attn\.(q|k|v)_proj\.(weight|bias)", r"blocks.\1.attn.\2.\3"),
    Rule(_LAYER + r"self_attn\.out_proj\.(weight|bias)", r"blocks.\1.attn.o.\2"),
    Rule(_LAYER + r"mlp\.(fc1|fc2)\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    Rule(r"(?:vision_model\.)?post_layernorm\.(weight|bias)", r"norm.\1"),
]
# What two-tower checkpoints hold besides the vision tower, and pooling heads PaLI does not use.
_HF_IGNORED = [
    Rule(r"text_model\..*", None),
    Rule(r"(?:vision_model\.)?head\..*", None),  # SigLIP's MAP head
    Rule(r"(logit_scale|logit_bias|visual_projection\.weight|text_projection\.weight)", None),
    Rule(r".*position_ids", None),
]

SIGLIP_VISION = KeyMap(
    "HF SigLIP vision tower",
    [
        Rule(r"(?:vision_model\.)?embeddings\.patch_embedding\.(weight|bias)", r"patch_embed.\1"),
        Rule(r"(?:vision_model\.)?embeddings\.position_embedding\.weight", "pos_embed", _unsqueeze0),
        *_HF_VIT_BLOCK,
        *_HF_IGNORED,
    ],
)

CLIP_VISION = KeyMap(
    "HF CLIP vision tower",
    [
        Rule(r"(?:vision_model\.)?embeddings\.class_embedding", "cls_token", _class_token),
        Rule(r"(?:vision_model\.)?embeddings\.patch_embedding\.weight", "patch_embed.weight"),
        Rule(r"(?:vision_model\.)?embeddings\.position_embedding\.weight", "pos_embed", _unsqueeze0),
        Rule(r"(?:vision_model\.)?pre_layrnorm\.(weight|bias)", r"norm_pre.\1"),
        *_HF_VIT_BLOCK,
        *_HF_IGNORED,
    ],
)

_VIT = r"(?:vit\.)?"
_VIT_LAYER = _VIT + r"encoder\.layer\.(\d+)\."
_VIT_LAYER_V5 = _VIT + r"layers\.(\d+)\."  # transformers 5's in-memory names for the same tensors
HF_VIT = KeyMap(
    "HF ViT",
    [
        Rule(_VIT + r"embeddings\.cls_token", "cls_token"),
        Rule(_VIT + r"embeddings\.position_embeddings", "pos_embed"),
        Rule(_VIT + r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.\1"),
        *(
            Rule(_VIT_LAYER + rf"attention\.attention\.{theirs}\.(weight|bias)", rf"blocks.\1.attn.{ours}.\2")
            for theirs, ours in (("query", "q"), ("key", "k"), ("value", "v"))
        ),
        Rule(_VIT_LAYER + r"attention\.output\.dense\.(weight|bias)", r"blocks.\1.attn.o.\2"),
        Rule(_VIT_LAYER + r"intermediate\.dense\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
        Rule(_VIT_LAYER + r"output\.dense\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
        Rule(_VIT_LAYER_V5 + r"attention\.(q|k|v|o)_proj\.(weight|bias)", r"blocks.\1.attn.\2.\3"),
        Rule(_VIT_LAYER_V5 + r"mlp\.(fc1|fc2)\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
        Rule(_VIT + r"(?:encoder\.layer|layers)\.(\d+)\.layernorm_before\.(weight|bias)", r"blocks.\1.norm1.\2"),
        Rule(_VIT + r"(?:encoder\.layer|layers)\.(\d+)\.layernorm_after\.(weight|bias)", r"blocks.\1.norm2.\2"),
        Rule(_VIT + r"layernorm\.(weight|bias)", r"norm.\1"),
        # Classification/pooling heads and the masked-image-modelling token: not part of PaLI's tower.
        Rule(_VIT + r"(pooler\..*|embeddings\.mask_token)", None),
        Rule(r"classifier\..*", None),
    ],
)

MT5 = KeyMap(
    "HF mT5",
    [
        Rule(r"shared\.weight", "embed.weight"),
        Rule(r"(encoder|decoder)\.embed_tokens\.weight", None),  # aliases of shared.weight
        Rule(r"lm_head\.weight", "lm_head.weight"),
        Rule(
            r"(encoder|decoder)\.block\.0\.layer\.0\.SelfAttention\.relative_attention_bias\.weight",
            r"\1.relpos_bias",
            _transpose,  # HF keeps [buckets, heads]; we keep the kernels' [heads, buckets]
        ),
        Rule(r"(encoder|decoder)\.final_layer_norm\.weight", r"\1.norm.weight"),
        Rule(r"encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.(q|k|v|o)\.weight", r"encoder.layers.\1.attn.\2.weight"),
        Rule(r"encoder\.block\.(\d+)\.layer\.0\.layer_norm\.weight", r"encoder.layers.\1.attn_norm.weight"),
        Rule(r"encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.(wi_0|wi_1|wi|wo)\.weight", r"encoder.layers.\1.mlp.\2.weight"),
        Rule(r"encoder\.block\.(\d+)\.layer\.1\.layer_norm\.weight", r"encoder.layers.\1.mlp_norm.weight"),
        Rule(r"decoder\.block\.(\d+)\.layer\.0\.SelfAttention\.(q|k|v|o)\.weight", r"decoder.layers.\1.self_attn.\2.weight"),
        Rule(r"decoder\.block\.(\d+)\.layer\.0\.layer_norm\.weight", r"decoder.layers.\1.self_attn_norm.weight"),
        Rule(r"decoder\.block\.(\d+)\.layer\.1\.EncDecAttention\.(q|k|v|o)\.weight", r"decoder.layers.\1.cross_attn.\2.weight"),
        Rule(r"decoder\.block\.(\d+)\.layer\.1\.layer_norm\.weight", r"decoder.layers.\1.cross_attn_norm.weight"),
        Rule(r"decoder\.block\.(\d+)\.layer\.2\.DenseReluDense\.(wi_0|wi_1|wi|wo)\.weight", r"decoder.layers.\1.mlp.\2.weight"),
        Rule(r"decoder\.block\.(\d+)\.layer\.2\.layer_norm\.weight", r"decoder.layers.\1.mlp_norm.weight"),
    ],
)


_ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu", "quick_gelu": "quick_gelu"}


def _vision_section(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The vision part of a two-tower config (SiglipConfig, CLIPConfig) or the config itself."""
    return config.get("vision_config") or config


def _activation(act: str) -> str:
    if act not in _ACTIVATIONS:
        raise CheckpointError(f"unsupported vision activation {act!r}; known: {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[act]


def _vit_fields(c: Mapping[str, Any], *, patch: int, act: str, eps: float) -> dict[str, Any]:
    """The ViTConfig fields every HF vision config spells the same way (with its own defaults)."""
    return dict(
        image_size=c.get("image_size", 224),
        patch_size=c.get("patch_size", patch),
        hidden_size=c.get("hidden_size", 768),
        depth=c.get("num_hidden_layers", 12),
        mlp_dim=c.get("intermediate_size", 3072),
        num_heads=c.get("num_attention_heads", 12),
        act=_activation(c.get("hidden_act", act)),
        norm_eps=c.get("layer_norm_eps", eps),
    )


def siglip_vision_config(config: Mapping[str, Any]) -> ViTConfig:
    """Our ViTConfig for a HF ``SiglipVisionConfig`` (or two-tower ``SiglipConfig``) dict."""
    return ViTConfig(**_vit_fields(_vision_section(config), patch=16, act="gelu_pytorch_tanh", eps=1e-6))


def clip_vision_config(config: Mapping[str, Any]) -> ViTConfig:
    """Our ViTConfig for a HF ``CLIPVisionConfig`` (or two-tower ``CLIPConfig``) dict.

    HF's ``last_hidden_state`` is taken before ``post_layernorm``; OpenCLIP applies that norm to
    every token before pooling, and so do we (``final_norm``), which is what PaLI-style use wants.
    """
    fields = _vit_fields(_vision_section(config), patch=32, act="quick_gelu", eps=1e-5)
    return ViTConfig(**fields, patch_bias=False, class_token=True, pre_norm=True)


def hf_vit_config(config: Mapping[str, Any]) -> ViTConfig:
    """Our ViTConfig for a HF ``ViTConfig`` dict (google/vit-*).

    HF's ViT is the original ViT: a class token with its own position embedding, post-block
    LayerNorm eps 1e-12, exact (erf) GELU and no LayerNorm before the blocks.
    """
    if config.get("num_channels", 3) != 3:
        raise CheckpointError(f"HF ViT with num_channels={config['num_channels']}: only RGB (3) is supported")
    fields = _vit_fields(config, patch=16, act="gelu", eps=1e-12)
    return ViTConfig(**fields, qkv_bias=config.get("qkv_bias", True), class_token=True)


_FEED_FORWARD = {"gated-gelu": "gated-gelu", "gated-gelu_new": "gated-gelu", "relu": "relu"}


def mt5_config(config: Mapping[str, Any]) -> MT5Config:
    """Our MT5Config for a HF ``MT5Config``/``T5Config`` dict: T5 v1.1 / mT5 (gated GELU) or the
    original T5 (ReLU)."""
    ff = config.get("feed_forward_proj", "gated-gelu")
    if ff not in _FEED_FORWARD:
        raise CheckpointError(
            f"feed_forward_proj {ff!r}: supported are {sorted(_FEED_FORWARD)} (T5 v1.1 / mT5 and the original T5)"
        )
    layers = config["num_layers"]
    return MT5Config(
        vocab_size=config["vocab_size"],
        d_model=config["d_model"],
        d_ff=config["d_ff"],
        num_heads=config["num_heads"],
        d_kv=config["d_kv"],
        num_encoder_layers=layers,
        num_decoder_layers=config.get("num_decoder_layers") or layers,
        num_buckets=config.get("relative_attention_num_buckets", 32),
        max_distance=config.get("relative_attention_max_distance", 128),
        norm_eps=config.get("layer_norm_epsilon", 1e-6),
        pad_token_id=config.get("pad_token_id", 0),
        eos_token_id=config.get("eos_token_id", 1),
        decoder_start_token_id=config.get("decoder_start_token_id", 0),
        feed_forward=_FEED_FORWARD[ff],
    )


def _major(version: str | None) -> int:
    """The major version of the transformers that wrote a config (4 when unrecorded)."""
    major = (version or "4").split(".")[0]
    return int(major) if major.isdigit() else 4


def head_tied(text: Mapping[str, Any], transformers_version: str | None) -> bool:
    """Whether a T5/mT5 config declares its ``lm_head`` tied to the embedding.

    transformers 4 tied by default for T5 only; transformers 5 ties every T5 and mT5 in memory
    and writes ``tie_word_embeddings: true`` for all of them, so the flag alone cannot tell an
    untied Flan-T5 from a tied model: the weights decide where they can (``fit_lm_head``).
    """
    default = text.get("model_type") == "t5" or _major(transformers_version) >= 5
    return text.get("tie_word_embeddings", default) is not False


def decoder_output_scale(text: Mapping[str, Any], transformers_version: str | None) -> float | None:
    """T5's ``d_model ** -0.5`` on the decoder output before ``lm_head``, if this text model has it.

    The original T5 scales; T5 v1.1, Flan-T5, mT5 and mT0 do not. transformers 5 writes
    ``scale_decoder_outputs`` for T5 and never scales mT5; transformers 4 scaled exactly when the
    head was tied. ``None``: no scaling.
    """
    scale = text.get("scale_decoder_outputs")
    if not isinstance(scale, bool):
        scale = _major(transformers_version) < 5 and head_tied(text, transformers_version)
    return text["d_model"] ** -0.5 if scale else None
