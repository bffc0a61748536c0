"""Tiny Hugging Face reference models with random weights, and their pali twins."""

from __future__ import annotations

from pali.testing.checkpoints import convert_state_dict
import torch
from torch import nn

from pali.convert import hf as hf_maps
from pali.models.text.mt5 import MT5
from pali.models.vision.vit import ViT

transformers = __import__("pytest").importorskip("transformers")


def hf_mt5(seed: int = 0, vocab: int = 256, **overrides) -> "transformers.MT5ForConditionalGeneration":
    """A tiny MT5ForConditionalGeneration with an explicitly untied lm_head.

    transformers 5 forces ``tie_word_embeddings=True`` on MT5Config (issue 48154) while real mT5
    checkpoints are untied, so the head gets its own weights here and the test checks they stay so.
    """
    fields = dict(
        vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
        num_heads=4, dropout_rate=0.0, feed_forward_proj="gated-gelu",
    )
    fields.update(overrides)
    torch.manual_seed(seed)
    model = transformers.MT5ForConditionalGeneration(transformers.MT5Config(**fields)).eval()
    model.lm_head.weight = nn.Parameter(torch.randn(vocab, fields["d_model"]) * fields["d_model"] ** -0.5)
    for stack in (model.encoder, model.decoder):  # HF's default init of the bias table is tiny
        table = stack.block[0].layer[0].SelfAttention.relative_attention_bias
        nn.init.normal_(table.weight, std=1.0)
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
    return model


def pali_mt5_from_hf(model) -> MT5:
    ours = MT5(hf_maps.mt5_config(model.config.to_dict())).eval()
    ours.load_state_dict(convert_state_dict(hf_maps.MT5, model.state_dict()))
    return ours


def hf_siglip(seed: int = 0, **overrides):
    fields = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
    )
    fields.update(overrides)
    torch.manual_seed(seed)
    model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**fields)).eval()
    _randomize(model)
    return model


def hf_clip(seed: int = 0, **overrides):
    fields = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8, hidden_act="gelu", layer_norm_eps=1e-5,
    )
    fields.update(overrides)
    torch.manual_seed(seed)
    model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**fields)).eval()
    _randomize(model)
    return model


def _randomize(model: nn.Module) -> None:
    """Give every parameter (LayerNorms and biases included) non-trivial values."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))


def pali_vit_from_hf(model, kind: str) -> ViT:
    config_fn = hf_maps.siglip_vision_config if kind == "siglip" else hf_maps.clip_vision_config
    keymap = hf_maps.SIGLIP_VISION if kind == "siglip" else hf_maps.CLIP_VISION
    ours = ViT(config_fn(model.config.to_dict())).eval()
    ours.load_state_dict(convert_state_dict(keymap, model.state_dict()))
    return ours
