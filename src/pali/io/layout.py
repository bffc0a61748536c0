"""Our on-disk layout: ``config.json`` + ``model.safetensors`` or Hub-style shards + their index.

The one reader and the one writer of ``config.json`` and of the shard index: loading, saving,
conversion and the Hub cache all call these, so the names and the JSON shape live here alone.
"""

from __future__ import annotations

import json
from pathlib import Path
import re
from typing import Any

from ..config.base import Config, PaliConfig
from ..config.registry import TEXT_STACKS, VISION_ENCODERS
from ..errors import CheckpointError, ConfigError
from .guards import checked_file, read_json

CONFIG_NAME = "config.json"
SINGLE_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


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


def read_config(folder: Path, source: str) -> Config:
    """The config in ``folder/config.json``: a [`PaliConfig`][pali.PaliConfig] for a whole model,
    else a tower's config found by its ``kind`` in the vision and text registries (the one way a
    config.json becomes a config, for loading, conversion and the unimodal recipes alike)."""
    data = read_config_json(folder, source)
    try:
        if "vision" in data and "text" in data:
            return PaliConfig.from_dict(data)
        kind = data.get("kind")
        for registry in (VISION_ENCODERS, TEXT_STACKS) if isinstance(kind, str) else ():
            if kind in registry.configs or kind in registry:
                return registry.config_class(kind).from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{source}/{CONFIG_NAME}: {e}") from None
    raise CheckpointError(f"{source}/{CONFIG_NAME}: no known tower kind {data.get('kind')!r} and not a PaliConfig")


def write_config_json(folder: Path, data: dict[str, Any] | str) -> Path:
    """Write ``folder/config.json``: a dict (sorted, indented) or the JSON text a config made."""
    text = data if isinstance(data, str) else json.dumps(data, indent=2, sort_keys=True) + "\n"
    path = folder / CONFIG_NAME
    path.write_text(text)
    return path


def write_index(folder: Path, weight_map: dict[str, str], total_size: int) -> Path:
    """Write the Hub's shard index (``model.safetensors.index.json``) into ``folder``."""
    index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    path = folder / INDEX_NAME
    path.write_text(json.dumps(index, indent=2) + "\n")
    return path
