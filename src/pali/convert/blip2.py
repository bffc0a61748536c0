"""transformers BLIP-2 / InstructBLIP checkpoints (T5 or mT5 text model) -> a whole PaliModel.

Unlike the other readers, which each hold one tower, these checkpoints hold a whole model:
``vision_model.*`` (EVA ViT), ``query_tokens`` + ``qformer.*`` + ``language_projection.*`` (our
Q-Former connector, ``projection.*``) and ``language_model.*`` (T5 v1.1 / mT5). The output is a
model checkpoint: ``config.json`` is a [`PaliConfig`][pali.PaliConfig], names are
``PaliModel.state_dict()``'s.

The vision attention is fused in the source: ``qkv.weight`` ``[3D, D]`` is split into our
``q``/``k``/``v``; its biases are ``q_bias``/``v_bias`` in the Hub's files and one ``qkv.bias``
(zeros in the key third) in files written by transformers 5; either way the key gets none.
A decoder-only text model (OPT, Vicuna, Llama...) is refused from ``config.json``, before any
weight is read: PaliModel's text stack is an encoder-decoder. The text model's head follows the
weights, not ``tie_word_embeddings`` alone (transformers 5 writes ``true`` for every T5 and mT5,
untied or not): an ``lm_head`` in the files stays untied, a missing one is the embedding's where
the config ties them (``pali.convert.plan.fit_lm_head``).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch

from . import hf
from ..config.base import PaliConfig
from ..errors import CheckpointError, ConfigError
from ..models.connectors.qformer_config import QFormerConfig
from ..models.vision.vit_config import ViTConfig
from .keymap import KeyMap, Rule
from .plan import Item, Source, fit_lm_head, map_sources

MODEL_TYPES = ("blip-2", "instructblip")
TEXT_MODEL_TYPES = ("t5", "mt5")

_QKV = re.compile(r"(.*\.self_attn\.)qkv\.(weight|bias)")


def is_blip2(hf_config: Any) -> bool:
    """Whether a transformers ``config.json`` (as a dict) is a BLIP-2 or InstructBLIP model."""
    return isinstance(hf_config, dict) and hf_config.get("model_type") in MODEL_TYPES


def _section(config: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    section = config.get(name) or {}
    if not isinstance(section, dict):
        raise CheckpointError(f"config.json: {name} must be an object, got {type(section).__name__}")
    return section


def check_text_model(config: Mapping[str, Any]) -> str:
    """The text model's ``model_type``; a named error for one PaliModel cannot run."""
    text = _section(config, "text_config")
    kind = text.get("model_type", "opt")  # transformers' default BLIP-2 text model is OPT
    if kind not in TEXT_MODEL_TYPES:
        raise CheckpointError(
            f"this {config.get('model_type')} checkpoint's text model is {kind!r}, a decoder-only language "
            f"model; pali runs BLIP-2 / InstructBLIP with an encoder-decoder text model only: "
            f"{' or '.join(TEXT_MODEL_TYPES)} (Flan-T5, mT0/mT5), e.g. Salesforce/blip2-flan-t5-xl, "
            "Salesforce/instructblip-flan-t5-xl, Gregor/mblip-mt0-xl"
        )
    return kind


