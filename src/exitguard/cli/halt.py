"""``exitguard halt status|resume``: read and lift the trading halt kept in a halt file.

Who may resume is stored with the halt (the bot's ``TradingHalt(approvers=...)`` writes it),
never given on this command line. Both actions verify the file's HMAC chain with the bot's
key (``--key-file``, ``$EXITGUARD_HALT_KEY_FILE`` or ``$EXITGUARD_HALT_KEY``); a resume is
appended to the chain under the file's lock, with the OS user running this command.
"""

from __future__ import annotations

import argparse
import os
import unicodedata
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import ConfigError, HaltResumeError
from ..halt import (
    DEFAULT_POLL_INTERVAL,
    ENV_KEY,
    ENV_KEY_FILE,
    FileHaltStore,
    HaltRecord,
    TradingHalt,
    load_key,
)
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

#: Environment variable read as the default halt file.
ENV_HALT_FILE = "EXITGUARD_HALT_FILE"

#: ``halt status`` exit codes (``resume``: 0 resumed, 1 refused, 3 the file cannot be trusted).
EXIT_ALLOWED = EXIT_OK  # 0: trading allowed
EXIT_HALTED = EXIT_DIFFERENT  # 1: trading halted (entries refused, exits go on)
EXIT_UNKNOWN = 3  # the halt file is missing, unreadable, or fails verification

_EXIT_CODES = (
    "exit codes:\n"
    f"  {EXIT_ALLOWED}  trading allowed\n"
    f"  {EXIT_HALTED}  trading halted (entries refused; exits go on)\n"
    "  2  usage error (bad option, no halt file or key given)\n"
    f"  {EXIT_UNKNOWN}  the halt file is missing, unreadable or fails verification (the bot\n"
    "     treats an unreadable or tampered file as halted); a missing file is 'allowed'\n"
    "     (exit 0) only with --missing-ok"
)


def add_parser(commands: Commands) -> None:
    halt = commands.add_parser(
        "halt", formatter_class=Formatter,
        help="show or resume the trading halt kept in a halt file",
        description=(
            "A breaker trip halts new entries (never exits) and records it in the halt file,\n"
            "with the approvers who may lift it. 'status' shows the state and its audit\n"
            "history; 'resume' lifts the halt: the approver must be on the halt's stored\n"
            "list, and the approver, the reason and your OS user are recorded.\n"
            f"The file's records are HMAC-chained with the bot's key: --key-file, or\n"
            f"${ENV_KEY_FILE} (a file outside the repository), or ${ENV_KEY}."
        ),
    )
    halt_commands = halt.add_subparsers(dest="action", metavar="ACTION", title="actions")
    status = halt_commands.add_parser(
        "status", formatter_class=Formatter,
        help="show whether trading is halted, and the history",
        description=wrap("Show whether trading is halted, why, who may resume, and the "
                         "verified audit history. Text from the file is shown with control "
                         "characters escaped.") + "\n\n" + _EXIT_CODES,
    )
    _add_common(status)
    status.add_argument("--json", action="store_true", help="print the state as JSON")
    status.add_argument("--history", metavar="N", type=seed, default=10,
                        help="how many history entries to show (default 10)")
    status.add_argument("--missing-ok", action="store_true",
                        help="a missing halt file means 'never halted' (exit 0), not exit 3")
    add_verbose(status)
    resume = halt_commands.add_parser(
        "resume", formatter_class=Formatter, help="resume trading (an approver and a reason)",
        description=wrap(
            "Resume trading. The approver must be on the list stored with the halt (written "
            "by the bot's TradingHalt(approvers=...)); the approver, the reason and the OS "
            "user running this command are appended to the audit chain. A running bot sees "
            f"the resume within its poll interval ({DEFAULT_POLL_INTERVAL:g} s by default)."
        ) + f"\n\nexit codes: 0 resumed, 1 refused, 2 usage error, {EXIT_UNKNOWN} the halt file"
            " is missing,\nunreadable or fails verification.",
    )
    _add_common(resume)
    resume.add_argument("--approver", metavar="NAME", type=non_empty, required=True,
                        help="who approves the resume (must be on the halt's approver list)")
    resume.add_argument("--reason", metavar="TEXT", type=non_empty, required=True,
                        help="why trading may resume (recorded)")
    resume.add_argument("--approvers", help=argparse.SUPPRESS)  # gone: refused with a reason
    add_verbose(resume)
    halt.set_defaults(handler=run, halt_parser=halt)


