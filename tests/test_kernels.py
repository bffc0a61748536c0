"""The fused Triton attention against the fp32 reference, forward and every gradient.

Without CUDA the kernels run in Triton's interpreter (``conftest.py`` sets ``TRITON_INTERPRET``),
so shapes stay tiny and the interpreter's single 64x64 block config means few programs run.
``@pytest.mark.gpu`` tests repeat the comparisons at PaLI sizes on a real device.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pali.kernels import attention, attention_reference, relative_position_bucket
from pali.kernels.api import use_kernel_options

triton = pytest.importorskip("triton")
tl = triton.language

from pali.kernels.t5_attention import AttentionSpec, t5_bucket  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ROOT = Path(__file__).resolve().parents[1]

# (atol, rtol) against the fp32 reference run on the same (rounded) inputs. 16-bit results are
# rounded once on output; on a GPU the probabilities also meet the tensor cores in 16 bits.
TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1e-2, 1e-2)}
GPU_TOL = {torch.float16: (1e-2, 1e-2), torch.bfloat16: (4e-2, 4e-2)}


def _inputs(b, h, lq, lk, d, dtype, *, seed=0, num_buckets=32, device=DEVICE):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=gen).to(device, dtype) for n in (lq, lk, lk))
    table = torch.randn(h, num_buckets, generator=gen).to(device)
    return q, k, v, table


def _compare(q, k, v, table=None, *, tol=None, grads=True, **kwargs):
    """Run kernel and reference on the same values; return max abs errors {name: err}."""
    atol, rtol = tol or TOL[q.dtype]
    leaves = [t.detach().clone().requires_grad_(grads) for t in (q, k, v)]
    ref_leaves = [t.detach().float().requires_grad_(grads) for t in (q, k, v)]
    tables = ref_tables = None
    if table is not None:
        tables = table.detach().clone().requires_grad_(grads)
        ref_tables = table.detach().float().requires_grad_(grads)
    out = attention(*leaves, bias_table=tables, **kwargs)
    ref = attention_reference(*ref_leaves, bias_table=ref_tables, **_bool_mask(kwargs, k.shape[2]))
    assert out.shape == ref.shape and out.dtype == q.dtype
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=rtol)
    errors = {"out": (out.float() - ref).abs().max().item()}
    if not grads:
        return errors
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.device)
    got = torch.autograd.grad(out, leaves + ([tables] if table is not None else []), grad_out.to(out.dtype))
    want = torch.autograd.grad(ref, ref_leaves + ([ref_tables] if table is not None else []), grad_out)
    for name, g, w in zip(("dq", "dk", "dv", "dtable"), got, want):
        assert torch.isfinite(g).all(), name
        # Rounding error grows with magnitude (table gradients sum over many pairs, scale=1.0
        # makes dq large), so atol is relative to the largest entry.
        scale = max(1.0, w.abs().max().item())
        torch.testing.assert_close(g.float(), w, atol=atol * scale, rtol=rtol,
                                   msg=lambda m, name=name: f"{name}: {m}")
        errors[name] = (g.float() - w).abs().max().item()
    return errors


def _bool_mask(kwargs: dict, lk: int) -> dict:
    """The reference takes only bool masks: turn a lengths mask into one."""
    mask = kwargs.get("key_padding_mask")
    if mask is None or mask.dtype == torch.bool:
        return kwargs
    return {**kwargs, "key_padding_mask": torch.arange(lk, device=mask.device)[None, :] < mask[:, None]}


CASES = {
    "self_bidirectional_bias": dict(shape=(2, 2, 37, 37), bias=True),
    "causal_bias": dict(shape=(1, 2, 45, 45), bias=True, causal=True, bias_bidirectional=False),
    "causal_no_bias": dict(shape=(1, 2, 70, 70), causal=True),
    "cross_attention": dict(shape=(2, 2, 19, 70), bias=True),
    "no_bias": dict(shape=(1, 3, 33, 33)),
    "scale_one": dict(shape=(1, 2, 29, 29), bias=True, scale=1.0),
    "padding_bool": dict(shape=(2, 2, 23, 41), bias=True, mask="bool"),
    "padding_lengths": dict(shape=(2, 2, 41, 41), bias=True, mask="lengths"),
    "far_positions": dict(shape=(1, 2, 20, 150), bias=True, q_offset=130, max_distance=64),
    # Tiles wholly beyond max_distance take the one-bucket fast path; with the interpreter's 64x64
    # blocks these put a tile edge exactly at +128 (q_offset=1) and -128 (q_offset=191).
    "far_tiles_positive_edge": dict(shape=(1, 2, 64, 330), bias=True, q_offset=1),
    "far_tiles_negative_edge": dict(shape=(1, 2, 30, 260), bias=True, q_offset=191, mask="lengths"),
    "far_tiles_unidirectional": dict(shape=(1, 2, 40, 200), bias=True, bias_bidirectional=False),
    "decode": dict(shape=(2, 2, 1, 50), bias=True, causal=True, bias_bidirectional=False, q_offset=49),
    "decode_mid_cache": dict(shape=(1, 2, 1, 50), causal=True, bias=True, q_offset=30),
    "decode_batch_of_steps": dict(shape=(1, 2, 3, 40), causal=True, q_offset=37, mask="lengths"),
    # Key tiles past a row's last valid key are skipped (64-key tiles under the interpreter).
    "padding_skips_tiles": dict(shape=(2, 2, 70, 200), bias=True, mask="short_lengths"),
    "padding_bool_tail": dict(shape=(2, 2, 30, 150), bias=True, mask="bool_tail"),
}

# The speed levers, each checked against the reference on the cases where it changes code paths.
VARIANTS = {
    "row_bias": dict(bias_strategy="row"),
    "no_exp2": dict(exp2=False),
    "tma": dict(tma=True),
    "row_bias_tma": dict(bias_strategy="row", tma=True),
}
VARIANT_CASES = ["self_bidirectional_bias", "causal_bias", "cross_attention", "padding_bool",
                 "far_tiles_positive_edge", "far_tiles_negative_edge", "far_tiles_unidirectional",
                 "decode", "decode_batch_of_steps", "padding_skips_tiles", "padding_bool_tail"]


def _case_kwargs(case: dict, q: torch.Tensor, k: torch.Tensor) -> dict:
    kwargs = {key: case[key] for key in ("causal", "bias_bidirectional", "scale", "q_offset",
                                          "max_distance") if key in case}
    batch, lk = q.shape[0], k.shape[2]
    if case.get("mask") == "bool":
        mask = torch.rand(batch, lk, generator=torch.Generator().manual_seed(2)) > 0.3
        mask[:, 0] = True
        kwargs["key_padding_mask"] = mask.to(q.device)
    elif case.get("mask") == "lengths":
        kwargs["key_padding_mask"] = torch.tensor([lk, lk // 2 + 1] * batch)[:batch].to(q.device)
    elif case.get("mask") == "short_lengths":
        kwargs["key_padding_mask"] = torch.tensor([lk, 50] * batch)[:batch].to(q.device)
    elif case.get("mask") == "bool_tail":
        # Row 0: a hole and a padded tail past the first key tile; row 1: three keys only.
        mask = torch.zeros(batch, lk, dtype=torch.bool)
        mask[0, : lk - 70] = True
        mask[0, 10:20] = False
        mask[1, :3] = True
        kwargs["key_padding_mask"] = mask.to(q.device)
    return kwargs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference(name, dtype):
    case = CASES[name]
    q, k, v, table = _inputs(*case["shape"], 64, dtype)
    _compare(q, k, v, table if case.get("bias") else None, **_case_kwargs(case, q, k))


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("name", VARIANT_CASES)
def test_variants_match_reference(name, variant):
    case = CASES[name]
    q, k, v, table = _inputs(*case["shape"], 64, torch.float32)
    with use_kernel_options(**VARIANTS[variant]):
        _compare(q, k, v, table if case.get("bias") else None, **_case_kwargs(case, q, k))


@pytest.mark.parametrize("name", ["self_bidirectional_bias", "causal_bias", "far_tiles_negative_edge",
                                  "decode", "padding_skips_tiles"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_bias_strategies_agree_bit_for_bit(name, dtype):
    """The row holds exactly the table entries the bucket strategy gathers: same bits out."""
    case = CASES[name]
    q, k, v, table = _inputs(*case["shape"], 64, dtype)
    kwargs = _case_kwargs(case, q, k)
    results = []
    for strategy in ("bucket", "row"):
        leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v, table)]
        with use_kernel_options(bias_strategy=strategy):
            out = attention(*leaves[:3], bias_table=leaves[3], **kwargs)
            grads = torch.autograd.grad(out, leaves, torch.ones_like(out))
        results.append((out, *grads))
    for name_, a, b in zip(("out", "dq", "dk", "dv", "dtable"), *results):
        assert torch.equal(a, b), name_


def test_strided_inputs_through_descriptors():
    """[B, L, H, D] projections viewed as [B, H, L, D], head dim 104 padded to 128 in the block."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, n, 2, 104, generator=gen).to(DEVICE).transpose(1, 2) for n in (33, 70, 70))
    table = torch.randn(2, 32, generator=gen).to(DEVICE)
    assert not q.is_contiguous()
    with use_kernel_options(tma=True):
        _compare(q, k, v, table, key_padding_mask=torch.tensor([70, 20], device=DEVICE))


