"""Triton kernels for softmax attention with a T5 relative-position bias computed on chip.

FlashAttention-2 structure: the forward pass streams key/value blocks through an online softmax
and keeps only the per-query logsumexp; the backward pass recomputes probabilities from it, one
kernel owning a key block (dK, dV and the bias-table gradient) and one owning a query block (dQ).
Scores never leave registers, so neither a ``[H, Lq, Lk]`` bias nor a ``[B, H, Lq, Lk]`` mask
exists in memory.

Two bias strategies, chosen by ``AttentionSpec.bias_strategy`` (both exact, same gradients):

* ``"bucket"``: the kernel computes the T5 bucket of every score near the diagonal (a log and an
  IEEE division) and gathers the ``[H, num_buckets]`` table;
* ``"row"``: the host builds, once per call, a per-head row of the bias for each of the
  ``Lq + Lk - 1`` distances (and the matching bucket row, for the table gradient); the kernel
  gathers from it instead of doing the bucket math.

In both, a tile lying wholly beyond ``max_distance`` adds a single table entry (``_far_bucket``).

Speed levers, each a switch in ``AttentionSpec`` or chosen from the inputs: ``exp2``
(log2(e) folded into the scale and the bias, softmax in base 2); skipping key tiles that padding
masks out entirely (per-row key lengths, from lengths or the last valid key of a bool mask);
causal tile skipping; ``tma`` (loads through host-built tensor descriptors, 4-D so strided
inputs work and the tail past ``L`` or ``D`` reads as zeros); a pruned autotune space with
Hopper-sized tiles. Head dims that are not a power of two (72, 104, 112) are padded inside the
kernel: ``BLOCK_D`` is the next power of two and the extra columns load as zeros.

Under ``TRITON_INTERPRET=1`` there is a single autotune config (the interpreter cannot benchmark
several) and tiles are upcast to fp32 right after loading since its bf16/fp16 arithmetic is
unreliable; on a GPU 16-bit tiles feed the tensor cores directly and accumulate in fp32.

This module imports Triton at import time; ``pali.kernels.api`` imports it lazily.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
import os

import torch
import triton
import triton.language as tl

from .reference import relative_position_bucket

try:  # host-side tensor descriptors (TMA on Hopper); absent from older Triton
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - depends on the installed Triton
    TensorDescriptor = None

# Every dot product in fp32 inputs must stay fp32 (TF32 would miss the fp32 reference by ~1e-3).
_DOT_PRECISION = {torch.float32: "ieee", torch.float16: "tf32", torch.bfloat16: "tf32"}

# Decode steps (a handful of queries against a long cache) skip autotuning and use the smallest
# query block ``tl.dot`` allows, so no work is spent on padding rows.
DECODE_MAX_LQ = 16

LOG2E = math.log2(math.e)

# Integer arguments that vary from call to call (sequence lengths, offsets): Triton would otherwise
# compile one variant per divisibility-by-16 pattern of them, multiplying compile time (which
# dominates a short GPU run) for no measurable gain in these kernels' address arithmetic.
_DYNAMIC_ARGS = ["LQ", "LK", "Q_OFFSET", "ROW_LEN", "LQ_KEY", "LK_KEY"]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@dataclass(frozen=True)
class AttentionSpec:
    """Everything about one attention call that is not a tensor.

    The last three fields are levers that change speed, not results (beyond rounding):
    ``bias_strategy`` (see the module docstring), ``exp2`` (base-2 softmax with log2(e) folded in)
    and ``tma`` (tensor-descriptor loads where the inputs allow them).
    """

    scale: float
    causal: bool
    bidirectional: bool
    num_buckets: int
    max_distance: int
    q_offset: int
    bias_strategy: str = "bucket"
    exp2: bool = True
    tma: bool = False

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
def _load_tile(base, b, h, stride_b, stride_h, stride_l, stride_d, start, L,
               HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
               UPCAST: tl.constexpr, TMA: tl.constexpr):
    """Rows ``start .. start + BLOCK`` of a ``[B, H, L, D]`` tensor as ``[BLOCK, BLOCK_D]``, zero past the ends.

    With ``TMA`` the base is a 4-D tensor descriptor whose block is ``[1, 1, BLOCK, BLOCK_D]``
    (set by ``_set_descriptor_blocks``); out-of-bounds rows and columns read as zeros there too.
    """
    if TMA:
        tile = base.load([b, h, start, 0]).reshape([BLOCK, BLOCK_D])
    else:
        offs_l = start + tl.arange(0, BLOCK)
        offs_d = tl.arange(0, BLOCK_D)
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
def _key_len(KLEN, b, LK, HAS_KLEN: tl.constexpr):
    """How many leading keys of batch row ``b`` may be attended: keys past it are skipped whole."""
    n = LK
    if HAS_KLEN:
        n = tl.minimum(tl.load(KLEN + b), LK)
    return n


@triton.jit
def _exp(x, EXP2: tl.constexpr):
    """``exp`` of scores in the kernel's units: base 2 when log2(e) is folded into them."""
    if EXP2:
        y = tl.exp2(x)
    else:
        y = tl.exp(x)
    return y


