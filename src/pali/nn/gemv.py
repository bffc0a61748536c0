"""Linear layers at inference on a CPU: the kernel that reads the weight fastest for the rows given.

A decoding step multiplies ``batch * beams`` rows by every weight of the decoder and by mT5's
``[250112, 512]`` output layer; an encoder (text or vision: attention and MLP) multiplies a few
hundred rows per example by each of its weights. Which kernel is fastest depends on the row
count, not on the layer. Measured on a 2-core AMD EPYC (fp32, 2 threads, medians of interleaved
runs, ms; "small" is the 72 products of mT5-small's 8 decoder layers, 0.75-2 MB weights,
"output" its output layer):

| rows | split (``torch.bmm``): small, output | oneDNN: small, output | MKL (``F.linear``, ``W @ x.T``) |
|---|---|---|---|
| 1 | 2.4, 13 | 3.3, 11-13 | 6.2, 30 |
| 4 | 3.4, 12.6 | 5.0, 18.0 | 9.2, 12.4 |
| 8 | 7.8, 27 | 5.9, 21.5 | 8.1, 24 |
| 16 | 9.7, 50 | 6.2, 23.4 | ~10, 49 |
| 64 | 22, 127 | 12, 66 | 23, 124 |

So the rules:

* **Up to ``FEW_ROWS`` rows** (5; oneDNN takes over at 6), a weight is viewed as one block of
  output rows per thread and multiplied with ``torch.bmm``: MKL does not split a product of so
  few rows across threads; as blocks, every core reads its share. Small weights are split only
  inside a decoding step (the block ``decoding_step`` marks): outside one, a few rows are rare
  and the layer runs as it is. A thread count that does not divide the output rows splits into
  the largest divisor that fits (4 blocks of mT5's 250112 rows on 6 threads), never unevenly.
  Three rows are multiplied as four, the fourth zero: MKL's kernel reads a weight slower for
  three columns than for four (the output layer: 13.4 ms against 11.1); five stay five (as six
  or eight they were slower still). The product comes back laid out as ``F.linear`` returns
  it, not as the transposed view the blocks give: on the view, SDPA took its unfused kernel,
  every elementwise operation a strided loop and ``log_softmax`` over ``[4, 250112]`` logits
  3.8 ms instead of 0.2. The rows are copied one by one (``torch.stack``): ``.contiguous()`` on
  such a view runs PyTorch's blocked 2D transpose on one thread, 1.16 ms for those logits
  against 0.32. Both together, whole generations, tokens unchanged: beam x4 1.10x faster,
  greedy batch 2 1.07x, 3 1.18x, 4 1.05x, beam x3 1.25x.
* **More rows** take oneDNN's fp32 kernel (``mkldnn._linear_pointwise``, bias included): MKL's
  fp32 GEMM runs at less than half its throughput on this CPU (mT5-small's encoder: 31 ms
  instead of 57 for 206 ids; SigLIP-B/16 at 224 px: 146 ms instead of 211 for one image, 915
  instead of 1414 for 8). Compiled code calls it as one opaque op (inductor cannot lower it
  on a plain weight).
* **One thread**: one row by the output layer takes oneDNN (22 ms against MKL's 31); other
  few-row products of the output layer ``W @ x.T`` (MKL's ``F.linear`` was 2x slower there).

Results are fp32 (another summation order: within fp32 rounding of ``F.linear``, 1e-6 relative
to an fp64 product), and greedy tokens equal transformers' in ``benchmarks/decode_peers.py``.
The thresholds were measured on 1 and 2 cores of one machine; ``benchmarks/decode_peers.py``
checks the result on another.

A compiled step traces the same choices, over the thread count ``compiled_threads`` recorded
(the thread-local mark is not visible to the tracer; a compiled step is always a step).

Everything else (gradients on, other dtypes or devices, a layer with hooks or wrapped by an
adapter, few rows of a small weight outside a step, a bias where the split would apply) is
``layer(x)``, bit for bit.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import torch
from torch import nn
import torch.nn.functional as F

#: From this many weight elements a weight is "large" (an output layer): it is split for a few
#: rows anywhere; a smaller one only inside a step (``decoding_step``).
LARGE = 1 << 24
#: Up to this many rows a product is split across threads; beyond it, oneDNN.
FEW_ROWS = 5

_step = threading.local()  # .active: inside decoding_step
_compiled = {"threads": 1}  # what a compiled step splits over: a constant of the traced graph


def inference_linear(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """``layer(x)`` under ``no_grad``: a plain ``nn.Linear`` (no hooks) with fp32 weights on a
    CPU runs the fastest kernel for its row count and size (see the module docstring)."""
    # The checks are ordered and written for speed (a decoding step makes 72 of these calls for
    # mT5-small; the parameters are read from ``_parameters``, not through ``Module.__getattr__``):
    # they cost 3 us per call less than the plain spelling, 0.2 ms per greedy step.
    if type(layer) is not nn.Linear or torch.is_grad_enabled():
        return layer(x)
    params = layer._parameters
    weight, bias = params["weight"], params["bias"]
    if (
        layer._forward_hooks or layer._forward_pre_hooks or _global_hooks()  # they must see the call
        or not weight.is_cpu
        or weight.dtype != torch.float32
    ):
        return layer(x)
    return linear_rows(x, weight, bias)


def linear_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for an fp32 ``weight`` on a CPU, no gradient, through the
    fastest kernel for ``x``'s row count (the checks are the caller's: ``inference_linear``)."""
    shape = x.shape
    features = shape[-1]
    count = shape[:-1].numel()
    out_shape = (*shape[:-1], weight.shape[0])
    large = weight.numel() >= LARGE
    if count > FEW_ROWS:
        if _ONEDNN:
            return onednn_linear(x.reshape(count, features), weight, bias).reshape(out_shape)
    elif bias is None:
        parts = _blocks(weight.shape[0], large)
        if parts > 1:
            rows = x.reshape(count, features)
            if count == 3:  # as four rows, the fourth zero (see the module docstring)
                rows = torch.cat([rows, rows.new_zeros(1, features)])
            # ``rows.t()``, not ``x.reshape(1, features, 1)``: with the column's strides so, MKL
            # takes another kernel, 1.4x (decoder layers) to 5x (output layer) slower.
            out = torch.bmm(weight.view(parts, -1, features), rows.t().expand(parts, -1, -1))
            if count == 1:  # the blocks' outputs, one after the other, are the output row
                return out.view(out_shape)
            product = out.reshape(weight.shape[0], -1)[:, :count].t()  # a transposed view
            # Laid out, row by row (see the module docstring).
            return torch.stack(product.unbind(0)).view(out_shape)
        if large and count == 1 and _ONEDNN:
            return onednn_linear(x.reshape(1, features), weight, None).reshape(out_shape)
    if large and bias is None:
        return (weight @ x.reshape(count, features).t()).t().reshape(out_shape)
    return F.linear(x, weight, bias)


