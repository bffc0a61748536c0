"""The conversion cache: a foreign checkpoint converted once into our layout, found again by identity.

``from_unimodal`` (one tower per source) and ``from_pretrained`` on a transformers BLIP-2 /
InstructBLIP repo (a whole model) both convert a `pali.hub.download.Snapshot` into a
folder of ``config.json`` + safetensors, keyed by what identifies the source's bytes: the Hub
commit hash, or for a local path every file's path, size and mtime (any edit reconverts). The
folder is written through `pali.io.atomic_directory` and its provenance record
(``source.json``) is the last file written, so an interrupted conversion leaves nothing that a
later load trusts. The conversions themselves are `pali.convert`'s; this module only names,
writes and finds their outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
import re
from typing import Any, Callable

from ..convert import read as read_checkpoint
from ..convert import write_conversion
from ..convert.big_vision import split_selector
from ..errors import CheckpointError
from ..io import atomic_directory
from .download import Snapshot

CONVERTER_VERSION = 1  # bump when a conversion changes its output: invalidates cached conversions
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


def convert_once(folder: Path, write: Callable[[Path], None]) -> dict[str, Any]:
    """Run ``write(tmp)`` into a fresh folder renamed to ``folder``, unless it is already there;
    return the provenance record (written last: its presence marks a finished conversion)."""
    if not (folder / SOURCE_NAME).is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with atomic_directory(folder, overwrite=True) as tmp:
            write(tmp)
    return json.loads((folder / SOURCE_NAME).read_text())


def convert_source(role: str, snapshot: Snapshot, out: Path) -> None:
    """Write ``snapshot``'s ``role`` tower (or whole ``"model"``) into ``out`` in our layout, plus
    its provenance.

    `pali.convert.read` detects the format and plans the conversion from metadata
    (checked names and shapes); tensors then stream through one at a time, in their stored dtypes
    (a mixed fp16/fp32 source stays mixed: the loader casts each tensor to the asked dtype).
    """
    conversion = read_checkpoint(snapshot.folder)
    if conversion.tower != role:
        what = "a whole model" if conversion.tower == "model" else f"a {conversion.tower} tower"
        raise CheckpointError(f"{snapshot.source} holds {what}, not a {role} tower")
    write_conversion(conversion, out, metadata={"pali.tower": role}, progress=True,
                     desc=f"Converting {snapshot.source}")
    record = {
        "tower": role, "source": snapshot.source, "revision": snapshot.commit,
        "format": conversion.metadata.get("pali.source_format"),
        "license": _card_license(snapshot.folder) if snapshot.folder.is_dir() else None,
    }
    (out / SOURCE_NAME).write_text(json.dumps(record, indent=2) + "\n")


def _card_license(folder: Path) -> str | None:
    card = folder / "README.md"
    if not card.is_file():
        return None
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(card).data.license
    except Exception:  # a malformed card must not stop a conversion; the licence is then unknown
        return None
