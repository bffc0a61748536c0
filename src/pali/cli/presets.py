"""``pali presets``: the named configs with their parameter counts."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("presets", help="list the named presets", description="List the named presets.")
    p.add_argument("--family", choices=["pali", "vision", "text"], help="only this family")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config.presets import get_config, list_presets
    from ..config.registry import PRESETS
    from ..models.count import count_parameters

    print(f"{'preset':<18} {'family':<7} {'parameters':>15}  description")
    for name in list_presets(args.family):
        preset = PRESETS.get(name)
        count = count_parameters(get_config(name))  # built-ins count from the config: nothing is built
        print(f"{name:<18} {preset.family:<7} {count:>15,}  {preset.description}")
    return 0
