"""Multi-head attention for both towers, with one switch for the backend that computes it.

Backends:

* ``"eager"``: [`pali.kernels.attention_reference`][reference.attention_reference], fp32 and fully
  materialized; the definition the others are tested against.
* ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention``. The T5 bias stays
  ``[1, H, Lq, Lk]`` (built once per stack forward and shared by its layers) and the key padding
  mask is applied without ever forming a ``[B, H, Lq, Lk]`` mask (see ``_sdpa``).
* ``"triton"``: [`pali.kernels.attention`][api.attention], the fused kernels with the T5 bias
  computed inside the kernel from the ``[H, 32]`` table. Needs CUDA tensors.
* ``"auto"`` (default): triton on CUDA when the kernels import, sdpa elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

from .. import kernels
from ..errors import ConfigError
from .gemv import inference_linear
from .joint import joint_linear

BACKENDS = ("auto", "eager", "sdpa", "triton")


@lru_cache(maxsize=None)
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return hasattr(kernels, "attention")


def resolve_backend(backend: str, device: torch.device) -> str:
    """Turn ``"auto"`` into a concrete backend for tensors on ``device``."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown attention backend {backend!r}; choose from {BACKENDS}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and _triton_importable() else "sdpa"
    return backend


@dataclass
class RelativeBias:
    """T5 relative position bias of one stack for one forward pass.

    Holds the ``[H, num_buckets]`` table; the dense ``[1, H, Lq, Lk]`` form is built on demand and
    memoized, so the layers of a stack share one copy (the fused backend never builds it).
    """

    table: torch.Tensor
    bidirectional: bool
    num_buckets: int = 32
    max_distance: int = 128
    _dense: dict = field(default_factory=dict, repr=False)

    def dense(self, lq: int, lk: int, q_offset: int | torch.Tensor) -> torch.Tensor:
        # A tensor offset (a compiled decode step) is the same tensor for every layer of the pass.
        key = (lq, lk, q_offset if isinstance(q_offset, int) else "step")
        if key in self._dense:
            return self._dense[key]
        if isinstance(q_offset, int) and lq == 1 and lk == q_offset + 1 and not self.bidirectional:
            # An eager decoding step: the newest token over all before it. Its buckets (distances
            # lk - 1 .. 0) are the end of a row computed once: one gather instead of the
            # bucketing's 20 operations (28 us a step).
            buckets = _causal_buckets(max(64, 1 << (lk - 1).bit_length()), self.num_buckets, self.max_distance,
                                      self.table.device)[-lk:]
            self._dense[key] = self.table[:, buckets].view(1, -1, 1, lk)
        else:
            self._dense[key] = kernels.t5_relative_bias(
                self.table,
                lq,
                lk,
                bidirectional=self.bidirectional,
                num_buckets=self.num_buckets,
                max_distance=self.max_distance,
                q_offset=q_offset,
            )
        return self._dense[key]


@lru_cache(maxsize=32)
def _causal_buckets(length: int, num_buckets: int, max_distance: int, device: torch.device) -> torch.Tensor:
    """The causal buckets of distances ``length - 1`` down to 0 (keys before a query, then the
    query itself), as ``t5_relative_bias`` computes them. A normal tensor, even when first asked
    for inside ``generate``'s inference mode: a step with gradients may index with it later."""
    with torch.inference_mode(False):
        distance = torch.arange(-(length - 1), 1, device=device)
        return kernels.relative_position_bucket(distance, bidirectional=False, num_buckets=num_buckets,
                                                max_distance=max_distance)


@dataclass
class KeyPadding:
    """A key padding mask checked and shaped once, then shared by every layer and step.

    Whether a ``[B, Lk]`` mask pads anything is a host read; per layer and per decoded token that
    is a synchronisation each time (on a GPU, a stall). A decoder's cross-attention mask never
    changes during a generation, so the cache builds this once: ``mask`` ``[B, Lk]`` (True:
    attend) and its additive form ``[B, 1, 1, Lk]`` (0 or a large negative, in ``dtype``).
    """

    mask: torch.Tensor
    additive: torch.Tensor

    @classmethod
    def of(cls, mask: torch.Tensor | None, dtype: torch.dtype) -> "KeyPadding | None":
        """``None`` when nothing is padded (the one host read)."""
        if mask is None or bool(mask.all()):
            return None
        mask = mask.bool()
        additive = torch.zeros(mask.shape[0], 1, 1, mask.shape[1], dtype=dtype, device=mask.device)
        return cls(mask, additive.masked_fill(~mask[:, None, None, :], _negative(dtype)))


