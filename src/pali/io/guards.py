"""Guards for what a checkpoint claims: shapes, parameter counts, JSON, file names inside it.

Checkpoints come from strangers, so every reader goes through these before allocating or opening
anything: [`check_shape`][pali.io.check_shape] bounds every shape a file claims,
[`read_json`][pali.io.read_json] turns every way JSON can be bad into a
[`CheckpointError`][pali.CheckpointError], and [`checked_file`][pali.io.checked_file] keeps names
found inside a checkpoint from reaching files outside it. See ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError

if TYPE_CHECKING:
    import torch

# Bounds on what a checkpoint may claim, checked before allocating. Module attributes so that a
# caller (or a fuzzing harness) can lower them.
MAX_TENSOR_BYTES = 1 << 36  # 64 GiB: 32x mT5-XXL's largest tensor (its 2 GB bf16 embedding)
MAX_DIM = 1 << 31  # any one dimension, so that even zero-size tensors have sane shapes
MAX_PARAMETERS = 10**12  # a whole model: ~60x PaLI-17B


def check_shape(shape: Any, itemsize: int, what: str) -> tuple[int, ...]:
    """``shape`` as a tuple of ints if it is one a tensor of ``itemsize``-byte elements may have.

    Rejects non-integers, negative or oversized dimensions and shapes over ``MAX_TENSOR_BYTES``,
    so a header claiming 10**12 elements fails here, before any allocation.
    """
    if not isinstance(shape, (list, tuple)) or len(shape) > 32:
        raise CheckpointError(f"{what}: shape {shape!r} is not a list of at most 32 dimensions")
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < MAX_DIM for d in shape):
        raise CheckpointError(f"{what}: shape {list(shape)} must hold integers in [0, {MAX_DIM})")
    nbytes = math.prod(shape) * itemsize
    if nbytes > MAX_TENSOR_BYTES:
        raise CheckpointError(
            f"{what}: shape {list(shape)} claims {nbytes:,} bytes, over the limit of {MAX_TENSOR_BYTES:,} "
            "(pali.io.guards.MAX_TENSOR_BYTES)"
        )
    return tuple(shape)


def check_num_parameters(module: "torch.nn.Module", what: str) -> int:
    """The parameter count of a (meta-built) ``module``; CheckpointError past ``MAX_PARAMETERS``."""
    count = sum(t.numel() for t in module.state_dict().values())
    if count > MAX_PARAMETERS:
        raise CheckpointError(
            f"{what} describes {count:,} parameters, over the limit of {MAX_PARAMETERS:,} "
            "(pali.io.guards.MAX_PARAMETERS)"
        )
    return count


def read_json(path: Path, what: str | None = None) -> Any:
    """The JSON value in ``path``; every way it can be bad is a CheckpointError naming the file.

    Covers missing files, non-UTF-8 bytes, syntax errors, nesting deep enough to exhaust the
    parser's recursion and integers too long to convert (both ``ValueError``/``RecursionError``
    in the standard library, not ``JSONDecodeError``).
    """
    what = what or str(path)
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CheckpointError(f"{what}: no such file") from None
    except (ValueError, RecursionError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{what}: not valid JSON ({type(e).__name__}: {e})") from None


def checked_file(directory: Path, name: str, what: str) -> Path:
    """``directory / name`` for a file ``name`` found inside a checkpoint (an index, a spec).

    ``name`` must be a plain relative path without ``..``, and the file must resolve inside
    ``directory``, except for the Hugging Face cache layout, where ``snapshots/<rev>/<file>`` is a
    symlink into the repo's ``blobs/``: those may resolve there. A symlink leading anywhere else
    is refused, so a crafted checkpoint cannot make pali read (and copy into a converted
    checkpoint) a file of the user's that it does not contain.
    """
    if not isinstance(name, str) or not name or "\0" in name or "\\" in name or os.path.isabs(name) \
            or ".." in Path(name).parts or name in (".",):
        raise CheckpointError(f"{what}: file name {name!r} points outside the checkpoint directory {directory}")
    path = directory / name
    resolved, root = path.resolve(), directory.resolve()
    allowed = [root]
    if directory.parent.name == "snapshots":  # Hub cache: models--org--name/snapshots/<rev>/
        allowed.append(directory.parent.parent.resolve() / "blobs")
    if not any(resolved.is_relative_to(a) for a in allowed):
        raise CheckpointError(
            f"{what}: {path} is a link to {resolved}, outside the checkpoint directory {directory}; "
            "copy the file in (or link the whole directory)"
        )
    return path
