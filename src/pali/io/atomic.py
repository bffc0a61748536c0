"""Atomic replacement of a folder or a file: a reader sees the old one or the new one, never half.

Everything pali writes (a checkpoint, a converted cache entry, a processor folder, a PNG, a
results file) is written into a temporary sibling and renamed into place only when complete: an
exception, Ctrl-C or a killed process leaves no half-written output and any previous one intact.
"""

from __future__ import annotations

from contextlib import contextmanager
import ctypes
import os
from pathlib import Path
import shutil
import socket
import tempfile
from typing import BinaryIO, Iterator


@contextmanager
def atomic_directory(target: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``target``; on success it replaces ``target`` in one rename.

    On any exception (KeyboardInterrupt included) the temporary directory is removed and
    ``target`` is untouched. An existing ``target`` is refused unless ``overwrite``; it is then
    swapped with the new one atomically (``renameat2(RENAME_EXCHANGE)`` where the OS has it), so
    even a killed process leaves the old or the new directory in place, never neither.

    A process killed outright (SIGKILL, power loss) cannot clean up: it leaves a hidden sibling
    ``.<name>.<host>-<pid>.<random>.tmp``. The next write to ``target`` from this host removes
    such siblings whose process is gone.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite/--force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(target)
    tag = f"{socket.gethostname()}-{os.getpid()}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{tag}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's 0700 is for the scratch phase only
    try:
        yield tmp
        if target.exists():
            _exchange(tmp, target)  # tmp now holds the old directory
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)


def current_umask() -> int:
    """The process umask (reading it means setting it; set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> None:
    """Swap two paths atomically (Linux ``renameat2``); elsewhere two renames, with a brief window."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)  # the process's libc
    if renameat2 is not None and renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return
    old = a.with_name(a.name + ".old")
    os.rename(b, old)
    os.rename(a, b)
    os.rename(old, a)


def _remove_stale_siblings(target: Path) -> None:
    """Delete temporary siblings of ``target`` left by dead processes of this host.

    One exception: a process killed inside the two-rename fallback of ``_exchange`` leaves
    the previous ``target`` as ``<tmp>.old`` and no ``target``; it is put back, not deleted.
    """
    host = socket.gethostname()
    for sibling in sorted(target.parent.glob(f".{target.name}.{host}-*.tmp*")):
        pid = sibling.name[len(f".{target.name}.{host}-"):].split(".")[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        if sibling.name.endswith(".old") and not target.exists():
            os.rename(sibling, target)
        else:
            shutil.rmtree(sibling, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True



@contextmanager
def atomic_file(target: str | Path) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``target`` in one rename when the block succeeds.

    The file is a temporary sibling with the permissions a plain ``open`` would give; on any
    exception it is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_files(directory: str | Path, names: tuple[str, ...]) -> Iterator[Path]:
    """Yield a staging folder inside the existing ``directory``; on success each of ``names``
    written there replaces its namesake in ``directory`` in one rename each, in ``names``' order
    (put the file that says how to read the others last). On failure nothing is replaced."""
    directory = Path(directory)
    staging = Path(tempfile.mkdtemp(prefix=".staging.", suffix=".tmp", dir=directory))
    try:
        yield staging
        for name in names:
            if (staging / name).exists():
                os.replace(staging / name, directory / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
