"""Peak memory of ``pali convert`` on synthetic multi-GB checkpoints vs their size.

Writes a random mT5-shaped checkpoint (default ~2.3 GB fp32: d_model 2048, d_ff 5120, 4+4 layers,
vocab 32768) twice, as a T5X ``checkpoint_<step>`` (msgpack + zarr, zstd and gzip chunks) and as
a Hugging Face safetensors directory, then converts each in a fresh subprocess and reports that
process's peak RSS (``VmHWM``) next to the checkpoint size and its largest tensor.
Everything lives in a temporary directory that is removed at the end.

    python benchmarks/convert_memory.py [--layers 4] [--vocab 32768] [--keep-going]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


# Peak RSS is the child's VmHWM (its own address space's high-water mark). getrusage's ru_maxrss
# is not used: Linux carries the spawning process's peak across exec (vfork shares the parent's
# memory map), so the child would report the generator's peak, not its own.
CHILD = r"""
import json, sys, time
import pali.convert as c

def hwm_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

base = hwm_kb()
t = time.perf_counter()
c.convert(sys.argv[1], sys.argv[2], sys.argv[3], max_shard_size="1GB")
print(json.dumps({"base_kb": base, "peak_kb": hwm_kb(), "seconds": time.perf_counter() - t}))
"""


def _tensors(config):
    """Our MT5 state dict, one random tensor at a time (never the whole model at once)."""
    from pali.models.text.mt5 import MT5

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in MT5(config).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    for name, shape in shapes.items():
        yield name, torch.randn(shape, generator=gen) * 0.05


def _write_t5x(directory: Path, config) -> None:
    import msgpack
    from pali.testing.t5x import _nest, inline, spec, t5x_names, write_zarr

    directory.mkdir(parents=True)
    leaves = {}
    for name, t in _tensors(config):
        [(t5x_name, kernel)] = t5x_names({name: t}).items()
        if kernel.dim() < 2:
            leaves[t5x_name] = inline(kernel)
            continue
        rel = "target." + t5x_name.replace("/", ".")
        chunks = (max(1, kernel.shape[0] // 4), kernel.shape[1])
        write_zarr(directory / rel, kernel, chunks, compressor="gzip" if "mlp" in t5x_name else "zstd")
        leaves[t5x_name] = spec(rel)
    (directory / "checkpoint").write_bytes(
        msgpack.packb({"version": 3, "optimizer": {"target": _nest(leaves)}}, use_bin_type=True)
    )


def _write_hf(directory: Path, config) -> None:
    from pali.io import write_safetensors

    directory.mkdir(parents=True)
    names = {
        "embed.weight": "shared.weight", "lm_head.weight": "lm_head.weight",
        "encoder.relpos_bias": "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        "decoder.relpos_bias": "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        "encoder.norm.weight": "encoder.final_layer_norm.weight",
        "decoder.norm.weight": "decoder.final_layer_norm.weight",
    }
    layer = {
        ("encoder", "attn"): "layer.0.SelfAttention", ("encoder", "attn_norm"): "layer.0.layer_norm",
        ("encoder", "mlp"): "layer.1.DenseReluDense", ("encoder", "mlp_norm"): "layer.1.layer_norm",
        ("decoder", "self_attn"): "layer.0.SelfAttention", ("decoder", "self_attn_norm"): "layer.0.layer_norm",
        ("decoder", "cross_attn"): "layer.1.EncDecAttention", ("decoder", "cross_attn_norm"): "layer.1.layer_norm",
        ("decoder", "mlp"): "layer.2.DenseReluDense", ("decoder", "mlp_norm"): "layer.2.layer_norm",
    }

    def hf_named():
        for name, t in _tensors(config):
            if name in names:
                yield names[name], t.t().contiguous() if "relpos" in name else t
                continue
            stack, _, i, block, rest = name.split(".", 4)
            yield f"{stack}.block.{i}.{layer[stack, block]}.{rest}", t

    write_safetensors(hf_named(), directory, max_shard_size="1GB")
    (directory / "config.json").write_text(json.dumps({
        "model_type": "mt5", "vocab_size": config.vocab_size, "d_model": config.d_model, "d_ff": config.d_ff,
        "num_heads": config.num_heads, "d_kv": config.d_kv, "num_layers": config.num_encoder_layers,
        "num_decoder_layers": config.num_decoder_layers, "feed_forward_proj": "gated-gelu",
    }))


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()

    from pali.models.text.mt5_config import MT5Config

    config = MT5Config(vocab_size=args.vocab, d_model=2048, d_ff=5120, num_heads=32, d_kv=64,
                       num_encoder_layers=args.layers, num_decoder_layers=args.layers)
    largest = max(args.vocab * 2048, 2048 * 5120) * 4
    scratch = Path(tempfile.mkdtemp(prefix="pali-convert-mem-", dir=args.dir))
    try:
        for fmt, writer in (("t5x", _write_t5x), ("hf", _write_hf)):
            src, out = scratch / f"{fmt}-src", scratch / f"{fmt}-out"
            writer(src, config)
            run = subprocess.run([sys.executable, "-c", CHILD, str(src), str(out), fmt],
                                 capture_output=True, text=True, check=True)
            r = json.loads(run.stdout.strip().splitlines()[-1])
            gb = 1e9
            print(f"{fmt:4s} checkpoint {_size(src) / gb:.2f} GB on disk, {_size(out) / gb:.2f} GB written, "
                  f"largest tensor {largest / gb:.3f} GB | peak RSS {r['peak_kb'] * 1024 / gb:.2f} GB "
                  f"(after imports {r['base_kb'] * 1024 / gb:.2f} GB; conversion adds "
                  f"{(r['peak_kb'] - r['base_kb']) * 1024 / largest:.1f}x the largest tensor) in {r['seconds']:.0f} s")
            shutil.rmtree(src)
            shutil.rmtree(out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
