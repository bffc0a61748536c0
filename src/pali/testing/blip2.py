"""Tiny random transformers BLIP-2 / InstructBLIP models, for the tests' parity checks and the
batch benchmark's transformers row. Every parameter is random (seeded) and away from
transformers' near-zero init, so a wrong mapping or a wrong mask changes the outputs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..convert import blip2 as blip2_maps
from ..pretrained import PaliModel

IMAGE = 56  # 4x4 patches of 14 + the class token: 17 vision tokens
QUERIES = 4
TEXT_VOCAB = 128
IMAGE_TOKEN = TEXT_VOCAB - 1  # transformers >= 4.47's <image> placeholder id: the last one
QFORMER_VOCAB = 100


def hf_blip2(kind: str = "t5", *, instruct: bool = False, seed: int = 0, untied: bool = True,
             text_vocab: int = TEXT_VOCAB, image_token: int = IMAGE_TOKEN, qformer_vocab: int = QFORMER_VOCAB,
             queries: int = QUERIES,
             vision: dict[str, Any] | None = None, qformer: dict[str, Any] | None = None, **text_fields):
    """A tiny ``Blip2ForConditionalGeneration`` (or InstructBLIP) with every parameter random and
    an untied lm_head (as Flan-T5 / mT0 have it), or with ``untied=False`` the head as
    transformers builds it (tied to the embedding); ``image_token`` is the ``<image>`` id.
    ``vision`` / ``qformer`` / ``text_fields`` override the towers' configs (a text field set to
    None: transformers' default), so the benchmark can build a bigger one of the same shape."""
    import transformers

    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  image_size=IMAGE, patch_size=14, layer_norm_eps=1e-6) | (vision or {})
    qformer = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
                   cross_attention_frequency=2, encoder_hidden_size=vision["hidden_size"], vocab_size=qformer_vocab,
                   max_position_embeddings=64) | (qformer or {})
    text = dict(model_type=kind, vocab_size=text_vocab, d_model=24, d_ff=40, num_heads=4, d_kv=6, num_layers=2,
                num_decoder_layers=2, feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0)
    text = {k: v for k, v in {**text, **text_fields}.items() if v is not None}  # None: transformers' default
    common = dict(vision_config=vision, qformer_config=qformer, text_config=text, num_query_tokens=queries,
                  image_token_index=image_token)
    torch.manual_seed(seed)
    if instruct:
        model = transformers.InstructBlipForConditionalGeneration(transformers.InstructBlipConfig(**common))
    else:
        model = transformers.Blip2ForConditionalGeneration(transformers.Blip2Config(**common))
    model.eval()
    lm = model.language_model
    d_model, width = lm.config.d_model, vision["hidden_size"]
    if untied:
        lm.lm_head.weight = nn.Parameter(torch.randn(lm.config.vocab_size, d_model) * d_model**-0.5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if name.endswith("weight") and ("norm" in name.lower()) else 0.0
            p.copy_(torch.randn_like(p) * 0.2 + base)
        for layer in model.vision_model.encoder.layers:
            layer.self_attn.qkv.bias[width : 2 * width] = 0  # the key third of the fused bias is zero in every BLIP-2
        for t5 in (lm.encoder, lm.decoder):
            t5.block[0].layer[0].SelfAttention.relative_attention_bias.weight.normal_(std=1.0)
            t5.embed_tokens.weight = lm.shared.weight
    assert (lm.lm_head.weight.data_ptr() != lm.shared.weight.data_ptr()) == untied
    return model


def hf_config_dict(model) -> dict:
    data = model.config.to_dict()
    data["text_config"]["tie_word_embeddings"] = False  # what the Hub's Flan-T5 / mT0 configs say
    return data


def pali_twin(model) -> PaliModel:
    """Our model with ``model``'s weights, mapped as from_pretrained maps a BLIP-2 checkpoint."""
    hf_config = hf_config_dict(model)
    ours = PaliModel(blip2_maps.blip2_config(hf_config)).eval()
    ours.load_state_dict(blip2_maps.map_state_dict(hf_config, model.state_dict()))
    return ours


def batch(n: int = 2, seed: int = 1, prompt: int = 6):
    """Pixels, prompt ids (never the <image> id) with right padding in every row but the first."""
    g = torch.Generator().manual_seed(seed)
    px = torch.randn(n, 3, IMAGE, IMAGE, generator=g)
    ids = torch.randint(2, IMAGE_TOKEN, (n, prompt), generator=g)
    mask = torch.ones(n, prompt, dtype=torch.long)
    for row in range(1, n):
        mask[row, prompt - 2 * row % prompt :] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return px, ids, mask
