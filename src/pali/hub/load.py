"""Load our on-disk layout into a model without ever holding two copies of the weights.

The model is built on the meta device (no memory, no init), every tensor's name, shape and dtype
is checked against it from the safetensors headers alone, and only then are the bytes read, one
tensor at a time, straight into the target device and dtype and assigned into the model
(the effect of ``load_state_dict(assign=True)``). Peak memory is the model plus one tensor. Reading is plain
``readinto`` on our own parsed offsets: safetensors is a JSON header and raw little-endian bytes,
nothing in it can execute, and mapped pages never inflate the process's resident size.
"""

from __future__ import annotations

import json
import logging
import struct
import warnings
from collections import defaultdict
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..checkpoint import (
    CONFIG_NAME, INDEX_NAME, SAFETENSORS_DTYPES, SINGLE_NAME, check_num_parameters, check_shape, checked_file,
    read_json, shard_files,
)
from ..errors import CheckpointError
from ..meta import meta_device

logger = logging.getLogger(__name__)

_BY_NAME = {name: dtype for dtype, name in SAFETENSORS_DTYPES.items()}
_MAX_HEADER = 100 << 20  # the format's own limit
_CHUNK = 1 << 30  # a single read() returns at most ~2 GiB on Linux
_LISTED = 20  # names shown in an error before "... and N more"


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor's bytes are: absolute ``[start, end)`` in ``file``."""

    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int

    def read(self, f) -> torch.Tensor:
        """The tensor, read from the open binary file ``f`` into fresh CPU memory."""
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


def read_index(folder: Path) -> tuple[dict[str, StoredTensor], dict[str, str]]:
    """Every tensor of a checkpoint folder (single file or shards) and the first shard's metadata."""
    entries: dict[str, StoredTensor] = {}
    metadata: dict[str, str] | None = None
    for path in shard_files(folder):
        if not path.is_file():
            raise CheckpointError(f"{folder}: shard {path.name} is named in the index but missing")
        header, data_start = _read_header(path)
        file_meta = header.pop("__metadata__", None) or {}
        if not isinstance(file_meta, dict) or not all(isinstance(v, str) for v in file_meta.values()):
            raise CheckpointError(f"{path}: corrupt safetensors header (__metadata__ must map strings to strings)")
        metadata = file_meta if metadata is None else metadata
        size = path.stat().st_size
        for name, info in header.items():
            if name in entries:
                raise CheckpointError(f"{folder}: tensor {name!r} is stored twice ({entries[name].file.name}, {path.name})")
            entries[name] = _entry(path, name, info, data_start, size)
    return entries, metadata or {}


def _read_header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        raw = f.read(8)
        size = path.stat().st_size
        if len(raw) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", raw)
        if n > min(_MAX_HEADER, size - 8):
            raise CheckpointError(f"{path}: not a safetensors file (header length {n} exceeds the file)")
        try:
            header = json.loads(f.read(n))
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
    nbytes = prod(shape) * dtype.itemsize
    if end - begin != nbytes or begin < 0 or data_start + end > file_size:
        raise CheckpointError(
            f"{path}: tensor {name!r} {info['dtype']} {list(shape)} needs {nbytes} bytes, "
            f"header gives offsets {[begin, end]} in a {file_size - data_start}-byte data section"
        )
    return StoredTensor(path, dtype, shape, data_start + begin, data_start + end)


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" ... and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def check_against(
    entries: Mapping[str, StoredTensor], expected: Mapping[str, torch.Tensor], source: str
) -> tuple[list[str], list[str]]:
    """Raise on any tensor whose shape or kind (float vs integer) does not fit the model.

    Returns ``(missing, unexpected)`` names for the caller to judge.
    """
    problems = []
    for name in sorted(entries.keys() & expected.keys()):
        stored, want = entries[name], expected[name]
        if stored.shape != tuple(want.shape):
            problems.append(f"{name}: checkpoint {list(stored.shape)}, model {list(want.shape)}")
        elif stored.dtype.is_floating_point != want.dtype.is_floating_point:
            problems.append(f"{name}: checkpoint {stored.dtype}, model {want.dtype}")
    if problems:
        raise CheckpointError(f"{source}: {len(problems)} tensors do not fit the model: " + "; ".join(problems))
    return sorted(expected.keys() - entries.keys()), sorted(entries.keys() - expected.keys())


def common_dtype(entries: Mapping[str, StoredTensor]) -> torch.dtype:
    """The stored floating dtype when there is one, else float32: what ``dtype=None`` loads as."""
    dtypes = {e.dtype for e in entries.values() if e.dtype.is_floating_point}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def materialize(
    model: nn.Module,
    entries: Mapping[str, StoredTensor],
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> nn.Module:
    """Fill a meta-device ``model``: ``entries`` from disk, every other parameter by its own init.

    Parameters absent from ``entries`` (a fresh projection, a tower without public weights) are
    allocated and initialised by ``model.init_weights()``, which skips what is still on the meta
    device, so nothing that will be loaded is ever initialised.
    """
    missing = model.state_dict().keys() - entries.keys()
    if missing:
        for owner in {name.rpartition(".")[0] for name in missing}:
            model.get_submodule(owner).to_empty(device=device, recurse=False)
        model.init_weights()
        for owner in {name.rpartition(".")[0] for name in missing}:
            model.get_submodule(owner).to(dtype)
    by_file: dict[Path, list[tuple[str, StoredTensor]]] = defaultdict(list)
    for name, stored in entries.items():
        by_file[stored.file].append((name, stored))
    for path, items in by_file.items():
        with open(path, "rb") as f:
            for name, stored in sorted(items, key=lambda item: item[1].start):
                tensor = stored.read(f)
                _assign(model, name, tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else None))
    return model


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """``load_state_dict(assign=True)`` for one tensor, without walking the whole module tree."""
    owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner)
    old = getattr(module, leaf)
    if isinstance(old, nn.Parameter):
        tensor = nn.Parameter(tensor, requires_grad=old.requires_grad)
    setattr(module, leaf, tensor)