#: Where ``--redis`` without a value finds the fleet's Redis URL (it may hold a password).
ENV_REDIS_URL = "EXITGUARD_REDIS_URL"


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--file", metavar="PATH", type=non_empty,
                        help=f"the halt file (default: ${ENV_HALT_FILE})")
    parser.add_argument("--redis", metavar="URL", nargs="?", const="",
                        help="a fleet's halt in Redis (exitguard[redis]) instead of a file;"
                             f" without URL, ${ENV_REDIS_URL} (a URL with a password is"
                             " refused here: ps shows command lines)")
    parser.add_argument("--halt-name", metavar="NAME", default="default",
                        help="with --redis: the halt's name (shared_halt(name=...), default"
                             " 'default')")
    parser.add_argument("--namespace", metavar="NS", default="exitguard",
                        help="with --redis: the key namespace (default 'exitguard')")
    parser.add_argument("--key-file", metavar="PATH", type=non_empty,
                        help=f"the file holding the halt's HMAC key (default: ${ENV_KEY_FILE},"
                             f" else the key in ${ENV_KEY})")


def _halt_file(args: argparse.Namespace) -> Path:
    path = args.file or os.environ.get(ENV_HALT_FILE)
    if not path:
        raise CliError(f"the halt file is not set: pass --file PATH or set ${ENV_HALT_FILE}")
    return Path(path)


def _key(args: argparse.Namespace) -> bytes:
    try:
        key = load_key(key_file=args.key_file) if args.key_file else load_key()
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if key is None:
        raise CliError(f"the halt key is not set: pass --key-file PATH or set ${ENV_KEY_FILE}"
                       " (the bot's key)")
    return key


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def printable(text: str) -> str:
    """``text`` safe for a terminal: control and format characters (escape sequences, ``\\r``,
    bidi overrides, line separators) are shown escaped (``\\x1b``, ``\\r``, ``\\u202e``)."""
    out = []
    for char in text:
        if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            out.append(char.encode("unicode_escape").decode("ascii"))
        else:
            out.append(char)
    return "".join(out)


def run(args: argparse.Namespace) -> int:
    if args.action is None:
        args.halt_parser.error("choose an action: status or resume")
    if getattr(args, "approvers", None) is not None:
        raise CliError("--approvers is gone: who may resume is stored with the halt (the"
                       " bot's TradingHalt(approvers=...)); pass only --approver NAME")
    if args.redis is not None:
        return _run_on_redis(args)
    path = _halt_file(args)
    if path.is_dir():
        raise CliError(f"halt file {str(path)!r} is a directory")
    key = _key(args)
    exists = path.exists()
    with quiet_logging(args.verbose):
        halt = TradingHalt((), store=FileHaltStore(path), key=key)
        return _act(halt, str(path), exists, args)


def _run_on_redis(args: argparse.Namespace) -> int:
    """The same actions on a fleet's halt kept in Redis (``exitguard.fleet``)."""
    url = args.redis or os.environ.get(ENV_REDIS_URL, "")
    if not url:
        raise CliError(f"--redis without a URL needs ${ENV_REDIS_URL}")
    if args.redis and urlsplit(args.redis).password:
        raise CliError(f"--redis URL holds a password (ps shows it): set ${ENV_REDIS_URL}"
                       " and pass --redis alone")
    key = _key(args)
    try:
        from ..fleet import RedisHaltStore
    except ImportError:
        raise CliError("--redis needs redis-py: pip install 'exitguard[redis]'") from None
    try:
        store = RedisHaltStore(url, name=args.halt_name, namespace=args.namespace)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    try:
        with quiet_logging(args.verbose):
            halt = TradingHalt((), store=store, key=key)
            exists = bool(halt.history) or halt.store_error is not None
            return _act(halt, store.where, exists, args)
    finally:
        store.close()


