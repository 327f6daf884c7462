"""The parser and the entry point: one sub-command per module of this package."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence

from . import alerts, dashboards, demo, halt, simulate, stack
from ._common import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, PROG, CliError, Formatter, Parser

_DESCRIPTION = """\
Bounded, escalating, observable position exits for trading bots.

A bot calls `await guard.exit(position, ...)` instead of its own retry loop: the exit is
bounded in time and attempts, escalates, never sells twice, trips a breaker and halts new
entries when exits keep failing. This command replays that against a simulated market,
operates the trading halt, and builds the dashboards and alert rules."""

_EPILOG = """\
examples:
  exitguard demo                          the seed's incident, naive vs guarded
  exitguard simulate --runs 1000 --seed 7 what each safeguard is worth, in percentiles
  exitguard demo --serve --port 9464      a live demo bot for Prometheus and Grafana
  exitguard halt status --file halt.json  is trading halted, and why

'exitguard COMMAND --help' describes each command."""


def build_parser() -> argparse.ArgumentParser:
    """The ``exitguard`` parser; each command's module adds its own sub-parser and handler."""
    parser = Parser(prog=PROG, description=_DESCRIPTION, epilog=_EPILOG,
                    formatter_class=Formatter)
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for command in (demo, simulate, halt, dashboards, alerts, stack):
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return handler(args)
    except CliError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.code
    except SystemExit as exc:  # a sub-parser's error() from inside a handler
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `exitguard simulate --json | head`
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
