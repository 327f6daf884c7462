"""What every command shares: exit codes, the one-line error, argument types, the console,
and the one place every byte the CLI prints passes through (:func:`redacted_output`).

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
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NoReturn, TextIO, TypeAlias
from urllib.parse import urlsplit

from ..redaction import escape_controls, redact

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
            f"expected an http(s) URL such as http://127.0.0.1:4318, got {redact(text)!r}"
        )
    return text


def otlp_endpoint(text: str) -> str:
    """An OTLP/HTTP endpoint without credentials: a command line is visible to every user
    of the machine (``ps``), so a password or key in it is refused (without echoing it), and
    the user is pointed to OpenTelemetry's standard variables, which keep them out of it."""
    text = url(text)
    parts = urlsplit(text)
    if parts.username is not None or parts.password is not None or redact(text) != text:
        raise argparse.ArgumentTypeError(
            "credentials in the URL would be visible to every user (ps) and in logs: pass the"
            " endpoint without them and put them, as name=value headers (an Authorization"
            " header, an API key header), in OTEL_EXPORTER_OTLP_HEADERS; the endpoint may"
            " also come from OTEL_EXPORTER_OTLP_ENDPOINT"
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


class _OneLineFormatter(logging.Formatter):
    """A plain formatter whose message is one line: control characters in it (a venue's
    ``\\n``, a terminal escape) are escaped; a traceback keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))


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
            added.setFormatter(_OneLineFormatter("%(levelname)s %(name)s: %(message)s"))
            logger.addHandler(added)
    else:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(previous)
        if added is not None:
            logger.removeHandler(added)


class _RedactingStream:
    """A text stream whose every write is redacted (``exitguard.redaction``) before it
    reaches the real one; everything else (``isatty``, ``fileno``, ``encoding``...) is the
    real stream's. Each writer of the CLI writes whole messages (``print``, rich's console,
    argparse, logging handlers), so a secret is never split across two writes."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text, None) if text else text)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def redacted_output() -> Iterator[None]:
    """While a command runs, ``sys.stdout`` and ``sys.stderr`` redact what they are given:
    the one place every line the CLI prints passes through (results, errors, usage errors,
    log lines, a halt's reason), so a key quoted by a venue, a halt file or an argument never
    reaches the terminal."""
    saved = sys.stdout, sys.stderr
    sys.stdout = _RedactingStream(saved[0])
    sys.stderr = _RedactingStream(saved[1])
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


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