@triton.jit
def _log(x, EXP2: tl.constexpr):
    if EXP2:
        y = tl.log2(x)
    else:
        y = tl.log(x)
    return y


@triton.jit
def _scores(q, k, offs_m, offs_n, start_m, start_n, b, h, LQ, lk_b, Q_OFFSET, qk_scale, log_ratio,
            TABLE, ROW, BROW, ROW_LEN, KPM, stride_kpm,
            CAUSAL: tl.constexpr, HAS_BIAS: tl.constexpr, ROW_BIAS: tl.constexpr,
            NEED_BUCKET: tl.constexpr, HAS_KPM: tl.constexpr,
            BIDIRECTIONAL: tl.constexpr, NUM_BUCKETS: tl.constexpr, N_DIR: tl.constexpr,
            MAX_EXACT: tl.constexpr, MAX_DISTANCE: tl.constexpr, BLOCK_M: tl.constexpr,
            BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """Biased, masked scores ``q k^T * qk_scale + bias`` in fp32 and the bucket of each entry.

    Scores are in the kernel's units (times log2(e) under exp2: the host folds it into
    ``qk_scale`` and the bias it passes). ``offs_m``/``offs_n`` are ``start_m``/``start_n`` plus a
    block range. Entries that may not be attended (out of range, causal, padded key) are ``-inf``;
    their bucket is meaningless, and so is every bucket unless ``NEED_BUCKET``. Forward and both
    backward kernels go through here, so they agree on every score.
    """
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    rel = offs_n[None, :] - (Q_OFFSET + offs_m)[:, None]
    valid = (offs_m[:, None] < LQ) & (offs_n[None, :] < lk_b)
    if CAUSAL:
        valid = valid & (rel <= 0)
    if HAS_KPM:
        keep = tl.load(KPM + b.to(tl.int64) * stride_kpm + offs_n, mask=offs_n < lk_b, other=0)
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
            if ROW_BIAS:
                # Row index of distance ``rel``: the most negative one, -(Q_OFFSET + LQ - 1), is 0.
                idx = rel + (Q_OFFSET + LQ - 1)
                s += tl.load(ROW + h.to(tl.int64) * ROW_LEN + idx, mask=valid, other=0.0)
                if NEED_BUCKET:
                    bucket = tl.load(BROW + idx, mask=valid, other=0)
            else:
                bucket = t5_bucket(rel, log_ratio, BIDIRECTIONAL, N_DIR, MAX_EXACT)
                s += tl.load(TABLE + h * NUM_BUCKETS + bucket, mask=valid, other=0.0).to(tl.float32)
    return tl.where(valid, s, float("-inf")), bucket


# --------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=_DYNAMIC_ARGS)
def _fwd_kernel(Q, K, V, O, LSE, TABLE, ROW, BROW, KPM, KLEN,
                stride_qb, stride_qh, stride_qm, stride_qd,
                stride_kb, stride_kh, stride_kn, stride_kd,
                stride_vb, stride_vh, stride_vn, stride_vd,
                stride_kpm, H, LQ, LK, Q_OFFSET, scale, qk_scale, log_ratio, ROW_LEN, LQ_KEY, LK_KEY,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                CAUSAL: tl.constexpr, HAS_BIAS: tl.constexpr, ROW_BIAS: tl.constexpr,
                HAS_KPM: tl.constexpr, HAS_KLEN: tl.constexpr,
                BIDIRECTIONAL: tl.constexpr, NUM_BUCKETS: tl.constexpr, N_DIR: tl.constexpr,
                MAX_EXACT: tl.constexpr, MAX_DISTANCE: tl.constexpr, EXP2: tl.constexpr,
                TMA: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """One program: ``BLOCK_M`` queries of one (batch, head), streaming all visible keys."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_tile(Q, b, h, stride_qb, stride_qh, stride_qm, stride_qd, start_m, LQ,
                   HEAD_DIM, BLOCK_M, BLOCK_D, UPCAST, TMA)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lk_b = _key_len(KLEN, b, LK, HAS_KLEN)
    hi = lk_b
    if CAUSAL:
        hi = tl.minimum(hi, Q_OFFSET + start_m + BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_tile(K, b, h, stride_kb, stride_kh, stride_kn, stride_kd, start_n, LK,
                       HEAD_DIM, BLOCK_N, BLOCK_D, UPCAST, TMA)
        v = _load_tile(V, b, h, stride_vb, stride_vh, stride_vn, stride_vd, start_n, LK,
                       HEAD_DIM, BLOCK_N, BLOCK_D, UPCAST, TMA)
        s, _ = _scores(q, k, offs_m, offs_n, start_m, start_n, b, h, LQ, lk_b, Q_OFFSET, qk_scale,
                       log_ratio, TABLE, ROW, BROW, ROW_LEN, KPM, stride_kpm, CAUSAL, HAS_BIAS,
                       ROW_BIAS, False, HAS_KPM, BIDIRECTIONAL, NUM_BUCKETS, N_DIR, MAX_EXACT,
                       MAX_DISTANCE, BLOCK_M, BLOCK_N, PRECISION)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # Rows that have seen only masked keys keep m = -inf; shift by 0 there to avoid inf - inf.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = _exp(s - m_shift[:, None], EXP2)
        alpha = _exp(m_i - m_shift, EXP2)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    # A query with no visible key outputs zeros (like the reference) and gets lse = +inf, which
    # makes every recomputed probability exp(-inf - inf) = 0 in the backward pass. The lse is in
    # the kernel's units (base 2 under exp2); only the backward kernels read it.
    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    _store_tile(O, bh, acc / l_safe[:, None], offs_m, LQ, offs_d, HEAD_DIM)
    lse = tl.where(l_i > 0.0, m_i + _log(l_safe, EXP2), float("inf"))
    tl.store(LSE + bh.to(tl.int64) * LQ + offs_m, lse, mask=offs_m < LQ)


# --------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=_DYNAMIC_ARGS)
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, TABLE, ROW, BROW, KPM, KLEN, DK, DV, DTAB,
                     stride_qb, stride_qh, stride_qm, stride_qd,
                     stride_kb, stride_kh, stride_kn, stride_kd,
                     stride_vb, stride_vh, stride_vn, stride_vd,
                     stride_ob, stride_oh, stride_om, stride_od,
                     stride_kpm, H, LQ, LK, Q_OFFSET, scale, qk_scale, log_ratio, ROW_LEN,
                     LQ_KEY, LK_KEY, DTAB_ROWS,
                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     CAUSAL: tl.constexpr, HAS_BIAS: tl.constexpr, ROW_BIAS: tl.constexpr,
                     HAS_KPM: tl.constexpr, HAS_KLEN: tl.constexpr,
                     BIDIRECTIONAL: tl.constexpr, NUM_BUCKETS: tl.constexpr,
                     NUM_BUCKETS_POW2: tl.constexpr, N_DIR: tl.constexpr,
                     MAX_EXACT: tl.constexpr, MAX_DISTANCE: tl.constexpr, BIAS_GRAD: tl.constexpr,
                     EXP2: tl.constexpr, TMA: tl.constexpr, UPCAST: tl.constexpr,
                     PRECISION: tl.constexpr):
    """One program: ``BLOCK_N`` keys of one (batch, head), streaming the queries that see them.

    Also sums the score gradient per bucket into this program's own row of ``DTAB``
    (``[B*H, DTAB_ROWS, NUM_BUCKETS]``); the host adds the rows up, so the table gradient is
    deterministic and needs no atomics. Under the row strategy the bucket of each score comes from
    the bucket row, so its gradient is reduced to the table the same way.
    """
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_tile(K, b, h, stride_kb, stride_kh, stride_kn, stride_kd, start_n, LK,
                   HEAD_DIM, BLOCK_N, BLOCK_D, UPCAST, TMA)
    v = _load_tile(V, b, h, stride_vb, stride_vh, stride_vn, stride_vd, start_n, LK,
                   HEAD_DIM, BLOCK_N, BLOCK_D, UPCAST, TMA)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    offs_bucket = tl.arange(0, NUM_BUCKETS_POW2)
    dtab = tl.zeros([NUM_BUCKETS_POW2], tl.float32)

    lk_b = _key_len(KLEN, b, LK, HAS_KLEN)
    lo = 0
    if CAUSAL:
        # Query i sees key j iff j <= Q_OFFSET + i: earlier query blocks see none of these keys.
        lo = tl.maximum(start_n - Q_OFFSET, 0) // BLOCK_M * BLOCK_M
    # A key block wholly past the row's valid keys gets zero gradients without visiting queries.
    hi = tl.where(start_n < lk_b, LQ, 0)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = _load_tile(Q, b, h, stride_qb, stride_qh, stride_qm, stride_qd, start_m, LQ,
                       HEAD_DIM, BLOCK_M, BLOCK_D, UPCAST, TMA)
        do = _load_tile(DO, b, h, stride_ob, stride_oh, stride_om, stride_od, start_m, LQ,
                        HEAD_DIM, BLOCK_M, BLOCK_D, UPCAST, TMA)
        lse = tl.load(LSE + bh.to(tl.int64) * LQ + offs_m, mask=offs_m < LQ, other=float("inf"))
        delta = tl.load(DELTA + bh.to(tl.int64) * LQ + offs_m, mask=offs_m < LQ, other=0.0)
        s, bucket = _scores(q, k, offs_m, offs_n, start_m, start_n, b, h, LQ, lk_b, Q_OFFSET,
                            qk_scale, log_ratio, TABLE, ROW, BROW, ROW_LEN, KPM, stride_kpm, CAUSAL,
                            HAS_BIAS, ROW_BIAS, BIAS_GRAD, HAS_KPM, BIDIRECTIONAL, NUM_BUCKETS,
                            N_DIR, MAX_EXACT, MAX_DISTANCE, BLOCK_M, BLOCK_N, PRECISION)
        p = _exp(s - lse[:, None], EXP2)
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


@triton.jit(do_not_specialize=_DYNAMIC_ARGS)
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, TABLE, ROW, BROW, KPM, KLEN, DQ,
                   stride_qb, stride_qh, stride_qm, stride_qd,
                   stride_kb, stride_kh, stride_kn, stride_kd,
                   stride_vb, stride_vh, stride_vn, stride_vd,
                   stride_ob, stride_oh, stride_om, stride_od,
                   stride_kpm, H, LQ, LK, Q_OFFSET, scale, qk_scale, log_ratio, ROW_LEN,
                   LQ_KEY, LK_KEY,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   CAUSAL: tl.constexpr, HAS_BIAS: tl.constexpr, ROW_BIAS: tl.constexpr,
                   HAS_KPM: tl.constexpr, HAS_KLEN: tl.constexpr,
                   BIDIRECTIONAL: tl.constexpr, NUM_BUCKETS: tl.constexpr, N_DIR: tl.constexpr,
                   MAX_EXACT: tl.constexpr, MAX_DISTANCE: tl.constexpr, EXP2: tl.constexpr,
                   TMA: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """One program: dQ for ``BLOCK_M`` queries of one (batch, head), streaming visible keys."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_tile(Q, b, h, stride_qb, stride_qh, stride_qm, stride_qd, start_m, LQ,
                   HEAD_DIM, BLOCK_M, BLOCK_D, UPCAST, TMA)
    do = _load_tile(DO, b, h, stride_ob, stride_oh, stride_om, stride_od, start_m, LQ,
                    HEAD_DIM, BLOCK_M, BLOCK_D, UPCAST, TMA)
    lse = tl.load(LSE + bh.to(tl.int64) * LQ + offs_m, mask=offs_m < LQ, other=float("inf"))
    delta = tl.load(DELTA + bh.to(tl.int64) * LQ + offs_m, mask=offs_m < LQ, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lk_b = _key_len(KLEN, b, LK, HAS_KLEN)
    hi = lk_b
    if CAUSAL:
        hi = tl.minimum(hi, Q_OFFSET + start_m + BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_tile(K, b, h, stride_kb, stride_kh, stride_kn, stride_kd, start_n, LK,
                       HEAD_DIM, BLOCK_N, BLOCK_D, UPCAST, TMA)
        v = _load_tile(V, b, h, stride_vb, stride_vh, stride_vn, stride_vd, start_n, LK,
                       HEAD_DIM, BLOCK_N, BLOCK_D, UPCAST, TMA)
        s, _ = _scores(q, k, offs_m, offs_n, start_m, start_n, b, h, LQ, lk_b, Q_OFFSET, qk_scale,
                       log_ratio, TABLE, ROW, BROW, ROW_LEN, KPM, stride_kpm, CAUSAL, HAS_BIAS,
                       ROW_BIAS, False, HAS_KPM, BIDIRECTIONAL, NUM_BUCKETS, N_DIR, MAX_EXACT,
                       MAX_DISTANCE, BLOCK_M, BLOCK_N, PRECISION)
        p = _exp(s - lse[:, None], EXP2)
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
_TUNE_KEY = ["LQ_KEY", "LK_KEY", "HEAD_DIM", "CAUSAL", "HAS_BIAS", "ROW_BIAS", "HAS_KPM",
             "HAS_KLEN", "EXP2", "TMA"]

# Shared memory one program may use (Hopper: 227 KiB per block); larger configs are pruned
# before compiling, which is most of the autotuning time.
_SMEM_BYTES = 227 * 1024


def _set_descriptor_blocks(nargs: dict) -> None:
    """Give the tensor descriptors among the arguments the block shape of the config about to run."""
    for name, block in (("Q", "BLOCK_M"), ("DO", "BLOCK_M"), ("K", "BLOCK_N"), ("V", "BLOCK_N")):
        desc = nargs.get(name)
        if TensorDescriptor is not None and isinstance(desc, TensorDescriptor):
            desc.block_shape = [1, 1, nargs[block], nargs["BLOCK_D"]]


def _configs(gpu_choices: list[tuple[int, int, int, int]]) -> list[triton.Config]:
    """``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` choices, or one block when interpreting.

    The interpreter cannot benchmark several configs, and large blocks keep its program count
    (and so the CPU test time) small. ``PALI_KERNELS_AUTOTUNE=0`` keeps only the last (smallest)
    choice on a GPU, for test runs where compiling every config would dominate.
    """
    if _interpreting():
        gpu_choices = [(64, 64, 4, 1)]
    elif os.environ.get("PALI_KERNELS_AUTOTUNE", "1") == "0":
        gpu_choices = gpu_choices[-1:]  # the 64x64 fallback: correctness runs compile one config
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s,
                          pre_hook=_set_descriptor_blocks)
            for m, n, w, s in gpu_choices]


def _pruner(streamed: str):
    """An ``early_config_prune`` that drops configs whose tiles overshoot the sequence lengths or
    whose pipelined ``streamed`` tiles ("kv": key/value tiles, "qdo": query/dO tiles) overflow
    shared memory, keeping at least the smallest config."""

    def prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
        block_d = kwargs["BLOCK_D"]
        lq, lk = named_args["LQ_KEY"], named_args["LK_KEY"]
        kept = []
        for config in configs:
            m, n = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
            stream, fixed = (n, m) if streamed == "kv" else (m, n)
            smem = 2 * block_d * 2 * (config.num_stages * stream + fixed)  # 16-bit tiles
            if m <= max(lq, 16) and n <= max(lk, 16) and smem <= _SMEM_BYTES:
                kept.append(config)
        return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])]

    return prune


