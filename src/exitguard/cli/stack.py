"""``exitguard stack up|down|status``: the monitoring stack on this machine, without Docker;
``exitguard stack secrets DIR``: the compose stack's credentials, outside the repository.

The logic is :mod:`exitguard.stack.local`; this module parses, prints and maps its errors to
one line and exit code 2 (``status`` exits 1 when a part is not running).
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from ._common import EXIT_DIFFERENT, EXIT_OK, CliError, Commands, Formatter, non_empty, seconds

#: Kept here so that ``--help`` imports nothing of the stack.
_PHASES = ("normal", "congestion", "outage")
_TITLES = {"receiver": "page receiver", "alertmanager": "Alertmanager", "bot": "demo bot",
           "prometheus": "Prometheus"}


def add_parser(commands: Commands) -> None:
    stack = commands.add_parser(
        "stack", formatter_class=Formatter,
        help="run Prometheus, Alertmanager, a page receiver and a demo bot here, without Docker",
        description=(
            "Run the monitoring stack's local parts on this machine, wired together on free\n"
            "127.0.0.1 ports picked at run time: Prometheus (Debian package prometheus) with\n"
            "exitguard's generated rules, Alertmanager (Debian package prometheus-alertmanager)\n"
            "with a config generated for its version, a page receiver that prints every page\n"
            "(a stand-in for Slack and Discord: nothing leaves the machine) and the demo bot\n"
            "(exitguard demo --serve). Grafana, the OpenTelemetry Collector and Tempo are not\n"
            "part of it (no local programs; see docs/stack.md). No authentication: loopback only."
        ),
        epilog=(
            "examples:\n"
            "  exitguard stack up --outage   start; a page arrives within a minute\n"
            "  exitguard stack status        is each part running and answering\n"
            "  exitguard stack down          stop exactly what up started\n"
            "  exitguard stack secrets DIR   credentials for the docker compose stack"
        ),
    )
    actions = stack.add_subparsers(dest="stack_action", metavar="ACTION", title="actions",
                                   required=True)
    up = actions.add_parser("up", formatter_class=Formatter, help="start the stack",
                            description="Start the stack and print where to look.")
    up.add_argument("--outage", action="store_true",
                    help="start the demo bot in its outage phase: exits fail at once, the "
                         "breaker trips and a page arrives within a minute")
    up.add_argument("--start-phase", metavar="PHASE", choices=_PHASES,
                    help="the demo bot's first phase (normal, congestion, outage; default "
                         "normal: the first page comes with the congestion phase, 30 s in)")
    up.add_argument("--fast", action="store_true",
                    help="scrape and evaluate every second and let Alertmanager send at once "
                         "(for tests; default 5 s, and Alertmanager's usual grouping waits)")
    up.add_argument("--ready-timeout", metavar="SECONDS", type=seconds, default=60.0,
                    help="how long each part may take to answer (default 60)")
    down = actions.add_parser("down", formatter_class=Formatter,
                              help="stop exactly the processes up started",
                              description="Stop exactly the processes `up` recorded (also after "
                                          "a crash); a reused pid is left alone.")
    status = actions.add_parser("status", formatter_class=Formatter,
                                help="report each part (exit code 1 when one is not running)",
                                description="Report whether each part runs and answers.")
    for action in (up, down, status):
        action.add_argument("--dir", metavar="DIR", type=Path,
                            help="state directory: configs, logs, data, pids "
                                 "(default $XDG_STATE_HOME/exitguard/stack, else "
                                 "~/.local/state/exitguard/stack)")
    secrets = actions.add_parser(
        "secrets", formatter_class=Formatter,
        help="create the compose stack's secrets directory (passwords, web configs)",
        description="Create DIR (mode 0700) with random passwords for Grafana,\n"
                    "Prometheus and Alertmanager, the servers' bcrypt web configs and\n"
                    "placeholder webhook URL files (files mode 0644: the containers read them\n"
                    "through compose secrets). Existing passwords and webhook URLs are kept.\n"
                    "Then: EXITGUARD_STACK_SECRETS_DIR=DIR docker compose up -d",
    )
    secrets.add_argument("directory", metavar="DIR", type=non_empty,
                         help="the secrets directory, outside the repository")
    secrets.add_argument("--rotate", action="store_true",
                         help="replace the passwords too (then recreate the containers)")
    secrets.add_argument("--check", action="store_true",
                         help="write nothing: report missing files and wrong permissions")
    secrets.set_defaults(handler=run_secrets)
    up.set_defaults(handler=run_up)
    down.set_defaults(handler=run_down)
    status.set_defaults(handler=run_status)


def _directory(args: argparse.Namespace) -> Path:
    from ..stack.local import default_dir

    directory: Path = args.dir if args.dir is not None else default_dir()
    return directory.expanduser().absolute()


def _dir_option(args: argparse.Namespace) -> str:
    return "" if args.dir is None else f" --dir {shlex.quote(str(_directory(args)))}"


def run_up(args: argparse.Namespace) -> int:
    from ..stack import procs
    from ..stack.local import LABEL, StackError, up

    if args.outage and args.start_phase not in (None, "outage"):
        raise CliError("--outage and --start-phase cannot be combined")
    start_phase = "outage" if args.outage else args.start_phase
    directory = _directory(args)
    print(f"exitguard stack: starting in {directory} (state, configs, logs)", flush=True)

    def started(record: procs.ProcessRecord) -> None:
        print(f"  started {_TITLES[record.name]} (pid {record.pid}, 127.0.0.1:{record.port})",
              flush=True)

    try:
        state = up(directory, fast=args.fast, start_phase=start_phase,
                   ready_timeout=args.ready_timeout, on_start=started)
    except (StackError, procs.ProcError) as exc:
        raise CliError(f"stack up: {exc}") from None
    urls = {p.name: p.url for p in state.parts}
    where = _dir_option(args)
    print(f"""
