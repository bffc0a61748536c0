"""A name for ``from_pretrained`` -> what to load: a folder in our layout, or a transformers
checkpoint with the plan that reads it in place.

``config.json`` is fetched first and alone: it says what the checkpoint is before any weight file
is downloaded or read. A pali checkpoint then gets its safetensors fetched (pinned to the same
commit). A transformers BLIP-2 / InstructBLIP checkpoint (``model_type`` ``blip-2`` /
``instructblip``) is checked for a text model pali can run (refused otherwise, still before any
weight), then has its weight files fetched (safetensors preferred over ``pytorch_model-*.bin``
when a repo holds both): safetensors are read in place, through `pali.convert`'s mapping;
``.bin`` shards are converted once into the conversion cache (`pali.hub.cache`, keyed by the Hub
commit or the local files' identity; a cached one is found before any weight is fetched).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..convert import Conversion, blip2
from ..io import layout_files, read_config_json
from .cache import cached_record, entry_folder, open_source
from .download import Snapshot, config_file, fetch, transformers_files


@dataclass(frozen=True)
class Resolved:
    """What ``from_pretrained`` loads, and where it came from.

    ``plan``: a transformers checkpoint read in place (``folder`` is its own folder); else
    ``folder`` is in our layout. ``sources``: provenance records for a foreign checkpoint (else
    the folder's own safetensors metadata holds them).
    """

    folder: Path
    snapshot: Snapshot
    sources: list[dict[str, Any]] | None = None
    plan: Conversion | None = None

    @property
    def label(self) -> str:
        """The source as errors name it: the path, or ``repo@commit``."""
        snap = self.snapshot
        return snap.source if snap.is_local else f"{snap.source}@{snap.commit}"


def resolve(
    name_or_path: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Resolved:
    """Fetch ``name_or_path``'s config, then what loading it needs (see the module docstring)."""
    options = dict(cache_dir=cache_dir, local_files_only=local_files_only, token=token)
    head = fetch(name_or_path, config_file, revision=revision, **options)
    resolved = Resolved(head.folder, head)
    config = read_config_json(head.folder, resolved.label)
    # Later fetches name the commit the config came from, so a push in between cannot mix two.
    if not blip2.is_blip2(config):
        return Resolved(fetch(head.source, layout_files, revision=head.commit, **options).folder, head)
    blip2.check_text_model(config)  # a decoder-only text model: refused before any weight is fetched
    folder = entry_folder("model", head, cache_dir)
    record = cached_record(folder)  # a .bin checkpoint converted earlier
    if record is not None:
        return Resolved(folder, head, [record])
    snapshot = fetch(head.source, transformers_files, revision=head.commit, **options)
    opened = open_source("model", snapshot, folder)
    return Resolved(opened.folder or snapshot.folder, head, [opened.record], opened.plan)
