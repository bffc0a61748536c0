"""big_vision ``.npz`` checkpoints (ViT, SigLIP image towers) -> our ViT.

A big_vision checkpoint is ``np.savez`` of the flattened parameter tree, names joined with ``/``,
training checkpoints under ``params/``, two-tower (SigLIP, LiT) files under ``img/`` and ``txt/``.
bfloat16 arrays are saved as numpy void ``V2`` (numpy has no bf16): their bytes are bf16.
Transformer blocks are ``encoderblock_{i}`` (python loop) or one ``encoderblock`` whose arrays
carry a leading depth axis (``nn.scan``). PaLI uses the ViT's ``head`` Dense as its projection;
a MAP pooling head is not used by PaLI and is dropped. Layout facts: big_vision
``models/vit.py``; flax ``DenseGeneral`` keeps q/k/v kernels ``[D, H, hd]`` and out ``[H, hd, D]``.
"""

from __future__ import annotations

import math
from pathlib import Path
import re
import struct
import zipfile
import zlib

import numpy as np
import torch

from ..config.base import size_limit
from ..errors import CheckpointError, ConfigError
from ..io import check_shape
from ..models.vision.vit_config import ViTConfig
from .keymap import KeyMap, Rule
from .plan import Conversion, Source, check_items, fit_pos_embed, map_sources, parse_dtype, target_config

_BLOCK = r"Transformer/encoderblock_(\d+)/"
WEIGHT_DTYPES = frozenset("f2 f4 f8 i1 i2 i4 i8 u1 b1 V2".split())  # npy dtype codes torch can hold (V2: bf16)
MAX_RATIO = 1100  # deflate cannot expand more than ~1032x: a bigger claim is a lie (or a bomb)
_ATTN = _BLOCK + r"MultiHeadDotProductAttention_0/"


def _dense(t: torch.Tensor) -> torch.Tensor:  # [in, out] -> Linear [out, in]
    return t.t().contiguous()


def _qkv_kernel(t: torch.Tensor) -> torch.Tensor:  # [D, H, hd] -> [H*hd, D]
    return t.reshape(t.shape[0], -1).t().contiguous()


def _out_kernel(t: torch.Tensor) -> torch.Tensor:  # [H, hd, D] -> [D, H*hd]
    return t.reshape(-1, t.shape[-1]).t().contiguous()


def _flatten(t: torch.Tensor) -> torch.Tensor:  # q/k/v bias [H, hd] -> [H*hd]
    return t.reshape(-1)


def _conv(t: torch.Tensor) -> torch.Tensor:  # HWIO -> OIHW
    return t.permute(3, 2, 0, 1).contiguous()


BIG_VISION_VIT = KeyMap(
    "big_vision ViT",
    [
        Rule(r"embedding/kernel", "patch_embed.weight", _conv),
        Rule(r"embedding/bias", "patch_embed.bias"),
        Rule(r"pos_embedding", "pos_embed"),
        Rule(_BLOCK + r"LayerNorm_0/scale", r"blocks.\1.norm1.weight"),
        Rule(_BLOCK + r"LayerNorm_0/bias", r"blocks.\1.norm1.bias"),
        Rule(_BLOCK + r"LayerNorm_1/scale", r"blocks.\1.norm2.weight"),
        Rule(_BLOCK + r"LayerNorm_1/bias", r"blocks.\1.norm2.bias"),
        Rule(_BLOCK + r"MlpBlock_0/Dense_0/kernel", r"blocks.\1.mlp.fc1.weight", _dense),
        Rule(_BLOCK + r"MlpBlock_0/Dense_0/bias", r"blocks.\1.mlp.fc1.bias"),
        Rule(_BLOCK + r"MlpBlock_0/Dense_1/kernel", r"blocks.\1.mlp.fc2.weight", _dense),
        Rule(_BLOCK + r"MlpBlock_0/Dense_1/bias", r"blocks.\1.mlp.fc2.bias"),
        *(
            rule
            for theirs, ours in (("query", "q"), ("key", "k"), ("value", "v"))
            for rule in (
                Rule(_ATTN + theirs + "/kernel", rf"blocks.\1.attn.{ours}.weight", _qkv_kernel),
                Rule(_ATTN + theirs + "/bias", rf"blocks.\1.attn.{ours}.bias", _flatten),
            )
        ),
        Rule(_ATTN + r"out/kernel", r"blocks.\1.attn.o.weight", _out_kernel),
        Rule(_ATTN + r"out/bias", r"blocks.\1.attn.o.bias"),
        Rule(r"Transformer/encoder_norm/scale", "norm.weight"),
        Rule(r"Transformer/encoder_norm/bias", "norm.bias"),
        Rule(r"head/kernel", "projection.weight", _dense),  # PaLI's projection
        Rule(r"head/bias", "projection.bias"),
        Rule(r"MAPHead_0/.*", None),  # pooling head: PaLI keeps every patch token
    ],
)


