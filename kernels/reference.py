"""Plain PyTorch attention with T5 relative-position bias: the oracle for the Triton kernels.

Everything here materializes the full ``[B, H, Lq, Lk]`` score matrix and computes in fp32. It is
slow on purpose: it is the definition the fused kernels are tested against, and the eager backend
of the model code.
"""

from __future__ import annotations

import math

import torch


def relative_position_bucket(
    relative_position: torch.Tensor,
    *,
    bidirectional: bool,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> torch.Tensor:
    """Map ``key_pos - query_pos`` to a bucket index, as T5/mT5 (t5x, HF transformers) do.

    Half the buckets (all of them when causal) hold exact small distances; the rest grow
    logarithmically up to ``max_distance``, beyond which everything shares the last bucket. In the
    bidirectional variant the upper half of the buckets is for keys after the query. The
    logarithm is taken in fp32, exactly as the references do, so bucket boundaries match bit for bit.
    """
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).to(relative_position.dtype) * num_buckets
        distance = relative_position.abs()
    else:
        distance = -torch.clamp(relative_position, max=0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    large = max_exact + (
        torch.log(distance.float() / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).to(relative_position.dtype)
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


def t5_relative_bias(
    table: torch.Tensor,
    lq: int,
    lk: int,
    *,
    bidirectional: bool,
    num_buckets: int = 32,
    max_distance: int = 128,
    q_offset: int = 0,
) -> torch.Tensor:
    """The dense ``[1, H, lq, lk]`` bias from a ``[H, num_buckets]`` table.

    Query ``i`` sits at absolute position ``q_offset + i`` (decode steps), key ``j`` at ``j``;
    ``q_offset`` may be a 0-d tensor (a compiled decode step's position).
    """
    if table.dim() != 2 or table.shape[1] != num_buckets:
        raise ValueError(f"bias_table must be [H, {num_buckets}], got {tuple(table.shape)}")
    q_pos = torch.arange(lq, device=table.device) + q_offset
    k_pos = torch.arange(lk, device=table.device)
    buckets = relative_position_bucket(
        k_pos[None, :] - q_pos[:, None],
        bidirectional=bidirectional,
        num_buckets=num_buckets,
        max_distance=max_distance,
    )
    return table[:, buckets].unsqueeze(0)


def attention_reference(
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
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax attention on ``[B, H, L, D]`` tensors, computed in fp32, returned in q's dtype.

    Takes the same arguments as [`pali.kernels.attention`][api.attention], plus ``bias``: an already
    materialized additive bias broadcastable to ``[B, H, Lq, Lk]``, for callers that share one
    bias across layers. ``key_padding_mask`` is ``[B, Lk]``, True where a key may be attended.
    ``causal`` lets query ``i`` (at position ``q_offset + i``) see keys ``j <= q_offset + i``.
    ``bias`` and ``bias_table`` are two ways of giving the same bias: pass one, not both.
    """
    if bias is not None and bias_table is not None:
        raise ValueError(
            "pass either bias (a dense additive bias) or bias_table (the T5 table), not both: "
            "the dense bias would otherwise be dropped"
        )
    lq, lk = q.shape[-2], k.shape[-2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if bias_table is not None:
        bias = t5_relative_bias(
            bias_table,
            lq,
            lk,
            bidirectional=bias_bidirectional,
            num_buckets=num_buckets,
            max_distance=max_distance,
            q_offset=q_offset,
        )
    if bias is not None:
        scores = scores + bias.float()
    if causal:
        q_pos = torch.arange(lq, device=q.device) + q_offset
        allowed = torch.arange(lk, device=q.device)[None, :] <= q_pos[:, None]
        scores = scores.masked_fill(~allowed, float("-inf"))
    if key_padding_mask is not None:
        scores = scores.masked_fill(~key_padding_mask[:, None, None, :].bool(), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    # A query that may attend to no key at all gets zeros, not NaN.
    probs = torch.nan_to_num(probs, nan=0.0)
    return torch.matmul(probs, v.float()).to(q.dtype)
