"""Foreign checkpoints: read in place where their tensors map onto ours, converted once where not.

``from_pretrained`` on a transformers BLIP-2 / InstructBLIP checkpoint and ``from_unimodal``'s
towers open a `pali.hub.download.Snapshot` here. Transformers safetensors files are read **in
place** (``open_source`` returns the `pali.convert` plan: every
rename, split and transpose done as the tensor is read from the mapped file), so the disk holds
the checkpoint once. What cannot be mapped (``.bin`` pickles, big_vision ``.npz``, T5X) is
converted once into the **conversion cache**, a folder of ``config.json`` + safetensors keyed
by what identifies the source's bytes: the Hub commit hash, or for a local path every file's
path, size and mtime (any edit reconverts). A warning says so before the first byte is written
and where it went and how big it is after; ``list_entries`` and
``clear`` (``pali cache list`` / ``pali cache clear``) show and remove
what is there. The folder is written through `pali.io.atomic_directory` and its provenance
record (``source.json``: tower, source, revision, format, license) is the last file written, so
an interrupted conversion leaves nothing that a later load trusts.
"""

from __future__ import annotations

from dataclasses import dataclass
import hashlib
import json
import os
from pathlib import Path
import re
import shutil
from typing import Any, Callable
import warnings

from ..convert import Conversion, write_conversion
from ..convert import read as read_checkpoint
from ..convert.big_vision import split_selector
from ..convert.hf_reader import reads_in_place
from ..errors import CheckpointError
from ..io import atomic_directory
from .download import Snapshot

