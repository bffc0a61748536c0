"""The ``pali`` command. Each module named in ``COMMANDS`` exposes ``add_parser(subparsers)``.

``add_parser`` registers its subcommand(s) and their arguments and sets ``func`` (taking the parsed
namespace, returning an exit code). Errors derived from [`pali.PaliError`][], missing files
and unreadable inputs become a one-line message and exit code 2, not a traceback; warnings
(a truncated prompt, a language the model never learned) are one ``warning:`` line each.

Building the parser imports no torch (each command imports what it needs when it runs), so
``--help``, ``--version`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from .. import __version__

COMMANDS = ["demo", "tasks", "presets", "convert", "cache"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pali", description="PaLI vision-language models.")
    parser.add_argument("--version", action="version", version=f"pali {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..errors import PaliError

    args = build_parser().parse_args(argv)

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"pali {args.command}: warning: {message}", file=sys.stderr)

    warnings.showwarning = show
    try:
        return int(args.func(args) or 0)
    except (PaliError, FileNotFoundError, FileExistsError, IsADirectoryError, PermissionError) as e:
        print(f"pali {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `pali presets | head`: the reader left; stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit flush
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by the closed pipe


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
