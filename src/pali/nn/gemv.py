"""Decoding on a CPU: a few rows against one large weight (the output layer) in the form the BLAS
streams fastest, and one thread for the many small operations around it.

A decoding step multiplies 1 to ``batch * beams`` rows by mT5's ``[250112, 512]`` output layer:
half a gigabyte read to produce a few hundred thousand logits, so the time is memory bandwidth,
if the BLAS call reads the weight with every core. Measured with MKL on a 2-core AMD EPYC (fp32,
2 threads, median of 7): ``F.linear`` of one row took ~35 ms and ``W @ x.T`` ~34 ms: the
matrix-vector kernel runs on one thread; the same weight viewed as ``threads`` batches of rows
through ``torch.bmm`` took ~18-37 ms (one batch per thread), as fast as a transposed copy of the
weight (``x @ W_t``, ~18 ms) without the second half gigabyte. From 2 rows up, the matrix
product ``W @ x.T`` (34-56 ms for 4-8 rows) beats both ``F.linear`` (72-128 ms) and ``x @ W_t``
(80-148 ms). The results match ``F.linear`` to fp32 rounding (a different summation order).

Only large weights on a CPU take these paths; everything else is ``F.linear``, bit for bit.

The decoder layers of a step are the opposite: ~300 small operations (matrices of 0.2-2 MB,
attention over one query) where waking a second thread costs more than it saves. Measured on
the same machine, shared with other jobs (mT5-small decoder, min / median of 30 steps): 57.8 /
262.6 ms at 2 threads against 15.9 / 22.0 ms at 1 thread for batch 1, 71.6 / 236.6 against
15.3 / 38.9 ms for batch 8. So ``few_threads`` runs them on one thread and gives the output
layer every thread back (``torch.set_num_threads`` costs ~1 us).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

#: Below this many weight elements the choice of kernel does not matter: ``F.linear``.
LARGE = 1 << 24


def decode_linear(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """``layer(x)`` for the few rows of a decoding step; a plain bias-free ``nn.Linear`` with a large
    fp32 weight on a CPU runs the fastest kernel for the row count (see the module docstring)."""
    weight = getattr(layer, "weight", None)
    if (
        type(layer) is not nn.Linear
        or layer.bias is not None
        or weight.device.type != "cpu"
        or weight.dtype != torch.float32
        or weight.numel() < LARGE
        or torch.is_grad_enabled()
    ):
        return layer(x)
    rows = x.reshape(-1, x.shape[-1])
    out_features = weight.shape[0]
    parts = torch.get_num_threads()
    if rows.shape[0] == 1 and parts > 1 and out_features % parts == 0:
        out = torch.bmm(weight.view(parts, out_features // parts, -1), rows.t().expand(parts, -1, 1))
    else:
        out = weight @ rows.t()
    return out.reshape(*x.shape[:-1], out_features) if rows.shape[0] == 1 else out.t().reshape(*x.shape[:-1], out_features)


@contextmanager
def few_threads(device: torch.device):
    """Run the block on one intra-op thread on a CPU (eager code only)."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
