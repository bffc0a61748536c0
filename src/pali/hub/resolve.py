"""A name for ``from_pretrained`` -> a local folder in our layout, converting a foreign one once.

``config.json`` is fetched first and alone: it says what the checkpoint is before any weight file
is downloaded or read. A pali checkpoint then gets its safetensors fetched (pinned to the same
commit). A transformers BLIP-2 / InstructBLIP checkpoint (``model_type`` ``blip-2`` /
``instructblip``) is checked for a text model pali can run (refused otherwise, still before any
weight), looked up in the conversion cache (`pali.hub.cache`, keyed by the Hub commit or the
local files' identity) and, on a miss only, has its weight files fetched (safetensors preferred
over ``pytorch_model-*.bin`` when a repo holds both) and converted into the cache, in the stored
dtypes. Either way the result is a folder `pali.io.loading.load_model` reads as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..convert import blip2
from ..io import layout_files, read_config_json
from .cache import convert_once, convert_source, entry_folder
from .download import Snapshot, config_file, fetch, transformers_files


@dataclass(frozen=True)
class Resolved:
    """Where ``from_pretrained``'s weights are, in our layout, and where they came from.

    ``sources``: provenance records when the folder is a conversion (else the folder's own
    safetensors metadata holds them).
    """

    folder: Path
    snapshot: Snapshot
    sources: list[dict[str, Any]] | None = None

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

    def fetch_and_convert(tmp: Path) -> None:  # runs on a cache miss only
        snapshot = fetch(head.source, transformers_files, revision=head.commit, **options)
        convert_source("model", snapshot, tmp)

    folder = entry_folder("model", head, cache_dir)
    return Resolved(folder, head, [convert_once(folder, fetch_and_convert)])
