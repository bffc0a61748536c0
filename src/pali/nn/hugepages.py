"""Weights on 2 MB pages: a decoding step streams every weight once, and on 4 KB pages it pays a
page-table walk for every 4 KB it reads.

mT5's output layer alone is half a gigabyte: 125,000 pages of 4 KB, or 250 of 2 MB. Reading it
on 4 KB pages costs a page walk every 4 KB, and in a virtual machine each walk is two (guest and
host tables). Measured on a 2-core AMD EPYC virtual machine (fp32, 2 threads, median of 25
interleaved pairs in one process): one row by mT5-small's ``[250112, 512]`` output layer took
11.5 ms on 2 MB pages against 13.2 ms on 4 KB pages, packed for oneDNN 10.9 against 12.6 (1.15x
both). Processes started with ``THP_MEM_ALLOC_ENABLE=1`` took 6.4 ms (packed) and 7.6 (plain)
where processes without it, run in turn with them, took 11-12 ms (not paired: the host's memory
speed drifts).

Linux backs memory with 2 MB pages where a process asks (``madvise``); PyTorch's allocator asks
only when ``THP_MEM_ALLOC_ENABLE=1`` was set before its first allocation. ``collapse`` asks after
the fact: ``MADV_COLLAPSE`` (Linux 6.1+) moves a tensor's memory onto 2 MB pages where it lies,
without changing an address or a value, so it is safe on any tensor at any time. It copies the
memory once: 0.8 s and 1.2 s for the 486 MB output layer here (the kernel compacted free memory
first); on memory already on 2 MB pages it returns at once (0.1 ms). Elsewhere (another OS, an
older kernel, a tensor in a file mapping) it does nothing and says so.

``PackedLinear`` (``pali.quantize``) collapses every weight it packs; mT5's ``start_decoding``
collapses the weights its steps stream (the decoder's and the output layer) on its first
generation on a CPU (``collapse_once``), so a model pays the copy once, in its first
``generate``, and the weights stay where they are. Starting the process with
``THP_MEM_ALLOC_ENABLE=1`` has PyTorch allocate every large tensor on 2 MB pages from the start.
"""

from __future__ import annotations

import ctypes
import sys
import weakref
from functools import lru_cache
from typing import Iterable

import torch

#: Linux's huge page size on x86-64 and most arm64 kernels, and ``MADV_COLLAPSE``'s advice number.
HUGE_PAGE = 2 << 20
_MADV_COLLAPSE = 25


@lru_cache(maxsize=None)
def _madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    madvise = libc.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


def _address(tensor: torch.Tensor) -> tuple[int, int] | None:
    """Start address and size in bytes of ``tensor``'s memory on the CPU, or None (no storage)."""
    if tensor.device.type != "cpu":
        return None
    if tensor.layout == torch._mkldnn:  # a weight oneDNN reordered (PackedLinear)
        try:
            return torch.ops.mkldnn.data_ptr(tensor), torch.ops.mkldnn._nbytes(tensor)
        except (AttributeError, RuntimeError):  # a torch without these ops
            return None
    if tensor.layout != torch.strided or tensor.is_quantized:
        return None
    return tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes()


def collapse(tensor: torch.Tensor) -> bool:
    """Move the whole 2 MB pages inside ``tensor``'s memory onto 2 MB pages; True when the kernel
    did (or they already were), False where it cannot (see the module docstring)."""
    madvise, where = _madvise(), _address(tensor)
    if madvise is None or where is None:
        return False
    start, size = where
    first = -(-start // HUGE_PAGE) * HUGE_PAGE
    end = (start + size) // HUGE_PAGE * HUGE_PAGE
    return end > first and madvise(first, end - first, _MADV_COLLAPSE) == 0


_collapsed: dict[int, weakref.ref] = {}  # storage address -> the tensor collapsed there


def collapse_once(modules: Iterable[torch.nn.Module]) -> None:
    """``collapse`` every parameter and buffer of ``modules`` that spans a whole 2 MB page, once:
    a tensor already collapsed (or refused) is skipped, so a caller may ask at every generation
    (a few microseconds a tensor)."""
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            if tensor.device.type != "cpu" or tensor.numel() * tensor.element_size() < HUGE_PAGE:
                continue
            address = tensor.data_ptr()
            seen = _collapsed.get(address)
            if seen is not None and seen() is not None:
                continue
            collapse(tensor)
            _collapsed[address] = weakref.ref(tensor, lambda _, address=address: _collapsed.pop(address, None))
