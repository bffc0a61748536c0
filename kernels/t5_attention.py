"""Triton kernels for softmax attention with an in-kernel T5 relative-position bias.

FlashAttention-2 structure: the forward pass streams key/value blocks through an online softmax
and keeps only the per-query logsumexp; the backward pass recomputes probabilities from it, one
kernel owning a key block (dK, dV and the bias-table gradient) and one owning a query block (dQ).
Scores never leave registers, so neither a ``[H, Lq, Lk]`` bias nor a ``[B, H, Lq, Lk]`` mask
exists in memory.

Portability choices: plain pointer arithmetic (no block pointers or tensor descriptors, which
newer Triton dropped), masked loads over a power-of-two ``BLOCK_D`` for head dims like 72 or 104,
and a single autotune config under ``TRITON_INTERPRET=1`` because the interpreter cannot
benchmark several. Under the interpreter, tiles are upcast to fp32 right after loading since its
bf16/fp16 arithmetic is unreliable; on a GPU 16-bit tiles feed the tensor cores directly and
accumulate in fp32.

This module imports Triton at import time; :mod:`pali.kernels.api` imports it lazily.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

# Every dot product in fp32 inputs must stay fp32 (TF32 would miss the fp32 reference by ~1e-3).
_DOT_PRECISION = {torch.float32: "ieee", torch.float16: "tf32", torch.bfloat16: "tf32"}

# Decode steps (a handful of queries against a long cache) skip autotuning and use the smallest
# query block ``tl.dot`` allows, so no work is spent on padding rows.
DECODE_MAX_LQ = 16


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@dataclass(frozen=True)
class AttentionSpec:
    """Everything about one attention call that is not a tensor."""

    scale: float
    causal: bool
    bidirectional: bool
    num_buckets: int
    max_distance: int
    q_offset: int

    def bucket_constants(self) -> dict:
        """Constants of the T5 bucket function, derived on the host exactly as the reference does.

        ``LOG_RATIO`` is passed as an fp32 scalar: the reference divides an fp32 tensor by
        ``math.log(max_distance / max_exact)``, which PyTorch rounds to fp32 first.
        """
        n_dir = self.num_buckets // 2 if self.bidirectional else self.num_buckets
        max_exact = n_dir // 2
        return {
            "N_DIR": n_dir,
            "MAX_EXACT": max_exact,
            "log_ratio": math.log(self.max_distance / max_exact),
        }


# --------------------------------------------------------------------------------------------
# Shared device helpers
# --------------------------------------------------------------------------------------------


@triton.jit
def t5_bucket(rel, log_ratio, BIDIRECTIONAL: tl.constexpr, N_DIR: tl.constexpr, MAX_EXACT: tl.constexpr):
    """``key_pos - query_pos`` (int32) to a T5 bucket, step for step like the reference.

    The log runs in fp32 with IEEE division and the conversion truncates toward zero, as
    ``Tensor.to(int)`` does, so bucket boundaries agree bit for bit.
    """
    if BIDIRECTIONAL:
        base = tl.where(rel > 0, N_DIR, 0)
        dist = tl.abs(rel)
    else:
        base = tl.zeros_like(rel)
        dist = tl.maximum(-rel, 0)
    # Distances below MAX_EXACT take the exact branch; clamping keeps log() away from zero there.
    ratio = tl.math.div_rn(tl.maximum(dist, MAX_EXACT).to(tl.float32), MAX_EXACT * 1.0)
    scaled = tl.math.div_rn(tl.log(ratio), log_ratio) * (N_DIR - MAX_EXACT)
    large = tl.minimum(MAX_EXACT + scaled.to(tl.int32), N_DIR - 1)
    return base + tl.where(dist < MAX_EXACT, dist, large)


@triton.jit
def _load_tile(base, b, h, stride_b, stride_h, stride_l, stride_d, offs_l, L, offs_d,
               HEAD_DIM: tl.constexpr, UPCAST: tl.constexpr):
    """A ``[len(offs_l), BLOCK_D]`` tile of a strided ``[B, H, L, D]`` tensor, zero past the ends."""
    ptrs = (base + b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h
            + offs_l[:, None] * stride_l + offs_d[None, :] * stride_d)
    tile = tl.load(ptrs, mask=(offs_l[:, None] < L) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    if UPCAST:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def _store_tile(base, bh, tile, offs_l, L, offs_d, HEAD_DIM: tl.constexpr):
    """Store into a contiguous ``[B*H, L, D]`` output (all outputs are allocated that way)."""
    ptrs = base + bh.to(tl.int64) * L * HEAD_DIM + offs_l[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(ptrs, tile.to(base.dtype.element_ty),
             mask=(offs_l[:, None] < L) & (offs_d[None, :] < HEAD_DIM))


@triton.jit
def _far_bucket(rel_lo, rel_hi, BIDIRECTIONAL: tl.constexpr, NUM_BUCKETS: tl.constexpr,
                N_DIR: tl.constexpr, MAX_DISTANCE: tl.constexpr):
    """The one bucket of a tile whose relative positions all lie in ``[rel_lo, rel_hi]``, or -1.

    From ``max_distance`` on the T5 bucket saturates (the log term reaches its cap, and a rounding
    of one ulp still truncates to the cap minus one, which ``min`` lifts back), and a
    unidirectional table maps every non-negative position to bucket 0. Most tiles of a long
    sequence lie entirely in such a region; they skip the per-entry log and table gather.
    """
    bucket = -1
    if rel_hi <= -MAX_DISTANCE:
        bucket = N_DIR - 1
    if BIDIRECTIONAL:
        if rel_lo >= MAX_DISTANCE:
            bucket = NUM_BUCKETS - 1
    else:
        if rel_lo >= 0:
            bucket = 0
    return bucket


@triton.jit
def _scores(q, k, offs_m, offs_n, start_m, start_n, b, h, LQ, LK, Q_OFFSET, scale, log_ratio,
            TABLE, KPM, stride_kpm,
            CAUSAL: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_KPM: tl.constexpr,
            BIDIRECTIONAL: tl.constexpr, NUM_BUCKETS: tl.constexpr, N_DIR: tl.constexpr,
            MAX_EXACT: tl.constexpr, MAX_DISTANCE: tl.constexpr, BLOCK_M: tl.constexpr,
            BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """Biased, masked scores ``q k^T * scale + bias`` in fp32 and the bucket of each entry.

    ``offs_m``/``offs_n`` are ``start_m``/``start_n`` plus a block range. Entries that may not be
    attended (out of range, causal, padded key) are ``-inf``; their bucket is meaningless. Forward
    and both backward kernels go through here, so they agree on every score.
    """
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
    rel = offs_n[None, :] - (Q_OFFSET + offs_m)[:, None]
    valid = (offs_m[:, None] < LQ) & (offs_n[None, :] < LK)
    if CAUSAL:
        valid = valid & (rel <= 0)
    if HAS_KPM:
        keep = tl.load(KPM + b.to(tl.int64) * stride_kpm + offs_n, mask=offs_n < LK, other=0)
        valid = valid & (keep != 0)[None, :]
    bucket = rel
    if HAS_BIAS:
        far = _far_bucket(start_n - (Q_OFFSET + start_m + BLOCK_M - 1),
                          start_n + BLOCK_N - 1 - (Q_OFFSET + start_m),
                          BIDIRECTIONAL, NUM_BUCKETS, N_DIR, MAX_DISTANCE)
        if far >= 0:
            bucket = tl.zeros_like(rel) + far
            s += tl.load(TABLE + h * NUM_BUCKETS + far).to(tl.float32)
        else:
            bucket = t5_bucket(rel, log_ratio, BIDIRECTIONAL, N_DIR, MAX_EXACT)
            s += tl.load(TABLE + h * NUM_BUCKETS + bucket, mask=valid, other=0.0).to(tl.float32)
    return tl.where(valid, s, float("-inf")), bucket


# --------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, TABLE, KPM,
                stride_qb, stride_qh, stride_qm, stride_qd,
                stride_kb, stride_kh, stride_kn, stride_kd,
                stride_vb, stride_vh, stride_vn, stride_vd,
                stride_kpm, H, LQ, LK, Q_OFFSET, scale, log_ratio, LQ_KEY, LK_KEY,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                CAUSAL: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_KPM: tl.constexpr,
                BIDIRECTIONAL: tl.constexpr, NUM_BUCKETS: tl.constexpr, N_DIR: tl.constexpr,
                MAX_EXACT: tl.constexpr, MAX_DISTANCE: tl.constexpr, UPCAST: tl.constexpr,
                PRECISION: tl.constexpr):
    """One program: ``BLOCK_M`` queries of one (batch, head), streaming all visible keys."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_tile(Q, b, h, stride_qb, stride_qh, stride_qm, stride_qd, offs_m, LQ, offs_d,
                   HEAD_DIM, UPCAST)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    hi = LK
    if CAUSAL:
        hi = tl.minimum(LK, Q_OFFSET + (pid_m + 1) * BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_tile(K, b, h, stride_kb, stride_kh, stride_kn, stride_kd, offs_n, LK, offs_d,
                       HEAD_DIM, UPCAST)
        v = _load_tile(V, b, h, stride_vb, stride_vh, stride_vn, stride_vd, offs_n, LK, offs_d,
                       HEAD_DIM, UPCAST)
        s, _ = _scores(q, k, offs_m, offs_n, pid_m * BLOCK_M, start_n, b, h, LQ, LK, Q_OFFSET, scale,
                       log_ratio, TABLE, KPM, stride_kpm, CAUSAL, HAS_BIAS, HAS_KPM, BIDIRECTIONAL,
                       NUM_BUCKETS, N_DIR, MAX_EXACT, MAX_DISTANCE, BLOCK_M, BLOCK_N, PRECISION)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # Rows that have seen only masked keys keep m = -inf; shift by 0 there to avoid inf - inf.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(s - m_shift[:, None])
        alpha = tl.exp(m_i - m_shift)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    # A query with no visible key outputs zeros (like the reference) and gets lse = +inf, which
    # makes every recomputed probability exp(-inf - inf) = 0 in the backward pass.
    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    _store_tile(O, bh, acc / l_safe[:, None], offs_m, LQ, offs_d, HEAD_DIM)
    lse = tl.where(l_i > 0.0, m_i + tl.log(l_safe), float("inf"))
    tl.store(LSE + bh.to(tl.int64) * LQ + offs_m, lse, mask=offs_m < LQ)


# --------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, TABLE, KPM, DK, DV, DTAB,
                     stride_qb, stride_qh, stride_qm, stride_qd,
                     stride_kb, stride_kh, stride_kn, stride_kd,
                     stride_vb, stride_vh, stride_vn, stride_vd,
                     stride_ob, stride_oh, stride_om, stride_od,
                     stride_kpm, H, LQ, LK, Q_OFFSET, scale, log_ratio, LQ_KEY, LK_KEY, DTAB_ROWS,
                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     CAUSAL: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_KPM: tl.constexpr,
                     BIDIRECTIONAL: tl.constexpr, NUM_BUCKETS: tl.constexpr,
                     NUM_BUCKETS_POW2: tl.constexpr, N_DIR: tl.constexpr,
                     MAX_EXACT: tl.constexpr, MAX_DISTANCE: tl.constexpr, BIAS_GRAD: tl.constexpr,
                     UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """One program: ``BLOCK_N`` keys of one (batch, head), streaming the queries that see them.

    Also sums the score gradient per bucket into this program's own row of ``DTAB``
    (``[B*H, DTAB_ROWS, NUM_BUCKETS]``); the host adds the rows up, so the table gradient is
    deterministic and needs no atomics.
    """
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_tile(K, b, h, stride_kb, stride_kh, stride_kn, stride_kd, offs_n, LK, offs_d,
                   HEAD_DIM, UPCAST)
    v = _load_tile(V, b, h, stride_vb, stride_vh, stride_vn, stride_vd, offs_n, LK, offs_d,
                   HEAD_DIM, UPCAST)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    offs_bucket = tl.arange(0, NUM_BUCKETS_POW2)
    dtab = tl.zeros([NUM_BUCKETS_POW2], tl.float32)

    lo = 0
    if CAUSAL:
        # Query i sees key j iff j <= Q_OFFSET + i: earlier query blocks see none of these keys.
        lo = tl.maximum(pid_n * BLOCK_N - Q_OFFSET, 0) // BLOCK_M * BLOCK_M
    for start_m in range(lo, LQ, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = _load_tile(Q, b, h, stride_qb, stride_qh, stride_qm, stride_qd, offs_m, LQ, offs_d,
                       HEAD_DIM, UPCAST)
        do = _load_tile(DO, b, h, stride_ob, stride_oh, stride_om, stride_od, offs_m, LQ, offs_d,
                        HEAD_DIM, UPCAST)
        lse = tl.load(LSE + bh.to(tl.int64) * LQ + offs_m, mask=offs_m < LQ, other=float("inf"))
        delta = tl.load(DELTA + bh.to(tl.int64) * LQ + offs_m, mask=offs_m < LQ, other=0.0)
        s, bucket = _scores(q, k, offs_m, offs_n, start_m, pid_n * BLOCK_N, b, h, LQ, LK, Q_OFFSET,
                            scale, log_ratio, TABLE, KPM, stride_kpm, CAUSAL, HAS_BIAS, HAS_KPM,
                            BIDIRECTIONAL, NUM_BUCKETS, N_DIR, MAX_EXACT, MAX_DISTANCE, BLOCK_M,
                            BLOCK_N, PRECISION)
        p = tl.exp(s - lse[:, None])
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
        if BIAS_GRAD:
            # Far from the diagonal a whole tile shares one bucket, so this loop usually runs
            # once; only tiles within max_distance of the diagonal visit several buckets.
            live = p > 0.0
            b_lo = tl.min(tl.min(tl.where(live, bucket, NUM_BUCKETS), 1), 0)
            b_hi = tl.max(tl.max(tl.where(live, bucket, -1), 1), 0)
            for bk in range(b_lo, b_hi + 1):
                part = tl.sum(tl.sum(tl.where(bucket == bk, ds, 0.0), 1), 0)
                dtab = tl.where(offs_bucket == bk, dtab + part, dtab)

    _store_tile(DK, bh, dk * scale, offs_n, LK, offs_d, HEAD_DIM)
    _store_tile(DV, bh, dv, offs_n, LK, offs_d, HEAD_DIM)
    if BIAS_GRAD:
        row = (bh.to(tl.int64) * DTAB_ROWS + pid_n) * NUM_BUCKETS
        tl.store(DTAB + row + offs_bucket, dtab, mask=offs_bucket < NUM_BUCKETS)


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, TABLE, KPM, DQ,
                   stride_qb, stride_qh, stride_qm, stride_qd,
                   stride_kb, stride_kh, stride_kn, stride_kd,
                   stride_vb, stride_vh, stride_vn, stride_vd,
                   stride_ob, stride_oh, stride_om, stride_od,
                   stride_kpm, H, LQ, LK, Q_OFFSET, scale, log_ratio, LQ_KEY, LK_KEY,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   CAUSAL: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_KPM: tl.constexpr,
                   BIDIRECTIONAL: tl.constexpr, NUM_BUCKETS: tl.constexpr, N_DIR: tl.constexpr,
                   MAX_EXACT: tl.constexpr, MAX_DISTANCE: tl.constexpr, UPCAST: tl.constexpr,
                PRECISION: tl.constexpr):
    """One program: dQ for ``BLOCK_M`` queries of one (batch, head), streaming visible keys."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_tile(Q, b, h, stride_qb, stride_qh, stride_qm, stride_qd, offs_m, LQ, offs_d,
                   HEAD_DIM, UPCAST)
    do = _load_tile(DO, b, h, stride_ob, stride_oh, stride_om, stride_od, offs_m, LQ, offs_d,
                    HEAD_DIM, UPCAST)
    lse = tl.load(LSE + bh.to(tl.int64) * LQ + offs_m, mask=offs_m < LQ, other=float("inf"))
    delta = tl.load(DELTA + bh.to(tl.int64) * LQ + offs_m, mask=offs_m < LQ, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    hi = LK
    if CAUSAL:
        hi = tl.minimum(LK, Q_OFFSET + (pid_m + 1) * BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_tile(K, b, h, stride_kb, stride_kh, stride_kn, stride_kd, offs_n, LK, offs_d,
                       HEAD_DIM, UPCAST)
        v = _load_tile(V, b, h, stride_vb, stride_vh, stride_vn, stride_vd, offs_n, LK, offs_d,
                       HEAD_DIM, UPCAST)
        s, _ = _scores(q, k, offs_m, offs_n, pid_m * BLOCK_M, start_n, b, h, LQ, LK, Q_OFFSET, scale,
                       log_ratio, TABLE, KPM, stride_kpm, CAUSAL, HAS_BIAS, HAS_KPM, BIDIRECTIONAL,
                       NUM_BUCKETS, N_DIR, MAX_EXACT, MAX_DISTANCE, BLOCK_M, BLOCK_N, PRECISION)
        p = tl.exp(s - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    _store_tile(DQ, bh, dq * scale, offs_m, LQ, offs_d, HEAD_DIM)


# --------------------------------------------------------------------------------------------
# Autotuning
# --------------------------------------------------------------------------------------------

# Lengths enter the key rounded up to a power of two (``LQ_KEY``/``LK_KEY``, unused by the kernel
# bodies): keyed on exact lengths, every new padded batch length would re-run the benchmark of
# every config, which in training with varied prompt lengths is a stall per batch.
_TUNE_KEY = ["LQ_KEY", "LK_KEY", "HEAD_DIM", "CAUSAL", "HAS_BIAS", "HAS_KPM"]


def _configs(gpu_choices: list[tuple[int, int, int, int]]) -> list[triton.Config]:
    """``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` choices, or one big block when interpreting.

    The interpreter cannot benchmark several configs, and large blocks keep its program count
    (and so the CPU test time) small.
    """
    if _interpreting():
        gpu_choices = [(64, 64, 4, 1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m, n, w, s in gpu_choices]


_fwd_tuned = triton.autotune(
    _configs([(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3), (64, 128, 4, 3)]),
    key=_TUNE_KEY,
)(_fwd_kernel)
_bwd_dkdv_tuned = triton.autotune(
    _configs([(64, 128, 8, 2), (64, 64, 4, 3), (32, 128, 8, 2), (32, 64, 4, 3), (64, 64, 8, 2)]),
    key=_TUNE_KEY + ["BIAS_GRAD"],
)(_bwd_dkdv_kernel)
_bwd_dq_tuned = triton.autotune(
    _configs([(128, 64, 8, 2), (64, 64, 4, 3), (128, 32, 4, 3), (64, 128, 8, 2), (64, 32, 4, 3)]),
    key=_TUNE_KEY,
)(_bwd_dq_kernel)
_MIN_BWD_BLOCK_N = min(c.kwargs["BLOCK_N"] for c in _bwd_dkdv_tuned.configs)


# --------------------------------------------------------------------------------------------
# Host launchers
# --------------------------------------------------------------------------------------------


def _strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    return tuple(t.stride())  # type: ignore[return-value]


def _common_args(q: torch.Tensor, k: torch.Tensor, table: torch.Tensor | None,
                 key_mask: torch.Tensor | None, spec: AttentionSpec) -> tuple[dict, dict]:
    """Runtime scalars and compile-time constants shared by all three kernels."""
    batch, heads, lq, head_dim = q.shape
    consts = spec.bucket_constants()
    runtime = {
        "stride_kpm": key_mask.stride(0) if key_mask is not None else 0,
        "H": heads, "LQ": lq, "LK": k.shape[2], "Q_OFFSET": spec.q_offset,
        "scale": spec.scale, "log_ratio": consts.pop("log_ratio"),
        "LQ_KEY": triton.next_power_of_2(lq), "LK_KEY": triton.next_power_of_2(k.shape[2]),
    }
    constexprs = {
        "HEAD_DIM": head_dim, "BLOCK_D": max(16, triton.next_power_of_2(head_dim)),
        "CAUSAL": spec.causal, "HAS_BIAS": table is not None, "HAS_KPM": key_mask is not None,
        "BIDIRECTIONAL": spec.bidirectional, "NUM_BUCKETS": spec.num_buckets,
        "MAX_DISTANCE": spec.max_distance, **consts,
        "UPCAST": _interpreting(), "PRECISION": _DOT_PRECISION[q.dtype],
    }
    return runtime, constexprs


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor | None,
            key_mask: torch.Tensor | None, spec: AttentionSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Output ``[B, H, Lq, D]`` (contiguous, q's dtype) and logsumexp ``[B, H, Lq]`` (fp32).

    ``table`` must be contiguous ``[H, num_buckets]``; ``key_mask`` a ``[B, Lk]`` uint8 view.
    """
    batch, heads, lq, _ = q.shape
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, heads, lq), dtype=torch.float32, device=q.device)
    runtime, constexprs = _common_args(q, k, table, key_mask, spec)
    args = (q, k, v, out, lse, table if table is not None else q, key_mask if key_mask is not None else q,
            *_strides(q), *_strides(k), *_strides(v))
    if lq <= DECODE_MAX_LQ:
        _fwd_kernel[(1, batch * heads)](*args, **runtime, **constexprs,
                                         BLOCK_M=DECODE_MAX_LQ, BLOCK_N=64 if _interpreting() else 128,
                                         num_warps=4, num_stages=1 if _interpreting() else 3)
    else:
        def grid(meta: dict) -> tuple[int, int]:
            return (triton.cdiv(lq, meta["BLOCK_M"]), batch * heads)

        _fwd_tuned[grid](*args, **runtime, **constexprs)
    return out, lse


def backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
             lse: torch.Tensor, table: torch.Tensor | None, key_mask: torch.Tensor | None,
             spec: AttentionSpec, bias_grad: bool
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients for q, k, v (contiguous, input dtypes) and, if ``bias_grad``, the fp32 table grad."""
    batch, heads, lq, _ = q.shape
    lk = k.shape[2]
    # delta_i = sum_d dO_id * O_id, the row term of the softmax Jacobian.
    delta = (do.float() * out.float()).sum(-1)
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    dtab_rows = triton.cdiv(lk, _MIN_BWD_BLOCK_N)
    dtab = torch.empty((batch * heads, dtab_rows, spec.num_buckets) if bias_grad else (1,),
                       dtype=torch.float32, device=q.device)
    runtime, constexprs = _common_args(q, k, table, key_mask, spec)
    table_arg = table if table is not None else q
    mask_arg = key_mask if key_mask is not None else q
    strides = (*_strides(q), *_strides(k), *_strides(v), *_strides(do))

    _bwd_dkdv_tuned[lambda meta: (triton.cdiv(lk, meta["BLOCK_N"]), batch * heads)](
        q, k, v, do, lse, delta, table_arg, mask_arg, dk, dv, dtab, *strides, **runtime,
        DTAB_ROWS=dtab_rows, NUM_BUCKETS_POW2=triton.next_power_of_2(spec.num_buckets),
        BIAS_GRAD=bias_grad, **constexprs)
    # Only the rows of the key blocks of the config that ran hold partial sums.
    used_rows = triton.cdiv(lk, _bwd_dkdv_tuned.best_config.kwargs["BLOCK_N"])
    _bwd_dq_tuned[lambda meta: (triton.cdiv(lq, meta["BLOCK_M"]), batch * heads)](
        q, k, v, do, lse, delta, table_arg, mask_arg, dq, *strides, **runtime, **constexprs)

    dtable = None
    if bias_grad:
        dtable = dtab.view(batch, heads, dtab_rows, spec.num_buckets)[:, :, :used_rows].sum((0, 2))
    return dq, dk, dv, dtable
