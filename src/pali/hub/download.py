"""Turn a Hub repo id or a local directory into a local folder holding the files we need.

Downloads go through ``huggingface_hub`` (its cache, its progress bars, ``HF_HUB_OFFLINE``,
``HF_ENDPOINT``, tokens); nothing here parses weights. The Hub's exceptions are translated into
[`HubError`][pali.hub.HubError] messages that say which repo, revision or file was wrong and what to do.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
import difflib
from pathlib import Path
import re
from typing import Callable, Iterator

from .. import bundled
from ..errors import CheckpointError
from ..io import CONFIG_NAME, INDEX_NAME, SINGLE_NAME
from .errors import HubError, HubMissingFileError

Select = Callable[[list[str]], list[str]]

# owner/name or name: what the Hub accepts as a model repo id.
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?")


def as_repo_id(name_or_path: str | Path) -> str:
    """``name_or_path`` as a Hub repo id, once no local file or folder of that name exists: the one
    rule for "a path or a repo id?". An existing path, a ``Path`` object, or a string that is no
    ``owner/name`` (``./x``, ``/abs``, ``a/b/c``) is a missing local path, and a CheckpointError."""
    text = str(name_or_path)
    if Path(text).expanduser().exists():
        raise CheckpointError(f"{name_or_path!r} is neither a checkpoint directory nor a Hub repo id ('owner/name')")
    if isinstance(name_or_path, Path) or not _REPO_ID.fullmatch(text):
        raise CheckpointError(f"{text}: no such file or directory, so neither a checkpoint directory nor a Hub repo id ('owner/name')")
    return text


@dataclass(frozen=True)
class Snapshot:
    """Files of one checkpoint on local disk, and where they came from.

    ``commit`` is the Hub commit hash (``None`` for a local directory), ``source`` the repo id or
    the resolved local path: together they identify the weights for provenance and caching.
    """

    folder: Path
    source: str
    commit: str | None = None

    @property
    def is_local(self) -> bool:
        return self.commit is None


def is_offline(local_files_only: bool = False) -> bool:
    from huggingface_hub import constants

    return local_files_only or bool(constants.HF_HUB_OFFLINE)


def fetch(
    name_or_path: str | Path,
    select: Select,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Snapshot:
    """A local directory as it is, or the files ``select`` picks from a Hub repo, downloaded.

    ``select`` receives the repo's file list (or, offline, the cached snapshot's) and returns the
    files to fetch; it raises if what it needs is not there. Offline (``HF_HUB_OFFLINE=1`` or
    ``local_files_only``) only the cache is read.
    """
    name_or_path = bundled.resolve(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if revision is not None:
            raise CheckpointError(f"{path} is a local directory: revision={revision!r} does not apply")
        files = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
        if not files:
            raise CheckpointError(
                f"{path}: the folder is empty, not a checkpoint (one holds {CONFIG_NAME} and its weights)"
            )
        try:
            select(files)
        except CheckpointError as e:
            if type(e) is not CheckpointError:
                raise
            raise CheckpointError(f"{path}: {e}") from None  # say which folder lacks the file
        return Snapshot(path.resolve(), str(path.resolve()))
    repo_id = as_repo_id(name_or_path)
    check_not_preset(repo_id)
    return _fetch_repo(repo_id, select, revision=revision, cache_dir=cache_dir,
                       local_files_only=local_files_only, token=token)


def _fetch_repo(repo_id, select, *, revision, cache_dir, local_files_only, token) -> Snapshot:
    from huggingface_hub import snapshot_download

    offline = is_offline(local_files_only)
    with hub_errors(repo_id, revision, offline):
        if offline:
            # Every checkpoint we read has a config.json; asking for it alone keeps the Hub's
            # completeness check from rejecting a snapshot we only partly downloaded on purpose.
            folder = Path(snapshot_download(
                repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True, allow_patterns=[CONFIG_NAME],
            ))
            wanted = select(sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()))
        else:
            wanted = select(list_files(repo_id, revision, token))
            folder = Path(snapshot_download(
                repo_id, revision=revision, cache_dir=cache_dir, token=token, allow_patterns=wanted,
            ))
    missing = [f for f in wanted if not (folder / f).is_file()]
    if missing:
        raise HubError(
            f"{repo_id} (revision {folder.name}): {missing} not in the local cache"
            + (" and the Hub is offline (HF_HUB_OFFLINE / local_files_only)" if offline else "")
        )
    return Snapshot(folder, repo_id, commit=folder.name)


def config_file(files: list[str]) -> list[str]:
    """Only ``config.json``: what to read before deciding which weight files a checkpoint needs."""
    if CONFIG_NAME not in files:
        raise CheckpointError(f"no {CONFIG_NAME} among the checkpoint's files {files}")
    return [CONFIG_NAME]


def transformers_files(files: list[str]) -> list[str]:
    """From a transformers repo: config, the PyTorch weights (safetensors preferred), the card."""
    from ..convert.hf_reader import BIN_INDEX, BIN_NAME

    if "checkpoint" in files or any(re.fullmatch(r"checkpoint_\d+/checkpoint", f) for f in files):
        return files  # a T5X checkpoint directory: everything in it is the checkpoint
    if CONFIG_NAME not in files:
        raise CheckpointError(f"no {CONFIG_NAME} among the files {files}: not a transformers checkpoint")
    for index, single, shard in ((INDEX_NAME, SINGLE_NAME, r"model-\d+-of-\d+\.safetensors"),
                                 (BIN_INDEX, BIN_NAME, r"pytorch_model-\d+-of-\d+\.bin")):
        if index in files:
            weights = [index] + [f for f in files if re.fullmatch(shard, f)]
            break
        if single in files:
            weights = [single]
            break
    else:
        raise CheckpointError(
            f"no PyTorch weights ({SINGLE_NAME}, {INDEX_NAME}, {BIN_NAME} or {BIN_INDEX}) among {files}"
        )
    return [CONFIG_NAME, *weights] + (["README.md"] if "README.md" in files else [])


def list_files(repo_id: str, revision: str | None, token: str | bool | None) -> list[str]:
    """The repo's files, from one request with a short timeout and no retries.

    It is the first request for a repo, so an unreachable Hub (or a mistyped name) fails at once
    instead of after the Hub client's retry-with-backoff; later downloads keep their retries.
    """
    from huggingface_hub import HfApi, constants

    info = HfApi(token=token).model_info(repo_id, revision=revision, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    return sorted(s.rfilename for s in info.siblings or ())


def fetch_file(repo_id: str, filename: str, *, revision: str | None = None) -> Path:
    """One file of a Hub repo in the local cache (``HF_HUB_OFFLINE``: the cache only).

    Online, the repo is looked up first (``list_files``: one quick request), so a wrong name
    or an unreachable Hub is a [`HubError`][pali.hub.HubError] saying what the name is not.
    """
    import huggingface_hub

    check_not_preset(repo_id)
    offline = is_offline()
    try:
        with hub_errors(repo_id, revision, offline):
            if not offline and filename not in list_files(repo_id, revision, None):
                raise HubMissingFileError("the repo has no such file")
            return Path(huggingface_hub.hf_hub_download(repo_id, filename, revision=revision))
    except HubError as e:
        raise type(e)(f"cannot get {filename!r} from Hub repo {repo_id!r}: {e}") from None


def check_not_preset(name: str) -> None:
    """A preset's name is not a checkpoint: say how to build one instead of asking the Hub."""
    from ..config.registry import PRESETS

    if "/" not in name and name in PRESETS:
        raise CheckpointError(
            f"{name!r} is a preset (an architecture without weights), not a bundled model, local folder "
            f"or Hub repo: build it with PaliModel.from_preset({name!r}) (randomly initialised)"
        )