def verify(
    entries: Mapping[str, StoredTensor],
    expected: Mapping[str, torch.Tensor],
    *,
    source: str,
    strict: bool,
    allowed_missing: tuple[str, ...] = (),
) -> dict[str, StoredTensor]:
    """Check ``entries`` against a meta-built model's state dict; return the ones to load.

    Missing tensors (except under ``allowed_missing`` prefixes, initialised on purpose) and
    unexpected ones raise a :class:`CheckpointError` listing them; with ``strict=False`` a warning
    lists them instead, missing ones keep the model's own initialisation, unexpected ones are
    skipped. Wrong shapes always raise.
    """
    missing, unexpected = check_against(entries, expected, source)
    missing = [n for n in missing if not n.startswith(allowed_missing)]
    if missing or unexpected:
        parts = [f"missing {len(missing)} tensors: {_listing(missing)}"] if missing else []
        parts += [f"unexpected {len(unexpected)} tensors: {_listing(unexpected)}"] if unexpected else []
        if strict:
            raise CheckpointError(f"{source}: {'; '.join(parts)} (pass strict=False to load anyway)")
        message = f"{source}: {'; '.join(parts)}; missing ones are freshly initialised, unexpected ones ignored"
        logger.warning(message)
        warnings.warn(message, stacklevel=4)
    return {n: e for n, e in entries.items() if n not in unexpected}


def read_config_json(folder: Path, source: str) -> dict:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{source}: no {CONFIG_NAME}")
    data = read_json(checked_file(folder, CONFIG_NAME, source), f"{source}/{CONFIG_NAME}")
    if not isinstance(data, dict):
        raise CheckpointError(f"{source}: {CONFIG_NAME} is not a JSON object")
    return data


def load_pretrained(
    cls: type[nn.Module],
    name_or_path: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    strict: bool = True,
) -> nn.Module:
    """``PaliModel.from_pretrained``: see :meth:`pali.pretrained.PretrainedMixin.from_pretrained`."""
    from ..config import PaliConfig
    from ..errors import ConfigError
    from .download import fetch

    snapshot = fetch(
        name_or_path, select_pali_files, revision=revision, cache_dir=cache_dir,
        local_files_only=local_files_only, token=token,
    )
    source = snapshot.source if snapshot.is_local else f"{snapshot.source}@{snapshot.commit}"
    data = read_config_json(snapshot.folder, source)
    if "kind" in data or "model_type" in data:
        what = f"a single {data['kind']!r} tower" if "kind" in data else f"a transformers {data['model_type']!r} model"
        raise CheckpointError(
            f"{source} holds {what}, not a PaLI model: seed one with PaliModel.from_unimodal(vision=..., text=...)"
        )
    try:
        config = PaliConfig.from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{source}/{CONFIG_NAME}: {e}") from None
    entries, metadata = read_index(snapshot.folder)
    with meta_device():
        model = cls(config)
    check_num_parameters(model, f"{source}/{CONFIG_NAME}")
    entries = verify(entries, model.state_dict(), source=source, strict=strict)
    model = materialize(
        model, entries, device=torch.device(device or "cpu"), dtype=dtype or common_dtype(entries)
    )
    model.weight_sources = sources_from_metadata(metadata)
    model.name_or_path = snapshot.source
    return model.eval()


def select_pali_files(files: list[str]) -> list[str]:
    """Our layout: config.json, the safetensors file(s) and the index."""

    if CONFIG_NAME not in files:
        raise CheckpointError(f"no {CONFIG_NAME} among the checkpoint's files {files}")
    if INDEX_NAME not in files and SINGLE_NAME not in files:
        raise CheckpointError(f"neither {SINGLE_NAME} nor {INDEX_NAME} among the checkpoint's files {files}")
    return [f for f in files if f in (CONFIG_NAME, INDEX_NAME) or ("/" not in f and f.endswith(".safetensors"))]


SOURCES_KEY = "pali_sources"


def sources_from_metadata(metadata: Mapping[str, str]) -> list[dict]:
    """Provenance saved by :func:`pali.hub.save.save_pretrained` (safetensors metadata)."""
    try:
        sources = json.loads(metadata.get(SOURCES_KEY, "[]"))
    except (ValueError, TypeError, RecursionError):  # provenance is informative only: drop it when corrupt
        return []
    return sources if isinstance(sources, list) else []