def _tuned(kernel, choices: list[tuple[int, int, int, int]], streamed: str, extra_key=()):
    return triton.autotune(_configs(choices), key=_TUNE_KEY + list(extra_key),
                           prune_configs_by={"early_config_prune": _pruner(streamed)})(kernel)


# Hopper-sized tiles: 128-row query blocks with 64/128-key tiles, 8 warps, 3-4 stages; one
# 64x64 fallback for short sequences and older GPUs.
_fwd_tuned = _tuned(_fwd_kernel, [(128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 3),
                                  (128, 64, 4, 3), (64, 64, 4, 3)], "kv")
_bwd_dkdv_tuned = _tuned(_bwd_dkdv_kernel, [(64, 128, 8, 3), (64, 128, 8, 2), (128, 128, 8, 2),
                                            (32, 128, 8, 3), (64, 64, 4, 3)], "qdo", ["BIAS_GRAD"])
_bwd_dq_tuned = _tuned(_bwd_dq_kernel, [(128, 64, 8, 3), (128, 64, 8, 2), (128, 128, 8, 2),
                                        (64, 64, 4, 3)], "kv")
_MIN_BWD_BLOCK_N = min(c.kwargs["BLOCK_N"] for c in _bwd_dkdv_tuned.configs)


# --------------------------------------------------------------------------------------------
# Host launchers
# --------------------------------------------------------------------------------------------


