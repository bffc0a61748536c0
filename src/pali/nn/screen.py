"""Greedy decoding's argmax over an fp32 output layer, read at bf16's cost, exactly.

A greedy step needs one number per row from mT5's output layer: the index of the largest of its
250112 fp32 logits. Reading the fp32 weight (half a gigabyte) is most of a step on a CPU.
``ScreenedLinear`` keeps the fp32 weight and a bf16 copy of it (half its bytes, in oneDNN's
packed layout) and finds that index in two passes:

1. **Screen**: every logit from the bf16 copy and the input rounded to bf16. Each screened
   logit ``s_j`` lies within ``delta`` of the fp32 logit ``c_j`` that any fp32 product would
   compute, with ``delta`` known without looking at the fp32 weight (below).
2. **Decide**: a row ``j`` with ``s_j < max(s) - 2 delta`` has ``c_j < c_m`` for the screen's
   maximum ``m``, so it cannot be the argmax. The fp32 logits of the remaining candidates
   (one or a few rows: see ``docs/decoding.md``) are computed from the fp32 weight, and the first
   maximum among them is the answer: the first maximum of the fp32 logits.

The bound, per input row ``x`` (``d`` features, ``u = 2^-24``, ``g = d u / (1 - d u)``; ``x_b``
and ``w_b`` the bf16 roundings; ``A`` and ``R`` the largest ``|w_j|`` and ``|w_j - w_bj|`` over
the weight's rows, computed once): ``|x.w_j - x_b.w_bj| <= |x - x_b| A + |x_b| R``
(Cauchy-Schwarz); an fp32 dot product of ``d`` terms in any order is within ``g |x| A`` of the
exact one, the screen's fp32 accumulation of exact bf16 products within ``g |x_b| (A + R)``;
the screen's bf16 output is rounded to nearest, within ``2^-8 |s|``. ``delta`` is their sum,
widened by ``2^-10`` of itself for the rounding of the norms (``_threshold`` has the exact
form; bf16 kernels may flush denormals, below 1e-38, to zero, which no bound here covers).
Inputs that are not finite, or a screen that leaves more candidates than ``MIN_CANDIDATES`` or
1/64 of the rows, whichever is more (an input of zeros ties every logit), take the full fp32
product instead.

Measured on a 2-core AMD EPYC with ``avx512_bf16`` (2 threads), mT5's ``[250112, 512]``
layer: the bf16 product 5.2 ms for one row and 6.2 for 8, against 10.3-10.7 and 12.2-17.6 for
fp32 (packed, plain). Where a CPU lacks bf16 instructions a bf16 product is emulated and
slower than fp32 (10x on an AVX2-only CPU): ``can_screen`` says no there.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from . import gemv
from .argmax import argmax_blocks, masked_first_argmax
from .hugepages import collapse
from .quantize import can_pack, has_bf16_instructions, packed_weight

#: More candidates than this, or than 1/64 of the output rows (3908 of mT5's, 8 MB of fp32 rows
#: gathered), in one call: the full fp32 product instead.
MIN_CANDIDATES = 256
_U = 2.0**-24
#: Rows per pass when the screen is built (8 MB of mT5's fp32 rows at a time).
_ROWS_AT_ONCE = 4096


def can_screen() -> bool:
    """Whether this CPU and torch run the screen's bf16 product natively (oneDNN's packed bf16
    kernel and ``avx512_bf16`` or AMX): where they do not, the screen would be the slower pass."""
    return can_pack() and has_bf16_instructions()


class ScreenedLinear(nn.Module):
    """A bias-free linear layer (an output layer) in fp32 whose ``argmax`` reads a bf16 copy of
    its weight first (see the module docstring); ``forward`` is the plain fp32 product, its
    output in the input's dtype.

    Holds the fp32 weight as it is (on 2 MB pages) and its bf16 copy: 1.5x the layer's memory.
    For inference on a CPU (the weight is an attribute, not a parameter: no checkpoint entry).
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight
        if weight.device.type != "cpu":
            raise InputError(f"screened weights run on the CPU; this layer is on {weight.device}")
        if not can_pack():
            raise InputError("a screened layer needs oneDNN's packed bf16 kernel, which this torch build lacks")
        if linear.bias is not None or not weight.is_floating_point():
            raise InputError(f"a screened layer is a bias-free floating-point one; got {weight.dtype} weights"
                             f"{' and a bias' if linear.bias is not None else ''}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = weight.detach().float()  # the fp32 format: a bf16 or fp16 layer's weights widened
        collapse(self.weight)
        self._build_screen()

    def _build_screen(self) -> None:
        rounded = self.weight.to(torch.bfloat16)
        norm = rounding = 0.0
        for start in range(0, self.out_features, _ROWS_AT_ONCE):  # no fp32 copy of the whole weight
            rows = self.weight[start : start + _ROWS_AT_ONCE]
            norm = max(norm, float(rows.norm(dim=1).max()))
            rounding = max(rounding, float((rows - rounded[start : start + _ROWS_AT_ONCE].float()).norm(dim=1).max()))
        slack = 1 + 2.0**-10  # fp32 rounding of the norms themselves
        self.row_norm, self.rounding = norm * slack, rounding * slack
        self.screen = packed_weight(rounded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits, computed in fp32 (``pali.nn.gemv``'s fastest kernel for the row count)."""
        rows = x.reshape(-1, self.in_features).float()
        out = gemv.linear_rows(rows, self.weight, None)
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def argmax(self, x: torch.Tensor, suppressed: torch.Tensor | None = None) -> torch.Tensor:
        """``first_argmax`` of ``forward(x)`` over ``[rows, in]`` inputs, the ids in
        ``suppressed`` never chosen: found from the bf16 screen and the candidates' fp32 logits."""
        rows = x.reshape(-1, self.in_features).float()
        rounded = rows.to(torch.bfloat16)
        screened = gemv.onednn_linear(rounded, self.screen, None).float()
        if suppressed is not None:
            screened.index_fill_(-1, suppressed, float("-inf"))
        # The candidates are found in blocks (as ``first_argmax``): a comparison over every
        # logit took 150 us per row, the blocks' maxima first and the few blocks at the top 30.
        view = screened.view(rows.shape[0], argmax_blocks(self.out_features), -1)
        block_top = view.amax(-1)
        threshold = self._threshold(rows, rounded.float(), block_top.amax(-1))
        if not bool(torch.isfinite(threshold).all()):
            return masked_first_argmax(self.forward(rows), suppressed)
        row, block = (block_top >= threshold[:, None]).nonzero().unbind(1)
        which, offset = (view[row, block] >= threshold.index_select(0, row)[:, None]).nonzero().unbind(1)
        if which.shape[0] > max(MIN_CANDIDATES, self.out_features // 64):
            return masked_first_argmax(self.forward(rows), suppressed)
        row, col = row.index_select(0, which), block.index_select(0, which) * view.shape[-1] + offset
        exact = (self.weight.index_select(0, col) * rows.index_select(0, row)).sum(-1)
        best = exact.new_full((rows.shape[0],), float("-inf")).scatter_reduce(0, row, exact, "amax")
        first = exact == best.index_select(0, row)
        return col.new_full((rows.shape[0],), self.out_features).scatter_reduce(0, row[first], col[first], "amin")

    def _threshold(self, rows: torch.Tensor, rounded: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
        """Per row, the screened logit below which a row cannot hold the fp32 maximum.

        A screened logit ``s`` rounded to bf16 from ``acc`` has ``|s - acc| <= 2^-8 |s|``, so with
        ``e = error(...)`` an fp32 logit is at most ``f(s) + e``, ``f(s) = s + 2^-8 |s|`` (increasing
        in ``s``), and the screen's maximum ``top`` is at least ``top - 2^-8 |top| - e``. A row
        is out when ``f(s) + e < top - 2^-8 |top| - e``, that is ``s < f^-1(that)``.
        """
        lowest = top - 2.0**-8 * top.abs() - 2 * self.error(rows, rounded)
        return torch.where(lowest >= 0, lowest / (1 + 2.0**-8), lowest / (1 - 2.0**-8))

    def error(self, rows: torch.Tensor, rounded: torch.Tensor) -> torch.Tensor:
        """Per input row, how far the screen's unrounded logit (its fp32 accumulation) may lie from
        any fp32 logit: the weights' and inputs' rounding to bf16 and both accumulations (the
        module docstring), widened by ``2^-10`` for the rounding of the norms."""
        g = self.in_features * _U / (1 - self.in_features * _U)
        a, r = self.row_norm, self.rounding
        norm_rounded = rounded.norm(dim=1)
        e = (rows - rounded).norm(dim=1) * a + norm_rounded * r + g * (norm_rounded * (a + r) + rows.norm(dim=1) * a)
        return e * (1 + 2.0**-10)

    def __getstate__(self) -> dict:
        """Copied or pickled, the screen (an opaque packed tensor) is rebuilt on arrival."""
        state = super().__getstate__()
        state.pop("screen", None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._build_screen()

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weight ``forward`` reads (the fp32 weight, an attribute: whoever walks the
        buffers misses it)."""
        return self.in_features * self.out_features * 4

    @property
    def argmax_bytes(self) -> int:
        """Bytes ``argmax`` reads: the bf16 screen (the candidates' fp32 rows are a few more)."""
        return self.in_features * self.out_features * 2

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp32 with a bf16 screen"
