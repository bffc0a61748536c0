"""A minimal zarr v2 reader: the subset T5X (through TensorStore) writes, read without TensorStore.

An array is a directory holding ``.zarray`` (JSON metadata) and one file per chunk, named by the
chunk's grid index joined with the ``dimension_separator`` (``"0.1"`` or ``"0/1"``). Edge chunks
are stored full-size; absent chunks hold ``fill_value``. Chunks are raw bytes in ``order`` ("C"
or "F") after the ``compressor`` (null, gzip, zlib or zstd here; TensorStore picks zstd for
arrays saved from sharded parameters). ``dtype`` is a numpy type string (``"<f4"``) or
TensorStore's ``"bfloat16"``. Spec: https://zarr-specs.readthedocs.io/en/latest/v2/v2.0.html.

Paths come from a checkpoint file, so they are untrusted: every array and chunk must resolve to a
file inside the checkpoint directory (no ``..``, no absolute paths, no symlinks leading out).
Sizes are untrusted too: the shape is bounded ([`pali.io.check_shape`][]) before the
array is allocated, a chunk may not be larger than that bound nor the grid hold more than
``MAX_CHUNKS`` chunks, and decompression stops at the chunk's size (no decompression bombs).
"""

from __future__ import annotations

from dataclasses import dataclass
import itertools
import math
from pathlib import Path, PurePosixPath
import zlib

import numpy as np
import torch

from ..errors import CheckpointError
from ..io import check_shape, read_json

_BF16 = "bfloat16"
DTYPES = frozenset("<f2 <f4 <f8 >f2 >f4 >f8 |i1 <i2 <i4 <i8 >i2 >i4 >i8 |u1 |b1".split())  # what torch can hold
MAX_CHUNKS = 1 << 20  # chunk files per array (T5X writes up to 64 MiB chunks: ~1000 for 64 GB)


def safe_join(root: Path, rel: str, what: str) -> Path:
    """``root / rel`` if it stays inside ``root`` (symlinks resolved); else CheckpointError."""
    parts = PurePosixPath(rel)
    if parts.is_absolute() or "://" in rel or ".." in parts.parts or "\0" in rel or len(rel) > 4096:
        raise CheckpointError(f"{what}: path {rel!r} escapes the checkpoint directory {root}")
    return _inside(root, root / rel, what)


def _inside(root: Path, path: Path, what: str) -> Path:
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop, a name too long
        raise CheckpointError(f"{what}: cannot resolve {path} ({e})") from None
    if not resolved.is_relative_to(root.resolve()):
        raise CheckpointError(f"{what}: {path} resolves to {resolved}, outside the checkpoint directory {root}")
    return resolved


def _fill(value, dtype: np.dtype, where: Path) -> float | int | bool:
    """``fill_value`` if ``dtype`` can hold it exactly (floats: within range, or NaN/inf)."""
    if value is None:  # "uninitialised": TensorStore reads missing chunks as zeros
        return 0
    named = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
    if dtype.kind == "f":
        if isinstance(value, str) and value in named:
            return named[value]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if (isinstance(value, float) and not math.isfinite(value)) or abs(value) <= float(np.finfo(dtype).max):
                return value
    elif isinstance(value, int) or (isinstance(value, float) and value.is_integer()):  # bool is an int
        limits = (0, 1) if dtype.kind == "b" else (np.iinfo(dtype).min, np.iinfo(dtype).max)
        if limits[0] <= value <= limits[1]:
            return int(value)
    raise CheckpointError(f"{where}: fill_value {value!r} does not fit dtype {dtype}")


