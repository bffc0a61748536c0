"""Decoding on a CPU: the few rows of a decoding step against each weight, read by every core.

A decoding step multiplies 1 to ``batch * beams`` rows by every weight of the decoder and by
mT5's ``[250112, 512]`` output layer: the time is the bytes of weights read, if every core reads
its share. MKL does not split a matrix-vector product of these sizes across threads: measured on
a 2-core AMD EPYC (fp32, median of 7), ``F.linear`` of one row by the output layer took ~35 ms
and ``W @ x.T`` ~34 ms, while the same weight viewed as ``threads`` blocks of rows through
``torch.bmm`` (one block per thread) took ~12-18 ms, as fast as a transposed copy of the weight
(``x @ W_t``) without the second half gigabyte. Where the thread count does not divide the
output rows, the blocks are as many as the largest divisor that fits (4 for 250112 rows on 6
threads), never uneven. From 2 rows up the output layer's product
``W @ x.T`` (34-56 ms for 4-8 rows) beats ``F.linear`` (72-128 ms) and ``x @ W_t`` (80-148 ms).

The decoder's small weights (0.2-2 MB) gain the same way inside a decoding step (the block
``decoding_step`` marks): the 72 weights of mT5-small's 8 decoder layers took 5.6 ms per step
for one row with ``F.linear`` (MKL runs these products on one thread) and 2.2 ms split over two
threads; whole generations (greedy batch 1 and 8, beam 4) were 16-27% faster, tokens unchanged.
An earlier design ran the step's other small operations on one thread and gave the threads back
for each product: in a process of its own that was 1-2% slower in fp32 and 11-12% slower with
int8 weights, so the step keeps every thread. The results match ``F.linear`` to fp32 rounding
(another summation order).

More than ``FEW_ROWS`` rows (the text encoder's 206-row products, the cross-attention keys and
values projected once, scoring) take oneDNN's fp32 kernel (``mkldnn._linear_pointwise``, bias
included): on the 2-core AMD EPYC, MKL's fp32 GEMM ran at ~210 GFLOP/s for mT5-small's shapes
at 206 and 1648 rows, oneDNN's at ~430-510 (fp32 rounding, not reduced precision: 1e-6 relative
to an fp64 product). mT5-small's encoder took 31 ms instead of 57 for 206 ids, 212 instead of
362 for 8 rows, and whole generations were 5-13% faster, tokens unchanged.

A compiled step traces the same split products, over the thread count ``compiled_threads``
recorded (the thread-local mark is not visible to the tracer).

Everything else (gradients on, other dtypes or devices, a layer with hooks or wrapped by an
adapter, up to ``FEW_ROWS`` rows outside a step, more rows in compiled code) is ``layer(x)``,
bit for bit.
"""

from __future__ import annotations

import functools
import threading
from contextlib import contextmanager

import torch
from torch import nn

#: From this many weight elements a weight is "large" (an output layer): it takes these kernels
#: anywhere; a smaller one only inside a step (``decoding_step``) and for up to ``FEW_ROWS`` rows.
LARGE = 1 << 24
FEW_ROWS = 8

_step = threading.local()  # .active: inside decoding_step
_compiled = {"threads": 1}  # what a compiled step splits over: a constant of the traced graph


def decode_linear(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """``layer(x)`` under ``no_grad``: a plain ``nn.Linear`` (no hooks) with fp32 weights on a
    CPU runs the fastest kernel for its row count and size (see the module docstring)."""
    weight = getattr(layer, "weight", None)
    if (
        type(layer) is not nn.Linear
        or layer._forward_hooks or layer._forward_pre_hooks or _global_hooks()  # they must see the call
        or weight.device.type != "cpu"
        or weight.dtype != torch.float32
        or torch.is_grad_enabled()
    ):
        return layer(x)
    rows = x.reshape(-1, x.shape[-1])
    large = weight.numel() >= LARGE
    parts = 1 if layer.bias is not None else _blocks(weight.shape[0], large, rows.shape[0])
    if parts > 1:
        cols = rows.t().expand(parts, -1, -1)
        blocks = weight.view(parts, weight.shape[0] // parts, -1)
        out = torch.bmm(blocks, cols).reshape(weight.shape[0], rows.shape[0])
    elif large and layer.bias is None:
        out = weight @ rows.t()
    elif rows.shape[0] > FEW_ROWS and not torch.compiler.is_compiling() and _onednn():
        out = torch.ops.mkldnn._linear_pointwise(rows, weight, layer.bias, "none", [], "")
        return out.reshape(*x.shape[:-1], weight.shape[0])
    else:
        return layer(x)
    return out.t().reshape(*x.shape[:-1], weight.shape[0])


def _global_hooks() -> bool:
    hooks = torch.nn.modules.module
    return bool(hooks._global_forward_hooks or hooks._global_forward_pre_hooks)


@functools.lru_cache(maxsize=None)
def _onednn() -> bool:
    """Whether oneDNN's fp32 linear kernel is there (``torch.ops.mkldnn._linear_pointwise``)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _blocks(out_features: int, large: bool, rows: int) -> int:
    """Into how many equal blocks of output rows (at most one per thread) to split a weight; 1: none."""
    if torch.compiler.is_compiling():
        threads = _compiled["threads"] if not large and rows <= FEW_ROWS else 1
    elif large:
        threads = torch.get_num_threads() if rows == 1 else 1
    else:
        threads = torch.get_num_threads() if rows <= FEW_ROWS and getattr(_step, "active", False) else 1
    return _largest_divisor(out_features, threads)


def _largest_divisor(n: int, at_most: int) -> int:
    """The largest divisor of ``n`` not above ``at_most``: 6 threads split mT5's 250112 output rows
    into 4 blocks (and leave 2 threads idle) rather than fall back to one thread."""
    return next(d for d in range(min(n, at_most), 0, -1) if n % d == 0)


@contextmanager
def decoding_step():
    """Mark the block as a decoding step: in it, ``decode_linear`` splits small weights too."""
    outer = getattr(_step, "active", False)
    _step.active = True
    try:
        yield
    finally:
        _step.active = outer


def compiled_threads() -> int:
    """Set the thread count compiled decoding steps split their small weights over to this
    process's (``torch.get_num_threads()``), and return it. Called before compiling a step; read
    while tracing, the count is a constant of the graph (a guard recompiles when it changes)."""
    _compiled["threads"] = torch.get_num_threads()
    return _compiled["threads"]
