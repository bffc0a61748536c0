"""``pali demo``: build a model and answer with it, end to end, in a few seconds on a CPU."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run a model end to end on a synthetic image",
        description="Build the tiny preset with random weights and generate for a synthetic image.",
    )
    p.add_argument("--preset", default="pali-tiny", help="preset to build (default: pali-tiny)")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import PaliModel

    torch.manual_seed(0)
    model = PaliModel.from_preset(args.preset).eval()
    size = model.config.vision.image_size
    # A synthetic image: a bright square on a dark background, already scaled to [-1, 1].
    image = torch.full((1, 3, size, size), -1.0)
    image[:, 0, size // 4 : size // 2, size // 4 : size // 2] = 1.0
    prompt = torch.tensor([[5, 6, 7, 8]])
    greedy = model.generate(image, prompt, max_new_tokens=args.max_new_tokens)
    beams = model.generate(image, prompt, max_new_tokens=args.max_new_tokens, num_beams=3)
    print(f"preset {args.preset}: {model.num_parameters():,} parameters (random weights)")
    print(f"greedy tokens: {greedy[0].tolist()}")
    print(f"beam tokens:   {beams[0].tolist()}")
    return 0