def _to_torch(array: np.ndarray) -> torch.Tensor:
    if array.dtype == np.dtype("V2"):  # bf16 saved by numpy: reinterpret the bytes
        return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
    if array.dtype.kind not in "fiub":
        raise CheckpointError(f"array of dtype {array.dtype} is not a weight")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("=")))


class NpzFile:
    """Lazy access to an ``.npz``: shapes from the npy headers, one member read at a time.

    Reads go through ``zipfile``, so a truncated or corrupted member fails its CRC check. Every
    header is checked before any array is read: a numeric dtype (or bf16's ``V2``), a bounded
    shape ([`pali.io.check_shape`][]) whose bytes are exactly what the member holds,
    and a member size the archive's compressed bytes can account for. numpy allocates the
    header's shape before reading, so these checks are what bound memory.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
            archive = path.stat().st_size
            self.shapes = {info.filename[:-4]: self._header(info, archive) for info in self.zip.infolist()
                           if info.filename.endswith(".npy")}
        except CheckpointError:
            raise
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, NotImplementedError,
                RuntimeError, UnicodeDecodeError, struct.error, zlib.error) as e:
            raise CheckpointError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None

    def _header(self, info: zipfile.ZipInfo, archive: int) -> tuple[int, ...]:
        what = f"{self.path}: {info.filename}"
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise CheckpointError(f"{what}: zip compression {info.compress_type} (np.savez writes stored or deflate)")
        if info.compress_size > archive or info.file_size > max(info.compress_size, 1) * MAX_RATIO:
            raise CheckpointError(
                f"{what}: claims {info.file_size} bytes from {info.compress_size} compressed in a {archive}-byte file"
            )
        with self.zip.open(info) as f:
            try:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f)
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error):
                raise
            except Exception as e:  # numpy parses the header with tokenize + ast: any error means corrupt
                raise CheckpointError(f"{what}: corrupt npy header ({type(e).__name__}: {e})") from None
            offset = f.tell()
        if dtype.hasobject or dtype.shape or dtype.str[1:] not in WEIGHT_DTYPES:
            raise CheckpointError(f"{what}: dtype {dtype} is not a weight (numeric, or V2 for bfloat16)")
        shape = check_shape(shape, dtype.itemsize, what)
        if offset + math.prod(shape) * dtype.itemsize != info.file_size:
            raise CheckpointError(
                f"{what}: header says {list(shape)} {dtype}, but the member holds {info.file_size - offset} data bytes"
            )
        return shape

    def load(self, name: str) -> torch.Tensor:
        try:
            with self.zip.open(name + ".npy") as f:
                array = np.lib.format.read_array(f, allow_pickle=False)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError, struct.error, zlib.error) as e:
            raise CheckpointError(f"{self.path}: array {name!r} is truncated or corrupt ({e})") from None
        try:
            return _to_torch(array)
        except CheckpointError as e:
            raise CheckpointError(f"{self.path}: {name!r}: {e}") from None


def split_selector(src: str | Path) -> tuple[Path, str | None]:
    """``"file.npz:img"`` -> (``file.npz``, ``"img"``); a plain path has no selector."""
    text = str(src)
    head, sep, tail = text.rpartition(":")
    if sep and head.endswith(".npz"):
        return Path(head), tail.strip("/") or None
    return Path(text), None


class _Stacked:
    """Per-layer slices of a scanned array, keeping the last stacked array read (one at a time)."""

    def __init__(self, npz: NpzFile) -> None:
        self.npz, self.name, self.array = npz, None, None

    def slice(self, name: str, layer: int) -> torch.Tensor:
        if self.name != name:
            self.name, self.array = None, None  # free the previous one before reading the next
            self.array, self.name = self.npz.load(name), name
        return self.array[layer].clone()


def _sources(npz: NpzFile, selector: str | None) -> list[Source]:
    names = {n.removeprefix("params/"): n for n in npz.shapes}
    if selector is None and any(n.startswith("img/") for n in names):
        selector = "img"  # two-tower file: the image tower is the one PaLI can use
    if selector is not None:
        selector = selector.removeprefix("params/")
        names = {n[len(selector) + 1:]: full for n, full in names.items() if n.startswith(selector + "/")}
        if not names:
            raise CheckpointError(f"{npz.path}: no arrays under {selector!r}")
    stacked = _Stacked(npz)
    sources = []
    for name, full in names.items():
        shape = tuple(npz.shapes[full])
        scanned = re.fullmatch(r"Transformer/encoderblock/(.*)", name)
        if scanned:
            if not shape or shape[0] > size_limit("depth"):
                raise CheckpointError(f"{npz.path}: scanned array {full!r} of shape {list(shape)}: "
                                      f"expected a leading depth axis of at most {size_limit('depth')}")
            for i in range(shape[0]):
                sources.append(Source(f"Transformer/encoderblock_{i}/{scanned[1]}", shape[1:],
                                      lambda full=full, i=i: stacked.slice(full, i)))
        else:
            sources.append(Source(name, shape, lambda full=full: npz.load(full)))
    return sources


def _infer_config(shapes: dict[str, tuple[int, ...]], path: Path) -> ViTConfig:
    def need(name: str) -> tuple[int, ...]:
        if name not in shapes:
            raise CheckpointError(f"{path}: cannot infer the ViT config: tensor {name!r} is missing")
        return shapes[name]

    def dims(name: str, rank: int) -> tuple[int, ...]:
        shape = need(name)
        if len(shape) != rank:
            raise CheckpointError(f"{path}: tensor {name!r} has shape {list(shape)}, expected {rank} dimensions")
        return shape

    p, _, _, width = dims("embedding/kernel", 4)
    tokens = dims("pos_embedding", 3)[1]
    depth = len({m[1] for n in shapes if (m := re.match(r"Transformer/encoderblock_(\d+)/", n))})
    if depth > size_limit("depth"):
        raise CheckpointError(f"{path}: {depth} encoder blocks, over the limit of {size_limit('depth')}")
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise CheckpointError(f"{path}: pos_embedding holds {tokens} tokens, not a square grid")
    try:
        return ViTConfig(
            image_size=grid * p,
            patch_size=p,
            hidden_size=width,
            depth=depth,
            mlp_dim=dims("Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel", 2)[1],
            num_heads=dims("Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel", 3)[1],
            patch_bias="embedding/bias" in shapes,
            qkv_bias="Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/bias" in shapes,
            final_norm="Transformer/encoder_norm/scale" in shapes,
        )
    except ConfigError as e:
        raise CheckpointError(f"{path}: tensor shapes give an invalid ViT config: {e}") from None


def read_big_vision(
    src: str | Path,
    *,
    vision_preset: str | None = None,
    image_size: int | None = None,
    dtype: str | torch.dtype | None = None,
) -> Conversion:
    """Plan the conversion of a big_vision ``.npz`` (``path.npz`` or ``path.npz:subtree``)."""
    path, selector = split_selector(src)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such .npz file")
    npz = NpzFile(path)
    sources = _sources(npz, selector)
    inferred = _infer_config({s.name: s.shape for s in sources}, path)
    config, against = target_config(inferred, "vision", vision_preset, image_size)
    items = fit_pos_embed(map_sources(sources, BIG_VISION_VIT), config)
    check_items(items, config, against)
    metadata = {"pali.source_format": "big_vision", "pali.subtree": selector or ""}
    return Conversion(config, items, metadata, parse_dtype(dtype))