@dataclass
class ZarrArray:
    path: Path
    root: Path
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype  # storage dtype; bf16 is stored as little-endian uint16 bits
    bf16: bool
    fill_value: float | int | bool
    order: str
    compressor: str | None
    separator: str

    @classmethod
    def open(cls, root: Path, rel: str) -> "ZarrArray":
        if not isinstance(rel, str):
            raise CheckpointError(f"zarr array path {rel!r} is not a string")
        path = safe_join(root, rel.rstrip("/"), "zarr array")
        meta_file = path / ".zarray"
        try:
            found = meta_file.is_file()
        except OSError as e:  # a name too long
            raise CheckpointError(f"zarr array {rel!r}: {e}") from None
        if not found:
            raise CheckpointError(f"zarr array {rel!r}: {meta_file} is missing")
        meta = read_json(_inside(root, meta_file, "zarr metadata"), str(meta_file))
        try:
            if meta.get("zarr_format") != 2:
                raise CheckpointError(f"{meta_file}: zarr_format {meta.get('zarr_format')!r}, only 2 is supported")
            if meta.get("filters"):
                raise CheckpointError(f"{meta_file}: zarr filters {meta['filters']} are not supported")
            bf16 = meta["dtype"] == _BF16
            if not bf16 and meta["dtype"] not in DTYPES:
                raise CheckpointError(
                    f"{meta_file}: dtype {meta['dtype']!r} is not supported (bfloat16 or one of {sorted(DTYPES)})"
                )
            dtype = np.dtype("<u2") if bf16 else np.dtype(meta["dtype"])
            compressor = (meta.get("compressor") or {}).get("id")
            if compressor not in (None, "gzip", "zlib", "zstd"):
                raise CheckpointError(
                    f"{meta_file}: compressor {compressor!r} is not supported (null, gzip, zlib, zstd are)"
                )
            order = meta.get("order", "C")
            if order not in ("C", "F"):
                raise CheckpointError(f"{meta_file}: order {order!r} must be 'C' or 'F'")
            separator = meta.get("dimension_separator", ".")
            if separator not in (".", "/"):
                raise CheckpointError(f"{meta_file}: dimension_separator {separator!r} must be '.' or '/'")
            shape = check_shape(meta["shape"], dtype.itemsize, str(meta_file))
            chunks = check_shape(meta["chunks"], dtype.itemsize, f"{meta_file} chunks")
            if len(shape) != len(chunks) or 0 in chunks:
                raise CheckpointError(f"{meta_file}: chunks {list(chunks)} do not fit shape {list(shape)}")
            grid = math.prod(math.ceil(s / c) for s, c in zip(shape, chunks))
            if grid > MAX_CHUNKS:
                raise CheckpointError(f"{meta_file}: {grid:,} chunks, over the limit of {MAX_CHUNKS:,}")
            return cls(
                path, root, shape, chunks, dtype, bf16, _fill(meta.get("fill_value"), dtype, meta_file), order,
                compressor, separator,
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{meta_file}: malformed zarr metadata ({e!r})") from None

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.bf16 else torch.from_numpy(np.zeros(0, self.dtype.newbyteorder("="))).dtype

    def _decompress(self, raw: bytes, expected: int, key: str) -> bytes:
        """At most ``expected + 1`` bytes of output, whatever the input claims (no bombs)."""
        try:
            if self.compressor in ("gzip", "zlib"):
                stream = zlib.decompressobj(zlib.MAX_WBITS | (16 if self.compressor == "gzip" else 0))
                out = stream.decompress(raw, expected + 1)
                if len(out) <= expected and (not stream.eof or stream.unused_data):
                    raise ValueError("truncated stream or trailing data")
                return out  # over ``expected``: the caller reports the size
            if self.compressor == "zstd":
                import zstandard

                reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
                return reader.read(expected + 1)
            return raw
        except Exception as e:  # zlib.error, zstandard.ZstdError, ValueError
            raise CheckpointError(f"{self.path / key}: corrupt {self.compressor} chunk ({e})") from None

    def read(self) -> torch.Tensor:
        """The whole array as a tensor; memory is the array plus one chunk."""
        check_shape(self.shape, self.dtype.itemsize, str(self.path))  # the limit may have changed since open
        out = torch.empty(self.shape, dtype=self.torch_dtype)
        out.fill_(self.fill_value)
        view = out.view(torch.int16).numpy() if self.bf16 else out.numpy()
        itemsize = self.dtype.itemsize
        expected = math.prod(self.chunks) * itemsize
        grid = [range(math.ceil(s / c)) for s, c in zip(self.shape, self.chunks)]
        for index in itertools.product(*grid):
            key = self.separator.join(map(str, index)) if index else "0"
            file = _inside(self.root, self.path / key, "zarr chunk")
            try:
                if not file.exists():
                    continue  # never written: holds fill_value
                if not file.is_file() or file.stat().st_size > expected + expected // 8 + 4096:
                    raise CheckpointError(f"{file}: not a chunk file of at most ~{expected} bytes")
                data = file.read_bytes()
            except OSError as e:
                raise CheckpointError(f"{file}: cannot read chunk ({e})") from None
            raw = self._decompress(data, expected, key)
            if len(raw) != expected:
                raise CheckpointError(
                    f"{file}: chunk holds {len(raw)} bytes, expected {expected} "
                    f"({list(self.chunks)} x {itemsize} bytes): truncated or corrupt"
                )
            chunk = np.frombuffer(raw, self.dtype).reshape(self.chunks, order=self.order)
            region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, self.chunks, self.shape))
            valid = tuple(slice(0, r.stop - r.start) for r in region)
            view[region] = chunk[valid].view(view.dtype) if self.bf16 else chunk[valid]
        return out
