"""Compile the attention kernels ahead of time for a GPU architecture, on a machine without one.

The CPU test suite runs the kernels through Triton's interpreter, which never invokes the
compiler: a kernel that the interpreter runs may still fail to compile (a type mismatch between
branches, a tensor-descriptor block the hardware cannot load, too much shared memory). This
script runs Triton's real compiler down to a cubin for ``--arch`` (default sm_90, Hopper) and
prints each variant's shared memory, so that a short GPU session does not spend its minutes
finding compile errors. It needs no GPU and no CUDA driver (Triton ships ``ptxas``).

Usage::

    python benchmarks/compile_kernels.py                  # the encoder variants, first config
    python benchmarks/compile_kernels.py --variants tma   # a subset
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.pop("TRITON_INTERPRET", None)  # the real compiler and the GPU autotune configs

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from pali.kernels import t5_attention as ka  # noqa: E402

# The encoder shape's compile-time constants (bf16, d64, T5 bias, padding by lengths).
BASE = dict(HEAD_DIM=64, BLOCK_D=64, CAUSAL=False, HAS_BIAS=True, ROW_BIAS=False, HAS_KPM=False,
            HAS_KLEN=True, BIDIRECTIONAL=True, NUM_BUCKETS=32, N_DIR=16, MAX_EXACT=8, MAX_DISTANCE=128,
            EXP2=True, TMA=False, UPCAST=False, PRECISION="tf32")
VARIANTS = {
    "bucket": {},
    "row": dict(ROW_BIAS=True),
    "tma": dict(TMA=True),
    "no_exp2": dict(EXP2=False),
    "causal_decoder": dict(CAUSAL=True, BIDIRECTIONAL=False, N_DIR=32, MAX_EXACT=16, HAS_KLEN=False),
    "vit_d104": dict(HEAD_DIM=104, BLOCK_D=128, HAS_BIAS=False, HAS_KLEN=False),
}
KERNELS = {"fwd": ka._fwd_tuned, "bwd_dkdv": ka._bwd_dkdv_tuned, "bwd_dq": ka._bwd_dq_tuned}
_POINTERS = {"LSE": "*fp32", "DELTA": "*fp32", "TABLE": "*fp32", "ROW": "*fp32", "BROW": "*i32",
             "KPM": "*u8", "KLEN": "*i32", "DTAB": "*fp32"}
_TILES = {"Q": "BLOCK_M", "DO": "BLOCK_M", "K": "BLOCK_N", "V": "BLOCK_N"}


def signature(fn, constexprs: dict) -> dict[str, str]:
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in _TILES and constexprs["TMA"]:
            block = constexprs[_TILES[name]]
            sig[name] = f"tensordesc<bf16[1,1,{block},{constexprs['BLOCK_D']}]>"
        elif name in _TILES or name in ("O", "DQ", "DK", "DV"):
            sig[name] = "*bf16"
        elif name in _POINTERS:
            sig[name] = _POINTERS[name]
        elif name in ("scale", "qk_scale", "log_ratio"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def compile_one(kernel: str, variant: str, config: triton.Config, arch: int) -> dict:
    tuned = KERNELS[kernel]
    constexprs = {**BASE, **VARIANTS[variant], **config.kwargs}
    if kernel == "bwd_dkdv":
        constexprs.update(NUM_BUCKETS_POW2=32, BIAS_GRAD=constexprs["HAS_BIAS"])
    fn = tuned.fn
    start = time.monotonic()
    compiled = triton.compile(ASTSource(fn, signature(fn, constexprs), constexprs),
                              target=GPUTarget("cuda", arch, 32),
                              options=dict(num_warps=config.num_warps, num_stages=config.num_stages))
    return {"kernel": kernel, "variant": variant, "config": str(config.kwargs), "warps": config.num_warps,
            "stages": config.num_stages, "shared_bytes": compiled.metadata.shared,
            "seconds": time.monotonic() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability as an int (90 = Hopper)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated of {list(VARIANTS)}")
    parser.add_argument("--kernels", default=",".join(KERNELS), help=f"comma-separated of {list(KERNELS)}")
    parser.add_argument("--all-configs", action="store_true", help="every autotune config, not only the first")
    args = parser.parse_args(argv)
    failed = 0
    for variant in args.variants.split(","):
        for kernel in args.kernels.split(","):
            configs = KERNELS[kernel].configs
            for config in configs if args.all_configs else configs[:1]:
                try:
                    r = compile_one(kernel, variant, config, args.arch)
                    print(f"ok   sm_{args.arch} {kernel:<9} {variant:<15} {r['config']} w{r['warps']} "
                          f"s{r['stages']}  shared {r['shared_bytes'] / 1024:.0f} KiB  ({r['seconds']:.0f} s)",
                          flush=True)
                except Exception as exc:  # noqa: BLE001 -- report every failing variant, then fail
                    failed += 1
                    print(f"FAIL sm_{args.arch} {kernel:<9} {variant:<15} {config.kwargs}: "
                          f"{type(exc).__name__}: {str(exc).strip()[:300]}", flush=True)
    print("all compiled" if not failed else f"{failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
