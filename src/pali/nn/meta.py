"""Build a module's structure on the meta device without running its initialisers.

``torch.device("meta")`` alone still runs every ``reset_parameters``; on meta tensors the random
fills (``normal_``, ``uniform_``...) do nothing useful but go through torch's reference
implementations, whose first use imports ``torch._dynamo`` (about a second). Loaders build on
the meta device and then assign every tensor from the checkpoint, so here those calls are
skipped: each returns its (meta) tensor untouched. Tensors on real devices are never affected.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.overrides import TorchFunctionMode


class _SkipMetaInit(TorchFunctionMode):
    """In-place fills and ``torch.nn.init`` functions on a meta tensor become no-ops."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        first = args[0] if args else kwargs.get("tensor")  # torch.nn.init passes it by keyword
        if isinstance(first, torch.Tensor) and first.is_meta and _is_init(func):
            return first
        return func(*args, **kwargs)


def _is_init(func) -> bool:
    name = getattr(func, "__name__", "")
    return getattr(func, "__module__", None) == "torch.nn.init" or (
        name.endswith("_") and name in _FILLS
    )


_FILLS = {"normal_", "uniform_", "fill_", "zero_", "copy_", "exponential_", "bernoulli_", "random_"}


@contextmanager
def meta_device() -> Iterator[None]:
    """``with meta_device(): model = PaliModel(config)``: structure, shapes and dtypes, no memory,
    no initialisation (see the module docstring)."""
    with torch.device("meta"), _SkipMetaInit():
        yield
