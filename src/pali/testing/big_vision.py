"""big_vision checkpoints for tests, written from a Hugging Face SigLIP state dict."""

from __future__ import annotations

import re

import numpy as np
import torch


def big_vision_names(hf_state: dict[str, torch.Tensor], heads: int) -> dict[str, np.ndarray]:
    """A HF SigLIP vision state dict in big_vision's names and flax layouts (the inverse mapping)."""
    out = {}
    for name, t in hf_state.items():
        name = name.removeprefix("vision_model.")
        t = t.detach()
        if name == "embeddings.patch_embedding.weight":
            out["embedding/kernel"] = t.permute(2, 3, 1, 0)  # OIHW -> HWIO
        elif name == "embeddings.patch_embedding.bias":
            out["embedding/bias"] = t
        elif name == "embeddings.position_embedding.weight":
            out["pos_embedding"] = t[None]
        elif name.startswith("post_layernorm."):
            out["Transformer/encoder_norm/" + ("scale" if name.endswith("weight") else "bias")] = t
        elif name.startswith("head."):
            continue
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.*)\.(weight|bias)", name):
            block, part, kind = f"Transformer/encoderblock_{m[1]}/", m[2], m[3]
            if part.startswith("layer_norm"):
                ln = int(part[-1]) - 1
                out[f"{block}LayerNorm_{ln}/{'scale' if kind == 'weight' else 'bias'}"] = t
            elif part.startswith("mlp.fc"):
                dense = int(part[-1]) - 1
                out[f"{block}MlpBlock_0/Dense_{dense}/{'kernel' if kind == 'weight' else 'bias'}"] = (
                    t.t() if kind == "weight" else t
                )
            else:
                proj = {"q_proj": "query", "k_proj": "key", "v_proj": "value", "out_proj": "out"}[part.split(".")[1]]
                d = t.shape[-1]
                attn = f"{block}MultiHeadDotProductAttention_0/{proj}/"
                if proj == "out":
                    out[attn + ("kernel" if kind == "weight" else "bias")] = (
                        t.t().reshape(heads, -1, t.shape[0]) if kind == "weight" else t
                    )
                elif kind == "weight":
                    out[attn + "kernel"] = t.t().reshape(d, heads, -1)
                else:
                    out[attn + "bias"] = t.reshape(heads, -1)
        else:
            raise KeyError(name)
    return {k: v.contiguous().numpy() for k, v in out.items()}