def _strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    return tuple(t.stride())  # type: ignore[return-value]


def _tma_ok(t: torch.Tensor) -> bool:
    """Whether a tensor descriptor can address ``t``: unit last stride, 16-byte aligned rest.

    On a GPU also a 16-bit dtype on Hopper or newer; the interpreter emulates descriptors anywhere.
    """
    if TensorDescriptor is None or t.stride(-1) != 1:
        return False
    size = t.element_size()
    if t.data_ptr() % 16 or any((s * size) % 16 for s in t.stride()[:-1]):
        return False
    if _interpreting():
        return True
    return t.dtype in (torch.float16, torch.bfloat16) and torch.cuda.get_device_capability(t.device)[0] >= 9


def _tiles(spec: AttentionSpec, *tensors: torch.Tensor) -> tuple[tuple, bool]:
    """The load operands: 4-D tensor descriptors when ``spec.tma`` and every tensor allows one,
    else the tensors themselves (pointer loads), and whether descriptors are used."""
    if not (spec.tma and all(_tma_ok(t) for t in tensors)):
        return tensors, False
    block_d = _block_d(tensors[0].shape[-1])
    return tuple(TensorDescriptor.from_tensor(t, [1, 1, 16, block_d]) for t in tensors), True


def _block_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


def _bias_tensors(table: torch.Tensor | None, lq: int, lk: int, spec: AttentionSpec
                  ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """What the kernels read for the bias: (table, distance row, bucket row), in kernel units.

    Under exp2 the table is multiplied by log2(e) here, once, instead of every score in the
    kernel. The row strategy also gets the ``[H, Lq + Lk - 1]`` bias of every distance from the
    most negative, ``-(q_offset + Lq - 1)``, up, and the ``[Lq + Lk - 1]`` bucket of each (for the
    table gradient), built with the reference's bucket function.
    """
    if table is None:
        return None, None, None
    kernel_table = table.float() * LOG2E if spec.exp2 else table
    if spec.bias_strategy != "row":
        return kernel_table, None, None
    rel = torch.arange(-(spec.q_offset + lq - 1), lk - spec.q_offset, device=table.device)
    buckets = relative_position_bucket(rel, bidirectional=spec.bidirectional,
                                       num_buckets=spec.num_buckets, max_distance=spec.max_distance)
    row = kernel_table.float()[:, buckets].contiguous()
    return kernel_table, row, buckets.to(torch.int32)


def _common_args(q: torch.Tensor, k: torch.Tensor, table: torch.Tensor | None,
                 key_mask: torch.Tensor | None, key_len: torch.Tensor | None,
                 spec: AttentionSpec) -> tuple[dict, dict]:
    """Runtime scalars and compile-time constants shared by all three kernels."""
    _, _, lq, head_dim = q.shape
    lk = k.shape[2]
    consts = spec.bucket_constants()
    runtime = {
        "stride_kpm": key_mask.stride(0) if key_mask is not None else 0,
        "H": q.shape[1], "LQ": lq, "LK": lk, "Q_OFFSET": spec.q_offset,
        "scale": spec.scale, "qk_scale": spec.scale * (LOG2E if spec.exp2 else 1.0),
        "log_ratio": consts.pop("log_ratio"), "ROW_LEN": lq + lk - 1,
        "LQ_KEY": triton.next_power_of_2(lq), "LK_KEY": triton.next_power_of_2(lk),
    }
    constexprs = {
        "HEAD_DIM": head_dim, "BLOCK_D": _block_d(head_dim),
        "CAUSAL": spec.causal, "HAS_BIAS": table is not None,
        "ROW_BIAS": table is not None and spec.bias_strategy == "row",
        "HAS_KPM": key_mask is not None, "HAS_KLEN": key_len is not None,
        "BIDIRECTIONAL": spec.bidirectional, "NUM_BUCKETS": spec.num_buckets,
        "MAX_DISTANCE": spec.max_distance, **consts, "EXP2": spec.exp2,
        "UPCAST": _interpreting(), "PRECISION": _DOT_PRECISION[q.dtype],
    }
    return runtime, constexprs


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor | None,
            key_mask: torch.Tensor | None, key_len: torch.Tensor | None, spec: AttentionSpec
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Output ``[B, H, Lq, D]`` (contiguous, q's dtype) and logsumexp ``[B, H, Lq]`` (fp32).

    ``table`` must be contiguous ``[H, num_buckets]``; ``key_mask`` a ``[B, Lk]`` uint8 view or
    None; ``key_len`` an int32 ``[B]`` count of leading keys that may be attended, or None. The
    logsumexp is in the kernels' units (base 2 under ``spec.exp2``): pass it only to
    ``backward`` with the same spec.
    """
    batch, heads, lq, _ = q.shape
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, heads, lq), dtype=torch.float32, device=q.device)
    runtime, constexprs = _common_args(q, k, table, key_mask, key_len, spec)
    (q_t, k_t, v_t), tma = _tiles(spec, q, k, v)
    args = (q_t, k_t, v_t, out, lse, *_or_dummy(lse, *_bias_tensors(table, lq, k.shape[2], spec),
                                                key_mask, key_len),
            *_strides(q), *_strides(k), *_strides(v))
    if lq <= DECODE_MAX_LQ:
        block_n = 64 if _interpreting() else 128
        _set_descriptor_blocks({"Q": q_t, "K": k_t, "V": v_t, "BLOCK_M": DECODE_MAX_LQ,
                                "BLOCK_N": block_n, "BLOCK_D": constexprs["BLOCK_D"]})
        _fwd_kernel[(1, batch * heads)](*args, **runtime, **constexprs, TMA=tma,
                                         BLOCK_M=DECODE_MAX_LQ, BLOCK_N=block_n,
                                         num_warps=4, num_stages=1 if _interpreting() else 3)
    else:
        def grid(meta: dict) -> tuple[int, int]:
            return (triton.cdiv(lq, meta["BLOCK_M"]), batch * heads)

        _fwd_tuned[grid](*args, **runtime, **constexprs, TMA=tma)
    return out, lse


def backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
             lse: torch.Tensor, table: torch.Tensor | None, key_mask: torch.Tensor | None,
             key_len: torch.Tensor | None, spec: AttentionSpec, bias_grad: bool
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
    runtime, constexprs = _common_args(q, k, table, key_mask, key_len, spec)
    (q_t, k_t, v_t, do_t), tma = _tiles(spec, q, k, v, do)
    inputs = (q_t, k_t, v_t, do_t, lse, delta,
              *_or_dummy(delta, *_bias_tensors(table, lq, lk, spec), key_mask, key_len))
    strides = (*_strides(q), *_strides(k), *_strides(v), *_strides(do))

    _bwd_dkdv_tuned[lambda meta: (triton.cdiv(lk, meta["BLOCK_N"]), batch * heads)](
        *inputs, dk, dv, dtab, *strides, **runtime,
        DTAB_ROWS=dtab_rows, NUM_BUCKETS_POW2=triton.next_power_of_2(spec.num_buckets),
        BIAS_GRAD=bias_grad, **constexprs, TMA=tma)
    # Only the rows of the key blocks of the config that ran hold partial sums.
    used_rows = triton.cdiv(lk, _bwd_dkdv_tuned.best_config.kwargs["BLOCK_N"])
    _bwd_dq_tuned[lambda meta: (triton.cdiv(lq, meta["BLOCK_M"]), batch * heads)](
        *inputs, dq, *strides, **runtime, **constexprs, TMA=tma)

    dtable = None
    if bias_grad:
        dtable = dtab.view(batch, heads, dtab_rows, spec.num_buckets)[:, :, :used_rows].sum((0, 2))
    return dq, dk, dv, dtable


def _or_dummy(dummy: torch.Tensor, *tensors: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """Optional kernel operands, with ``dummy`` standing in for absent ones (never read then)."""
    return tuple(dummy if t is None else t for t in tensors)
