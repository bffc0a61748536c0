"""Peak memory and time of ``PaliModel.from_pretrained`` on a BLIP-2 checkpoint vs transformers'.

Writes a synthetic transformers BLIP-2 checkpoint with BLIP-2-XL's widths (EVA ViT-g/14 1408 wide,
MLP 6144, 16 heads; Q-Former 768 x 12 layers, 32 queries; Flan-T5-XL d_model 2048, d_ff 5120,
32 heads, vocab 32128) and fewer layers (``--vision-layers``, ``--text-layers``; the real model has
39 and 24+24), as the Hub holds it: fp32 safetensors shards + index, written one random tensor at a
time. Then each load runs in a fresh subprocess that reports its own peak RSS (``VmHWM``) minus its
RSS after the imports, next to the loaded parameters' bytes, and the time of the load and of the
load plus one read of every weight:

- ours: ``from_pretrained(folder, cache_dir=...)``, read in place (the child checks that nothing
  was written into the cache);
- transformers: ``Blip2ForConditionalGeneration.from_pretrained(folder)`` on the same files;

each cold (the checkpoint's pages dropped from the page cache first, ``posix_fadvise(DONTNEED)``
on its files alone) and warm (right after), in fp32 and in bf16 (``dtype=torch.bfloat16`` for
both), ``--reps`` times, ours and transformers alternating; medians and min-max are reported.
``--quick``: a tiny shape, for tests.

    python benchmarks/blip2_load.py [--vision-layers 8] [--text-layers 4] [--reps 3] [--out results/blip2_load.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

# The child reads VmHWM (its own address space's peak), not getrusage's ru_maxrss: Linux carries
# the spawning process's peak across exec, so a child would report the generator's peak.
CHILD = r"""
import json, sys, time
from pathlib import Path
which, src, cache, dtype_name = sys.argv[1:5]

def hwm_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

import torch
torch.set_num_threads(int(sys.argv[5]))
dtype = getattr(torch, dtype_name)
if which == "ours":
    import huggingface_hub.utils  # what a Hub load imports; the transformers child has it too
    from pali import PaliModel
    import pali.hub.resolve
    load = lambda: PaliModel.from_pretrained(src, cache_dir=cache, dtype=dtype)
elif which == "transformers":
    from transformers import Blip2ForConditionalGeneration
    load = lambda: Blip2ForConditionalGeneration.from_pretrained(src, dtype=dtype)
else:  # "empty": the floor, a process that imported torch
    load = lambda: None
# Start from a collected heap, as a long-running process is: otherwise the process's first full
# collection lands in whichever load allocates next (90 ms of a 170 ms load here), and not in
# transformers', whose import already ran one.
import gc; gc.collect()
base = hwm_kb()
t = time.perf_counter()
model = load()
seconds = time.perf_counter() - t
loaded_kb = hwm_kb()
# Read every weight once, as a first forward pass would: both libraries map the safetensors files
# and page the weights in on first use, so a load alone leaves most of them on disk.
for p in [] if model is None else model.parameters():
    p.detach().sum()
touched = time.perf_counter() - t
weights = 0 if model is None else sum(p.numel() * p.element_size() for p in model.parameters())
written = sum(f.stat().st_size for f in Path(cache).rglob("*") if f.is_file()) if Path(cache).exists() else 0
print(json.dumps({"base_kb": base, "loaded_kb": loaded_kb, "peak_kb": hwm_kb(), "seconds": seconds,
                  "seconds_with_read": touched, "weights_bytes": weights, "cache_bytes_written": written}))
