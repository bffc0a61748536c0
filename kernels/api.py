"""``attention``: the public entry point of the fused kernels, with input checks and autograd.

Triton is imported inside the functions that launch kernels, so this module (and the package)
imports on machines without Triton; calling [`attention`][api.attention] there raises a clear error.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
from dataclasses import dataclass, replace
import os

import torch

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 128
BIAS_STRATEGIES = ("bucket", "row")


@dataclass(frozen=True)
class KernelOptions:
    """Speed levers of the fused kernels; none changes a result beyond rounding.

    Attributes:
        bias_strategy: ``"bucket"`` computes the T5 bucket inside the kernel from the table;
            ``"row"`` gathers from a per-head bias row over the ``Lq + Lk - 1`` distances, built
            once per call. Both return the table gradient.
        exp2: base-2 softmax with log2(e) folded into the scale and the bias.
        tma: load tiles through tensor descriptors (Hopper TMA) where the inputs allow it; other
            inputs fall back to pointer loads.

    The defaults are the configuration measured on a GPU; the others exist to be measured
    against it (``benchmarks/attention.py``).
    """

    bias_strategy: str = "bucket"
    exp2: bool = True
    tma: bool = False


_options = KernelOptions()


def kernel_options() -> KernelOptions:
    """The levers [`attention`][api.attention] uses now."""
    return _options


@contextlib.contextmanager
def use_kernel_options(**changes: object) -> Iterator[KernelOptions]:
    """Within the block, [`attention`][api.attention] uses these levers (e.g. ``bias_strategy="row"``)."""
    global _options
    new = replace(_options, **changes)
    if new.bias_strategy not in BIAS_STRATEGIES:
        raise ValueError(f"bias_strategy must be one of {BIAS_STRATEGIES}, got {new.bias_strategy!r}")
    old, _options = _options, new
    try:
        yield new
    finally:
        _options = old


class _FusedAttention(torch.autograd.Function):
    """Triton forward/backward; saves the logsumexp so backward recomputes probabilities."""

    @staticmethod
    def forward(ctx, q, k, v, table, key_mask, key_len, spec):  # type: ignore[override]
        from . import t5_attention

        out, lse = t5_attention.forward(q, k, v, table, key_mask, key_len, spec)
        ctx.save_for_backward(q, k, v, out, lse, table, key_mask, key_len)
        ctx.spec = spec
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        from . import t5_attention

        q, k, v, out, lse, table, key_mask, key_len = ctx.saved_tensors
        bias_grad = table is not None and ctx.needs_input_grad[3]
        dq, dk, dv, dtable = t5_attention.backward(
            grad_out, q, k, v, out, lse, table, key_mask, key_len, ctx.spec, bias_grad
        )
        if dtable is not None:
            dtable = dtable.to(table.dtype)
        return dq, dk, dv, dtable, None, None, None


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    causal: bool = False,
    bias_table: torch.Tensor | None = None,
    bias_bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
    q_offset: int = 0,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused softmax attention with optional in-kernel T5 relative-position bias.

    Same semantics as [`pali.kernels.attention_reference`][reference.attention_reference] (minus its
    dense ``bias``), on ``[B, H, L, D]`` tensors, returning ``[B, H, Lq, D]`` in q's dtype.
    Differentiable in q, k, v and ``bias_table``.

    Args:
        q: ``[B, H, Lq, D]``, ``D <= 128``; fp16, bf16 or fp32 on one CUDA device (or CPU under
            ``TRITON_INTERPRET=1``).
        k: ``[B, H, Lk, D]``, same dtype and device as ``q``.
        v: ``[B, H, Lk, D]``, same dtype and device as ``q``.
        scale: multiplies ``q k^T``; ``None`` means ``1/sqrt(D)``. mT5 uses 1.0.
        causal: query ``i`` (at absolute position ``q_offset + i``) sees keys ``j <= q_offset + i``.
        bias_table: ``[H, num_buckets]`` T5 relative-attention table; the bias of (query, key) is
            ``bias_table[h, bucket(key_pos - query_pos)]``, looked up inside the kernel.
        bias_bidirectional: encoder-style buckets (True) or decoder-style, past-only (False).
        num_buckets: T5 bucket count (32 in mT5).
        max_distance: T5 distance beyond which all keys share a bucket (128 in mT5).
        q_offset: absolute position of the first query; nonzero for decode steps on a KV cache.
        key_padding_mask: either a ``[B, Lk]`` bool tensor, True where a key may be attended, or
            an integer ``[B]`` tensor of lengths, meaning keys ``j < lengths[b]`` are valid.

    A query that may attend to no key returns zeros (and passes no gradient), not NaN. Key
    tiles past a row's last valid key are skipped. The speed levers (bias strategy, exp2, TMA)
    are set with ``use_kernel_options``.
    """
    _require_triton()
    _check_tensors(q, k, v)
    head_dim = q.shape[-1]
    if bias_table is not None:
        _check_table(bias_table, q, num_buckets, max_distance, bias_bidirectional)
        bias_table = bias_table.contiguous()
    if not isinstance(q_offset, int) or q_offset < 0:
        raise ValueError(f"q_offset must be a non-negative int, got {q_offset!r}")
    key_mask, key_len = _key_mask(key_padding_mask, q, k)

    from .t5_attention import AttentionSpec

    options = kernel_options()
    spec = AttentionSpec(
        scale=float(head_dim**-0.5 if scale is None else scale),
        causal=bool(causal),
        bidirectional=bool(bias_bidirectional),
        num_buckets=num_buckets,
        max_distance=max_distance,
        q_offset=q_offset,
        bias_strategy=options.bias_strategy,
        exp2=options.exp2,
        tma=options.tma,
    )
    return _FusedAttention.apply(q, k, v, bias_table, key_mask, key_len, spec)


