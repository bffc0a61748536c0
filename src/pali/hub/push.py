"""Upload a folder of files to a Hub repo as one commit.

``PaliModel.push_to_hub`` writes the same folder ``save_pretrained`` does (``pali.io.loading.write_model``)
into a temporary directory and hands it here; nothing in this module knows what the files are.
"""

from __future__ import annotations

from pathlib import Path
import tempfile
from typing import Any, Callable

from ..io import INDEX_NAME
from .download import hub_errors


def push_folder(repo_id: str, write: Callable[[Path], None], *, token: str | bool | None = None,
                create_options: dict[str, Any], upload_options: dict[str, Any]) -> Any:
    """Create ``repo_id`` if needed (``create_options`` go to ``create_repo``), let ``write`` fill
    a temporary folder, and upload it (``upload_options`` go to ``upload_folder``)."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with hub_errors(repo_id, upload_options.get("revision")), tempfile.TemporaryDirectory(prefix="pali-push-") as tmp:
        api.create_repo(repo_id, exist_ok=True, **create_options)
        write(Path(tmp))
        # Shards of an earlier, differently sharded upload would otherwise linger.
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, delete_patterns=["*.safetensors", INDEX_NAME],
                                 **upload_options)
