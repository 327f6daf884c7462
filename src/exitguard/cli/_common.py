"""What every command shares: exit codes, the one-line error, argument types, the console.

Standard library only at import time (rich is imported when something is printed), so
``exitguard --help`` and a usage error stay fast and never need an optional dependency.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import sys
import textwrap
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn, TypeAlias
from urllib.parse import urlsplit

PROG = "exitguard"

EXIT_OK = 0
EXIT_DIFFERENT = 1  # a check found differences, or an operation was refused
EXIT_USAGE = 2  # bad arguments or an expected runtime error
EXIT_INTERRUPTED = 130

#: What ``add_subparsers()`` returns (argparse's own, private, type); each command module adds
#: its parser to it.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class CliError(Exception):
    """An expected failure: printed as one line, exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


class Parser(argparse.ArgumentParser):
    """One line on a usage error (``exitguard: error: ...``), exit code 2, no traceback."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


class Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)


# -- argument types -------------------------------------------------------------------------


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def runs(text: str) -> int:
    value = integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of runs >= 1, got {value}")
    return value


def seed(text: str) -> int:
    value = integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


def port(text: str) -> int:
    value = integer(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0-65535, got {value}")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return value


def url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(
            f"expected an http(s) URL such as http://127.0.0.1:4318, got {text!r}"
        )
    return text


def runbook_base_url(text: str) -> str:
    """``--runbook-base-url``: an http(s) URL of the runbooks page, without an anchor."""
    from ..runbooks import check_base_url

    try:
        return check_base_url(text, field="--runbook-base-url")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--runbook-base-url ")) from None


def non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


# -- help and output ------------------------------------------------------------------------


def wrap(text: str) -> str:
    return textwrap.fill(text, width=78)


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show exitguard's log messages (warnings and errors)")


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None
    if not stream.isatty() and not os.environ.get("COLUMNS"):
        width = 120
    return Console(file=stream, width=width, highlight=False, soft_wrap=False)


@contextlib.contextmanager
def quiet_logging(verbose: bool) -> Iterator[None]:
    """Keep the library's logs quiet unless asked (a simulation logs many expected errors)."""
    logger = logging.getLogger("exitguard")
    previous = logger.level
    added: logging.Handler | None = None
    if verbose:
        logger.setLevel(logging.WARNING)
        if not logging.getLogger().handlers:
            added = logging.StreamHandler(sys.stderr)
            added.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            logger.addHandler(added)
    else:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(previous)
        if added is not None:
            logger.removeHandler(added)


def print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


# -- generated files ------------------------------------------------------------------------


def command_line(*words: str, options: Sequence[tuple[str, str | None]] = ()) -> str:
    """A shell command that can be pasted: ``words`` then each option whose value is set."""
    parts = [PROG, *words]
    for option, value in options:
        if value is not None:
            parts += [option, value]
    return shlex.join(parts)


def report_check(problems: Sequence[str], ok: str, fix: str) -> int:
    """Print a check's result; on differences, the exact command that regenerates the files."""
    if not problems:
        print(ok)
        return EXIT_OK
    for problem in problems:
        print(problem)
    print(f"{len(problems)} difference(s); regenerate with: {fix}", file=sys.stderr)
    return EXIT_DIFFERENT
