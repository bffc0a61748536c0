"""Write a model in our layout, to disk or to the Hub.

One function fills a folder (config, shards, index, model card, extra files such as the
processor's); :func:`save_pretrained` runs it inside :func:`pali.checkpoint.atomic_directory` so a
crash never leaves half a checkpoint, and :func:`push_to_hub` runs it in a temporary folder that
is uploaded as one commit.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Protocol

from ..checkpoint import CONFIG_NAME, INDEX_NAME, atomic_directory, write_safetensors
from ..errors import CheckpointError
from .card import model_card
from .load import SOURCES_KEY

CARD_NAME = "README.md"


class SavesFiles(Protocol):
    """What ``processor=`` accepts: anything that writes its files into an existing folder."""

    def save_pretrained(self, directory: str | Path) -> Any: ...


def write_model(
    model: Any,
    folder: Path,
    *,
    max_shard_size: int | str = "5GB",
    processor: SavesFiles | None = None,
    license: str | None = None,
) -> None:
    """Fill the existing ``folder`` with ``model``'s checkpoint and card (and the processor's files)."""
    meta = [n for n, p in model.state_dict().items() if p.is_meta]
    if meta:
        raise CheckpointError(f"cannot save a model whose weights are on the meta device: {meta[:5]}")
    (folder / CONFIG_NAME).write_text(model.config.to_json())
    sources = json.dumps(list(getattr(model, "weight_sources", []) or []))
    write_safetensors(
        model.state_dict().items(), folder, max_shard_size=max_shard_size, metadata={SOURCES_KEY: sources}
    )
    (folder / CARD_NAME).write_text(model_card(model, license=license))
    if processor is not None:
        processor.save_pretrained(folder)


def save_pretrained(
    model: Any,
    directory: str | Path,
    *,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    processor: SavesFiles | None = None,
    license: str | None = None,
) -> Path:
    """``PaliModel.save_pretrained``: see :meth:`pali.pretrained.PretrainedMixin.save_pretrained`."""
    with atomic_directory(directory, overwrite=overwrite) as tmp:
        write_model(model, tmp, max_shard_size=max_shard_size, processor=processor, license=license)
    return Path(directory)


def push_to_hub(
    model: Any,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    max_shard_size: int | str = "5GB",
    processor: SavesFiles | None = None,
    license: str | None = None,
) -> Any:
    """``PaliModel.push_to_hub``: see :meth:`pali.pretrained.PretrainedMixin.push_to_hub`."""
    from huggingface_hub import HfApi

    from .download import hub_errors

    api = HfApi(token=token)
    with hub_errors(repo_id, revision), tempfile.TemporaryDirectory(prefix="pali-push-") as tmp:
        api.create_repo(repo_id, private=private, exist_ok=True)
        write_model(model, Path(tmp), max_shard_size=max_shard_size, processor=processor, license=license)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=tmp,
            revision=revision,
            commit_message=commit_message or f"Upload {model.config.preset or 'PaLI'} model with pali",
            create_pr=create_pr,
            # Shards of an earlier, differently sharded upload would otherwise linger.
            delete_patterns=["*.safetensors", INDEX_NAME],
        )
