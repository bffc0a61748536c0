"""``pali cache list`` / ``pali cache clear``: what pali stored on disk, and its size.

transformers safetensors checkpoints load in place, so the only things pali stores are the
conversions of checkpoints that cannot be (``.bin``, big_vision ``.npz``, T5X), in
``$PALI_HOME/converted`` (default ``~/.cache/pali/converted``) or ``CACHE_DIR/pali-converted``
for a ``cache_dir=`` given to ``from_pretrained`` / ``from_unimodal``. The downloads themselves
are the Hugging Face cache's (``hf cache``).
"""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("cache", help="list or clear the checkpoints pali converted",
                       description="List or clear the checkpoints pali converted (the conversion cache).")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, help in (("list", "every entry: size, source, revision"),
                       ("clear", "remove every entry, or the named ones")):
        v = verbs.add_parser(verb, help=help, description=help[0].upper() + help[1:] + ".")
        v.add_argument("--cache-dir", help="the cache_dir given to from_pretrained / from_unimodal "
                                           "(default: $PALI_HOME/converted)")
        if verb == "clear":
            v.add_argument("names", nargs="*", help="entry folder names, as `pali cache list` prints them")
        v.set_defaults(func=run_list if verb == "list" else run_clear)


def run_list(args: argparse.Namespace) -> int:
    from ..hub.cache import cache_root, human_size, list_entries

    entries = list_entries(args.cache_dir)
    print(f"{cache_root(args.cache_dir)}: {len(entries)} entries, {human_size(sum(e.size for e in entries))}")
    for e in entries:
        record = e.record or {}
        source = record.get("source") or "(unfinished conversion)"
        revision = record.get("revision") or "local"
        print(f"{human_size(e.size):>9}  {e.folder.name}  {source}@{revision}  [{record.get('format') or '?'}]")
    return 0


def run_clear(args: argparse.Namespace) -> int:
    from ..hub.cache import cache_root, clear, human_size

    removed = clear(args.cache_dir, args.names or None)
    print(f"{cache_root(args.cache_dir)}: removed {len(removed)} entries, "
          f"{human_size(sum(e.size for e in removed))}")
    return 0