def _negative(dtype: torch.dtype) -> float:
    # Large but finite, so gradients through masked entries stay 0 rather than NaN, and a row
    # whose keys are all masked stays finite (it is never read). Looked up, not computed: every
    # attention call asks (``torch.finfo`` costs a microsecond).
    negative = _NEGATIVE.get(dtype)
    return torch.finfo(dtype).min / 4 if negative is None else negative


_NEGATIVE = {dtype: torch.finfo(dtype).min / 4 for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    backend: str,
    scale: float,
    causal: bool = False,
    bias: RelativeBias | None = None,
    q_offset: int | torch.Tensor = 0,
    key_padding_mask: torch.Tensor | KeyPadding | None = None,
) -> torch.Tensor:
    """Attention on ``[B, H, L, D]`` tensors through the chosen backend.

    ``key_padding_mask`` is ``[B, Lk]`` (True: attend) or a ``KeyPadding`` checked once.

    ``q_offset`` is the absolute position of the first query: an int, or a 0-d CPU tensor (a
    decode step under ``torch.compile``, which must not specialize on the position). Every
    backend gets the same arguments: the fused kernels the stack's bias table and the position,
    the others the dense bias built from them.
    """
    backend = resolve_backend(backend, q.device)
    if isinstance(q_offset, torch.Tensor) and not torch.compiler.is_compiling():
        q_offset = int(q_offset)  # eager: a host read (free for a CPU tensor), then the int path
    padding = key_padding_mask if isinstance(key_padding_mask, KeyPadding) else None
    if padding is not None and backend != "sdpa":
        key_padding_mask = padding.mask
    if backend == "triton":
        table = None if bias is None else bias.table
        bidirectional = True if bias is None else bias.bidirectional
        buckets = (32, 128) if bias is None else (bias.num_buckets, bias.max_distance)
        if torch.compiler.is_compiling() and not torch.is_grad_enabled():
            # Opaque to the compiler: the compiled graph calls the kernel entry itself, with the
            # position read on the host at run time, instead of tracing (or specializing on) it.
            return _fused_attention(
                q, k, v, torch.as_tensor(q_offset), table, key_padding_mask, scale, causal, bidirectional, *buckets
            )
        return _call_kernel(q, k, v, int(q_offset), table, key_padding_mask, scale, causal, bidirectional, *buckets)
    dense = None if bias is None else bias.dense(q.shape[-2], k.shape[-2], q_offset)
    if backend == "eager":
        return kernels.attention_reference(
            q, k, v, scale=scale, causal=causal, q_offset=q_offset,
            key_padding_mask=key_padding_mask, bias=dense,
        )
    return _sdpa(q, k, v, scale=scale, causal=causal, bias=dense, q_offset=q_offset,
                 key_padding_mask=key_padding_mask)


def _call_kernel(q, k, v, q_offset, table, key_padding_mask, scale, causal, bidirectional, num_buckets, max_distance):
    return kernels.attention(
        q, k, v, scale=scale, causal=causal, q_offset=q_offset, key_padding_mask=key_padding_mask,
        bias_table=table, bias_bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance,
    )


@torch.library.custom_op("pali::fused_attention", mutates_args=())
def _fused_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_offset: torch.Tensor,
    table: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    scale: float,
    causal: bool,
    bidirectional: bool,
    num_buckets: int,
    max_distance: int,
) -> torch.Tensor:
    """[`pali.kernels.attention`][api.attention] for compiled inference (no autograd: decoding only)."""
    return _call_kernel(q, k, v, int(q_offset), table, key_padding_mask, scale, causal, bidirectional,
                        num_buckets, max_distance)


@_fused_attention.register_fake
def _(q, k, v, q_offset, table, key_padding_mask, scale, causal, bidirectional, num_buckets, max_distance):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def _sdpa(q, k, v, *, scale, causal, bias, q_offset, key_padding_mask):
    lq, lk = q.shape[-2], k.shape[-2]
    neg = _negative(q.dtype)
    mask = bias if bias is None or bias.dtype == q.dtype else bias.to(q.dtype)
    is_causal = False
    # Nothing to hide when no key lies after the first query (an eager decode step over the
    # filled cache): skip building the mask.
    if causal and not (isinstance(q_offset, int) and lk <= q_offset + 1):
        if mask is None and isinstance(q_offset, int) and q_offset == 0 and lq == lk:
            is_causal = True
        else:
            q_pos = torch.arange(lq, device=q.device) + q_offset
            blocked = torch.arange(lk, device=q.device)[None, :] > q_pos[:, None]
            causal_bias = torch.zeros(lq, lk, dtype=q.dtype, device=q.device).masked_fill(blocked, neg)
            mask = causal_bias if mask is None else mask + causal_bias
    if isinstance(key_padding_mask, KeyPadding):  # checked (and shaped) once already: no host read
        if mask is None:
            mask = key_padding_mask.additive.to(q.dtype)
        else:
            q, k = _append_padding_feature(q, k, key_padding_mask.mask, neg)
    # Skipping an all-True mask is an eager shortcut; a compiled graph keeps the (exact) feature
    # rather than branching on data.
    elif key_padding_mask is not None and (torch.compiler.is_compiling() or not bool(key_padding_mask.all())):
        if mask is None:
            # Nothing to keep apart (cross-attention, ViT): the padding alone is a [B,1,1,Lk]
            # additive mask, O(B*Lk).
            mask = torch.zeros(q.shape[0], 1, 1, lk, dtype=q.dtype, device=q.device).masked_fill(
                ~key_padding_mask.bool()[:, None, None, :], neg
            )
        else:
            # SDPA takes one additive mask; adding [B,1,1,Lk] padding to a [1,H,Lq,Lk] bias would
            # materialize [B,H,Lq,Lk]. Instead append one feature to every head: 1 in the queries
            # and 0 (attend) or a huge negative (padded) in the keys, so q.k gains exactly the
            # padding term. This costs one extra (aligned) feature column, O(B*H*L*D), not O(B*H*L^2).
            q, k = _append_padding_feature(q, k, key_padding_mask, neg)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale)


