"""``pali convert SRC OUT``: big_vision / T5X / Hugging Face checkpoints -> pali's layout.

``pali convert --verify SRC OUT`` with an existing OUT only checks the pair. See docs/convert.md.
"""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a big_vision, T5X or Hugging Face checkpoint",
        description="Convert a big_vision .npz (path.npz or path.npz:img), a T5X checkpoint_<step> directory "
        "or a Hugging Face model directory into config.json + safetensors, one tensor in memory at a time.",
    )
    p.add_argument("src", help="source checkpoint (file, directory, or file.npz:subtree)")
    p.add_argument("out", help="output directory (written atomically)")
    p.add_argument("--format", choices=["big_vision", "t5x", "hf"], help="source format (default: detected)")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], help="cast floating-point tensors")
    p.add_argument("--vision-preset", help="check the vision tower against this preset and use its config")
    p.add_argument("--text-preset", help="check the text stack against this preset and use its config")
    p.add_argument("--image-size", type=int, help="target resolution; position embeddings are resampled")
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    p.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
    p.add_argument(
        "--verify", action="store_true",
        help="compare every written tensor with the source; with an existing OUT (and no --force), only verify",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .. import convert
    from ..processing.processor import shipped_processor

    if args.verify and Path(args.out).exists() and not args.force:
        count = convert.verify(args.src, args.out, args.format, progress=not args.quiet)
        print(f"verified {count} tensors: {args.out} matches {args.src}")
        return 0
    conversion = convert.convert(
        args.src, args.out, args.format, vision_preset=args.vision_preset, text_preset=args.text_preset,
        image_size=args.image_size, dtype=args.dtype, force=args.force, max_shard_size=args.max_shard_size,
        verify=args.verify, progress=not args.quiet,
        processor=shipped_processor(args.src) if (args.format or convert.detect_format(args.src)) == "hf" else None,
    )
    checked = " (verified)" if args.verify else ""
    config = conversion.config
    what = (f"a whole model ({config.vision.kind} + {config.connector.kind} + {config.text.kind})"
            if conversion.tower == "model" else f"{conversion.tower} tower {config.kind}")
    print(f"wrote {len(conversion.items)} tensors, {what}, to {args.out}{checked}")
    return 0
