"""Benchmark the fused T5-bias attention kernels on PaLI's attention shapes against PyTorch peers.

For every shape it first checks both of our bias strategies (output and q/k/v/table gradients)
against the fp32 reference, then times forward and forward+backward with CUDA events (median of
``--reps`` runs after warm-up) for these implementations (``--impls``):

* ``ours_bucket``   -- ``pali.kernels.attention``, T5 bucket computed inside the kernel;
* ``ours_row``      -- the same with a per-head bias row over all distances, gathered by the
                       kernel (bias shapes only: without a bias both strategies are one kernel);
* ``sdpa_flash``    -- SDPA flash backend (bias-free shapes without padding only);
* ``sdpa_cudnn``    -- SDPA cuDNN backend, dense bias;
* ``sdpa_mem``      -- SDPA memory-efficient backend, dense bias;
* ``flex_dense``    -- FlexAttention under ``torch.compile`` reading a dense ``[H, Lq, Lk]`` bias;
* ``flex_bucket``   -- FlexAttention under ``torch.compile``, T5 bucket and table lookup inside
                       its ``score_mod``.

Ablations of our levers, run only when named: ``ours_bucket_tma`` (tensor-descriptor loads),
``ours_bucket_noexp2`` (natural-base softmax).

What is inside the timed region: everything that depends on the table (the dense bias of the
SDPA/Flex peers, our bias row), because its gradient must flow; masks, bucket indices and Flex
block masks, which depend only on the lengths, are built once beforehand. A peer that fails
(unsupported, out of resources) becomes a row with an ``error``; it never stops the run.

Rows are written (after every shape, atomically) to ``benchmarks/results/<device>-<date>.json``
or ``--json``; rows already in that file for other (shape, impl) pairs are kept, so several runs
(e.g. FlexAttention's compile-heavy pass last) build one file, and the ratio fields are
recomputed over all its rows. The schema is documented in docs/benchmarks.md.

``--dry-run`` (the default without CUDA) runs the checks through Triton's interpreter at tiny
sizes, then every implementation at tiny sizes on the CPU (FlexAttention uncompiled), so every
code path of this script runs in the CPU test suite; its timings are interpreter times, never
GPU figures, and it writes JSON only where ``--json`` says.

Usage::

    python benchmarks/attention.py                      # checks + timings (needs CUDA)
    python benchmarks/attention.py --check              # correctness only
    python benchmarks/attention.py --dry-run --json /tmp/attention.json
    python benchmarks/attention.py --summarize FILE     # the table of a results file
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

if not torch.cuda.is_available():
    # Must happen before anything imports triton.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pali.kernels import attention, attention_reference, relative_position_bucket  # noqa: E402
from pali.kernels.api import use_kernel_options  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


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
        """Two matmuls of 2*Lq*Lk*D flops; causal self-attention does about half of them.

        Counted over the full lengths: padded keys are work a padding-aware kernel may skip.
        """
        flops = 4.0 * self.batch * self.heads * self.lq * self.lk * self.head_dim
        return flops / 2 if self.causal and self.lq == self.lk else flops

    @property
    def inference_only(self) -> bool:
        """A decode step runs without gradients in the model: it is timed forward only."""
        return self.q_offset > 0

    def tiny(self) -> Shape:
        """A version small enough for the CPU interpreter, keeping every feature."""
        lq = 1 if self.lq == 1 else min(self.lq, 33)
        lk = min(self.lk, 47) if self.lq != self.lk else lq
        q_offset = lk - 1 if self.q_offset else 0
        return replace(self, batch=2, heads=2, lq=lq, lk=lk, q_offset=q_offset)


TEXT_IMG_224 = 256 + 64  # 16x16 patches + text tokens
TEXT_IMG_588 = 1764 + 64  # 42x42 patches + text tokens

# In order of importance: a run that hits its time budget loses the last ones.
SHAPES = [
    Shape("mT5-L enc 588px", 4, 16, TEXT_IMG_588, TEXT_IMG_588, 64, "bidirectional", scale=1.0, padded=True),
    Shape("mT5-L enc 224px", 32, 16, TEXT_IMG_224, TEXT_IMG_224, 64, "bidirectional", scale=1.0, padded=True),
    Shape("ViT-G/14 588px d104", 4, 16, 1764, 1764, 104),
    Shape("ViT-e/14 588px d112", 4, 16, 1764, 1764, 112),
    Shape("mT5-L dec self causal", 32, 16, 128, 128, 64, "causal", causal=True, scale=1.0),
    Shape("mT5-L dec cross 588px", 8, 16, 128, TEXT_IMG_588, 64, scale=1.0, padded=True),
    Shape("mT5-L dec decode step", 32, 16, 1, 128, 64, "causal", causal=True, scale=1.0, q_offset=127),
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


def leaves(inputs: dict) -> list[torch.Tensor]:
    return [inputs[n] for n in ("q", "k", "v", "table") if inputs[n] is not None]


def kernel_kwargs(shape: Shape, inputs: dict) -> dict:
    return dict(scale=shape.scale, causal=shape.causal, bias_table=inputs["table"],
                bias_bidirectional=shape.bias != "causal", q_offset=shape.q_offset,
                key_padding_mask=inputs["lengths"])


def buckets(shape: Shape, device: torch.device) -> torch.Tensor:
    """``[Lq, Lk]`` T5 bucket of every (query, key) pair."""
    rel = (torch.arange(shape.lk, device=device)[None, :]
           - torch.arange(shape.q_offset, shape.q_offset + shape.lq, device=device)[:, None])
    return relative_position_bucket(rel, bidirectional=shape.bias != "causal")


def mask_bias(shape: Shape, inputs: dict) -> torch.Tensor | None:
    """The additive ``[B|1, 1, Lq, Lk]`` causal + padding mask of the SDPA peers (no table in it)."""
    q = inputs["q"]
    keep = None
    if shape.causal:
        q_pos = torch.arange(shape.q_offset, shape.q_offset + shape.lq, device=q.device)
        keep = (torch.arange(shape.lk, device=q.device)[None, :] <= q_pos[:, None])[None, None]
    if inputs["lengths"] is not None:
        pad = (torch.arange(shape.lk, device=q.device)[None, :] < inputs["lengths"][:, None])[:, None, None]
        keep = pad if keep is None else keep & pad
    if keep is None:
        return None
    return torch.zeros(keep.shape, dtype=q.dtype, device=q.device).masked_fill(~keep, torch.finfo(q.dtype).min)


# ------------------------------------------------------------------------------------------------
# Implementations: each builder returns a zero-argument runner, or raises to be reported as n/a.
# ------------------------------------------------------------------------------------------------


def ours(**options: object) -> Callable[[Shape, dict, bool], Runner]:
    def build(shape: Shape, inputs: dict, dry_run: bool) -> Runner:
        if options.get("bias_strategy") == "row" and not shape.bias:
            raise RuntimeError("no bias: the row strategy is the bucket kernel")

        def run() -> torch.Tensor:
            with use_kernel_options(**options):
                return attention(inputs["q"], inputs["k"], inputs["v"], **kernel_kwargs(shape, inputs))

        return run

    return build


def sdpa(backend_name: str) -> Callable[[Shape, dict, bool], Runner]:
    def build(shape: Shape, inputs: dict, dry_run: bool) -> Runner:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.nn.functional import scaled_dot_product_attention

        backend = getattr(SDPBackend, backend_name)
        if backend_name == "FLASH_ATTENTION" and (shape.bias or shape.padded or shape.q_offset):
            raise RuntimeError("flash takes no bias or padding mask")
        masks = mask_bias(shape, inputs)
        index = buckets(shape, inputs["q"].device) if inputs["table"] is not None else None

        def run() -> torch.Tensor:
            bias = masks
            if index is not None:
                dense = inputs["table"][:, index].to(inputs["q"].dtype)[None]
                bias = dense if masks is None else dense + masks
            with sdpa_kernel(backend):
                # A causal-only shape could use is_causal, but our decode step has q_offset > 0.
                return scaled_dot_product_attention(inputs["q"], inputs["k"], inputs["v"],
                                                    attn_mask=bias, scale=shape.scale)

        return run

    return build


def flex(bias_in_kernel: bool) -> Callable[[Shape, dict, bool], Runner]:
    """FlexAttention, compiled (uncompiled in a dry run: the CPU cannot compile it in time)."""

    def build(shape: Shape, inputs: dict, dry_run: bool) -> Runner:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        q = inputs["q"]
        table, lengths, q_offset = inputs["table"], inputs["lengths"], shape.q_offset
        if dry_run and table is not None:
            table = table.detach()
        bidirectional = shape.bias != "causal"
        index = buckets(shape, q.device) if table is not None else None

        def mask_mod(b, h, q_idx, kv_idx):
            keep = kv_idx >= 0
            if shape.causal:
                keep = keep & (kv_idx <= q_idx + q_offset)
            if lengths is not None:
                keep = keep & (kv_idx < lengths[b])
            return keep

        block_mask = None
        if shape.causal or lengths is not None:
            block_mask = create_block_mask(mask_mod, shape.batch, None, shape.lq, shape.lk, device=q.device)
        fn = flex_attention if dry_run else torch.compile(flex_attention, dynamic=False)
        # On the CPU FlexAttention has no backward and refuses inputs that require grad: a dry
        # run times its forward on detached inputs (and the table above; its backward then
        # records an error rather than a partial gradient).
        qkv = [inputs[n].detach() if dry_run else inputs[n] for n in ("q", "k", "v")]

        def run() -> torch.Tensor:
            score_mod = None
            if table is not None and bias_in_kernel:
                def score_mod(score, b, h, q_idx, kv_idx):
                    bucket = relative_position_bucket(kv_idx - (q_idx + q_offset), bidirectional=bidirectional)
                    return score + table[h, bucket].to(score.dtype)
            elif table is not None:
                dense = table[:, index].to(q.dtype)

                def score_mod(score, b, h, q_idx, kv_idx):
                    return score + dense[h, q_idx, kv_idx].to(score.dtype)

            return fn(*qkv, score_mod=score_mod, block_mask=block_mask, scale=shape.scale)

        return run

    return build


IMPLS: dict[str, Callable[[Shape, dict, bool], Runner]] = {
    "ours_bucket": ours(bias_strategy="bucket"),
    "ours_row": ours(bias_strategy="row"),
    "sdpa_flash": sdpa("FLASH_ATTENTION"),
    "sdpa_cudnn": sdpa("CUDNN_ATTENTION"),
    "sdpa_mem": sdpa("EFFICIENT_ATTENTION"),
    "flex_dense": flex(bias_in_kernel=False),
    "flex_bucket": flex(bias_in_kernel=True),
    "ours_bucket_tma": ours(bias_strategy="bucket", tma=True),
    "ours_bucket_noexp2": ours(bias_strategy="bucket", exp2=False),
}
DEFAULT_IMPLS = ["ours_bucket", "ours_row", "sdpa_flash", "sdpa_cudnn", "sdpa_mem", "flex_dense", "flex_bucket"]
CHECKED = {"ours_bucket": "bucket", "ours_row": "row"}


def is_ours(impl: str) -> bool:
    return impl.startswith("ours")


# ------------------------------------------------------------------------------------------------
# Correctness
# ------------------------------------------------------------------------------------------------


def check(shape: Shape, dtype: torch.dtype, device: str, strategy: str) -> dict[str, float]:
    """Kernel vs fp32 reference on the same values; raises AssertionError on a mismatch.

    Checks at most two batch rows so the dense reference stays small at the big shapes.
    """
    shape = replace(shape, batch=min(shape.batch, 2))
    inputs = make_inputs(shape, dtype, device, requires_grad=True)
    ref_leaves = [t.detach().float().requires_grad_(True) for t in leaves(inputs)]
    ref_inputs = dict(inputs, **dict(zip(("q", "k", "v", "table"), ref_leaves)))
    mask = None
    if inputs["lengths"] is not None:
        mask = torch.arange(shape.lk, device=device)[None, :] < inputs["lengths"][:, None]

    with use_kernel_options(bias_strategy=strategy):
        out = attention(inputs["q"], inputs["k"], inputs["v"], **kernel_kwargs(shape, inputs))
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device)
        got = torch.autograd.grad(out, leaves(inputs), grad.to(dtype))
    ref = attention_reference(*ref_leaves[:3], **dict(kernel_kwargs(shape, ref_inputs), key_padding_mask=mask))
    want = torch.autograd.grad(ref, ref_leaves, grad)

    tol = {torch.float32: 2e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}[dtype]
    errors = {}
    for name, a, b in zip(("out", "dq", "dk", "dv", "dtable"), (out, *got), (ref, *want)):
        err = (a.float() - b).abs().max().item()
        bound = tol * max(1.0, b.abs().max().item())
        errors[name] = err
        assert err <= bound and torch.isfinite(a).all(), f"{shape.name} {strategy}: {name} error {err:.3g} > {bound:.3g}"
    return errors


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------


def time_ms(fn: Callable[[], object], reps: int, on_gpu: bool) -> float:
    """Median time of ``fn`` after warm-up: CUDA events on a GPU, the wall clock in a dry run."""
    for _ in range(1 if not on_gpu else 3):
        fn()
    times = []
    for _ in range(reps):
        if on_gpu:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:160] if text else ''}"


def measure(impl: str, shape: Shape, dtype: torch.dtype, device: str, reps: int, dry_run: bool) -> dict:
    """One result row. Failures fill ``error`` and leave what was not measured ``None``."""
    row = {"shape": shape.name, "impl": impl, "fwd_ms": None, "fwd_tflops": None, "fwd_bwd_ms": None,
           "fwd_bwd_tflops": None, "bias_grad": None, "bias_grad_deterministic": None, "error": None}
    on_gpu = device == "cuda"
    try:
        inputs = make_inputs(shape, dtype, device, requires_grad=True)
        run = IMPLS[impl](shape, inputs, dry_run)
        with torch.no_grad():
            row["fwd_ms"] = time_ms(run, reps, on_gpu)
        row["fwd_tflops"] = shape.flops_fwd / row["fwd_ms"] / 1e9
        if shape.inference_only:
            return row
        grads_of = leaves(inputs)

        def fwd_bwd() -> tuple[torch.Tensor, ...]:
            out = run()
            return torch.autograd.grad(out, grads_of, torch.ones_like(out), allow_unused=True)

        row["fwd_bwd_ms"] = time_ms(fwd_bwd, reps, on_gpu)
        row["fwd_bwd_tflops"] = 3.5 * shape.flops_fwd / row["fwd_bwd_ms"] / 1e9
        if inputs["table"] is not None:
            first, second = fwd_bwd()[-1], fwd_bwd()[-1]
            row["bias_grad"] = first is not None and bool(first.abs().sum() > 0)
            # Observed over two runs on the same inputs: False proves nondeterminism, True does not
            # prove determinism (an atomic-add reduction may happen to agree).
            row["bias_grad_deterministic"] = bool(row["bias_grad"] and torch.equal(first, second))
    except Exception as exc:  # noqa: BLE001 -- any failure of a peer is a result, not a crash
        row["error"] = _reason(exc)
    finally:
        if on_gpu:
            torch.cuda.empty_cache()
    return row


def add_ratios(rows: list[dict], shapes: dict[str, dict]) -> None:
    """``fwd_vs_best_peer`` and ``fwd_bwd_vs_best_bias_grad_peer`` on our rows (peer ms / our ms).

    Peers are the non-``ours`` rows of the same shape, each time it measured (a row whose backward
    failed still has its forward). With a bias, a forward+backward peer counts only if it returned
    the table gradient; without one, every peer counts. ``None`` where no peer was measured.
    """
    for row in rows:
        if not is_ours(row["impl"]):
            continue
        peers = [r for r in rows if r["shape"] == row["shape"] and not is_ours(r["impl"])]
        has_bias = shapes.get(row["shape"], {}).get("bias") is not None
        fwd = [r["fwd_ms"] for r in peers if r["fwd_ms"] is not None]
        both = [r["fwd_bwd_ms"] for r in peers if r["fwd_bwd_ms"] is not None and (r["bias_grad"] or not has_bias)]
        row["fwd_vs_best_peer"] = min(fwd) / row["fwd_ms"] if fwd and row["fwd_ms"] else None
        row["fwd_bwd_vs_best_bias_grad_peer"] = (min(both) / row["fwd_bwd_ms"]
                                                 if both and row["fwd_bwd_ms"] else None)


# ------------------------------------------------------------------------------------------------
# Results file
# ------------------------------------------------------------------------------------------------


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def write_json(path: Path, doc: dict) -> None:
    """Write atomically: a run killed by its time limit leaves the previous complete file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def load_rows(path: Path, device: str) -> tuple[list[dict], list[dict]]:
    """Rows and checks of an earlier run on the same device into the same file, else none."""
    if not path.exists():
        return [], []
    doc = json.loads(path.read_text())
    if doc.get("device") != device:
        raise SystemExit(f"{path} holds results of {doc.get('device')!r}, not {device!r}: pass another --json")
    return doc.get("rows", []), doc.get("checks", [])