def blip2_config(config: Mapping[str, Any]) -> PaliConfig:
    """Our PaliConfig for a transformers ``Blip2Config`` / ``InstructBlipConfig`` dict."""
    check_text_model(config)
    v, q = _section(config, "vision_config"), _section(config, "qformer_config")
    instruct = config.get("model_type") == "instructblip"
    try:
        vision = ViTConfig(
            image_size=v.get("image_size", 224), patch_size=v.get("patch_size", 14),
            hidden_size=v.get("hidden_size", 1408), depth=v.get("num_hidden_layers", 39),
            mlp_dim=v.get("intermediate_size", 6144), num_heads=v.get("num_attention_heads", 16),
            act=hf._activation(v.get("hidden_act", "gelu")), norm_eps=v.get("layer_norm_eps", 1e-6),
            qkv_bias=v.get("qkv_bias", True), key_bias=False, class_token=True, keep_class_token=True,
        )
        connector = QFormerConfig(
            num_query_tokens=config.get("num_query_tokens", 32), hidden_size=q.get("hidden_size", 768),
            depth=q.get("num_hidden_layers", 12), num_heads=q.get("num_attention_heads", 12),
            mlp_dim=q.get("intermediate_size", 3072),
            cross_attention_frequency=q.get("cross_attention_frequency", 2),
            act=hf._activation(q.get("hidden_act", "gelu")), norm_eps=q.get("layer_norm_eps", 1e-12),
            vocab_size=q.get("vocab_size", 30522) if instruct else 0,
            max_position_embeddings=q.get("max_position_embeddings", 512),
            image_token_index=config.get("image_token_index"),
        )
        encoder_width = q.get("encoder_hidden_size", vision.hidden_size)
        if encoder_width != vision.hidden_size:
            raise ConfigError(
                f"qformer_config.encoder_hidden_size {encoder_width} != vision hidden_size {vision.hidden_size}"
            )
        config_out = PaliConfig(vision=vision, text=hf.mt5_config(_section(config, "text_config")), connector=connector)
        for part in (config_out, vision, connector, config_out.text):
            part.validate()  # field types, as from_dict does for a config read from a file
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"config.json: missing or malformed field {e}") from None
    except ConfigError as e:
        raise CheckpointError(f"config.json: {e}") from None
    return config_out


def _prefixed(keymap: KeyMap, source: str, target: str) -> list[Rule]:
    """``keymap``'s rules for names under ``source`` (a regex prefix), targets under ``target``."""
    return [
        Rule(source + rule.pattern, None if rule.target is None else target + rule.target, rule.transform)
        for rule in keymap.rules
    ]


_EVA_LAYER = r"encoder\.layers\.(\d+)\."
EVA_VISION = KeyMap(
    "transformers BLIP-2 vision tower",
    [
        Rule(r"embeddings\.class_embedding", "cls_token"),
        Rule(r"embeddings\.position_embedding", "pos_embed"),
        Rule(r"embeddings\.patch_embedding\.(weight|bias)", r"patch_embed.\1"),
        Rule(_EVA_LAYER + r"self_attn\.(q|k|v)\.(weight|bias)", r"blocks.\1.attn.\2.\3"),  # split from qkv
        Rule(_EVA_LAYER + r"self_attn\.(q|v)_bias", r"blocks.\1.attn.\2.bias"),
        Rule(_EVA_LAYER + r"self_attn\.projection\.(weight|bias)", r"blocks.\1.attn.o.\2"),
        *hf._HF_VIT_BLOCK,
    ],
)

_QLAYER = r"encoder\.layer\.(\d+)\."


