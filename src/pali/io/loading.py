"""A folder in our layout -> a model, and a model -> a folder; no Hub, no download.

The model is built on the meta device (no memory, no init), every tensor's name, shape and dtype
is checked against it from the safetensors headers alone ([`pali.io.list_tensors`][]),
and only then are the bytes read, one tensor at a time, straight into the target device and
dtype and assigned into the model (the effect of ``load_state_dict(assign=True)``). Peak memory
is the model plus one tensor. ``PaliModel.from_pretrained`` resolves a name to a folder
(``pali.hub.download``) and calls ``load_model``; ``from_unimodal`` and any other loader
(a converted tower, a connector) use ``verify`` + ``materialize`` the same way.
"""

from __future__ import annotations

from collections import defaultdict
import json
import logging
from pathlib import Path
from typing import Any, Mapping, Protocol
import warnings

import torch
from torch import nn

from ..config.base import PaliConfig
from ..errors import CheckpointError, ConfigError
from ..nn.meta import meta_device
from .guards import check_num_parameters
from .layout import CONFIG_NAME, read_config_json, write_config_json
from .safetensors import StoredTensor, list_tensors, write_safetensors

logger = logging.getLogger(__name__)

_LISTED = 20  # names shown in an error before "... and N more"
CARD_NAME = "README.md"


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
    unexpected ones raise a [`CheckpointError`][pali.CheckpointError] listing them; with
    ``strict=False`` a warning lists them instead, missing ones keep the model's own
    initialisation, unexpected ones are skipped. Wrong shapes always raise.
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




def load_model(
    cls: type[nn.Module], folder: Path, *, source: str, dtype: torch.dtype | None,
    device: str | torch.device | None, strict: bool,
) -> nn.Module:
    """A ``cls`` (PaliModel) filled from ``folder``; ``source`` names it in every error."""
    data = read_config_json(folder, source)
    if "kind" in data or "model_type" in data:
        what = f"a single {data['kind']!r} tower" if "kind" in data else f"a transformers {data['model_type']!r} model"
        raise CheckpointError(
            f"{source} holds {what}, not a PaLI model (of transformers models, from_pretrained converts "
            "BLIP-2 / InstructBLIP with a T5 or mT5 text model): seed one with PaliModel.from_unimodal(vision=..., text=...)"
        )
    try:
        config = PaliConfig.from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{source}/{CONFIG_NAME}: {e}") from None
    entries, metadata = list_tensors(folder)
    with meta_device():
        model = cls(config)
    check_num_parameters(model, f"{source}/{CONFIG_NAME}")
    entries = verify(entries, model.state_dict(), source=source, strict=strict)
    model = materialize(model, entries, device=torch.device(device or "cpu"), dtype=dtype or common_dtype(entries))
    model.weight_sources = sources_from_metadata(metadata)
    return model.eval()


class SavesFiles(Protocol):
    """What ``processor=`` accepts: anything that writes its files into an existing folder."""

    def save_pretrained(self, directory: str | Path) -> Any: ...


def write_model(
    model: Any, folder: Path, *, max_shard_size: int | str, processor: SavesFiles | None, card: str | None
) -> None:
    """Fill the existing ``folder`` with ``model``'s config, shards, ``card`` (the model card's
    text, made by the caller: the card is the Hub's business) and the processor's files."""
    meta = [n for n, p in model.state_dict().items() if p.is_meta]
    if meta:
        raise CheckpointError(f"cannot save a model whose weights are on the meta device: {meta[:5]}")
    write_config_json(folder, model.config.to_json())
    sources = json.dumps(list(model.weight_sources))
    write_safetensors(
        model.state_dict().items(), folder, max_shard_size=max_shard_size, metadata={SOURCES_KEY: sources}
    )
    if card is not None:
        (folder / CARD_NAME).write_text(card)
    if processor is not None:
        processor.save_pretrained(folder)


SOURCES_KEY = "pali_sources"


def sources_from_metadata(metadata: Mapping[str, str]) -> list[dict]:
    """Provenance saved by ``write_model`` (safetensors metadata)."""
    try:
        sources = json.loads(metadata.get(SOURCES_KEY, "[]"))
    except (ValueError, TypeError, RecursionError):  # provenance is informative only: drop it when corrupt
        return []
    return sources if isinstance(sources, list) else []