def _append_padding_feature(q, k, key_padding_mask, neg):
    d = q.shape[-1]
    extra = 8 - d % 8  # keep the feature dim a multiple of 8 so fused SDPA kernels still apply
    q_pad = q.new_zeros(*q.shape[:-1], extra)
    q_pad[..., 0] = 1.0
    k_pad = k.new_zeros(*k.shape[:-1], extra)
    k_pad[..., 0] = torch.where(key_padding_mask.bool(), 0.0, neg)[:, None, :].to(k.dtype)
    return torch.cat([q, q_pad], dim=-1), torch.cat([k, k_pad], dim=-1)


class Attention(nn.Module):
    """Multi-head attention with separate ``q``, ``k``, ``v``, ``o`` projections.

    Used for ViT self-attention (biases, scale 1/sqrt(d)) and mT5 self/cross attention (no biases,
    scale 1.0 because T5 folds the scaling into its initialisation; ``key_bias=False`` drops only the
    key's bias, as BLIP-2's EVA ViT has it, a bias there being a no-op under softmax). Separate projections keep
    checkpoint key maps one-to-one and let LoRA target each by name.
    """

    #: Methods besides ``forward`` that run this module's weights: sharded as an FSDP unit of its
    #: own (``pali.train.parallel.apply_fsdp``), it gathers them around these calls too.
    fsdp_forward_methods = ("project_kv",)

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int,
        *,
        bias: bool,
        scale: float | None = None,
        kv_dim: int | None = None,
        key_bias: bool | None = None,
    ) -> None:
        super().__init__()
        inner = num_heads * head_dim
        kv_dim = dim if kv_dim is None else kv_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5 if scale is None else scale
        self.backend = "auto"
        self.q = nn.Linear(dim, inner, bias=bias)
        self.k = nn.Linear(kv_dim, inner, bias=bias if key_bias is None else key_bias)
        self.v = nn.Linear(kv_dim, inner, bias=bias)
        self.o = nn.Linear(inner, dim, bias=bias)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        return x.view(b, length, self.num_heads, self.head_dim).transpose(1, 2)

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[B, H, L, D]`` of ``x`` (for caching cross-attention once)."""
        k, v = joint_linear(x, (self.k, self.v))
        return self.split_heads(k), self.split_heads(v)

    def inputs(self) -> list[nn.Linear]:
        """The projections of self-attention's one input, multiplied as one product where
        ``pali.nn.joint.adjoin`` laid them out together."""
        return [self.q, self.k, self.v]

    def forward(
        self,
        x: torch.Tensor,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        *,
        bias: RelativeBias | None = None,
        causal: bool = False,
        q_offset: int | torch.Tensor = 0,
        key_padding_mask: torch.Tensor | None = None,
        store_kv: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """Attend from ``x`` to ``kv`` (already projected keys/values), or to ``x`` itself. For
        self-attention, ``store_kv`` takes ``x``'s keys and values and returns the ones to attend
        over (a KV cache: its filled positions)."""
        if kv is None:
            q, k, v = (self.split_heads(t) for t in joint_linear(x, self.inputs()))
            if store_kv is not None:
                k, v = store_kv(k, v)
        else:
            q, (k, v) = self.split_heads(inference_linear(x, self.q)), kv
        out = attend(
            q, k, v, backend=self.backend, scale=self.scale, causal=causal, bias=bias,
            q_offset=q_offset, key_padding_mask=key_padding_mask,
        )
        b, _, length, _ = out.shape
        return inference_linear(out.transpose(1, 2).reshape(b, length, self.num_heads * self.head_dim), self.o)
