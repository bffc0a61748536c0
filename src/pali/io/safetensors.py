"""safetensors, read and written by pali's own codec.

A safetensors file is a JSON header and raw little-endian bytes: nothing in it can execute. Every
header is checked here (shapes bounded, offsets inside the file) before anything is mapped or
allocated, so it is parsed here, not by the ``safetensors`` library. Every safetensors file pali
reads (our own, a Hugging Face model's, a converted tower) goes through
[`list_tensors`][pali.io.list_tensors] / ``read_safetensors_file``, and a tensor is then a
copy-on-write map of its own byte range (``StoredTensor.load``): loading a model copies nothing,
a cast to another dtype holds one source tensor per loading thread. Every file pali writes goes
through [`write_safetensors`][pali.io.write_safetensors].

Writing streams: each tensor's bytes go to a scratch file as they arrive, and a shard's header is
written when the shard closes, so peak memory is one tensor, not one shard.
"""

from __future__ import annotations

from dataclasses import dataclass
import json
import math
import mmap
from pathlib import Path
import shutil
import struct
from typing import BinaryIO, Iterable

import torch

from ..errors import CheckpointError
from .guards import check_shape
from .layout import SINGLE_NAME, shard_files, write_index

SAFETENSORS_DTYPES = {  # torch dtype -> the safetensors header's name for it
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}



def parse_size(size: int | str) -> int:
    """``"5GB"`` -> 5_000_000_000 (decimal units, as the Hub uses); ints pass through."""
    if isinstance(size, int):
        return size
    text = size.strip().upper()
    for unit, factor in (("GIB", 2**30), ("MIB", 2**20), ("KIB", 2**10), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3), ("B", 1)):
        if text.endswith(unit):
            try:
                return int(float(text[: -len(unit)]) * factor)
            except ValueError:
                break
    raise ValueError(f"cannot parse size {size!r}; use e.g. '5GB', '500MB' or an int")


class _Shard:
    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.file = open(scratch, "wb")
        self.header: dict[str, dict] = {}
        self.size = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if tensor.dtype not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"tensor {name!r}: dtype {tensor.dtype} cannot be stored in safetensors")
        # The tensor's own buffer goes to disk: no intermediate bytes copy.
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        self.header[name] = {
            "dtype": SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [self.size, self.size + data.nbytes],
        }
        self.file.write(data.data)
        self.size += data.nbytes

    def finish(self, path: Path, metadata: dict[str, str]) -> None:
        self.file.close()  # idempotent
        header = json.dumps({"__metadata__": metadata, **self.header}, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)
        with open(path, "wb") as out, open(self.scratch, "rb") as data:
            out.write(struct.pack("<Q", len(header)))
            out.write(header)
            shutil.copyfileobj(data, out, 16 << 20)
        self.scratch.unlink()


def write_safetensors(
    tensors: Iterable[tuple[str, torch.Tensor]],
    directory: Path,
    *,
    max_shard_size: int | str = "5GB",
    metadata: dict[str, str] | None = None,
) -> list[str]:
    """Write tensors into ``directory`` (which must exist) as one file or Hub-style shards.

    Returns the shard file names. A tensor larger than ``max_shard_size`` gets a shard of its own.
    """
    limit = parse_size(max_shard_size)
    metadata = {"format": "pt", **(metadata or {})}
    shards: list[_Shard] = []
    seen: set[str] = set()
    for name, tensor in tensors:
        if name in seen:
            raise CheckpointError(f"tensor {name!r} written twice")
        seen.add(name)
        nbytes = tensor.numel() * tensor.element_size()
        if not shards or (shards[-1].size and shards[-1].size + nbytes > limit):
            if shards:
                shards[-1].file.close()  # its bytes wait in the scratch file for the header
            shards.append(_Shard(directory / f".shard{len(shards)}.tmp"))
        shards[-1].add(name, tensor)
    if not shards:
        raise CheckpointError("no tensors to write")
    if len(shards) == 1:
        names = [SINGLE_NAME]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for shard, file_name in zip(shards, names):
        shard.finish(directory / file_name, metadata)
        weight_map.update({name: file_name for name in shard.header})
    if len(shards) > 1:
        write_index(directory, weight_map, sum(s.size for s in shards))
    return names



# -- reading safetensors -----------------------------------------------------------------------

