"""``exitguard halt status|resume``: read and lift the trading halt kept in a halt file."""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime
from pathlib import Path

from ..errors import HaltResumeError
from ..halt import FileHaltStore, TradingHalt
from ._common import (
    EXIT_DIFFERENT,
    EXIT_OK,
    CliError,
    Commands,
    Formatter,
    add_verbose,
    non_empty,
    print_json,
    quiet_logging,
    seed,
    wrap,
)

#: Environment variables read as defaults.
ENV_HALT_FILE = "EXITGUARD_HALT_FILE"
ENV_APPROVERS = "EXITGUARD_HALT_APPROVERS"


def add_parser(commands: Commands) -> None:
    halt = commands.add_parser(
        "halt", formatter_class=Formatter,
        help="show or resume the trading halt kept in a halt file",
        description=(
            "A breaker trip halts new entries (never exits) and records it in the halt file.\n"
            "'status' shows the state and its audit history; 'resume' lifts the halt, which\n"
            "needs an approver from the configured list and a reason, both recorded."
        ),
    )
    halt_commands = halt.add_subparsers(dest="action", metavar="ACTION", title="actions")
    halt_file_help = (f"the halt file (default: ${ENV_HALT_FILE})")
    status = halt_commands.add_parser("status", formatter_class=Formatter,
                                      help="show whether trading is halted, and the history",
                                      description=wrap("Show whether trading is halted, "
                                                       "why, and the audit history."))
    status.add_argument("--file", metavar="PATH", type=non_empty, help=halt_file_help)
    status.add_argument("--json", action="store_true", help="print the state as JSON")
    status.add_argument("--history", metavar="N", type=seed, default=10,
                        help="how many history entries to show (default 10)")
    add_verbose(status)
    resume = halt_commands.add_parser(
        "resume", formatter_class=Formatter, help="resume trading (an approver and a reason)",
        description=wrap("Resume trading. The approver must be on the approver list; the "
                         "approver and the reason are recorded in the audit history."),
    )
    resume.add_argument("--file", metavar="PATH", type=non_empty, help=halt_file_help)
    resume.add_argument("--approver", metavar="NAME", type=non_empty, required=True,
                        help="who approves the resume (must be on the approver list)")
    resume.add_argument("--reason", metavar="TEXT", type=non_empty, required=True,
                        help="why trading may resume (recorded)")
    resume.add_argument("--approvers", metavar="A,B", type=non_empty,
                        help=f"comma-separated approver list (default: ${ENV_APPROVERS})")
    add_verbose(resume)
    halt.set_defaults(handler=run, halt_parser=halt)


def _halt_file(args: argparse.Namespace) -> Path:
    path = args.file or os.environ.get(ENV_HALT_FILE)
    if not path:
        raise CliError(f"the halt file is not set: pass --file PATH or set ${ENV_HALT_FILE}")
    return Path(path)


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run(args: argparse.Namespace) -> int:
    if args.action is None:
        args.halt_parser.error("choose an action: status or resume")
    path = _halt_file(args)
    if path.is_dir():
        raise CliError(f"halt file {str(path)!r} is a directory")
    approvers_text = getattr(args, "approvers", None) or os.environ.get(ENV_APPROVERS, "")
    approvers = [a.strip() for a in approvers_text.split(",") if a.strip()]
    with quiet_logging(args.verbose):
        halt = TradingHalt(approvers, store=FileHaltStore(path))
        if args.action == "status":
            return _status(halt, path, args)
        if halt.store_error is not None:
            raise CliError(f"{halt.store_error}; fix or remove the file first", EXIT_DIFFERENT)
        try:
            record = halt.resume(args.approver, args.reason)
        except HaltResumeError as exc:
            raise CliError(str(exc), EXIT_DIFFERENT) from None
        if halt.store_error is not None:
            raise CliError(f"resume not saved: {halt.store_error}")
    print(f"trading resumed by {record.actor} at {_iso(record.at)}: {record.reason}")
    return EXIT_OK


def _status(halt: TradingHalt, path: Path, args: argparse.Namespace) -> int:
    history = list(halt.history)
    shown = history[-args.history:] if args.history else []
    if args.json:
        print_json({
            "file": str(path),
            "exists": path.exists(),
            "halted": halt.is_halted,
            "reason": halt.reason,
            "store_error": halt.store_error,
            "history": [
                {"halted": r.halted, "reason": r.reason, "actor": r.actor, "at": r.at,
                 "at_iso": _iso(r.at)} for r in shown
            ],
        })
        return EXIT_OK
    if halt.store_error is not None:
        print(f"trading: HALTED (the halt file cannot be read: {halt.store_error})")
    elif halt.is_halted:
        since = next((r for r in reversed(history) if r.halted), None)
        when = f" since {_iso(since.at)} by {since.actor}" if since else ""
        print(f"trading: HALTED{when}: {halt.reason}")
        print("entries are refused; exits go on. Resume with: exitguard halt resume "
              f"--file {path} --approver NAME --reason TEXT")
    elif not path.exists():
        print(f"trading: allowed (no halt file at {path}: never halted)")
    else:
        print("trading: allowed")
    if shown:
        print("history (oldest first):")
        for record in shown:
            what = "halt  " if record.halted else "resume"
            print(f"  {_iso(record.at)}  {what}  {record.actor}: {record.reason}")
    return EXIT_OK