def _require_triton() -> None:
    """Triton is an optional dependency: name the install that brings it, not a bare import error."""
    try:
        import triton  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "pali.kernels.attention needs Triton, which is not installed: "
            "pip install 'pali-vlm[triton]' (CUDA builds of torch already include it)"
        ) from err


def _check_tensors(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D [B, H, L, D] tensor, got {_shape(t)}")
        if t.dtype not in _DTYPES:
            raise ValueError(f"{name} must be fp16, bf16 or fp32, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if q.device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise ValueError(
            f"the Triton kernels need CUDA tensors (got {q.device}); set TRITON_INTERPRET=1 "
            "before importing triton to run them on the CPU interpreter"
        )
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    b, h, lq, d = q.shape
    if k.shape[0] != b or k.shape[1] != h or k.shape[3] != d:
        raise ValueError(
            f"k/v {tuple(k.shape)} must match q {tuple(q.shape)} in batch, heads and head dim"
        )
    if not 1 <= d <= MAX_HEAD_DIM:
        raise ValueError(f"head dim must be in [1, {MAX_HEAD_DIM}], got {d}")
    if lq == 0 or k.shape[2] == 0 or b == 0 or h == 0:
        raise ValueError(f"empty attention: q {tuple(q.shape)}, k {tuple(k.shape)}")


def _check_table(
    table: torch.Tensor, q: torch.Tensor, num_buckets: int, max_distance: int, bidirectional: bool
) -> None:
    heads = q.shape[1]
    if not isinstance(table, torch.Tensor) or tuple(table.shape) != (heads, num_buckets):
        raise ValueError(f"bias_table must be [H, num_buckets] = [{heads}, {num_buckets}], got {_shape(table)}")
    if table.dtype not in _DTYPES:
        raise ValueError(f"bias_table must be fp16, bf16 or fp32, got {table.dtype}")
    if table.device != q.device:
        raise ValueError(f"bias_table is on {table.device}, q on {q.device}")
    max_exact = (num_buckets // 2 if bidirectional else num_buckets) // 2
    if max_exact < 1 or max_distance <= max_exact:
        raise ValueError(
            f"num_buckets={num_buckets}, max_distance={max_distance} leave no logarithmic buckets "
            f"(need {'4' if bidirectional else '2'}+ buckets and max_distance > {max_exact})"
        )


def _key_mask(mask: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor
              ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The padding mask as (``[B, Lk]`` uint8 mask or None, int32 ``[B]`` key counts or None).

    Lengths need no mask at all: keys ``j >= lengths[b]`` are simply never visited. A bool mask
    is kept, and its last valid key per row bounds the keys the kernels visit.
    """
    if mask is None:
        return None, None
    batch, lk = q.shape[0], k.shape[2]
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"key_padding_mask must be a tensor, got {type(mask).__name__}")
    if mask.device != q.device:
        raise ValueError(f"key_padding_mask is on {mask.device}, q on {q.device}")
    if mask.dtype == torch.bool:
        if tuple(mask.shape) != (batch, lk):
            raise ValueError(f"bool key_padding_mask must be [B, Lk] = [{batch}, {lk}], got {tuple(mask.shape)}")
        last = lk - mask.flip(1).to(torch.uint8).argmax(1)  # one past the last True
        key_len = torch.where(mask.any(1), last, 0).to(torch.int32)
        return mask.contiguous().view(torch.uint8), key_len
    if mask.dtype in (torch.int32, torch.int64):
        if tuple(mask.shape) != (batch,):
            raise ValueError(f"key_padding_mask of lengths must be [B] = [{batch}], got {tuple(mask.shape)}")
        return None, mask.clamp(0, lk).to(torch.int32).contiguous()
    raise ValueError(f"key_padding_mask must be bool [B, Lk] or int [B] lengths, got {mask.dtype}")


def _shape(t: object) -> object:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