_BY_NAME = {name: dtype for dtype, name in SAFETENSORS_DTYPES.items()}
_MAX_HEADER = 100 << 20  # the format's own limit
_CHUNK = 1 << 30  # a single read() returns at most ~2 GiB on Linux


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor's bytes are: absolute ``[start, end)`` in ``file``, checked against its size."""

    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int

    def read(self, f: BinaryIO) -> torch.Tensor:
        """The tensor, read from the open binary file ``f`` into fresh CPU memory (no other copy)."""
        buf = torch.empty(self.end - self.start, dtype=torch.uint8)
        view = memoryview(buf.numpy())
        f.seek(self.start)
        done = 0
        while done < len(view):
            n = f.readinto(view[done : done + _CHUNK])
            if not n:
                raise CheckpointError(f"{self.file}: truncated (expected {len(view)} bytes at {self.start})")
            done += n
        return buf.view(self.dtype).reshape(self.shape)

    def load(self) -> torch.Tensor:
        """The tensor as a copy-on-write view of its bytes in the file (``mmap``), read nothing yet.

        Pages come in when the tensor is first used, as transformers' safetensors loading does,
        read ahead in large steps (``MADV_SEQUENTIAL``: from a cold disk, few large reads instead
        of many small ones; free on a warm page cache, unlike ``MADV_WILLNEED``, which walks
        every page at once); writes stay private to this process. Each tensor maps only its own byte range, so the
        mapping goes away with the tensor: a caller that casts it to another dtype holds the
        source bytes only while it casts. A tensor whose offset is not a multiple of its element
        size (legal, rare) is copied into fresh memory instead.
        """
        if self.end == self.start:
            return torch.empty(self.shape, dtype=self.dtype)
        begin = self.start - self.start % mmap.ALLOCATIONGRANULARITY
        try:
            with open(self.file, "rb") as f:
                if self.start % self.dtype.itemsize:
                    return self.read(f)
                mapped = mmap.mmap(f.fileno(), self.end - begin, offset=begin, access=mmap.ACCESS_COPY)
                mapped.madvise(mmap.MADV_SEQUENTIAL)
        except (OSError, ValueError) as e:  # ValueError: the file shrank since its header was read
            raise CheckpointError(f"{self.file}: cannot read ({e})") from None
        data = torch.frombuffer(mapped, dtype=torch.uint8)[self.start - begin :]
        return data.view(self.dtype).reshape(self.shape)


def read_safetensors_file(path: Path) -> tuple[dict[str, StoredTensor], dict[str, str]]:
    """Every tensor one safetensors file holds (from its header alone) and its ``__metadata__``.

    Every shape is bounded by [`check_shape`][pali.io.check_shape] and every offset checked
    against the file's size, so nothing here or in ``StoredTensor.read`` allocates what a header
    merely claims.
    """
    header, data_start = _read_header(path)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: corrupt safetensors header (__metadata__ must map strings to strings)")
    size = path.stat().st_size
    return {name: _entry(path, name, info, data_start, size) for name, info in header.items()}, metadata


def list_tensors(folder: str | Path) -> tuple[dict[str, StoredTensor], dict[str, str]]:
    """Every tensor of a checkpoint folder (single file or shards) and the first shard's metadata.

    Nothing is read but headers; load a tensor with ``StoredTensor.load`` (or ``read`` on an
    open file, as ``pali.io.loading.materialize`` does for a whole shard).
    """
    folder = Path(folder)
    entries: dict[str, StoredTensor] = {}
    metadata: dict[str, str] | None = None
    for path in shard_files(folder):
        if not path.is_file():
            raise CheckpointError(f"{folder}: shard {path.name} is named in the index but missing")
        file_entries, file_meta = read_safetensors_file(path)
        metadata = file_meta if metadata is None else metadata
        for name, entry in file_entries.items():
            if name in entries:
                raise CheckpointError(f"{folder}: tensor {name!r} is stored twice ({entries[name].file.name}, {path.name})")
            entries[name] = entry
    return entries, metadata or {}


def _read_header(path: Path) -> tuple[dict, int]:
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            size = path.stat().st_size
            if len(raw) < 8:
                raise CheckpointError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
            (n,) = struct.unpack("<Q", raw)
            if n > min(_MAX_HEADER, size - 8):
                raise CheckpointError(f"{path}: not a safetensors file (header length {n} exceeds the file)")
            text = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e})") from None
    try:
        header = json.loads(text)
    except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, deep nesting, 5000-digit numbers
        raise CheckpointError(f"{path}: corrupt safetensors header ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    return header, 8 + n


def _entry(path: Path, name: str, info: object, data_start: int, file_size: int) -> StoredTensor:
    try:
        dtype = _BY_NAME[info["dtype"]]
        begin, end = info["data_offsets"]
        if not all(isinstance(o, int) and not isinstance(o, bool) for o in (begin, end)):
            raise TypeError
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(
            f"{path}: tensor {name!r} has an unsupported or corrupt header entry {str(info)[:200]}"
        ) from None
    shape = check_shape(info.get("shape"), dtype.itemsize, f"{path}: tensor {name!r}")
    nbytes = math.prod(shape) * dtype.itemsize
    if end - begin != nbytes or begin < 0 or data_start + end > file_size:
        raise CheckpointError(
            f"{path}: tensor {name!r} {info['dtype']} {list(shape)} needs {nbytes} bytes, "
            f"header gives offsets {[begin, end]} in a {file_size - data_start}-byte data section"
        )
    return StoredTensor(path, dtype, shape, data_start + begin, data_start + end)