def _act(halt: TradingHalt, where: str, exists: bool, args: argparse.Namespace) -> int:
    if args.action == "status":
        return _status(halt, where, exists, args)
    if not exists:
        what = "halt" if args.redis is not None else "halt file"
        raise CliError(f"no {what} at {where}: nothing to resume (mistyped?)", EXIT_UNKNOWN)
    if halt.store_error is not None:
        raise CliError(f"{printable(halt.store_error)}; fix the file or the key first",
                       EXIT_UNKNOWN)
    try:
        record = halt.resume(args.approver, args.reason)
    except HaltResumeError as exc:
        raise CliError(printable(str(exc)), EXIT_DIFFERENT) from None
    if halt.store_error is not None:
        raise CliError(f"resume not saved: {printable(halt.store_error)}")
    print(f"trading resumed by {printable(record.actor)} (OS user {printable(record.os_user)})"
          f" at {_iso(record.at)}: {printable(record.reason)}")
    return EXIT_OK


def _line(record: HaltRecord) -> str:
    what = "halt  " if record.halted else "resume"
    user = f" (OS user {printable(record.os_user)})" if record.os_user else ""
    return (f"  {_iso(record.at)}  {what}  {printable(record.actor)}{user}:"
            f" {printable(record.reason)}")


def _status(halt: TradingHalt, where: str, exists: bool, args: argparse.Namespace) -> int:
    snapshot = halt.snapshot()
    trusted = halt.store_error is None
    history = list(snapshot.history) if trusted else []
    shown = history[-args.history:] if args.history else []
    if not trusted:
        code = EXIT_UNKNOWN
    elif not exists:
        code = EXIT_ALLOWED if args.missing_ok else EXIT_UNKNOWN
    else:
        code = EXIT_HALTED if snapshot.halted else EXIT_ALLOWED
    approvers = sorted(halt.approvers_of_halt) if snapshot.halted and trusted else []
    command = halt.resume_command() if snapshot.halted else None
    if args.json:
        print_json({
            "file": where,
            "exists": exists,
            "halted": snapshot.halted,
            "verified": trusted and exists,
            "reason": snapshot.reason if snapshot.halted else None,
            "approvers": approvers,
            "store_error": halt.store_error,
            "resume_command": command if trusted else None,
            "exit_code": code,
            "history": [
                {"halted": r.halted, "reason": r.reason, "actor": r.actor, "at": r.at,
                 "at_iso": _iso(r.at), "os_user": r.os_user, "approvers": list(r.approvers)}
                for r in shown
            ],
        })
        return code
    if not trusted:
        print(f"trading: HALTED (the halt file cannot be trusted:"
              f" {printable(halt.store_error or '')})")
        print("the bot stays halted until an approved resume; see the runbook"
              " (ExitguardTradingHalted)")
        return code
    if not exists:
        if args.missing_ok:
            print(f"trading: allowed (no halt file at {printable(where)}: never halted)")
        else:
            print(f"trading: UNKNOWN (no halt file at {printable(where)}: mistyped? pass"
                  " --missing-ok if 'never halted' is expected)")
        return code
    if snapshot.halted:
        since = next((r for r in reversed(history) if r.halted), None)
        when = f" since {_iso(since.at)} by {printable(since.actor)}" if since else ""
        print(f"trading: HALTED{when}: {printable(snapshot.reason)}")
        print(f"entries are refused; exits go on. May resume: {', '.join(approvers) or 'nobody'}")
        if command:
            print(f"resume with (NAME = one of them): {printable(command)}")
    else:
        print("trading: allowed")
    if shown:
        print("history (oldest first, verified):")
        for record in shown:
            print(_line(record))
    return code