def what_it_is_not(name: str) -> str:
    """For an error about ``name`` the Hub did not give: the bundled models it is not (with near
    matches) and that no local folder has that name."""
    near = difflib.get_close_matches(name, bundled.MODELS, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(map(repr, near))}?" if near else ""
    return f"{name!r} is not a bundled model (bundled: {', '.join(bundled.MODELS)}), a local folder or a preset{hint}"


@contextmanager
def hub_errors(repo_id: str, revision: str | None, offline: bool = False) -> Iterator[None]:
    """Re-raise ``huggingface_hub`` errors as [`HubError`][pali.hub.HubError] with an actionable message."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    rev = revision or "main"
    try:
        yield
    except RevisionNotFoundError:
        raise HubError(f"revision {rev!r} does not exist in Hub repo {repo_id!r}") from None
    except GatedRepoError:
        raise HubError(
            f"Hub repo {repo_id!r} is gated: accept its terms on the Hub, then pass token=... "
            "(or log in with `hf auth login`)"
        ) from None
    except RepositoryNotFoundError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        hint = "is private: pass token=... (or log in with `hf auth login`)" if status == 401 else "does not exist"
        raise HubError(
            f"Hub repo {repo_id!r} not found: it {hint}; check the id (a private repo needs a token). "
            f"{what_it_is_not(repo_id)}"
        ) from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise HubError(
            f"{repo_id!r} (revision {rev!r}) is not in the local cache and "
            + ("the Hub is offline (HF_HUB_OFFLINE=1 or local_files_only=True)" if offline
               else "the Hub could not be reached")
            + f". {what_it_is_not(repo_id)}"
        ) from None
    except HfHubHTTPError as e:
        raise HubError(f"Hub request for {repo_id!r} (revision {rev!r}) failed: {e}") from None
    except Exception as e:
        # The Hub client's HTTP library (httpx, or httpx2 in newer releases) raises its own
        # transport errors when the network is down; name the cause and the offline switch.
        if type(e).__module__.split(".")[0] not in ("httpx", "httpx2", "httpcore", "httpcore2", "requests", "urllib3"):
            raise
        raise HubError(
            f"cannot reach the Hub for {repo_id!r} ({type(e).__name__}: {e}); check the network, "
            f"or set HF_HUB_OFFLINE=1 to use the local cache. {what_it_is_not(repo_id)}"
        ) from None
