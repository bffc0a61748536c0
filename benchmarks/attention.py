"""Benchmark the fused T5-bias attention kernels on PaLI's attention shapes against PyTorch peers.

For every shape it first checks the Triton kernel (output and q/k/v/table gradients) against the
fp32 reference, then times forward and forward+backward with CUDA events (median of several
runs) for:

* ``triton``      -- :func:`pali.kernels.attention`, bias looked up inside the kernel;
* ``sdpa_mem``    -- SDPA, memory-efficient backend, dense ``[1, H, Lq, Lk]`` bias materialized
                     from the table on every call (what the model does without the kernel);
* ``sdpa_math``   -- SDPA math backend with the same dense bias;
* ``flex``        -- FlexAttention under ``torch.compile`` with a T5 ``score_mod`` (table lookup
                     through a precomputed ``[Lq, Lk]`` bucket index);
* ``sdpa_flash``  -- SDPA flash backend, only for shapes without bias or padding (the ViT ones).

A peer that cannot run a shape is reported as ``n/a (reason)``. Without CUDA, or with
``--check``, only the correctness checks run (through Triton's interpreter at tiny sizes when
there is no GPU), so this script is exercised by the CPU test suite.

Usage::

    python benchmarks/attention.py            # checks + timings (needs CUDA)
    python benchmarks/attention.py --check    # correctness only
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import dataclass, replace
from typing import Callable

import torch

if not torch.cuda.is_available():
    # Must happen before anything imports triton.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pali.kernels import attention, attention_reference, t5_relative_bias  # noqa: E402


@dataclass(frozen=True)
class Shape:
    """One attention call of the model. ``bias`` is None, "bidirectional" or "causal"."""

    name: str
    batch: int
    heads: int
    lq: int
    lk: int
    head_dim: int
    bias: str | None = None
    causal: bool = False
    scale: float | None = None
    q_offset: int = 0
    padded: bool = False

    @property
    def flops_fwd(self) -> float:
        """Two matmuls of 2*Lq*Lk*D flops; causal self-attention does about half of them."""
        flops = 4.0 * self.batch * self.heads * self.lq * self.lk * self.head_dim
        return flops / 2 if self.causal and self.lq == self.lk else flops

    def tiny(self) -> Shape:
        """A version small enough for the CPU interpreter, keeping every feature."""
        lq = 1 if self.lq == 1 else min(self.lq, 33)
        lk = min(self.lk, 47) if self.lq != self.lk else lq
        q_offset = lk - 1 if self.q_offset else 0
        return replace(self, batch=2, heads=2, lq=lq, lk=lk, q_offset=q_offset)


TEXT_IMG_224 = 256 + 64  # 16x16 patches + text tokens
TEXT_IMG_588 = 1764 + 64  # 42x42 patches + text tokens

SHAPES = [
    Shape("mT5-L enc 224px", 32, 16, TEXT_IMG_224, TEXT_IMG_224, 64, "bidirectional", scale=1.0, padded=True),
    Shape("mT5-L enc 588px", 4, 16, TEXT_IMG_588, TEXT_IMG_588, 64, "bidirectional", scale=1.0, padded=True),
    Shape("mT5-XXL enc 224px", 8, 64, TEXT_IMG_224, TEXT_IMG_224, 64, "bidirectional", scale=1.0, padded=True),
    Shape("mT5-XXL enc 588px", 1, 64, TEXT_IMG_588, TEXT_IMG_588, 64, "bidirectional", scale=1.0, padded=True),
    Shape("mT5-L dec self causal", 32, 16, 128, 128, 64, "causal", causal=True, scale=1.0),
    Shape("mT5-L dec cross 588px", 8, 16, 128, TEXT_IMG_588, 64, scale=1.0, padded=True),
    Shape("mT5-L dec decode step", 32, 16, 1, 128, 64, "causal", causal=True, scale=1.0, q_offset=127),
    Shape("ViT-G/14 588px d104", 4, 16, 1764, 1764, 104),
    Shape("ViT-e/14 588px d112", 4, 16, 1764, 1764, 112),
]

Runner = Callable[[], torch.Tensor]


def make_inputs(shape: Shape, dtype: torch.dtype, device: str, requires_grad: bool) -> dict:
    gen = torch.Generator().manual_seed(0)

    def rand(*size: int, std: float = 1.0) -> torch.Tensor:
        t = (torch.randn(*size, generator=gen) * std).to(device, dtype)
        return t.requires_grad_(requires_grad)

    # mT5 folds 1/sqrt(d) into its weights (scale 1.0): shrink q so scores stay in range.
    q_std = shape.head_dim**-0.5 if shape.scale == 1.0 else 1.0
    inputs = {
        "q": rand(shape.batch, shape.heads, shape.lq, shape.head_dim, std=q_std),
        "k": rand(shape.batch, shape.heads, shape.lk, shape.head_dim),
        "v": rand(shape.batch, shape.heads, shape.lk, shape.head_dim),
        "table": None,
        "lengths": None,
    }
    if shape.bias:
        inputs["table"] = (torch.randn(shape.heads, 32, generator=gen)).to(device).requires_grad_(requires_grad)
    if shape.padded:
        lengths = [shape.lk - (i * 17) % max(1, shape.lk // 3) for i in range(shape.batch)]
        inputs["lengths"] = torch.tensor(lengths, device=device)
    return inputs


def kernel_kwargs(shape: Shape, inputs: dict) -> dict:
    return dict(scale=shape.scale, causal=shape.causal, bias_table=inputs["table"],
                bias_bidirectional=shape.bias != "causal", q_offset=shape.q_offset,
                key_padding_mask=inputs["lengths"])


def dense_bias(shape: Shape, inputs: dict) -> torch.Tensor | None:
    """The additive ``[B|1, H, Lq, Lk]`` bias the SDPA peers need: T5 table + causal + padding."""
    q = inputs["q"]
    bias = None
    if inputs["table"] is not None:
        bias = t5_relative_bias(inputs["table"], shape.lq, shape.lk, q_offset=shape.q_offset,
                                bidirectional=shape.bias != "causal").to(q.dtype)
    neg = torch.finfo(q.dtype).min
    if shape.causal:
        allowed = (torch.arange(shape.lk, device=q.device)[None, :]
                   <= torch.arange(shape.q_offset, shape.q_offset + shape.lq, device=q.device)[:, None])
        causal = torch.zeros(shape.lq, shape.lk, dtype=q.dtype, device=q.device).masked_fill(~allowed, neg)
        bias = causal[None, None] if bias is None else bias + causal
    if inputs["lengths"] is not None:
        keep = torch.arange(shape.lk, device=q.device)[None, :] < inputs["lengths"][:, None]
        pad = torch.zeros(keep.shape, dtype=q.dtype, device=q.device).masked_fill(~keep, neg)
        bias = pad[:, None, None] if bias is None else bias + pad[:, None, None]
    return bias


# ------------------------------------------------------------------------------------------------
# Peers: each builder returns a zero-argument runner, or raises to be reported as n/a.
# ------------------------------------------------------------------------------------------------


def triton_peer(shape: Shape, inputs: dict) -> Runner:
    return lambda: attention(inputs["q"], inputs["k"], inputs["v"], **kernel_kwargs(shape, inputs))


def sdpa_peer(backend_name: str) -> Callable[[Shape, dict], Runner]:
    def build(shape: Shape, inputs: dict) -> Runner:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.nn.functional import scaled_dot_product_attention as sdpa

        backend = getattr(SDPBackend, backend_name)
        if backend_name == "FLASH_ATTENTION" and (shape.bias or shape.padded or shape.q_offset):
            raise RuntimeError("flash takes no bias or padding mask")

        def run() -> torch.Tensor:
            with sdpa_kernel(backend):
                # A causal-only shape could use is_causal, but our decode step has q_offset > 0.
                return sdpa(inputs["q"], inputs["k"], inputs["v"], attn_mask=dense_bias(shape, inputs),
                            scale=shape.scale)

        return run

    return build


def flex_peer(shape: Shape, inputs: dict) -> Runner:
    from torch.nn.attention.flex_attention import flex_attention

    q = inputs["q"]
    table, lengths = inputs["table"], inputs["lengths"]
    buckets = None
    if table is not None:
        from pali.kernels import relative_position_bucket

        rel = (torch.arange(shape.lk, device=q.device)[None, :]
               - torch.arange(shape.q_offset, shape.q_offset + shape.lq, device=q.device)[:, None])
        buckets = relative_position_bucket(rel, bidirectional=shape.bias != "causal")
    q_offset = shape.q_offset

    def score_mod(score, b, h, q_idx, kv_idx):
        if buckets is not None:
            score = score + table[h, buckets[q_idx, kv_idx]].to(score.dtype)
        if shape.causal:
            score = torch.where(kv_idx <= q_idx + q_offset, score, -float("inf"))
        if lengths is not None:
            score = torch.where(kv_idx < lengths[b], score, -float("inf"))
        return score

    compiled = torch.compile(flex_attention, dynamic=False)
    return lambda: compiled(inputs["q"], inputs["k"], inputs["v"], score_mod=score_mod, scale=shape.scale)


PEERS: dict[str, Callable[[Shape, dict], Runner]] = {
    "triton": triton_peer,
    "sdpa_mem": sdpa_peer("EFFICIENT_ATTENTION"),
    "sdpa_math": sdpa_peer("MATH"),
    "flex": flex_peer,
    "sdpa_flash": sdpa_peer("FLASH_ATTENTION"),
}


# ------------------------------------------------------------------------------------------------
# Correctness
# ------------------------------------------------------------------------------------------------


def check(shape: Shape, dtype: torch.dtype, device: str) -> dict[str, float]:
    """Kernel vs fp32 reference on the same values; raises AssertionError on a mismatch.

    Checks at most two batch rows so the dense reference stays small at the big shapes.
    """
    shape = replace(shape, batch=min(shape.batch, 2))
    inputs = make_inputs(shape, dtype, device, requires_grad=True)
    leaves = [inputs[n] for n in ("q", "k", "v", "table") if inputs[n] is not None]
    ref_leaves = [t.detach().float().requires_grad_(True) for t in leaves]
    ref_inputs = dict(inputs, **dict(zip(("q", "k", "v", "table"), ref_leaves)))
    mask = None
    if inputs["lengths"] is not None:
        mask = torch.arange(shape.lk, device=device)[None, :] < inputs["lengths"][:, None]

    out = triton_peer(shape, inputs)()
    ref = attention_reference(*ref_leaves[:3], **dict(kernel_kwargs(shape, ref_inputs), key_padding_mask=mask))
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device)
    got = torch.autograd.grad(out, leaves, grad.to(dtype))
    want = torch.autograd.grad(ref, ref_leaves, grad)

    tol = {torch.float32: 2e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}[dtype]
    errors = {}
    for name, a, b in zip(("out", "dq", "dk", "dv", "dtable"), (out, *got), (ref, *want)):
        err = (a.float() - b).abs().max().item()
        bound = tol * max(1.0, b.abs().max().item())
        errors[name] = err
        assert err <= bound and torch.isfinite(a).all(), f"{shape.name}: {name} error {err:.3g} > {bound:.3g}"
    return errors


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------


def time_ms(fn: Callable[[], object], reps: int) -> float:
    """Median wall time of ``fn`` on the GPU, by CUDA events, after warm-up."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def bench_peer(build: Callable[[Shape, dict], Runner], shape: Shape, dtype: torch.dtype,
               reps: int) -> tuple[float, float] | str:
    """(forward ms, forward+backward ms), or the reason the peer cannot run."""
    try:
        inputs = make_inputs(shape, dtype, "cuda", requires_grad=True)
        run = build(shape, inputs)
        leaves = [inputs[n] for n in ("q", "k", "v", "table") if inputs[n] is not None]
        with torch.no_grad():
            fwd = time_ms(run, reps)

        def fwd_bwd() -> None:
            out = run()
            torch.autograd.grad(out, leaves, torch.ones_like(out))

        return fwd, time_ms(fwd_bwd, reps)
    except Exception as exc:  # noqa: BLE001 -- any failure of a peer is a result, not a crash
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"n/a ({type(exc).__name__}: {reason[:80]})"
    finally:
        torch.cuda.empty_cache()


