"""``pali presets``: the named configs with their parameter counts."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("presets", help="list the named presets", description="List the named presets.")
    p.add_argument("--family", choices=["pali", "vision", "text"], help="only this family")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import PaliModel, get_config, list_presets
    from ..registry import PRESETS, TEXT_STACKS, VISION_ENCODERS

    print(f"{'preset':<18} {'family':<7} {'parameters':>15}  description")
    for name in list_presets(args.family):
        preset = PRESETS.get(name)
        config = get_config(name)
        with torch.device("meta"):
            if preset.family == "pali":
                module = PaliModel(config)
            elif preset.family == "vision":
                module = VISION_ENCODERS.get(config.kind)(config)
            else:
                module = TEXT_STACKS.get(config.kind)(config)
        count = sum(p.numel() for p in module.parameters())
        print(f"{name:<18} {preset.family:<7} {count:>15,}  {preset.description}")
    return 0
