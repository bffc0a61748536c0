"""A folder in our layout -> a model, and a model -> a folder; no Hub, no download.

The model is built on the meta device (no memory, no init), every tensor's name, shape and dtype
is checked against it from the safetensors headers alone ([`pali.io.list_tensors`][]),
and only then is each tensor assigned into the model (the effect of
``load_state_dict(assign=True)``, as gpt-fast and transformers load): a tensor already in the
asked device and dtype is assigned as the copy-on-write map of its bytes in the file, so nothing
is copied and pages come in on first use; one in another dtype is cast tensor by tensor, the
largest first, so a bf16 load of fp32 files holds at most one fp32 tensor per loading thread.

What is assigned is anything with a ``shape``, a ``dtype`` and a ``load()`` (``pali.io.loading.Weight``):
a stored tensor of our layout, or an item of a ``pali.convert`` plan that renames and reshapes
a transformers checkpoint's tensor as it is read, so those load in place too.
``PaliModel.from_pretrained`` resolves a name (``pali.hub.resolve``) and calls ``load_model`` or
``build_model``; ``from_unimodal`` uses ``verify`` + ``materialize`` the same way.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol
import warnings

import torch
from torch import nn

from ..config.base import PaliConfig
from ..errors import CheckpointError, ConfigError
from ..nn.meta import meta_device
from .guards import check_num_parameters
from .layout import CONFIG_NAME, read_config_json, write_config_json
from .safetensors import list_tensors, write_safetensors

logger = logging.getLogger(__name__)

_LISTED = 20  # names shown in an error before "... and N more"
#: Threads that load and cast tensors at once (``materialize``). More than a few only contend
#: for the disk and the page tables.
LOAD_WORKERS = min(4, os.cpu_count() or 1)
CARD_NAME = "README.md"


class Weight(Protocol):
    """One tensor to load, not read yet: a stored tensor or a planned (renamed, reshaped) one."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> torch.dtype | None: ...

    def load(self) -> torch.Tensor: ...


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" ... and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def check_against(
    entries: Mapping[str, Weight], expected: Mapping[str, torch.Tensor], source: str
) -> tuple[list[str], list[str]]:
    """Raise on any tensor whose shape or kind (float vs integer) does not fit the model.

    Returns ``(missing, unexpected)`` names for the caller to judge.
    """
    problems = []
    for name in sorted(entries.keys() & expected.keys()):
        stored, want = entries[name], expected[name]
        if stored.shape != tuple(want.shape):
            problems.append(f"{name}: checkpoint {list(stored.shape)}, model {list(want.shape)}")
        elif stored.dtype is not None and stored.dtype.is_floating_point != want.dtype.is_floating_point:
            problems.append(f"{name}: checkpoint {stored.dtype}, model {want.dtype}")
    if problems:
        raise CheckpointError(f"{source}: {len(problems)} tensors do not fit the model: " + "; ".join(problems))
    return sorted(expected.keys() - entries.keys()), sorted(entries.keys() - expected.keys())