def qformer_keymap(instruct: bool) -> KeyMap:
    """Q-Former names -> our connector's; BLIP-2's text-position FFN (unused) is dropped."""
    text_ffn = r"layers.\1.text_mlp" if instruct else None
    attention = [
        rule
        for theirs, ours in (("attention", "self_attn"), ("crossattention", "cross_attn"))
        for rule in (
            Rule(_QLAYER + theirs + r"\.attention\.query\.(weight|bias)", rf"layers.\1.{ours}.q.\2"),
            Rule(_QLAYER + theirs + r"\.attention\.key\.(weight|bias)", rf"layers.\1.{ours}.k.\2"),
            Rule(_QLAYER + theirs + r"\.attention\.value\.(weight|bias)", rf"layers.\1.{ours}.v.\2"),
            Rule(_QLAYER + theirs + r"\.output\.dense\.(weight|bias)", rf"layers.\1.{ours}.o.\2"),
            Rule(_QLAYER + theirs + r"\.output\.LayerNorm\.(weight|bias)", rf"layers.\1.{ours}_norm.\2"),
        )
    ]
    return KeyMap(
        "transformers Q-Former",
        [
            Rule(r"(?:embeddings\.)?layernorm\.(weight|bias)", r"embed_norm.\1"),
            Rule(r"embeddings\.word_embeddings\.weight", "word_embed.weight"),
            Rule(r"embeddings\.position_embeddings\.weight", "pos_embed.weight"),
            Rule(r"embeddings\.position_ids", None),
            *attention,
            Rule(_QLAYER + r"intermediate_query\.dense\.(weight|bias)", r"layers.\1.query_mlp.fc1.\2"),
            Rule(_QLAYER + r"output_query\.dense\.(weight|bias)", r"layers.\1.query_mlp.fc2.\2"),
            Rule(_QLAYER + r"output_query\.LayerNorm\.(weight|bias)", r"layers.\1.query_mlp_norm.\2"),
            Rule(_QLAYER + r"intermediate\.dense\.(weight|bias)", None if text_ffn is None else text_ffn + r".fc1.\2"),
            Rule(_QLAYER + r"output\.dense\.(weight|bias)", None if text_ffn is None else text_ffn + r".fc2.\2"),
            Rule(_QLAYER + r"output\.LayerNorm\.(weight|bias)", None if text_ffn is None else text_ffn + r"_norm.\2"),
        ],
    )


def blip2_keymap(instruct: bool) -> KeyMap:
    """Whole-model names of a BLIP-2 (``instruct=False``) or InstructBLIP checkpoint -> PaliModel's."""
    return KeyMap(
        "transformers InstructBLIP" if instruct else "transformers BLIP-2",
        [
            Rule(r"query_tokens", "projection.query_tokens"),
            Rule(r"language_projection\.(weight|bias)", r"projection.out.\1"),
            *_prefixed(EVA_VISION, r"vision_model\.", "vision."),
            *_prefixed(qformer_keymap(instruct), r"qformer\.", "projection."),
            *_prefixed(hf.MT5, r"language_model\.", "text."),
        ],
    )


def split_fused_qkv(sources: list[Source]) -> list[Source]:
    """Each fused ``...self_attn.qkv.{weight,bias}`` as separate ``q``/``k``/``v`` sources.

    A fused bias (transformers 5's layout) has a zero key third; the key has no bias here, so
    that third is dropped.
    """
    out = []
    for source in sources:
        match = _QKV.fullmatch(source.name)
        if match is None:
            out.append(source)
            continue
        prefix, kind = match.groups()
        if not source.shape or source.shape[0] % 3:
            raise CheckpointError(f"{source.name}: fused qkv of shape {list(source.shape)} is not 3 equal parts")
        part = source.shape[0] // 3
        for i, name in enumerate("qkv"):
            if kind == "bias" and name == "k":
                continue

            def load(source=source, i=i, part=part) -> torch.Tensor:
                return source.load()[i * part : (i + 1) * part]  # rows: a contiguous range of the map

            out.append(Source(f"{prefix}{name}.{kind}", (part, *source.shape[1:]), load, source.dtype))
    return out


def map_state_dict(hf_config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers BLIP-2 / InstructBLIP state dict in memory, with its config as a dict ->
    PaliModel names (tests, notebooks)."""
    sources = [Source(k, tuple(v.shape), lambda v=v: v, v.dtype) for k, v in state_dict.items()]
    items = plan_items(blip2_config(hf_config), hf_config, sources)
    return {item.target: item.load() for item in items}


def plan_items(config: PaliConfig, hf_config: Mapping[str, Any], sources: list[Source]) -> list[Item]:
    """The tensors of a BLIP-2 / InstructBLIP checkpoint (``sources``) mapped onto ``config``'s model."""
    instruct = config.connector.vocab_size > 0
    items = map_sources(split_fused_qkv(sources), blip2_keymap(instruct))
    text, version = _section(hf_config, "text_config"), hf_config.get("transformers_version")
    return fit_lm_head(items, tied=hf.head_tied(text, version), scale=hf.decoder_output_scale(text, version),
                       prefix="text.")
