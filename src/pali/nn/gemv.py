"""Decoding on a CPU: the few rows of a decoding step against each weight, in the form the BLAS
streams fastest.

A decoding step multiplies 1 to ``batch * beams`` rows by every weight of the decoder and by
mT5's ``[250112, 512]`` output layer: the time is the bytes of weights read, if every core reads
its share. MKL does not split a matrix-vector product of these sizes across threads: measured on
a 2-core AMD EPYC (fp32, median of 7), ``F.linear`` of one row by the output layer took ~35 ms
and ``W @ x.T`` ~34 ms, while the same weight viewed as ``threads`` blocks of rows through
``torch.bmm`` (one block per thread) took ~15-18 ms, as fast as a transposed copy of the weight
(``x @ W_t``, ~18 ms) without the second half gigabyte. The decoder's small weights (0.2-2 MB)
gain the same way: the 8 decoder layers of mT5-small took 7.6 ms per step for one row on one
thread with ``F.linear``, 7.7 ms on two, and 4.4 ms with every weight split across the two
threads (12.1 / 11.3 / 7.4 ms for 4 rows, 16.0 / 11.9 / 10.8 ms for 8); whole generations were
15-22% faster, tokens unchanged. From 2 rows up the output layer's product ``W @ x.T`` (34-56 ms
for 4-8 rows) beats ``F.linear`` (72-128 ms) and ``x @ W_t`` (80-148 ms), and splitting gains
nothing more there. The results match ``F.linear`` to fp32 rounding (another summation order).

Everything else (gradients on, other dtypes or devices, layers with a bias or wrapped by an
adapter, more rows than ``FEW_ROWS`` on a small weight, compiled code) is ``layer(x)``, bit for bit.
"""

from __future__ import annotations

import torch
from torch import nn

#: From this many weight elements a weight is "large" (an output layer): more than one row uses
#: ``W @ x.T``. Below, the choice matters only for a step's few rows.
LARGE = 1 << 24
#: Up to this many rows, a weight is split into one block of rows per thread.
FEW_ROWS = 8


def decode_linear(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """``layer(x)`` for the rows of a decoding step; a plain bias-free ``nn.Linear`` with fp32
    weights on a CPU, under ``no_grad``, runs the fastest kernel for its row count and size (see
    the module docstring). The output may be a transposed view (strided), as ``W @ x.T`` gives it."""
    weight = getattr(layer, "weight", None)
    if (
        torch.compiler.is_compiling()
        or type(layer) is not nn.Linear
        or layer.bias is not None
        or weight.device.type != "cpu"
        or weight.dtype != torch.float32
        or torch.is_grad_enabled()
    ):
        return layer(x)
    rows = x.reshape(-1, x.shape[-1])
    out_features = weight.shape[0]
    parts = torch.get_num_threads()
    large = weight.numel() >= LARGE
    if parts > 1 and out_features % parts == 0 and (rows.shape[0] == 1 or (not large and rows.shape[0] <= FEW_ROWS)):
        out = torch.bmm(weight.view(parts, out_features // parts, -1), rows.t().expand(parts, -1, -1))
        out = out.reshape(out_features, rows.shape[0])
    elif large:
        out = weight @ rows.t()
    else:
        return layer(x)
    return out.t().reshape(*x.shape[:-1], out_features)
