"""T5X checkpoints (mT5) -> our MT5, read with msgpack + numpy, no JAX, TensorStore or TensorFlow.

``checkpoint_<step>/checkpoint`` (or ``.../state/checkpoint``) is a msgpack file written by flax
serialization: a tree ``{"version", "optimizer": {"target": params, "state": optimizer state}}``
(or ``{"target", "state"}``). Arrays are either inline, as msgpack ext type 1 holding a msgpack
``(shape, dtype name, raw C-order bytes)`` triple (ext 3: numpy scalar, same encoding; ext 2:
complex), arrays over 2**30 bytes split into ``{"__msgpack_chunked_array__": True, "shape",
"chunks"}``; or a TensorStore spec (a dict with ``"driver": "zarr"``) whose ``kvstore.path`` (older:
``path``) names a zarr v2 array directory beside the file, e.g.
``target.encoder.layers_0.attention.query.kernel``. Only ``target`` is read; the optimizer state
is never touched. Newer T5X/Orbax (OCDBT) checkpoints are another format and are refused.
(flax ``serialization.py``; t5x ``checkpoints.py``.)
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from pathlib import Path
import re
from typing import Any, Iterator

import numpy as np
import torch

from ..config.base import size_limit
from ..errors import CheckpointError, ConfigError
from ..io import check_shape
from ..models.text.mt5_config import MT5Config
from .keymap import KeyMap, Rule
from .plan import Conversion, Source, check_items, map_sources, parse_dtype, target_config
from .zarr import ZarrArray, safe_join

ORBAX_MARKERS = ("manifest.ocdbt", "_METADATA", "_CHECKPOINT_METADATA", "_sharding", "ocdbt.process_*")
INLINE_DTYPES = frozenset("bfloat16 float16 float32 float64 int8 int16 int32 int64 uint8 bool".split())
MAX_DEPTH = 64  # nesting of the parameter tree (T5X's is 5 deep)


def _kernel(t: torch.Tensor) -> torch.Tensor:  # [in, out] -> Linear [out, in]
    return t.t().contiguous()


def _attention_rules(stack: str, theirs: str, ours: str) -> list[Rule]:
    layer = rf"{stack}/layers_(\d+)/{theirs}/"
    return [
        Rule(layer + rf"{q}/kernel", rf"{stack}.layers.\1.{ours}.{o}.weight", _kernel)
        for q, o in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o"))
    ]


T5X_MT5 = KeyMap(
    "T5X mT5",
    [
        Rule(r"token_embedder/embedding", "embed.weight"),
        Rule(r"(encoder|decoder)/relpos_bias/rel_embedding", r"\1.relpos_bias"),  # [H, buckets] as ours
        Rule(r"encoder/encoder_norm/scale", "encoder.norm.weight"),
        Rule(r"decoder/decoder_norm/scale", "decoder.norm.weight"),
        Rule(r"decoder/logits_dense/kernel", "lm_head.weight", _kernel),
        *_attention_rules("encoder", "attention", "attn"),
        *_attention_rules("decoder", "self_attention", "self_attn"),
        *_attention_rules("decoder", "encoder_decoder_attention", "cross_attn"),
        Rule(r"encoder/layers_(\d+)/pre_attention_layer_norm/scale", r"encoder.layers.\1.attn_norm.weight"),
        Rule(r"decoder/layers_(\d+)/pre_self_attention_layer_norm/scale", r"decoder.layers.\1.self_attn_norm.weight"),
        Rule(r"decoder/layers_(\d+)/pre_cross_attention_layer_norm/scale", r"decoder.layers.\1.cross_attn_norm.weight"),
        Rule(r"(encoder|decoder)/layers_(\d+)/pre_mlp_layer_norm/scale", r"\1.layers.\2.mlp_norm.weight"),
        Rule(r"(encoder|decoder)/layers_(\d+)/mlp/(wi_0|wi_1|wo)/kernel", r"\1.layers.\2.mlp.\3.weight", _kernel),
    ],
)


@dataclass(frozen=True)
class InlineArray:
    """An array stored inside the msgpack file (flax ext type 1 or 3); decoded when loaded."""

    shape: tuple[int, ...]
    dtype: str
    buffer: bytes

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype("<u2" if self.dtype == "bfloat16" else self.dtype).newbyteorder("<")

    def load(self) -> torch.Tensor:
        bf16 = self.dtype == "bfloat16"
        dtype = self.numpy_dtype
        if len(self.buffer) != math.prod(self.shape) * dtype.itemsize:
            raise CheckpointError(
                f"inline array {list(self.shape)} {self.dtype}: {len(self.buffer)} bytes, "
                f"expected {math.prod(self.shape) * dtype.itemsize}: truncated or corrupt"
            )
        array = np.frombuffer(self.buffer, dtype).reshape(self.shape).copy()
        tensor = torch.from_numpy(array)
        return tensor.view(torch.bfloat16) if bf16 else tensor


def _ext_hook(code: int, data: bytes) -> Any:
    """flax's ext types; anything malformed is a CheckpointError (msgpack re-raises it as is)."""
    import msgpack

    if code in (1, 3):  # ndarray, numpy scalar
        try:
            shape, dtype, buffer = msgpack.unpackb(data, raw=True)
            dtype = dtype.decode()
        except (ValueError, TypeError, AttributeError, msgpack.UnpackException) as e:
            raise CheckpointError(f"malformed inline array ({type(e).__name__}: {e})") from None
        if dtype not in INLINE_DTYPES or not isinstance(buffer, bytes):
            raise CheckpointError(f"inline array of unsupported dtype {dtype!r} (one of {sorted(INLINE_DTYPES)})")
        array = InlineArray(check_shape(shape, 1, "inline array"), dtype, buffer)
        check_shape(array.shape, array.numpy_dtype.itemsize, "inline array")
        return array
    if code == 2:
        try:
            real, imag = msgpack.unpackb(data)
            return complex(real, imag)
        except (ValueError, TypeError, msgpack.UnpackException) as e:
            raise CheckpointError(f"malformed inline complex number ({e})") from None
    return msgpack.ExtType(code, data)


