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
from ..errors import PaliError
from . import common  # noqa: F401  (torch-free; pali.cli.common.save_image is named in the docs)

COMMANDS = ["demo", "tasks", "presets", "convert", "run", "eval", "cache"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pali", description="PaLI vision-language models.")
    parser.add_argument("--version", action="version", version=f"pali {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


#: A user's mistakes (bad input, a missing file, a refused overwrite): one line and exit code 2.
USER_ERRORS = (PaliError, FileNotFoundError, FileExistsError, IsADirectoryError, PermissionError)


def run_script(main, argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run a script's ``main(argv)`` as the ``pali`` command runs its subcommands: a
    [`PaliError`][pali.PaliError] or missing file becomes one ``prog: error: ...`` line on stderr
    and exit code 2, not a traceback. The examples end with ``sys.exit(run_script(main))``."""
    prog = prog or os.path.basename(sys.argv[0])
    try:
        return int(main(argv) or 0)
    except USER_ERRORS as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"pali {args.command}: warning: {message}", file=sys.stderr)

    warnings.showwarning = show
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as e:
        print(f"pali {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `pali presets | head`: the reader left; stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit flush
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by the closed pipe


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

from ..lazy import submodules_on_demand  # noqa: E402

__getattr__ = submodules_on_demand(__name__)  # pali.cli.<module> after a bare ``import pali``
