"""The ``exitguard`` command: demo, simulate, halt, dashboards, alerts.

Bad arguments and expected runtime errors (a port in use, a plot path that cannot be
written, an unreadable file) print one line, ``exitguard: error: ...``, and exit with 2;
a ``check`` that finds differences, or a refused resume, exits with 1. Heavy or optional
modules (the simulator, telemetry, dashboards, alert rules, matplotlib) are imported only by
the command that needs them, so one missing piece never breaks the others.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

PROG = "exitguard"

#: Where ``dashboards build|check`` and ``alerts build|check`` write and read by default.
DEFAULT_DASHBOARDS_DIR = "dashboards"
DEFAULT_RULES_FILE = "alerts/exitguard.rules.yml"
DEFAULT_METRICS_PORT = 9464
DEFAULT_RUNS = 1000
DEFAULT_BIND = "127.0.0.1"
#: Environment variables read as defaults.
ENV_HALT_FILE = "EXITGUARD_HALT_FILE"
ENV_APPROVERS = "EXITGUARD_HALT_APPROVERS"

EXIT_OK = 0
EXIT_DIFFERENT = 1  # a check found differences, or an operation was refused
EXIT_USAGE = 2  # bad arguments or an expected runtime error
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """An expected failure: printed as one line, exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """One line on a usage error (``exitguard: error: ...``), exit code 2, no traceback."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)


# -- argument types -------------------------------------------------------------------------


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _runs(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of runs >= 1, got {value}")
    return value


def _seed(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


def _port(text: str) -> int:
    value = _integer(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0-65535, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return value


def _url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(
            f"expected an http(s) URL such as http://127.0.0.1:4318, got {text!r}"
        )
    return text


def _non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _scenario(text: str) -> str:
    from .sim.scenarios import scenario_names

    names = scenario_names()
    if text not in names:
        raise argparse.ArgumentTypeError(
            f"unknown scenario {text!r} (choose from {', '.join(names)})"
        )
    return text


# -- the parser -----------------------------------------------------------------------------

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


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=78)


def _verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show exitguard's log messages (warnings and errors)")


def _serve_options(parser: argparse.ArgumentParser, what: str) -> None:
    group = parser.add_argument_group(
        "serving (--serve)",
        _wrap(f"Run {what} continuously in real time, fully instrumented: /metrics for "
        "Prometheus, traces over OTLP/HTTP, JSON logs on stderr. SIGINT or SIGTERM stops "
        "it cleanly. Pages go out when EXITGUARD_PAGER_URLS or EXITGUARD_PAGER_URLS_FILE is "
        "set."),
    )
    group.add_argument("--serve", action="store_true",
                       help="run continuously in real time and serve metrics and traces")
    group.add_argument("--bind", metavar="ADDR", type=_non_empty,
                       help=f"address to serve /metrics on (default {DEFAULT_BIND})")
    group.add_argument("--port", metavar="N", type=_port,
                       help=f"port to serve /metrics on (default {DEFAULT_METRICS_PORT}; "
                            "0 picks a free one)")
    group.add_argument("--otlp-endpoint", metavar="URL", type=_url,
                       help="export traces over OTLP/HTTP to URL, e.g. http://127.0.0.1:4318 "
                            "(default: no traces)")
    group.add_argument("--duration", metavar="SECONDS", type=_seconds,
                       help="stop after SECONDS (default: run until SIGINT or SIGTERM)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=_DESCRIPTION, epilog=_EPILOG,
                     formatter_class=_Formatter)
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    # demo
    demo = commands.add_parser(
        "demo", formatter_class=_Formatter,
        help="replay the seed's incident: the naive passive retry vs exitguard",
        description=(
            "Replay a scenario (by default the seed's incident: entry 100, stop-loss at -5 %,\n"
            "RPC timeouts, a falling market) with the seed's naive exit (60 s confirmation\n"
            "timeout, 10 s poll, retries without limit, the same order every time) and with\n"
            "exitguard, on the same price path and the same faults, in virtual time. Prints\n"
            "realized loss, time to exit, attempts, transactions sent and double-sells."
        ),
        epilog=(
            "scenarios:\n"
            "  incident     the seed's incident (the default)\n"
            "  calm         a healthy venue, a gently falling market (the control)\n"
            "  congestion   chain congestion: only a priority fee gets a transaction in\n"
            "  outage       the primary route fails permanently; a backup venue works\n"
            "  double-sell  fast RPC timeouts while transactions land"
        ),
    )
    demo.add_argument("--scenario", metavar="NAME", type=_scenario,
                      help="the scenario to replay (default incident; see below)")
    demo.add_argument("--seed", metavar="S", type=_seed, default=1,
                      help="seed of the price path and the faults (default 1)")
    demo.add_argument("--json", action="store_true", help="print the results as JSON")
    _verbose(demo)
    _serve_options(demo, "a demo bot cycling through normal trading, congestion and outages")
    demo.set_defaults(handler=_cmd_demo)

    # simulate
    simulate = commands.add_parser(
        "simulate", formatter_class=_Formatter,
        help="Monte Carlo over random markets and faults: what each safeguard is worth",
        description=(
            "Run N random scenarios (markets with crashes, congestion, RPC outages, broken\n"
            "routes, backup venues) with the naive exit, exitguard, and exitguard with each\n"
            "safeguard switched off in turn (no deadline, no escalation, no reconciliation,\n"
            "no breaker), on the same markets and faults. Prints p50/p95/p99 of realized\n"
            "loss and time to exit, the failure rate and the double-sell rate. The same\n"
            "seed gives the same table."
        ),
    )
    simulate.add_argument("--runs", metavar="N", type=_runs,
                          help="number of random scenarios (default 1000)")
    simulate.add_argument("--seed", metavar="S", type=_seed, default=1,
                          help="seed of the whole simulation (default 1)")
    simulate.add_argument("--json", action="store_true",
                          help="print machine-readable results as JSON on stdout")
    simulate.add_argument("--plot", metavar="FILE.png", type=_non_empty,
                          help="draw the loss and exit-time distributions into FILE.png "
                               "(needs matplotlib: pip install 'exitguard[plot]')")
    simulate.add_argument("--no-progress", action="store_true",
                          help="do not show the progress bar")
    _verbose(simulate)
    _serve_options(simulate, "a demo bot under randomly drawn fault phases")
    simulate.set_defaults(handler=_cmd_simulate)

    # halt
    halt = commands.add_parser(
        "halt", formatter_class=_Formatter,
        help="show or resume the trading halt kept in a halt file",
        description=(
            "A breaker trip halts new entries (never exits) and records it in the halt file.\n"
            "'status' shows the state and its audit history; 'resume' lifts the halt, which\n"
            "needs an approver from the configured list and a reason, both recorded."
        ),
    )
    halt_commands = halt.add_subparsers(dest="action", metavar="ACTION", title="actions")
    halt_file_help = (f"the halt file (default: ${ENV_HALT_FILE})")
    status = halt_commands.add_parser("status", formatter_class=_Formatter,
                                      help="show whether trading is halted, and the history",
                                      description=_wrap("Show whether trading is halted, "
                                                        "why, and the audit history."))
    status.add_argument("--file", metavar="PATH", type=_non_empty, help=halt_file_help)
    status.add_argument("--json", action="store_true", help="print the state as JSON")
    status.add_argument("--history", metavar="N", type=_seed, default=10,
                        help="how many history entries to show (default 10)")
    _verbose(status)
    resume = halt_commands.add_parser(
        "resume", formatter_class=_Formatter, help="resume trading (an approver and a reason)",
        description=_wrap("Resume trading. The approver must be on the approver list; the "
                          "approver and the reason are recorded in the audit history."),
    )
    resume.add_argument("--file", metavar="PATH", type=_non_empty, help=halt_file_help)
    resume.add_argument("--approver", metavar="NAME", type=_non_empty, required=True,
                        help="who approves the resume (must be on the approver list)")
    resume.add_argument("--reason", metavar="TEXT", type=_non_empty, required=True,
                        help="why trading may resume (recorded)")
    resume.add_argument("--approvers", metavar="A,B", type=_non_empty,
                        help=f"comma-separated approver list (default: ${ENV_APPROVERS})")
    _verbose(resume)
    halt.set_defaults(handler=_cmd_halt, halt_parser=halt)

    # dashboards (exitguard.dashboards)
    dashboards = commands.add_parser(
        "dashboards", formatter_class=_Formatter,
        help="write or check the Grafana dashboards generated from code",
        description="'build' writes the Grafana dashboards generated by exitguard.dashboards;\n"
                    "'check' exits with 1 and shows the differences when the files are stale.",
    )
    dashboards.add_argument("action", choices=("build", "check"), metavar="build|check",
                            help="write the dashboards, or check them")
    dashboards.add_argument("--out", metavar="DIR", type=_non_empty,
                            default=DEFAULT_DASHBOARDS_DIR,
                            help=f"dashboard directory (default {DEFAULT_DASHBOARDS_DIR}/)")
    dashboards.add_argument("--datasource-uid", metavar="UID", type=_non_empty,
                            help="default Prometheus datasource uid of the dashboards")
    dashboards.add_argument("--job", metavar="JOB", type=_non_empty,
                            help="default scrape job of the dashboards")
    dashboards.add_argument("--title", metavar="T", type=_non_empty,
                            help="dashboard title")
    dashboards.set_defaults(handler=_cmd_dashboards)

    # alerts (exitguard.alerting.rules)
    alerts = commands.add_parser(
        "alerts", formatter_class=_Formatter,
        help="write or check the Prometheus alert rules generated from code",
        description="'build' writes the Prometheus rule file generated by exitguard.alerting;\n"
                    "'check' exits with 1 and shows the differences when the file is stale.",
    )
    alerts.add_argument("action", choices=("build", "check"), metavar="build|check",
                        help="write the rule file, or check it")
    alerts.add_argument("--out", metavar="FILE", type=_non_empty, default=DEFAULT_RULES_FILE,
                        help=f"rule file (default {DEFAULT_RULES_FILE})")
    alerts.set_defaults(handler=_cmd_alerts)
    return parser


# -- helpers --------------------------------------------------------------------------------


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None
    if not stream.isatty() and not os.environ.get("COLUMNS"):
        width = 120
    return Console(file=stream, width=width, highlight=False, soft_wrap=False)


@contextlib.contextmanager
def _logging(verbose: bool) -> Iterator[None]:
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


def _print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def _serve_given(args: argparse.Namespace) -> list[str]:
    given = []
    for option, attr in (("--bind", "bind"), ("--port", "port"),
                         ("--otlp-endpoint", "otlp_endpoint"), ("--duration", "duration")):
        if getattr(args, attr, None) is not None:
            given.append(option)
    return given


def _serve(args: argparse.Namespace, mode: str) -> int:
    import asyncio

    from .sim.serve import ServeError, ServeOptions, serve

    options = ServeOptions(
        mode=mode,
        seed=args.seed,
        bind=args.bind or DEFAULT_BIND,
        port=DEFAULT_METRICS_PORT if args.port is None else args.port,
        otlp_endpoint=args.otlp_endpoint,
        duration=args.duration,
    )
    try:
        return asyncio.run(serve(options))
    except ServeError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:  # e.g. an address that cannot be bound, found late
        raise CliError(f"--serve: {exc.strerror or exc}") from None


# -- commands -------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.serve:
        for option, value in (("--json", args.json), ("--scenario", args.scenario)):
            if value:
                raise CliError(f"{option} cannot be combined with --serve")
        return _serve(args, "demo")
    given = _serve_given(args)
    if given:
        raise CliError(f"{', '.join(given)} only make sense with --serve")
    from .sim.report import demo_dict, demo_notes, demo_table
    from .sim.run import run_demo

    with _logging(args.verbose):
        result = run_demo(args.scenario or "incident", args.seed)
    if args.json:
        _print_json(demo_dict(result))
        return EXIT_OK
    console = _console()
    console.print(textwrap.fill(result.scenario.description, width=100))
    console.print()
    console.print(demo_table(result))
    console.print(demo_notes(result))
    return EXIT_OK


def _cmd_simulate(args: argparse.Namespace) -> int:
    if args.serve:
        for option, value in (("--json", args.json), ("--plot", args.plot),
                              ("--runs", args.runs)):
            if value:
                raise CliError(f"{option} cannot be combined with --serve")
        return _serve(args, "simulate")
    given = _serve_given(args)
    if given:
        raise CliError(f"{', '.join(given)} only make sense with --serve")
    from .sim.report import (
        PlotError,
        check_plot_path,
        plot_monte_carlo,
        simulate_notes,
        simulate_table,
    )
    from .sim.run import VARIANTS, run_monte_carlo

    runs = DEFAULT_RUNS if args.runs is None else args.runs
    plot = Path(args.plot) if args.plot else None
    if plot is not None:
        try:
            check_plot_path(plot)
        except PlotError as exc:
            raise CliError(str(exc)) from None
    with _logging(args.verbose), _progress(runs, enabled=not args.no_progress) as tick:
        result = run_monte_carlo(runs, args.seed, progress=tick)
    if args.json:
        _print_json(result.as_dict())
    else:
        console = _console()
        console.print(simulate_table(result))
        console.print(simulate_notes(result))
    sys.stdout.flush()
    rate = runs / result.wall_s if result.wall_s > 0 else float("inf")
    print(f"{runs} runs x {len(VARIANTS)} executors in {result.wall_s:.2f} s "
          f"({rate:.0f} runs/s)", file=sys.stderr)
    if plot is not None:
        try:
            plot_monte_carlo(result, plot)
        except PlotError as exc:
            raise CliError(str(exc)) from None
        print(f"plot written to {plot}", file=sys.stderr)
    return EXIT_OK


@contextlib.contextmanager
def _progress(total: int, *, enabled: bool) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on stderr (only on a terminal)."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("simulating"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=_console(stderr=True),
                  transient=True) as progress:
        task = progress.add_task("runs", total=total)
        last = [0.0]

        def tick(done: int) -> None:
            now = time.monotonic()
            if done == total or now - last[0] > 0.05:
                last[0] = now
                progress.update(task, completed=done)

        yield tick


def _halt_file(args: argparse.Namespace) -> Path:
    path = args.file or os.environ.get(ENV_HALT_FILE)
    if not path:
        raise CliError(f"the halt file is not set: pass --file PATH or set ${ENV_HALT_FILE}")
    return Path(path)


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cmd_halt(args: argparse.Namespace) -> int:
    if args.action is None:
        args.halt_parser.error("choose an action: status or resume")
    from .errors import HaltResumeError
    from .halt import FileHaltStore, TradingHalt

    path = _halt_file(args)
    if path.is_dir():
        raise CliError(f"halt file {str(path)!r} is a directory")
    approvers_text = getattr(args, "approvers", None) or os.environ.get(ENV_APPROVERS, "")
    approvers = [a.strip() for a in approvers_text.split(",") if a.strip()]
    with _logging(args.verbose):
        halt = TradingHalt(approvers, store=FileHaltStore(path))
        if args.action == "status":
            return _halt_status(halt, path, args)
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


def _halt_status(halt: Any, path: Path, args: argparse.Namespace) -> int:
    history = list(halt.history)
    shown = history[-args.history:] if args.history else []
    if args.json:
        _print_json({
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


def _cmd_dashboards(args: argparse.Namespace) -> int:
    # -- provided by exitguard.dashboards (write_dashboards / check_dashboards) --------------
    try:
        from .dashboards import check_dashboards, write_dashboards
    except Exception as exc:  # a missing optional dependency must not break the CLI
        raise CliError(f"the dashboards cannot be generated here: {exc}") from None
    options = {key: value for key, value in (
        ("datasource_uid", args.datasource_uid), ("job", args.job), ("title", args.title),
    ) if value is not None}
    out = Path(args.out)
    try:
        if args.action == "build":
            for written in write_dashboards(out, **options):
                print(f"wrote {written}")
            return EXIT_OK
        problems = check_dashboards(out, **options)
    except OSError as exc:
        raise CliError(f"dashboards: {exc.strerror or exc}: {exc.filename or out}") from None
    return _report_check(problems, f"dashboards in {out} are up to date",
                         "exitguard dashboards build")


def _cmd_alerts(args: argparse.Namespace) -> int:
    # -- provided by exitguard.alerting.rules (write_rules / check_rules) --------------------
    try:
        from .alerting.rules import check_rules, write_rules
    except Exception as exc:  # a missing optional dependency must not break the CLI
        raise CliError(f"the alert rules cannot be generated here: {exc}") from None
    out = Path(args.out)
    try:
        if args.action == "build":
            write_rules(out)
            print(f"wrote {out}")
            return EXIT_OK
        problems = check_rules(out)
    except OSError as exc:
        raise CliError(f"alerts: {exc.strerror or exc}: {exc.filename or out}") from None
    return _report_check(problems, f"{out} is up to date", "exitguard alerts build")


def _report_check(problems: Sequence[str], ok: str, fix: str) -> int:
    if not problems:
        print(ok)
        return EXIT_OK
    for problem in problems:
        print(problem)
    print(f"{len(problems)} difference(s); regenerate with: {fix}", file=sys.stderr)
    return EXIT_DIFFERENT


# -- entry point ----------------------------------------------------------------------------


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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
