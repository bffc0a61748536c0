"""Tiny random transformers BLIP-2 / InstructBLIP models (built by ``pali.testing.blip2``, shared with
the benchmarks), their pali twins, and their Hub layouts."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pali.testing.blip2 import (  # noqa: F401  (re-exported)
    IMAGE, IMAGE_TOKEN, QFORMER_VOCAB, QUERIES, TEXT_VOCAB, batch, hf_blip2, hf_config_dict, pali_twin,
)

transformers = __import__("pytest").importorskip("transformers")


def hub_state_dict(model) -> dict[str, torch.Tensor]:
    """The tensors as the Hub's BLIP-2 files hold them: ``q_bias``/``v_bias``, no encoder/decoder
    embedding aliases, an explicit lm_head."""
    out = {}
    for name, tensor in model.state_dict().items():
        if name.endswith("self_attn.qkv.bias"):
            d = tensor.shape[0] // 3
            base = name.removesuffix("qkv.bias")
            out[base + "q_bias"], out[base + "v_bias"] = tensor[:d].clone(), tensor[2 * d :].clone()
        elif not name.endswith("embed_tokens.weight"):
            out[name] = tensor.detach().clone().contiguous()
    return out


def write_safetensors_layout(model, folder: Path, shards: int = 2) -> Path:
    """``model-0000N-of-0000M.safetensors`` + index, as the Hub's BLIP-2 repos hold them."""
    from safetensors.torch import save_file

    return _write_sharded(model, folder, shards, "model-{:05d}-of-{:05d}.safetensors", "model.safetensors.index.json",
                          lambda part, path: save_file(part, str(path), metadata={"format": "pt"}))


def write_bin_layout(model, folder: Path, shards: int = 2) -> Path:
    """mBLIP's layout: ``pytorch_model-0000N-of-0000M.bin`` shards holding fp16 and fp32 tensors."""
    def save(part, path):
        # text weights in fp16, the rest (vision, Q-Former) in fp32, as mBLIP's shards mix them
        mixed = {k: v.half() if k.startswith("language_model.") else v for k, v in part.items()}
        torch.save(mixed, path)

    return _write_sharded(model, folder, shards, "pytorch_model-{:05d}-of-{:05d}.bin", "pytorch_model.bin.index.json", save)


def _write_sharded(model, folder: Path, shards: int, pattern: str, index_name: str, save) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = hub_state_dict(model)
    names = sorted(tensors)
    weight_map = {}
    for i in range(shards):
        part = {n: tensors[n] for n in names[i::shards]}
        file = pattern.format(i + 1, shards)
        save(part, folder / file)
        weight_map.update(dict.fromkeys(part, file))
    (folder / index_name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(hf_config_dict(model)))
    return folder


def hf_inputs(pixel_values, input_ids, attention_mask, qformer=None) -> dict:
    """transformers >= 4.47's inputs: ``num_query_tokens`` <image> ids before the prompt."""
    batch = input_ids.shape[0]
    image = torch.full((batch, QUERIES), IMAGE_TOKEN, dtype=input_ids.dtype)
    inputs = dict(
        pixel_values=pixel_values,
        input_ids=torch.cat([image, input_ids], dim=1),
        attention_mask=torch.cat([torch.ones_like(image), attention_mask], dim=1),
    )
    if qformer is not None:
        inputs["qformer_input_ids"], inputs["qformer_attention_mask"] = qformer
    return inputs


def qformer_batch(n: int = 2, seed: int = 2, length: int = 5):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, QFORMER_VOCAB, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    if n > 1:
        mask[1, length - 2 :] = 0
    return ids.masked_fill(mask == 0, 0), mask