def merge(old: list[dict], new: list[dict], key: Callable[[dict], tuple]) -> list[dict]:
    fresh = {key(r) for r in new}
    return [r for r in old if key(r) not in fresh] + new


def summarize(doc: dict) -> str:
    """The results as a markdown table (what docs/benchmarks.md shows)."""

    def fmt(x: object, spec: str) -> str:
        return "—" if x is None else format(x, spec)

    lines = [f"{doc['device']}, {doc['date']}, {doc['dtype']}, torch {doc['torch']}, triton {doc['triton']}"
             + (" (DRY RUN: CPU interpreter times, not GPU figures)" if doc.get("dry_run") else ""),
             "",
             "| shape | impl | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd x best peer | f+b x best bias-grad peer "
             "| bias grad deterministic | error |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    order = {s: i for i, s in enumerate(doc.get("shapes", {}))}
    for r in sorted(doc["rows"], key=lambda r: (order.get(r["shape"], 99), r["impl"])):
        lines.append(f"| {r['shape']} | {r['impl']} | {fmt(r['fwd_ms'], '.3f')} | {fmt(r['fwd_tflops'], '.1f')} "
                     f"| {fmt(r['fwd_bwd_ms'], '.3f')} | {fmt(r.get('fwd_vs_best_peer'), '.2f')} "
                     f"| {fmt(r.get('fwd_bwd_vs_best_bias_grad_peer'), '.2f')} "
                     f"| {fmt(r.get('bias_grad_deterministic'), '')} | {r['error'] or ''} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def _choose(arg: str, known: list[str], what: str, parser: argparse.ArgumentParser) -> list[str]:
    wanted = [n for n in arg.split(",") if n]
    unknown = set(wanted) - set(known)
    if unknown:
        parser.error(f"unknown {what} {sorted(unknown)}; choose from {known}")
    return [n for n in known if n in wanted] if wanted else list(known)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="correctness checks only")
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny shapes on the CPU interpreter, every code path (the default without CUDA)")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--reps", type=int, default=10, help="timed runs per measurement")
    parser.add_argument("--impls", default="", help=f"comma-separated, default {','.join(DEFAULT_IMPLS)}; "
                        f"known: {','.join(IMPLS)}")
    parser.add_argument("--shapes", default="", help="comma-separated shape names to run (default: all)")
    parser.add_argument("--no-check", dest="run_checks", action="store_false",
                        help="skip the correctness checks (when an earlier run did them)")
    parser.add_argument("--json", type=Path, default=None,
                        help="results file (default on a GPU: benchmarks/results/<device>-<date>.json)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="stop starting measurements after this many seconds; the rest are "
                             "recorded as rows with error 'not run: time budget'")
    parser.add_argument("--summarize", type=Path, default=None, help="print the table of a results file and exit")
    args = parser.parse_args(argv)
    if args.summarize:
        print(summarize(json.loads(args.summarize.read_text())))
        return 0
    impls = _choose(args.impls, list(IMPLS), "impls", parser) if args.impls else list(DEFAULT_IMPLS)
    names = _choose(args.shapes, [s.name for s in SHAPES], "shapes", parser)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]

    on_gpu = torch.cuda.is_available() and not args.dry_run
    dry_run = not on_gpu
    device = "cuda" if on_gpu else "cpu"
    shapes = [s if on_gpu else s.tiny() for s in SHAPES if s.name in names]
    started = time.monotonic()

    import triton

    device_name = torch.cuda.get_device_name() if on_gpu else "cpu (dry run)"
    print(f"device: {device_name}, torch {torch.__version__}, triton {triton.__version__}"
          + ("" if on_gpu else "; dry run: Triton interpreter, tiny shapes, times are not GPU figures"))
    checks = []
    if args.run_checks:
        seen = set()
        for shape in shapes:
            if replace(shape, name="") in seen:  # some tiny versions coincide
                continue
            seen.add(replace(shape, name=""))
            # The interpreter's 16-bit arithmetic is unreliable and slow: check fp32 and fp16 tiny.
            for check_dtype in ((dtype,) if on_gpu else (torch.float32, torch.float16)):
                for impl, strategy in CHECKED.items():
                    if strategy == "row" and not shape.bias:
                        continue
                    errors = check(shape, check_dtype, device, strategy)
                    checks.append({"shape": shape.name, "impl": impl, "dtype": str(check_dtype).split(".")[-1],
                                   **errors})
                    print(f"check ok  {shape.name:<24} {impl:<12} {str(check_dtype):<15} "
                          + " ".join(f"{k}={v:.2e}" for k, v in errors.items()))
        print("all checks passed")
    else:
        print("checks skipped (--no-check)")
    if args.check:
        return 0

    path = args.json
    if path is None and on_gpu:
        path = RESULTS / f"{device_slug(device_name)}-{datetime.date.today().isoformat()}.json"
    doc = {"device": device_name, "date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
           "dry_run": dry_run, "dtype": args.dtype, "torch": torch.__version__, "triton": triton.__version__,
           "command": "python benchmarks/attention.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "flops": "fwd 4*B*H*Lq*Lk*D over full lengths (halved for causal self-attention); fwd+bwd 3.5x fwd",
           "shapes": {}, "rows": [], "checks": []}
    old_rows, old_checks = load_rows(path, device_name) if path else ([], [])
    if path and path.exists():
        doc["shapes"] = json.loads(path.read_text()).get("shapes", {})
    doc["checks"] = merge(old_checks, checks, lambda r: (r["shape"], r["impl"], r["dtype"]))
    new_rows: list[dict] = []
    for shape in shapes:
        doc["shapes"][shape.name] = {k: v for k, v in asdict(shape).items() if k != "name"}
        print(f"\n== {shape.name}: B={shape.batch} H={shape.heads} Lq={shape.lq} Lk={shape.lk} "
              f"D={shape.head_dim} bias={shape.bias} causal={shape.causal} padded={shape.padded} {args.dtype}")
        for impl in impls:
            if args.budget_s is not None and time.monotonic() - started > args.budget_s:
                row = {"shape": shape.name, "impl": impl, "fwd_ms": None, "fwd_tflops": None,
                       "fwd_bwd_ms": None, "fwd_bwd_tflops": None, "bias_grad": None,
                       "bias_grad_deterministic": None, "error": "not run: time budget"}
            else:
                row = measure(impl, shape, dtype, device, 1 if dry_run else args.reps, dry_run)
            new_rows.append(row)
            print(f"  {impl:<19} fwd {row['fwd_ms'] or float('nan'):9.3f} ms  fwd+bwd "
                  f"{row['fwd_bwd_ms'] or float('nan'):9.3f} ms  {row['error'] or ''}", flush=True)
        doc["rows"] = merge(old_rows, new_rows, lambda r: (r["shape"], r["impl"]))
        add_ratios(doc["rows"], {s.name: asdict(s) for s in SHAPES})
        if path:
            write_json(path, doc)
    print()
    print(summarize(doc))
    if path:
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