def _orbax_markers(directory: Path) -> list[str]:
    return sorted(p.name for pattern in ORBAX_MARKERS for p in directory.glob(pattern))


def find_checkpoint(src: str | Path) -> tuple[Path, Path]:
    """``(checkpoint directory, msgpack file)`` for a ``checkpoint_<step>`` dir or its file."""
    src = Path(src)
    if src.is_file():
        root = src.parent.parent if src.parent.name == "state" else src.parent
        return root, src
    if not src.is_dir():
        raise CheckpointError(f"{src}: no such T5X checkpoint")
    for directory in (src, src / "state"):
        markers = _orbax_markers(directory) if directory.is_dir() else []
        if markers:
            raise CheckpointError(
                f"{src} is an Orbax/OCDBT checkpoint (found {markers}); pali reads the T5X msgpack + zarr "
                "format only. Restore it with T5X/Orbax and save it in the legacy format, or convert its "
                "Hugging Face export instead."
            )
    for rel in ("checkpoint", "state/checkpoint"):
        if (src / rel).is_file():
            return src, src / rel
    raise CheckpointError(f"{src}: no 'checkpoint' or 'state/checkpoint' msgpack file; point at checkpoint_<step>")


def load_tree(file: Path) -> dict:
    import msgpack

    try:
        tree = msgpack.unpackb(file.read_bytes(), ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except CheckpointError as e:
        raise CheckpointError(f"{file}: {e}") from None
    # ExtraData, StackError (nesting), incomplete input, invalid UTF-8, unhashable map keys, ...
    except (ValueError, msgpack.UnpackException, TypeError) as e:
        raise CheckpointError(f"{file}: not a valid msgpack checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(tree, dict):
        raise CheckpointError(f"{file}: msgpack root is a {type(tree).__name__}, expected a map")
    return tree


def _target(tree: dict, file: Path) -> dict:
    for node in (tree.get("optimizer"), tree):
        if isinstance(node, dict) and isinstance(node.get("target"), dict):
            return node["target"]
    raise CheckpointError(f"{file}: no 'target' parameter tree (top-level keys {sorted(map(str, tree))})")


def _zarr_path(spec: dict, name: str) -> str:
    kvstore = spec.get("kvstore")
    if isinstance(kvstore, dict):
        if kvstore.get("driver", "file") != "file":
            raise CheckpointError(f"{name}: kvstore driver {kvstore.get('driver')!r}; only local files are read")
        path = kvstore.get("path")
    else:
        path = spec.get("path")
    if not isinstance(path, str) or spec.get("driver") != "zarr":
        raise CheckpointError(f"{name}: unsupported TensorStore spec {str(spec)[:200]}")
    return path


def _leaves(node: Any, prefix: str, depth: int = 0) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict) and "__msgpack_chunked_array__" not in node and "driver" not in node:
        if depth > MAX_DEPTH:
            raise CheckpointError(f"{prefix}: parameter tree nested deeper than {MAX_DEPTH} levels")
        for key, child in node.items():
            yield from _leaves(child, f"{prefix}/{key}" if prefix else str(key), depth + 1)
    elif node is not None:
        yield prefix, node


def _unchunk(node: dict, name: str) -> Source:
    """flax's split form of an inline array over 2**30 bytes."""
    try:
        shape = tuple(node["shape"][str(i)] for i in range(len(node["shape"])))
        chunks = [node["chunks"][str(i)] for i in range(len(node["chunks"]))]
    except (KeyError, TypeError):
        raise CheckpointError(f"{name}: malformed chunked inline array") from None
    shape = check_shape(shape, 1, name)
    fits = bool(shape) and bool(chunks) and all(
        isinstance(c, InlineArray) and c.shape[:1] and c.shape[1:] == shape[1:] and c.dtype == chunks[0].dtype
        for c in chunks
    )
    if not fits or sum(c.shape[0] for c in chunks) != shape[0]:
        raise CheckpointError(f"{name}: chunks of the split inline array do not add up to its shape {list(shape)}")
    return Source(name, shape, lambda: torch.cat([c.load() for c in chunks]))


def _source(name: str, leaf: Any, root: Path, file: Path) -> Source:
    if isinstance(leaf, InlineArray):
        return Source(name, leaf.shape, leaf.load)
    if isinstance(leaf, dict) and "__msgpack_chunked_array__" in leaf:
        return _unchunk(leaf, name)
    if isinstance(leaf, dict):
        rel = _zarr_path(leaf, name)
        bases = dict.fromkeys([file.parent, root])
        base = next((b for b in bases if safe_join(b, rel.rstrip("/"), name).exists()), file.parent)
        array = ZarrArray.open(base, rel)
        return Source(name, array.shape, array.read)
    if isinstance(leaf, (int, float, bool)):
        try:
            value = torch.tensor(leaf)
        except (RuntimeError, OverflowError):  # an int beyond int64
            raise CheckpointError(f"{name}: scalar {leaf!r} does not fit a tensor") from None
        return Source(name, (), lambda: value)
    raise CheckpointError(f"{name}: unsupported leaf of type {type(leaf).__name__}")


def _infer_config(shapes: dict[str, tuple[int, ...]], file: Path) -> MT5Config:
    def need(name: str) -> tuple[int, ...]:
        if name not in shapes:
            raise CheckpointError(f"{file}: cannot infer the mT5 config: tensor {name!r} is missing")
        return shapes[name]

    def matrix(name: str) -> tuple[int, int]:
        shape = need(name)
        if len(shape) != 2:
            raise CheckpointError(f"{file}: tensor {name!r} has shape {list(shape)}, expected a matrix")
        return shape

    def count(stack: str) -> int:
        layers = len({m[1] for n in shapes if (m := re.match(rf"{stack}/layers_(\d+)/", n))})
        if layers > size_limit("layers"):
            raise CheckpointError(f"{file}: {layers} {stack} layers, over the limit of {size_limit('layers')}")
        return layers

    vocab, d_model = matrix("token_embedder/embedding")
    heads, buckets = matrix("encoder/relpos_bias/rel_embedding")
    inner = matrix("encoder/layers_0/attention/query/kernel")[1]
    try:
        return MT5Config(
            vocab_size=vocab, d_model=d_model, d_ff=matrix("encoder/layers_0/mlp/wi_0/kernel")[1],
            num_heads=heads, d_kv=inner // heads if heads else 0, num_encoder_layers=count("encoder"),
            num_decoder_layers=count("decoder"), num_buckets=buckets,
        )
    except ConfigError as e:
        raise CheckpointError(f"{file}: tensor shapes give an invalid mT5 config: {e}") from None


def read_t5x(
    src: str | Path, *, text_preset: str | None = None, dtype: str | torch.dtype | None = None
) -> Conversion:
    """Plan the conversion of a T5X checkpoint directory (``checkpoint_<step>``) or its msgpack file."""
    root, file = find_checkpoint(src)
    target = _target(load_tree(file), file)
    sources = [_source(name, leaf, root, file) for name, leaf in _leaves(target, "")]
    inferred = _infer_config({s.name: s.shape for s in sources}, file)
    config, against = target_config(inferred, "text", text_preset)
    items = map_sources(sources, T5X_MT5)
    check_items(items, config, against)
    return Conversion(config, items, {"pali.source_format": "t5x"}, parse_dtype(dtype))
