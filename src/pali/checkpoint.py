"""Checkpoint files: ``config.json`` + safetensors shards (+ the Hub's index file), read and written.

The one place that knows the formats on disk: every safetensors file pali reads (our own, a Hugging
Face model's, a converted tower) goes through [`list_tensors`][pali.checkpoint.list_tensors] /
``read_safetensors_file``, every one it writes through
[`write_safetensors`][pali.checkpoint.write_safetensors], every directory it writes through
[`atomic_directory`][pali.checkpoint.atomic_directory]. Model code never imports this module;
``pali.loading`` turns what it reads into a model, ``pali.convert`` feeds foreign formats into the
writer.

Writing streams: each tensor's bytes go to a scratch file as they arrive, and a shard's header is
written when the shard closes, so peak memory is one tensor, not one shard. Everything is written
into a temporary directory that is renamed into place only when complete: an exception, Ctrl-C
or a killed process leaves no half-written checkpoint and any previous one intact.

Reading is defensive, because checkpoints come from strangers:
[`check_shape`][pali.checkpoint.check_shape] bounds every shape a file claims before anything is
allocated, [`read_json`][pali.checkpoint.read_json] turns every way JSON can be bad into a
[`CheckpointError`][pali.CheckpointError], and [`checked_file`][pali.checkpoint.checked_file] keeps
names found inside a checkpoint from reaching files outside it. safetensors is parsed here, not by
the ``safetensors`` library: it is a JSON header and raw little-endian bytes, nothing in it can
execute, and reading one tensor with ``readinto`` at our own checked offsets never maps (or copies)
anything else. See ``docs/reliability.md``.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import re
import shutil
import socket
import struct
import tempfile
from dataclasses import dataclass
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

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


# Bounds on what a checkpoint may claim, checked before allocating. Module attributes so that a
# caller (or a fuzzing harness) can lower them.
MAX_TENSOR_BYTES = 1 << 36  # 64 GiB: 32x mT5-XXL's largest tensor (its 2 GB bf16 embedding)
MAX_DIM = 1 << 31  # any one dimension, so that even zero-size tensors have sane shapes
MAX_PARAMETERS = 10**12  # a whole model: ~60x PaLI-17B


def check_shape(shape: Any, itemsize: int, what: str) -> tuple[int, ...]:
    """``shape`` as a tuple of ints if it is one a tensor of ``itemsize``-byte elements may have.

    Rejects non-integers, negative or oversized dimensions and shapes over ``MAX_TENSOR_BYTES``,
    so a header claiming 10**12 elements fails here, before any allocation.
    """
    if not isinstance(shape, (list, tuple)) or len(shape) > 32:
        raise CheckpointError(f"{what}: shape {shape!r} is not a list of at most 32 dimensions")
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < MAX_DIM for d in shape):
        raise CheckpointError(f"{what}: shape {list(shape)} must hold integers in [0, {MAX_DIM})")
    nbytes = math.prod(shape) * itemsize
    if nbytes > MAX_TENSOR_BYTES:
        raise CheckpointError(
            f"{what}: shape {list(shape)} claims {nbytes:,} bytes, over the limit of {MAX_TENSOR_BYTES:,} "
            "(pali.checkpoint.MAX_TENSOR_BYTES)"
        )
    return tuple(shape)


def check_num_parameters(module: torch.nn.Module, what: str) -> int:
    """The parameter count of a (meta-built) ``module``; CheckpointError past ``MAX_PARAMETERS``."""
    count = sum(t.numel() for t in module.state_dict().values())
    if count > MAX_PARAMETERS:
        raise CheckpointError(
            f"{what} describes {count:,} parameters, over the limit of {MAX_PARAMETERS:,} "
            "(pali.checkpoint.MAX_PARAMETERS)"
        )
    return count


def read_json(path: Path, what: str | None = None) -> Any:
    """The JSON value in ``path``; every way it can be bad is a CheckpointError naming the file.

    Covers missing files, non-UTF-8 bytes, syntax errors, nesting deep enough to exhaust the
    parser's recursion and integers too long to convert (both ``ValueError``/``RecursionError``
    in the standard library, not ``JSONDecodeError``).
    """
    what = what or str(path)
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CheckpointError(f"{what}: no such file") from None
    except (ValueError, RecursionError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{what}: not valid JSON ({type(e).__name__}: {e})") from None


def checked_file(directory: Path, name: str, what: str) -> Path:
    """``directory / name`` for a file ``name`` found inside a checkpoint (an index, a spec).

    ``name`` must be a plain relative path without ``..``, and the file must resolve inside
    ``directory``, except for the Hugging Face cache layout, where ``snapshots/<rev>/<file>`` is a
    symlink into the repo's ``blobs/``: those may resolve there. A symlink leading anywhere else
    is refused, so a crafted checkpoint cannot make pali read (and copy into a converted
    checkpoint) a file of the user's that it does not contain.
    """
    if not isinstance(name, str) or not name or "\0" in name or "\\" in name or os.path.isabs(name) \
            or ".." in Path(name).parts or name in (".",):
        raise CheckpointError(f"{what}: file name {name!r} points outside the checkpoint directory {directory}")
    path = directory / name
    resolved, root = path.resolve(), directory.resolve()
    allowed = [root]
    if directory.parent.name == "snapshots":  # Hub cache: models--org--name/snapshots/<rev>/
        allowed.append(directory.parent.parent.resolve() / "blobs")
    if not any(resolved.is_relative_to(a) for a in allowed):
        raise CheckpointError(
            f"{what}: {path} is a link to {resolved}, outside the checkpoint directory {directory}; "
            "copy the file in (or link the whole directory)"
        )
    return path


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


def replaceable_save(directory: Path, extra_names: tuple[str, ...] = ()) -> bool:
    """Whether ``directory`` is empty or holds only an earlier save of ours (so writing over it
    loses nothing a user put there). Raises ``FileExistsError`` naming ``overwrite=True`` when it
    holds anything else; ``False`` when it does not exist.

    ``extra_names``: other files a save writes beside the checkpoint (model card, processor).
    """
    if not directory.exists():
        return False
    if not directory.is_dir():
        raise FileExistsError(f"{directory} exists and is not a directory; pass overwrite=True to replace it")
    ours = {CONFIG_NAME, SINGLE_NAME, INDEX_NAME, *extra_names}
    foreign = sorted(
        p.name for p in directory.iterdir()
        if p.name not in ours and not re.fullmatch(r"model-\d+-of-\d+\.safetensors", p.name)
    )
    if foreign:
        raise FileExistsError(
            f"{directory} holds files that are not an earlier pali save ({', '.join(foreign[:5])}"
            f"{' ...' if len(foreign) > 5 else ''}); pass overwrite=True to replace the whole folder"
        )
    return True


@contextmanager
def atomic_directory(target: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``target``; on success it replaces ``target`` in one rename.

    On any exception (KeyboardInterrupt included) the temporary directory is removed and
    ``target`` is untouched. An existing ``target`` is refused unless ``overwrite``; it is then
    swapped with the new one atomically (``renameat2(RENAME_EXCHANGE)`` where the OS has it), so
    even a killed process leaves the old or the new directory in place, never neither.

    A process killed outright (SIGKILL, power loss) cannot clean up: it leaves a hidden sibling
    ``.<name>.<host>-<pid>.<random>.tmp``. The next write to ``target`` from this host removes
    such siblings whose process is gone.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite/--force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(target)
    tag = f"{socket.gethostname()}-{os.getpid()}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{tag}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's 0700 is for the scratch phase only
    try:
        yield tmp
        if target.exists():
            _exchange(tmp, target)  # tmp now holds the old directory
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)


def current_umask() -> int:
    """The process umask (reading it means setting it; set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> None:
    """Swap two paths atomically (Linux ``renameat2``); elsewhere two renames, with a brief window."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)  # the process's libc
    if renameat2 is not None and renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return
    old = a.with_name(a.name + ".old")
    os.rename(b, old)
    os.rename(a, b)
    os.rename(old, a)


def _remove_stale_siblings(target: Path) -> None:
    """Delete temporary siblings of ``target`` left by dead processes of this host.

    One exception: a process killed inside the two-rename fallback of ``_exchange`` leaves
    the previous ``target`` as ``<tmp>.old`` and no ``target``; it is put back, not deleted.
    """
    host = socket.gethostname()
    for sibling in sorted(target.parent.glob(f".{target.name}.{host}-*.tmp*")):
        pid = sibling.name[len(f".{target.name}.{host}-"):].split(".")[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        if sibling.name.endswith(".old") and not target.exists():
            os.rename(sibling, target)
        else:
            shutil.rmtree(sibling, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def index_shards(index: Path) -> list[str]:
    """The shard file names an index (``*.index.json``, safetensors or pytorch) points to.

    They must be plain file names: anything with a path separator or ``..`` could make us read
    outside the checkpoint. Names are checked as text, not resolved, because in the Hub cache
    every file is (legitimately) a symlink into ``blobs/``.
    """
    data = read_json(index)
    try:
        names = list(dict.fromkeys(data["weight_map"].values()))
    except (KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{index}: not a valid checkpoint index (no weight_map object: {e!r})") from None
    bad = [n for n in names if not isinstance(n, str) or "\0" in n or Path(n).name != n or n in ("", ".", "..")]
    if bad:
        raise CheckpointError(f"{index}: shard names {bad} point outside the checkpoint directory")
    return names


def shard_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory, from its index when sharded."""
    index = directory / INDEX_NAME
    if index.is_file():
        checked_file(directory, INDEX_NAME, str(index))
        return [checked_file(directory, name, str(index)) for name in index_shards(index)]
    single = directory / SINGLE_NAME
    if single.is_file():
        return [checked_file(directory, SINGLE_NAME, str(directory))]
    raise CheckpointError(f"{directory}: neither {SINGLE_NAME} nor {INDEX_NAME} found")




def layout_files(files: list[str]) -> list[str]:
    """The files of our layout among a repo's ``files``: config.json, the safetensors file(s), the index."""
    if CONFIG_NAME not in files:
        raise CheckpointError(f"no {CONFIG_NAME} among the checkpoint's files {files}")
    if INDEX_NAME not in files and SINGLE_NAME not in files:
        raise CheckpointError(f"neither {SINGLE_NAME} nor {INDEX_NAME} among the checkpoint's files {files}")
    return [f for f in files if f in (CONFIG_NAME, INDEX_NAME) or ("/" not in f and f.endswith(".safetensors"))]


def read_config_json(folder: Path, source: str) -> dict:
    """The JSON object in ``folder/config.json``; CheckpointError naming ``source`` otherwise."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{source}: no {CONFIG_NAME}")
    data = read_json(checked_file(folder, CONFIG_NAME, source), f"{source}/{CONFIG_NAME}")
    if not isinstance(data, dict):
        raise CheckpointError(f"{source}: {CONFIG_NAME} is not a JSON object")
    return data


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
        """``read``, opening the file for this one tensor (loaders that run one tensor at a time)."""
        try:
            with open(self.file, "rb") as f:
                return self.read(f)
        except OSError as e:
            raise CheckpointError(f"{self.file}: cannot read ({e})") from None


def read_safetensors_file(path: Path) -> tuple[dict[str, StoredTensor], dict[str, str]]:
    """Every tensor one safetensors file holds (from its header alone) and its ``__metadata__``.

    Every shape is bounded by [`check_shape`][pali.checkpoint.check_shape] and every offset checked
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
    open file, as ``pali.loading.materialize`` does for a whole shard).
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