def common_dtype(entries: Mapping[str, Weight]) -> torch.dtype:
    """The stored floating dtype when there is one, else float32: what ``dtype=None`` loads as."""
    dtypes = {e.dtype for e in entries.values() if e.dtype is None or e.dtype.is_floating_point}
    dtypes.discard(None)  # a planned tensor whose reader cannot tell its dtype before reading
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def materialize(
    model: nn.Module,
    entries: Mapping[str, Weight],
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> nn.Module:
    """Fill a meta-device ``model``: ``entries`` from disk, every other parameter by its own init.

    Parameters absent from ``entries`` (a fresh projection, a tower without public weights) are
    allocated and initialised by ``model.init_weights()``, which skips what is still on the meta
    device, so nothing that will be loaded is ever initialised. Floating tensors become ``dtype``
    on ``device``; one already so is assigned as it was loaded (a map of the file, no copy).
    Largest first: while the last (small) tensors are cast, the model is nearly complete, so the
    few source tensors held beside it are small. ``LOAD_WORKERS`` threads load and cast at once:
    a cast and the page faults of a fresh tensor release the GIL, and one thread alone leaves the
    other cores idle (transformers loads with the same pool, and a single-threaded bf16 cast of
    fp32 files took 1.6x its time).
    """
    missing = model.state_dict().keys() - entries.keys()
    if missing:
        for owner in {name.rpartition(".")[0] for name in missing}:
            model.get_submodule(owner).to_empty(device=device, recurse=False)
        model.init_weights()
        for owner in {name.rpartition(".")[0] for name in missing}:
            model.get_submodule(owner).to(dtype)

    def load(weight: Weight) -> torch.Tensor:
        tensor = weight.load()
        return tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else None)

    order = sorted(entries, key=lambda name: -math.prod(entries[name].shape))
    weights = (entries[name] for name in order)
    # Nothing to cast or move: mapping a tensor costs less than handing it to a thread.
    casts = device.type != "cpu" or any(entries[name].dtype not in (dtype, None) for name in order)
    pool = ThreadPoolExecutor(LOAD_WORKERS) if casts else None
    try:
        for name, tensor in zip(order, pool.map(load, weights) if pool else map(load, weights)):
            _assign(model, name, tensor)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)  # a failed tensor stops the rest
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
    entries: Mapping[str, Weight],
    expected: Mapping[str, torch.Tensor],
    *,
    source: str,
    strict: bool,
    allowed_missing: tuple[str, ...] = (),
) -> dict[str, Weight]:
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
    """A ``cls`` (PaliModel) filled from ``folder`` (our layout); ``source`` names it in every error."""
    data = read_config_json(folder, source)
    if "kind" in data or "model_type" in data:
        what = f"a single {data['kind']!r} tower" if "kind" in data else f"a transformers {data['model_type']!r} model"
        raise CheckpointError(
            f"{source} holds {what}, not a PaLI model (of transformers models, from_pretrained loads "
            "BLIP-2 / InstructBLIP with a T5 or mT5 text model): seed one with PaliModel.from_unimodal(vision=..., text=...)"
        )
    try:
        config = PaliConfig.from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{source}/{CONFIG_NAME}: {e}") from None
    entries, metadata = list_tensors(folder)
    model = build_model(cls, config, entries, source=source, dtype=dtype, device=device, strict=strict)
    model.weight_sources = sources_from_metadata(metadata)
    return model


def build_model(
    cls: type[nn.Module], config: PaliConfig, entries: Mapping[str, Weight], *, source: str,
    dtype: torch.dtype | None, device: str | torch.device | None, strict: bool,
    check: Callable[[nn.Module], None] | None = None,
) -> nn.Module:
    """A ``cls(config)`` built on the meta device, ``entries`` checked against it (names, shapes,
    float vs integer: every problem raised before any tensor is read), then assigned.

    ``check``: the caller's own check of the meta-built model, run first (a conversion plan's,
    whose messages name the source tensors)."""
    with meta_device():
        model = cls(config)
    check_num_parameters(model, f"{source}/{CONFIG_NAME}")
    if check is not None:
        check(model)
    entries = verify(entries, model.state_dict(), source=source, strict=strict)
    model = materialize(model, entries, device=torch.device(device or "cpu"), dtype=dtype or common_dtype(entries))
    return model.eval()


class SavesFiles(Protocol):
    """What ``processor=`` accepts: anything that writes its files into an existing folder."""

    def save_pretrained(self, directory: str | Path) -> Any: ...


def write_model(
    model: Any, folder: Path, *, max_shard_size: int | str, processor: SavesFiles | None, card: str | None
) -> None:
    """Fill the existing ``folder`` with ``model``'s config, shards, ``card`` (the model card's
    text, made by the caller: the card is the Hub's business) and the processor's files."""
    state = model.state_dict()
    meta = [n for n, p in state.items() if p.is_meta]
    if meta:
        raise CheckpointError(f"cannot save a model whose weights are on the meta device: {meta[:5]}")
    with meta_device():
        expected = type(model)(model.config).state_dict().keys()
    absent = sorted(expected - state.keys())
    if absent:  # a layer swapped for a form that is no checkpoint (pali.quantize's)
        raise CheckpointError(
            f"cannot save this model as a checkpoint: {len(absent)} weights of its architecture are not in its "
            f"state dict ({_listing(absent)}); a model converted by pali.quantize is for inference: save the "
            f"model before converting it"
        )
    write_config_json(folder, model.config.to_json())
    sources = json.dumps(list(model.weight_sources))
    write_safetensors(
        state.items(), folder, max_shard_size=max_shard_size, metadata={SOURCES_KEY: sources}
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