CONVERTER_VERSION = 2  # bump when a conversion changes its output: invalidates cached conversions
SOURCE_NAME = "source.json"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where converted checkpoints live: ``cache_dir/pali-converted``, else ``$PALI_HOME/converted``."""
    if cache_dir is not None:
        return Path(cache_dir) / "pali-converted"
    return Path(os.environ.get("PALI_HOME", "~/.cache/pali")).expanduser() / "converted"


def cache_key(role: str, snapshot: Snapshot) -> str:
    """Hub: the commit hash. Local: every file's path, size and mtime (any edit reconverts)."""
    if snapshot.is_local:
        file, _ = split_selector(snapshot.folder)
        paths = [file] if file.is_file() else sorted(
            p for p in snapshot.folder.rglob("*") if p.is_file()
        )
        identity = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    else:
        identity = [snapshot.source, snapshot.commit]
    blob = json.dumps([CONVERTER_VERSION, role, identity]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def entry_folder(role: str, snapshot: Snapshot, cache_dir: str | Path | None = None) -> Path:
    """The cache folder for ``snapshot``'s ``role`` (``"vision"``, ``"text"`` or ``"model"``)."""
    name = re.sub(r"[^\w.\-]+", "--", snapshot.source.strip("/"))[-80:]
    return cache_root(cache_dir) / f"{name}--{role}--{cache_key(role, snapshot)}"


def cached_record(folder: Path) -> dict[str, Any] | None:
    """The provenance of a finished conversion in ``folder``, ``None`` when there is none."""
    path = folder / SOURCE_NAME
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass(frozen=True)
class Opened:
    """A foreign checkpoint ready to load: ``plan`` to read in place, else ``folder`` (our layout,
    in the conversion cache); ``record`` is its provenance."""

    record: dict[str, Any]
    plan: Conversion | None = None
    folder: Path | None = None


def open_source(role: str, snapshot: Snapshot, folder: Path) -> Opened:
    """``snapshot``'s ``role`` tower (or whole ``"model"``): in place when it is transformers
    safetensors, else converted once into the cache ``folder`` (said in a warning)."""
    if reads_in_place(snapshot.folder):
        plan = _plan(role, snapshot, check=False)  # checked against the model its loader builds
        return Opened(_record(role, snapshot, plan), plan=plan)
    return Opened(convert_once(folder, lambda tmp: convert_source(role, snapshot, tmp), snapshot.source), folder=folder)


def convert_once(folder: Path, write: Callable[[Path], None], source: str) -> dict[str, Any]:
    """Run ``write(tmp)`` into a fresh folder renamed to ``folder``, unless it is already there;
    return the provenance record (written last: its presence marks a finished conversion).

    A conversion is announced before it writes anything and reported (where, how big) after.
    """
    record = cached_record(folder)
    if record is None:
        warnings.warn(
            f"{source} cannot be read in place (not safetensors): converting it once into the pali cache "
            f"at {folder} (`pali cache list` shows it, `pali cache clear` removes it)", stacklevel=4
        )
        folder.parent.mkdir(parents=True, exist_ok=True)
        with atomic_directory(folder, overwrite=True) as tmp:
            write(tmp)
        record = cached_record(folder)
        warnings.warn(f"converted {source} into {folder}: {human_size(folder_size(folder))}", stacklevel=4)
    return record


def _plan(role: str, snapshot: Snapshot, check: bool = True) -> Conversion:
    """`pali.convert.read`'s plan (format detected, names and shapes from the headers; checked
    against the module unless ``check=False``)."""
    conversion = read_checkpoint(snapshot.folder, check=check)
    if conversion.tower != role:
        what = "a whole model" if conversion.tower == "model" else f"a {conversion.tower} tower"
        raise CheckpointError(f"{snapshot.source} holds {what}, not a {role} tower")
    return conversion


def _record(role: str, snapshot: Snapshot, conversion: Conversion) -> dict[str, Any]:
    return {
        "tower": role, "source": snapshot.source, "revision": snapshot.commit,
        "format": conversion.metadata.get("pali.source_format"),
        "license": _card_license(snapshot.folder) if snapshot.folder.is_dir() else None,
    }


def convert_source(role: str, snapshot: Snapshot, out: Path) -> None:
    """Write ``snapshot``'s ``role`` tower (or whole ``"model"``) into ``out`` in our layout, plus
    its provenance.

    Tensors stream through the plan one at a time, in their stored dtypes (a mixed fp16/fp32
    source stays mixed: the loader casts each tensor to the asked dtype).
    """
    conversion = _plan(role, snapshot)
    write_conversion(conversion, out, metadata={"pali.tower": role}, progress=True,
                     desc=f"Converting {snapshot.source}")
    (out / SOURCE_NAME).write_text(json.dumps(_record(role, snapshot, conversion), indent=2) + "\n")


def _card_license(folder: Path) -> str | None:
    card = folder / "README.md"
    if not card.is_file():
        return None
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(card).data.license
    except Exception:  # a malformed card must not stop a load; the licence is then unknown
        return None


# -- what the cache holds ---------------------------------------------------------------------------


def human_size(size: int) -> str:
    """``1234567`` -> ``"1.2 MB"`` (decimal units, as the Hub shows sizes)."""
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} B"


def folder_size(folder: Path) -> int:
    """Bytes of the files under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@dataclass(frozen=True)
class Entry:
    """One folder of the conversion cache; ``record`` is ``None`` for an unfinished one."""

    folder: Path
    size: int
    record: dict[str, Any] | None


def list_entries(cache_dir: str | Path | None = None) -> list[Entry]:
    """Every folder in the conversion cache, with its size and provenance (unfinished ones too:
    a conversion killed outright leaves a hidden ``.*.tmp`` folder)."""
    root = cache_root(cache_dir)
    if not root.is_dir():
        return []
    entries = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            record = cached_record(folder)
        except (OSError, ValueError):
            record = None
        entries.append(Entry(folder, folder_size(folder), record))
    return entries


def clear(cache_dir: str | Path | None = None, names: list[str] | None = None) -> list[Entry]:
    """Remove the cache's folders (only those named in ``names`` when given); return what went."""
    entries = list_entries(cache_dir)
    if names is not None:
        unknown = sorted(set(names) - {e.folder.name for e in entries})
        if unknown:
            raise CheckpointError(f"not in the pali cache at {cache_root(cache_dir)}: {', '.join(unknown)}")
        entries = [e for e in entries if e.folder.name in names]
    for entry in entries:
        shutil.rmtree(entry.folder)
    return entries
