"""A minimal zarr v2 reader: the subset T5X (through TensorStore) writes, read without TensorStore.

An array is a directory holding ``.zarray`` (JSON metadata) and one file per chunk, named by the
chunk's grid index joined with the ``dimension_separator`` (``"0.1"`` or ``"0/1"``). Edge chunks
are stored full-size; absent chunks hold ``fill_value``. Chunks are raw bytes in ``order`` ("C"
or "F") after the ``compressor`` (null, gzip, zlib or zstd here; TensorStore picks zstd for
arrays saved from sharded parameters). ``dtype`` is a numpy type string (``"<f4"``) or
TensorStore's ``"bfloat16"``. Spec: https://zarr-specs.readthedocs.io/en/latest/v2/v2.0.html.

Paths come from a checkpoint file, so they are untrusted: every array and chunk must resolve to a
file inside the checkpoint directory (no ``..``, no absolute paths, no symlinks leading out).
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from ..errors import CheckpointError

_BF16 = "bfloat16"


def safe_join(root: Path, rel: str, what: str) -> Path:
    """``root / rel`` if it stays inside ``root`` (symlinks resolved); else CheckpointError."""
    parts = PurePosixPath(rel)
    if parts.is_absolute() or "://" in rel or ".." in parts.parts:
        raise CheckpointError(f"{what}: path {rel!r} escapes the checkpoint directory {root}")
    return _inside(root, root / rel, what)


def _inside(root: Path, path: Path, what: str) -> Path:
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise CheckpointError(f"{what}: {path} resolves to {resolved}, outside the checkpoint directory {root}")
    return resolved


def _fill(value) -> float | int | bool:
    if value is None:  # "uninitialised": TensorStore reads missing chunks as zeros
        return 0
    if isinstance(value, str):
        named = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
        if value not in named:
            raise CheckpointError(f"unsupported zarr fill_value {value!r}")
        return named[value]
    return value


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
        path = safe_join(root, rel.rstrip("/"), "zarr array")
        meta_file = path / ".zarray"
        try:
            meta = json.loads(meta_file.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"zarr array {rel!r}: {meta_file} is missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{meta_file}: not valid JSON ({e})") from None
        try:
            if meta.get("zarr_format") != 2:
                raise CheckpointError(f"{meta_file}: zarr_format {meta.get('zarr_format')!r}, only 2 is supported")
            if meta.get("filters"):
                raise CheckpointError(f"{meta_file}: zarr filters {meta['filters']} are not supported")
            bf16 = meta["dtype"] == _BF16
            dtype = np.dtype("<u2") if bf16 else np.dtype(meta["dtype"])
            if dtype.kind not in "fiub" or dtype.fields:
                raise CheckpointError(f"{meta_file}: dtype {meta['dtype']!r} is not a numeric type")
            compressor = (meta.get("compressor") or {}).get("id")
            if compressor not in (None, "gzip", "zlib", "zstd"):
                raise CheckpointError(
                    f"{meta_file}: compressor {compressor!r} is not supported (null, gzip, zlib, zstd are)"
                )
            order = meta.get("order", "C")
            if order not in ("C", "F"):
                raise CheckpointError(f"{meta_file}: order {order!r} must be 'C' or 'F'")
            shape, chunks = tuple(meta["shape"]), tuple(meta["chunks"])
            if len(shape) != len(chunks) or any(c <= 0 for c in chunks):
                raise CheckpointError(f"{meta_file}: chunks {list(chunks)} do not fit shape {list(shape)}")
            return cls(
                path, root, shape, chunks, dtype, bf16, _fill(meta.get("fill_value")), order,
                compressor, meta.get("dimension_separator", "."),
            )
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{meta_file}: malformed zarr metadata ({e!r})") from None

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.bf16 else torch.from_numpy(np.zeros(0, self.dtype.newbyteorder("="))).dtype

    def _decompress(self, raw: bytes, expected: int, key: str) -> bytes:
        try:
            if self.compressor == "gzip":
                return gzip.decompress(raw)
            if self.compressor == "zlib":
                return zlib.decompress(raw)
            if self.compressor == "zstd":
                import zstandard

                return zstandard.ZstdDecompressor().decompress(raw, max_output_size=expected)
            return raw
        except Exception as e:  # zlib.error, gzip.BadGzipFile, EOFError, zstandard.ZstdError
            raise CheckpointError(f"{self.path / key}: corrupt {self.compressor} chunk ({e})") from None

    def read(self) -> torch.Tensor:
        """The whole array as a tensor; memory is the array plus one chunk."""
        out = torch.empty(self.shape, dtype=self.torch_dtype)
        out.fill_(self.fill_value)
        view = out.view(torch.int16).numpy() if self.bf16 else out.numpy()
        itemsize = self.dtype.itemsize
        expected = math.prod(self.chunks) * itemsize
        grid = [range(math.ceil(s / c)) for s, c in zip(self.shape, self.chunks)]
        for index in itertools.product(*grid):
            key = self.separator.join(map(str, index)) if index else "0"
            file = _inside(self.root, self.path / key, "zarr chunk")
            if not file.exists():
                continue  # never written: holds fill_value
            raw = self._decompress(file.read_bytes(), expected, key)
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