"""

QUICK = dict(vision=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         image_size=56, patch_size=14),
             qformer=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                          encoder_hidden_size=32),
             text=dict(vocab_size=128, d_model=24, d_ff=40, num_heads=4, d_kv=6, num_layers=2,
                       num_decoder_layers=2),
             queries=4)


def xl_shape(vision_layers: int, text_layers: int) -> dict:
    """BLIP-2-XL's widths (Salesforce/blip2-flan-t5-xl's config.json) with the given depths."""
    return dict(vision=dict(hidden_size=1408, num_hidden_layers=vision_layers, num_attention_heads=16,
                            intermediate_size=6144, image_size=224, patch_size=14),
                qformer=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                             intermediate_size=3072, encoder_hidden_size=1408),
                text=dict(vocab_size=32128, d_model=2048, d_ff=5120, num_heads=32, d_kv=64,
                          num_layers=text_layers, num_decoder_layers=text_layers),
                queries=32)


def write_checkpoint(folder: Path, shape: dict) -> int:
    """A transformers BLIP-2 folder (fp32 safetensors shards + index + config.json); returns its bytes."""
    import transformers

    from pali.io import write_safetensors

    text = dict(model_type="t5", feed_forward_proj="gated-gelu", tie_word_embeddings=False, **shape["text"])
    config = transformers.Blip2Config(vision_config=shape["vision"], qformer_config=shape["qformer"],
                                      text_config=text, num_query_tokens=shape["queries"])
    with torch.device("meta"):
        model = transformers.Blip2ForConditionalGeneration(config)
    names = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("embed_tokens.weight")}

    def tensors():
        gen = torch.Generator().manual_seed(0)
        for name, size in names.items():
            t = torch.randn(size, generator=gen) * 0.02
            if name.endswith("self_attn.qkv.bias"):
                t[size[0] // 3 : 2 * size[0] // 3] = 0  # the key has no bias in BLIP-2
            yield name, t

    folder.mkdir(parents=True)
    write_safetensors(tensors(), folder, max_shard_size="1GB")
    data = config.to_dict()
    data["text_config"]["tie_word_embeddings"] = False  # as the Hub's Flan-T5 configs say
    (folder / "config.json").write_text(json.dumps(data))
    return sum(p.stat().st_size for p in folder.iterdir())


def evict(folder: Path) -> None:
    """Drop ``folder``'s files from the page cache (theirs alone: the machine is shared), so the
    next load reads them from disk."""
    for path in folder.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def measure(which: str, src: Path, cache: Path, dtype: str, threads: int) -> dict:
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           "HF_HUB_OFFLINE": "1", "PYTHONSAFEPATH": "1"}
    run = subprocess.run([sys.executable, "-c", CHILD, which, str(src), str(cache), dtype, str(threads)],
                         capture_output=True, text=True, env=env)
    if run.returncode:
        raise SystemExit(f"{which} {dtype} failed:\n{run.stderr[-3000:]}")
    r = json.loads(run.stdout.strip().splitlines()[-1])
    r["load_kb"] = r["peak_kb"] - r["base_kb"]
    r["ratio"] = round(r["load_kb"] * 1024 / max(r["weights_bytes"], 1), 3)
    r["ratio_after_load"] = round((r.pop("loaded_kb") - r["base_kb"]) * 1024 / max(r["weights_bytes"], 1), 3)
    return r


ROWS = [(which, state) for state in ("cold", "warm") for which in ("ours", "transformers")]
KEYS = ("seconds", "seconds_with_read", "ratio", "ratio_after_load")


def summarise(runs: list[dict]) -> dict:
    """Medians of ``runs`` (one row's repetitions) and their min-max spread."""
    out = {k: runs[0][k] for k in ("which", "state", "dtype", "weights_bytes")}
    out["reps"] = len(runs)
    out["cache_bytes_written"] = max(r["cache_bytes_written"] for r in runs)
    for k in KEYS:
        values = [r[k] for r in runs]
        out[k] = round(statistics.median(values), 3)
        out[k + "_range"] = [round(min(values), 3), round(max(values), 3)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vision-layers", type=int, default=8)
    parser.add_argument("--text-layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a tiny shape (tests)")
    parser.add_argument("--out", default=None, help="JSON results (default: benchmarks/results/blip2_load.json)")
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()

    shape = QUICK if args.quick else xl_shape(args.vision_layers, args.text_layers)
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / "blip2_load.json"
    scratch = Path(tempfile.mkdtemp(prefix="pali-blip2-load-", dir=args.dir))
    gb = 1e9
    rows = []
    try:
        src, cache = scratch / "blip2", scratch / "cache"
        size = write_checkpoint(src, shape)
        print(f"checkpoint: {size / gb:.3f} GB fp32 safetensors on disk")
        floor = measure("empty", src, cache, "float32", args.threads)
        for dtype in ("float32", "bfloat16"):
            runs: dict[tuple[str, str], list[dict]] = {row: [] for row in ROWS}
            for rep in range(args.reps):
                for which in ("ours", "transformers") if rep % 2 == 0 else ("transformers", "ours"):
                    for state in ("cold", "warm"):
                        if state == "cold":
                            evict(src)
                        r = measure(which, src, cache, dtype, args.threads)
                        r.update(which=which, state=state, dtype=dtype)
                        runs[which, state].append(r)
                        print(f"{dtype:8s} rep {rep} {which:12s} {state}: peak {r['ratio']:.2f}x the weights "
                              f"({r['ratio_after_load']:.2f}x before the read) | {r['seconds']:.2f} s, "
                              f"{r['seconds_with_read']:.2f} s with the read", flush=True)
            summary = {row: summarise(rs) for row, rs in runs.items()}
            rows += summary.values()
            for state in ("cold", "warm"):
                ours, hf = summary["ours", state], summary["transformers", state]
                print(f"{dtype:8s} {state}: ours {ours['seconds_with_read']:.2f} s "
                      f"(range {ours['seconds_with_read_range']}) vs transformers {hf['seconds_with_read']:.2f} s "
                      f"(range {hf['seconds_with_read_range']}): {ours['seconds_with_read'] / hf['seconds_with_read']:.2f}x "
                      f"(load + one read of every weight, medians); peak {ours['ratio']:.2f}x vs {hf['ratio']:.2f}x "
                      f"the weights; ours wrote {ours['cache_bytes_written']} bytes into the cache")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    v, q, t = shape["vision"], shape["qformer"], shape["text"]
    result = {
        "benchmark": "blip2_load",
        "device": f"CPU ({platform.machine()}), {os.cpu_count()} shared cores, --threads {args.threads}",
        "date": datetime.date.today().isoformat(),
        "command": "python " + " ".join([f"benchmarks/{Path(__file__).name}", *sys.argv[1:]]),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        "shape": (f"BLIP-2 (Flan-T5) widths: ViT {v['hidden_size']}x{v['num_hidden_layers']} layers "
                  f"(MLP {v['intermediate_size']}), Q-Former {q['hidden_size']}x{q['num_hidden_layers']}, "
                  f"{shape['queries']} queries, T5 d_model {t['d_model']} d_ff {t['d_ff']} "
                  f"{t['num_layers']}+{t['num_decoder_layers']} layers, vocab {t['vocab_size']}"),
        "checkpoint_bytes": size,
        "empty_torch_process_kb": floor["base_kb"],
        "note": ("each load in a fresh process, then every weight read once (p.sum()); cold: the checkpoint's "
                 "pages dropped from the page cache first (posix_fadvise DONTNEED on its files), warm: right "
                 "after; ratio = (peak RSS - RSS after imports) / loaded parameter bytes, ratio_after_load: the "
                 "same before the read; seconds: the load, seconds_with_read: load + read; medians over reps, "
                 "*_range: min and max; the machine's 2 cores are shared with other jobs, so times are noisy"),
        "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