exitguard stack is up (127.0.0.1 only, no authentication):
  Prometheus     {urls['prometheus']}   alerts at /alerts, targets at /targets
  Alertmanager   {urls['alertmanager']}
  demo bot       {urls['bot']}   (job "exitguard")
  page receiver  {urls['receiver']}   {LABEL}
  page log       {state.page_log}

To see a page:""")
    if start_phase == "outage":
        print("  the bot starts in its outage phase: exits fail, the breaker trips, and within a"
              " minute\n  ExitguardCircuitBreakerTripped appears at the page receiver. Watch:")
    else:
        print("  one arrives by itself when the demo's congestion phase starts (30 s in; the first"
              " page within\n  about two minutes). For one within a minute, restart it in the"
              f" outage phase:\n    exitguard stack down{where} && exitguard stack up --outage"
              f"{where}\n  Watch:")
    print(f"""    tail -f {shlex.quote(str(state.page_log))}
  and the alert's path: {urls['prometheus']}/alerts -> {urls['alertmanager']}/#/alerts

Logs: {directory / 'logs'}.  Stop: exitguard stack down{where}""")
    return EXIT_OK


def run_down(args: argparse.Namespace) -> int:
    from ..stack import procs
    from ..stack.local import StackError, down

    directory = _directory(args)
    try:
        results = down(directory)
    except (StackError, procs.ProcError) as exc:
        raise CliError(f"stack down: {exc}") from None
    if not results:
        print(f"exitguard stack: nothing recorded in {directory}; nothing to stop")
        return EXIT_OK
    for name, what in results:
        print(f"  {_TITLES.get(name, name):<14} {what}")
    print(f"exitguard stack is down (logs and data stay in {directory})")
    return EXIT_OK


def run_status(args: argparse.Namespace) -> int:
    from ..stack import procs
    from ..stack.local import StackError, pages, status

    directory = _directory(args)
    try:
        found = status(directory)
    except (StackError, procs.ProcError) as exc:
        raise CliError(f"stack status: {exc}") from None
    if found is None:
        print(f"exitguard stack: not running (nothing recorded in {directory})")
        return EXIT_DIFFERENT
    state, parts = found
    for part in parts:
        record = part.record
        if not part.running:
            what = "NOT RUNNING"
        elif part.answering:
            what = "running, answering"
        else:
            what = "running, NOT answering"
        print(f"  {_TITLES.get(record.name, record.name):<14} {what:<24} pid {record.pid:<8}"
              f" {record.url}")
    count = sum(1 for _ in pages(state.page_log))
    print(f"  {'page log':<14} {count} page(s) in {state.page_log}")
    healthy = len(parts) == len(_TITLES) and all(p.answering for p in parts)
    return EXIT_OK if healthy else EXIT_DIFFERENT


def run_secrets(args: argparse.Namespace) -> int:
    from ..artefacts import stack_secrets

    directory = Path(args.directory)
    if args.check:
        if not directory.is_dir():
            raise CliError(f"stack secrets: no such directory: {directory}")
        problems = stack_secrets.check_permissions(directory)
        for problem in problems:
            print(problem)
        return EXIT_DIFFERENT if problems else EXIT_OK
    try:
        written = stack_secrets.write_stack_secrets(directory, rotate=args.rotate)
    except ImportError:
        raise CliError("stack secrets needs bcrypt: pip install 'exitguard[stack]'") from None
    except OSError as exc:
        raise CliError(f"stack secrets: {exc.strerror or exc}: {exc.filename or directory}"
                       ) from None
    for item in written:
        print(f"{item.action:8} {directory / item.name}")
    print(f"next: EXITGUARD_STACK_SECRETS_DIR={directory} docker compose up -d")
    return EXIT_OK
