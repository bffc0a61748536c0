"""pali's on-disk layout: ``config.json`` + safetensors shards (+ the Hub's index file).

Writing streams: each tensor's bytes go to a scratch file as they arrive, and a shard's header is
written when the shard closes, so peak memory is one tensor, not one shard. Everything is written
into a temporary directory that is renamed into place only when complete: an exception, Ctrl-C
or a killed process leaves no half-written checkpoint and any previous one intact.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import torch

from .errors import CheckpointError

CONFIG_NAME = "config.json"
SINGLE_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"

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
        total = sum(s.size for s in shards)
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (directory / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return names


@contextmanager
def atomic_directory(target: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``target``; on success it replaces ``target`` in one rename.

    On any exception (KeyboardInterrupt included) the temporary directory is removed and
    ``target`` is untouched. An existing ``target`` is refused unless ``overwrite``.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite/--force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old.{os.getpid()}")
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def index_shards(index: Path) -> list[str]:
    """The shard file names an index (``*.index.json``, safetensors or pytorch) points to.

    They must be plain file names: anything with a path separator or ``..`` could make us read
    outside the checkpoint. Names are checked as text, not resolved, because in the Hub cache
    every file is (legitimately) a symlink into ``blobs/``.
    """
    try:
        names = list(dict.fromkeys(json.loads(index.read_text())["weight_map"].values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{index}: not a valid checkpoint index ({e})") from None
    bad = [n for n in names if not isinstance(n, str) or Path(n).name != n or n in ("", ".", "..")]
    if bad:
        raise CheckpointError(f"{index}: shard names {bad} point outside the checkpoint directory")
    return names


def shard_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory, from its index when sharded."""
    index = directory / INDEX_NAME
    if index.is_file():
        return [directory / name for name in index_shards(index)]
    single = directory / SINGLE_NAME
    if single.is_file():
        return [single]
    raise CheckpointError(f"{directory}: neither {SINGLE_NAME} nor {INDEX_NAME} found")


def read_safetensors(directory: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` from every shard, one tensor at a time."""
    from safetensors import SafetensorError, safe_open

    for path in shard_files(Path(directory)):
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path}: cannot read safetensors ({e})") from None
