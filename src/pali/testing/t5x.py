"""Write T5X checkpoints in the real on-disk format, for tests: msgpack tree + zarr v2 arrays.

The msgpack file is what flax serialization writes (ext type 1 = ``(shape, dtype name, bytes)``);
zarr arrays are written by hand from the v2 spec (``.zarray`` + one file per chunk), independently
of the reader under test. ``t5x_names`` is the inverse of the converter's naming, written out
separately so a mistake in one is not mirrored in the other.
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
from pathlib import Path
import re
import zlib

import msgpack
import numpy as np
import torch

_ATTN = {"q": "query", "k": "key", "v": "value", "o": "out"}
_DEC_ATTN = {"self_attn": "self_attention", "cross_attn": "encoder_decoder_attention"}
_NORMS = {
    "attn_norm": "pre_attention_layer_norm", "self_attn_norm": "pre_self_attention_layer_norm",
    "cross_attn_norm": "pre_cross_attention_layer_norm", "mlp_norm": "pre_mlp_layer_norm",
}


def t5x_names(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our MT5 state dict -> T5X ``target`` names (``/``-joined) with T5X's ``[in, out]`` kernels."""
    out = {}
    for name, t in state_dict.items():
        if name == "embed.weight":
            out["token_embedder/embedding"] = t
        elif name == "lm_head.weight":
            out["decoder/logits_dense/kernel"] = t.t()
        elif m := re.fullmatch(r"(encoder|decoder)\.relpos_bias", name):
            out[f"{m[1]}/relpos_bias/rel_embedding"] = t
        elif m := re.fullmatch(r"(encoder|decoder)\.norm\.weight", name):
            out[f"{m[1]}/{m[1]}_norm/scale"] = t
        elif m := re.fullmatch(r"(encoder|decoder)\.layers\.(\d+)\.(\w+)_norm\.weight", name):
            out[f"{m[1]}/layers_{m[2]}/{_NORMS[m[3] + '_norm']}/scale"] = t
        elif m := re.fullmatch(r"(encoder|decoder)\.layers\.(\d+)\.mlp\.(\w+)\.weight", name):
            out[f"{m[1]}/layers_{m[2]}/mlp/{m[3]}/kernel"] = t.t()
        elif m := re.fullmatch(r"(encoder|decoder)\.layers\.(\d+)\.(\w+)\.([qkvo])\.weight", name):
            block = "attention" if m[3] == "attn" else _DEC_ATTN[m[3]]
            out[f"{m[1]}/layers_{m[2]}/{block}/{_ATTN[m[4]]}/kernel"] = t.t()
        else:
            raise KeyError(name)
    return {k: v.contiguous() for k, v in out.items()}


def _np(t: torch.Tensor) -> tuple[np.ndarray, str]:
    """Raw numpy bits and the dtype name as T5X writes it."""
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view("<u2"), "bfloat16"
    a = t.contiguous().numpy()
    return a, a.dtype.name


def inline(t: torch.Tensor) -> msgpack.ExtType:
    """flax's msgpack encoding of an ndarray (ext type 1)."""
    a, name = _np(t)
    return msgpack.ExtType(1, msgpack.packb((list(a.shape), name, a.tobytes("C")), use_bin_type=True))


def _compress(raw: bytes, compressor: str | None) -> bytes:
    if compressor == "gzip":
        return gzip.compress(raw, 1)
    if compressor == "zlib":
        return zlib.compress(raw, 1)
    if compressor == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=1).compress(raw)
    return raw


def write_zarr(
    path: Path, t: torch.Tensor, chunks: tuple[int, ...], *, compressor: str | None = "gzip",
    order: str = "C", separator: str = ".",
) -> None:
    """A zarr v2 array; chunks that hold only the fill value (0) are not written, as zarr does."""
    a, dtype_name = _np(t)
    path.mkdir(parents=True)
    meta = {
        "zarr_format": 2, "shape": list(a.shape), "chunks": list(chunks),
        "dtype": "bfloat16" if dtype_name == "bfloat16" else a.dtype.str,
        "compressor": None if compressor is None else {"id": compressor, "level": 1},
        "fill_value": 0, "order": order, "filters": None, "dimension_separator": separator,
    }
    (path / ".zarray").write_text(json.dumps(meta))
    for index in itertools.product(*(range(math.ceil(s / c)) for s, c in zip(a.shape, chunks))):
        region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, chunks, a.shape))
        if not a[region].any():
            continue
        block = np.zeros(chunks, a.dtype)
        block[tuple(slice(0, r.stop - r.start) for r in region)] = a[region]
        key = separator.join(map(str, index)) if index else "0"
        (path / key).parent.mkdir(parents=True, exist_ok=True)
        (path / key).write_bytes(_compress(block.tobytes(order=order), compressor))


def _nest(flat: dict[str, object]) -> dict:
    tree: dict = {}
    for name, leaf in flat.items():
        *parents, last = name.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    return tree


def spec(rel: str, dtype: str = "float32") -> dict:
    """The TensorStore spec T5X leaves in the msgpack tree for a zarr-stored parameter."""
    return {"driver": "zarr", "dtype": dtype, "kvstore": {"driver": "file", "path": rel}}


def write_t5x(
    directory: Path, params: dict[str, torch.Tensor], *, inline_names=(), compressor=lambda name: "gzip",
    chunks=lambda shape: tuple(max(1, (s + 1) // 2) for s in shape), order=lambda name: "C",
    separator=lambda name: ".", state_layout: bool = False,
) -> Path:
    """A ``checkpoint_<step>`` directory: params in zarr (or inline), optimizer state inline."""
    directory.mkdir(parents=True)
    leaves = {}
    for name, t in params.items():
        if name in inline_names:
            leaves[name] = inline(t)
            continue
        rel = "target." + name.replace("/", ".")
        write_zarr(directory / rel, t, chunks(tuple(t.shape)), compressor=compressor(name), order=order(name),
                   separator=separator(name))
        leaves[name] = spec(rel, _np(t)[1])
    state = {"step": inline(torch.tensor(100, dtype=torch.int32)),
             "param_states": _nest({k: {"v": inline(torch.zeros(2))} for k in list(params)[:2]})}
    tree = {"version": 3, "optimizer": {"target": _nest(leaves), "state": state}}
    file = directory / ("state/checkpoint" if state_layout else "checkpoint")
    file.parent.mkdir(exist_ok=True)
    file.write_bytes(msgpack.packb(tree, use_bin_type=True))
    return directory