def test_kernel_options_are_scoped_and_checked():
    from pali.kernels.api import kernel_options

    before = kernel_options()
    with use_kernel_options(bias_strategy="row", exp2=False) as inside:
        assert kernel_options() == inside and inside.bias_strategy == "row" and not inside.exp2
    assert kernel_options() == before
    with pytest.raises(ValueError, match="bias_strategy"):
        with use_kernel_options(bias_strategy="dense"):
            pass
    assert kernel_options() == before


def test_bool_mask_bounds_the_visited_keys():
    from pali.kernels.api import _key_mask

    q = torch.zeros(3, 1, 2, 8)
    k = torch.zeros(3, 1, 6, 8)
    mask = torch.tensor([[1, 1, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    kpm, key_len = _key_mask(mask, q, k)
    assert key_len.tolist() == [4, 0, 6] and key_len.dtype == torch.int32
    assert torch.equal(kpm.bool(), mask)
    kpm, key_len = _key_mask(torch.tensor([9, -1, 3]), q, k)
    assert kpm is None and key_len.tolist() == [6, 0, 3]


def test_reference_rejects_bias_with_table():
    q, k, v, table = _inputs(1, 2, 4, 7, 64, torch.float32)
    with pytest.raises(ValueError, match="not both"):
        attention_reference(q, k, v, bias_table=table, bias=torch.zeros(1, 2, 4, 7))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("head_dim", [64, 72, 96, 104, 112, 128])
def test_head_dims(head_dim, dtype):
    q, k, v, table = _inputs(1, 2, 21, 27, head_dim, dtype)
    _compare(q, k, v, table)


def test_bf16_forward_within_one_rounding_step():
    q, k, v, table = _inputs(2, 2, 37, 45, 64, torch.bfloat16)
    out = attention(q, k, v, bias_table=table)
    ref = attention_reference(q.float(), k.float(), v.float(), bias_table=table)
    assert out.dtype == torch.bfloat16
    # One bf16 rounding step of the output: an ulp is at most 2**-7 relative. A full ulp, not a
    # half, because Triton's interpreter converts fp32 -> bf16 by truncation.
    assert ((out.float() - ref).abs() <= ref.abs() * 2**-7 + 1e-5).all()


def test_lengths_and_bool_mask_agree():
    q, k, v, table = _inputs(2, 2, 17, 33, 64, torch.float32)
    lengths = torch.tensor([33, 9], device=q.device)
    as_bool = torch.arange(33, device=q.device)[None, :] < lengths[:, None]
    a = attention(q, k, v, bias_table=table, key_padding_mask=lengths)
    b = attention(q, k, v, bias_table=table, key_padding_mask=as_bool)
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_fully_masked_rows_are_zero(dtype):
    q, k, v, table = _inputs(2, 2, 9, 20, 64, dtype)
    # Batch row 1 has no valid key: every query there must output zeros and pass no gradient.
    errors = _compare(q, k, v, table, key_padding_mask=torch.tensor([20, 0], device=q.device))
    assert errors["out"] < TOL[dtype][0]
    out = attention(q, k, v, key_padding_mask=torch.tensor([20, 0], device=q.device))
    assert torch.all(out[1] == 0)


def test_causal_query_before_every_key_is_zero():
    # With q_offset=0 and Lq > Lk all queries see key 0; with a padded key 0 the first sees none.
    q, k, v, _ = _inputs(1, 1, 4, 4, 64, torch.float32)
    mask = torch.tensor([[False, True, True, True]], device=q.device)
    out = attention(q, k, v, causal=True, key_padding_mask=mask)
    assert torch.all(out[0, 0, 0] == 0) and torch.isfinite(out).all()
    torch.testing.assert_close(out, attention_reference(q, k, v, causal=True, key_padding_mask=mask))


def test_no_table_gradient_requested():
    q, k, v, table = _inputs(1, 2, 20, 20, 64, torch.float32)
    q.requires_grad_(True)
    out = attention(q, k, v, bias_table=table)
    (dq,) = torch.autograd.grad(out.sum(), q)
    ref_q = q.detach().clone().requires_grad_(True)
    (ref_dq,) = torch.autograd.grad(attention_reference(ref_q, k, v, bias_table=table).sum(), ref_q)
    torch.testing.assert_close(dq, ref_dq, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (32, 64), (64, 256), (16, 20)])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_bucket_function_matches_reference_bit_for_bit(num_buckets, max_distance, bidirectional):
    rel = torch.arange(-3000, 3000, dtype=torch.int32, device=DEVICE)
    spec = AttentionSpec(1.0, False, bidirectional, num_buckets, max_distance, 0)
    got = _kernel_buckets(rel, spec)
    want = relative_position_bucket(rel.long(), bidirectional=bidirectional,
                                    num_buckets=num_buckets, max_distance=max_distance)
    assert torch.equal(got.long(), want)


@triton.jit
def _buckets_kernel(REL, OUT, n, log_ratio, BIDIRECTIONAL: tl.constexpr, N_DIR: tl.constexpr,
                    MAX_EXACT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    rel = tl.load(REL + offs, mask=offs < n, other=0)
    tl.store(OUT + offs, t5_bucket(rel, log_ratio, BIDIRECTIONAL, N_DIR, MAX_EXACT), mask=offs < n)


def _kernel_buckets(rel: torch.Tensor, spec: AttentionSpec) -> torch.Tensor:
    out = torch.empty_like(rel)
    consts = spec.bucket_constants()
    block = 8192
    _buckets_kernel[(triton.cdiv(rel.numel(), block),)](
        rel, out, rel.numel(), consts.pop("log_ratio"), BIDIRECTIONAL=spec.bidirectional,
        BLOCK=block, **consts)
    return out


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda q, k, v, t: attention(q[0], k, v), "4-D"),
        (lambda q, k, v, t: attention(q, k[:, :, :, :32], v[:, :, :, :32]), "head dim"),
        (lambda q, k, v, t: attention(q, k, v[:, :, :5]), "same shape"),
        (lambda q, k, v, t: attention(q, k[:1], v[:1]), "batch"),
        (lambda q, k, v, t: attention(q, k.double(), v), "fp16, bf16 or fp32"),
        (lambda q, k, v, t: attention(q, k.half(), v.half()), "share a dtype"),
        (lambda q, k, v, t: attention(q, k, v, bias_table=t[:, :16]), r"\[H, num_buckets\]"),
        (lambda q, k, v, t: attention(q, k, v, bias_table=t[:1]), r"\[H, num_buckets\]"),
        (lambda q, k, v, t: attention(q, k, v, bias_table=t, max_distance=4), "logarithmic"),
        (lambda q, k, v, t: attention(q, k, v, q_offset=-1), "q_offset"),
        (lambda q, k, v, t: attention(q, k, v, key_padding_mask=torch.ones(2, 5, dtype=torch.bool, device=q.device)), "Lk"),
        (lambda q, k, v, t: attention(q, k, v, key_padding_mask=torch.ones(2, 7, device=q.device)), "bool"),
        (lambda q, k, v, t: attention(q, k, v, key_padding_mask=torch.ones(3, dtype=torch.long, device=q.device)), "lengths"),
        (lambda q, k, v, t: attention(*[torch.zeros(1, 1, 4, 256, device=q.device)] * 3), "head dim"),
    ],
)
def test_rejects_bad_inputs(make, match):
    q, k, v, table = _inputs(2, 2, 4, 7, 64, torch.float32)
    with pytest.raises(ValueError, match=match):
        make(q, k, v, table)