def onednn_linear(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """oneDNN's linear kernel (``mkldnn._linear_pointwise``) on ``[rows, in]`` and a plain or
    packed weight: called directly in eager code, as one opaque op in compiled code."""
    if torch.compiler.is_compiling():
        return torch.ops.pali.onednn_linear(rows, weight, bias)
    return _linear_pointwise(rows, weight, bias)


def _linear_pointwise(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "none", [], "")


# The opaque op for compiled code, defined through ``torch.library.Library`` rather than the
# ``torch.library.custom_op`` decorator: inductor's wrapper calls it 6-11 us faster (measured, 72
# products of a [512, 512] packed weight: 2.4-2.5 ms compiled, as eager, against 2.9-3.3 ms).
# No autograd formula: inference only.
_library = torch.library.Library("pali", "FRAGMENT")
_library.define("onednn_linear(Tensor rows, Tensor weight, Tensor? bias) -> Tensor")
_library.impl("onednn_linear", _linear_pointwise, "CompositeExplicitAutograd")


@torch.library.register_fake("pali::onednn_linear")
def _(rows, weight, bias):
    return rows.new_empty(rows.shape[0], weight.shape[0])


def _global_hooks() -> bool:
    hooks = torch.nn.modules.module
    return bool(hooks._global_forward_hooks or hooks._global_forward_pre_hooks)


def has_onednn() -> bool:
    """Whether oneDNN's linear kernel is there (``torch.ops.mkldnn._linear_pointwise``)."""
    return _ONEDNN


_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _blocks(out_features: int, large: bool) -> int:
    """Into how many equal blocks of output rows (at most one per thread) to split a weight of a
    few rows; 1: none."""
    if torch.compiler.is_compiling():
        threads = _compiled["threads"]
    elif large or getattr(_step, "active", False):
        threads = torch.get_num_threads()
    else:
        threads = 1
    return _largest_divisor(out_features, threads)


def _largest_divisor(n: int, at_most: int) -> int:
    """The largest divisor of ``n`` not above ``at_most``: 6 threads split mT5's 250112 output rows
    into 4 blocks (and leave 2 threads idle) rather than fall back to one thread."""
    divisor = min(n, at_most)
    while n % divisor:  # a loop, not a generator: 48 calls per step, and traced by compiled steps
        divisor -= 1
    return divisor


@contextmanager
def decoding_step():
    """Mark the block as a decoding step: in it, ``inference_linear`` splits small weights too."""
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