def report(shape: Shape, dtype: torch.dtype, reps: int, peers: list[str]) -> None:
    print(f"\n== {shape.name}: B={shape.batch} H={shape.heads} Lq={shape.lq} Lk={shape.lk} "
          f"D={shape.head_dim} bias={shape.bias} causal={shape.causal} padded={shape.padded} {dtype}")
    results = {name: bench_peer(PEERS[name], shape, dtype, reps) for name in peers}
    base = results["triton"]
    print(f"  {'peer':<11} {'fwd ms':>9} {'TFLOP/s':>8} {'fwd+bwd ms':>11} {'TFLOP/s':>8} "
          f"{'fwd x':>7} {'f+b x':>7}   (x = peer time / triton time)")
    for name, res in results.items():
        if isinstance(res, str):
            print(f"  {name:<11} {res}")
            continue
        fwd, both = res
        ratios = ("", "") if isinstance(base, str) else (f"{fwd / base[0]:.2f}", f"{both / base[1]:.2f}")
        print(f"  {name:<11} {fwd:9.3f} {shape.flops_fwd / fwd / 1e9:8.1f} {both:11.3f} "
              f"{3.5 * shape.flops_fwd / both / 1e9:8.1f} {ratios[0]:>7} {ratios[1]:>7}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="correctness checks only")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--reps", type=int, default=10, help="timed runs per measurement")
    parser.add_argument("--peers", default=",".join(PEERS),
                        help="comma-separated peers to time (triton always runs: ratios are against it)")
    parser.add_argument("--shapes", default="", help="comma-separated shape names to run (default: all)")
    parser.add_argument("--no-check", dest="run_checks", action="store_false",
                        help="skip the correctness checks (when an earlier run did them)")
    args = parser.parse_args(argv)
    peers = ["triton"] + [p for p in args.peers.split(",") if p and p != "triton"]
    unknown = set(peers) - set(PEERS)
    if unknown:
        parser.error(f"unknown peers {sorted(unknown)}; choose from {list(PEERS)}")
    wanted = [n for n in args.shapes.split(",") if n]
    unknown = set(wanted) - {s.name for s in SHAPES}
    if unknown:
        parser.error(f"unknown shapes {sorted(unknown)}; choose from {[s.name for s in SHAPES]}")
    shapes = [s for s in SHAPES if not wanted or s.name in wanted]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]

    on_gpu = torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    if on_gpu:
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    else:
        # The interpreter's 16-bit arithmetic is unreliable and slow: check fp32 and fp16 tiny.
        print("no CUDA: correctness checks only, Triton interpreter, tiny shapes")
    checked = set()
    for shape in shapes if args.run_checks else ():
        shape = shape if on_gpu else shape.tiny()
        if replace(shape, name="") in checked:  # the tiny versions of the encoder shapes coincide
            continue
        checked.add(replace(shape, name=""))
        for check_dtype in ((dtype,) if on_gpu else (torch.float32, torch.float16)):
            errors = check(shape, check_dtype, device)
            print(f"check ok  {shape.name:<24} {str(check_dtype):<15} "
                  + " ".join(f"{k}={v:.2e}" for k, v in errors.items()))
    print("all checks passed" if args.run_checks else "checks skipped (--no-check)")
    if args.check or not on_gpu:
        return 0

    import triton

    print(f"triton {triton.__version__}; TFLOP/s count fwd as 4*B*H*Lq*Lk*D (halved when causal), "
          "fwd+bwd as 3.5x that")
    for shape in shapes:
        report(shape, dtype, args.reps, peers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