def test_benchmark_check_mode_runs():
    env = {**os.environ, "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1")}
    if torch.cuda.is_available():
        env.pop("TRITON_INTERPRET")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "attention.py"), "--check"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all checks passed" in proc.stdout


# --------------------------------------------------------------------------------------------
# Real sizes on a GPU
# --------------------------------------------------------------------------------------------

GPU_CASES = {
    "mt5_encoder_588px": dict(shape=(1, 16, 1764 + 64, 1764 + 64), d=64, bias=True, scale=1.0),
    "mt5_decoder_causal": dict(shape=(2, 16, 128, 128), d=64, bias=True, causal=True,
                               bias_bidirectional=False, scale=1.0),
    "mt5_cross": dict(shape=(2, 16, 128, 1764 + 64), d=64, scale=1.0, mask="lengths"),
    "vit_g_d104": dict(shape=(1, 16, 1764 + 64, 1764 + 64), d=104),
    "vit_e_d112": dict(shape=(1, 16, 1764 + 64, 1764 + 64), d=112),
    "decode": dict(shape=(4, 16, 1, 300), d=64, bias=True, causal=True, bias_bidirectional=False,
                   q_offset=299, scale=1.0),
}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", list(GPU_CASES))
def test_gpu_real_sizes(name, dtype):
    case = GPU_CASES[name]
    q, k, v, table = _inputs(*case["shape"], case["d"], dtype, device="cuda")
    _compare(q, k, v, table if case.get("bias") else None, tol=GPU_TOL[dtype],
             **_case_kwargs(case, q, k))


@pytest.mark.gpu
@pytest.mark.parametrize("head_dim", [64, 72, 96, 104, 112, 128])
def test_gpu_fp32_head_dims(head_dim):
    q, k, v, table = _inputs(2, 4, 300, 333, head_dim, torch.float32, device="cuda")
    _compare(q, k, v, table, tol=(2e-4, 2e-4), causal=True, key_padding_mask=torch.tensor([333, 100]).cuda())
