"""The ``intvit`` command line: one console script, one subcommand per job.

Each subcommand lives in ``intvit/commands/<name>.py`` and exposes ``register(subparsers)``,
which adds its parser and sets ``run=callable(args) -> int``. Modules are imported only
when the command line is built, and commands that need ``rtl`` import it inside ``run``.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from intvit.quant.errors import IntVitError

__all__ = ["main", "build_parser"]

COMMANDS = ("accuracy", "quantize", "compile", "simulate", "sweep", "topology", "verilog", "synth", "rtl-run")

# Errors that come from what the user gave us, not from a bug in intvit.
USER_ERRORS = (IntVitError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
# Operating-system errors that come from the machine or the paths given (a full disk, a name
# too long, a read-only file system), not from a bug: also one line.
USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG, errno.EROFS, errno.EFBIG, errno.ELOOP, errno.EMFILE,
               errno.ENFILE, errno.EIO}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="intvit",
        description="Integer-only ViT: quantise, run bit-exact, simulate the accelerator, emit Verilog.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"intvit.commands.{name.replace('-', '_')}").register(sub)
    for command in sub.choices.values():     # `intvit accuracy --debug` works too
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; user mistakes give one line and status 2, Ctrl-C one line and status 130,
    a reader that closes the pipe (``| head``) status 141 and no traceback.

    Outputs are written atomically (``intvit.quant.atomic``), so an interrupted or failed
    command leaves no partial file behind.
    """
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        try:
            return int(args.run(args) or 0)
        except OSError as exc:
            if args.debug or not (isinstance(exc, USER_ERRORS) or exc.errno in USER_ERRNOS):
                raise
            print(f"intvit {args.command}: error: {_one_line(exc)}", file=sys.stderr)
            return 2
        except IntVitError as exc:
            if args.debug:
                raise
            print(f"intvit {args.command}: error: {_one_line(exc)}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        print("intvit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`intvit ... | head`): stop quietly, and keep the interpreter's
        # final flush of stdout from raising again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return " ".join(str(exc).split())


if __name__ == "__main__":
    sys.exit(main())
