"""The `shoshin` command line: one subcommand per step of the user's story.

Each subcommand is a small function taking the parsed arguments; the work lives in the library and
the text it prints comes from shoshin.runs.report: commands.py holds the subcommands, parser.py
builds the parser, and `main` runs one. A user's mistake ends with a one-line
`error: ...` and exit status 2, never a traceback; so does a full, read-only or missing disk
(status 1), and SIGTERM stops a command as Ctrl-C does.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

from shoshin.cli.parser import build_parser
from shoshin.errors import Interrupted, ShoshinError, Terminated, disk_error_line

__all__ = ["build_parser", "main"]


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM stops a command the way Ctrl-C does (a torchrun worker replaces this handler with
    its own, see shoshin.training.distributed; `serve` lets uvicorn shut down first)."""
    raise Terminated


def _is_override(arg: str) -> bool:
    return "=" in arg and not arg.startswith("-")


def main(argv: Sequence[str] | None = None) -> int:
    """Run `shoshin ARGV` (default: this process's arguments); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse fills CONFIG and the overrides at the first positional, so overrides after an
    # option (`train tiny --runs-dir X key=value`) come back unparsed: they are overrides too.
    if extra and hasattr(args, "overrides") and all(_is_override(a) for a in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.argv = argv
    previous = signal.signal(signal.SIGTERM, _terminate)
    from shoshin.cli import commands  # after parsing: --help never imports the commands

    try:
        return getattr(commands, args.func)(args)
    except ShoshinError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print("terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except Interrupted:  # the command already said so, and how to go on
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:
        from shoshin.runs.store import runs_root

        line = disk_error_line(exc, str(runs_root(getattr(args, "runs_dir", None))))
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
