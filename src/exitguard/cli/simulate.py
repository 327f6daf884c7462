"""``exitguard simulate``: Monte Carlo over random markets and faults, per safeguard."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ._common import (
    EXIT_OK,
    CliError,
    Commands,
    Formatter,
    add_verbose,
    console,
    non_empty,
    print_json,
    quiet_logging,
    runs,
    seed,
)
from .serve import add_serve_options, refuse_combined, refuse_serve_only_options, run_serve

DEFAULT_RUNS = 1000


def add_parser(commands: Commands) -> None:
    simulate = commands.add_parser(
        "simulate", formatter_class=Formatter,
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
    simulate.add_argument("--runs", metavar="N", type=runs,
                          help=f"number of random scenarios (default {DEFAULT_RUNS})")
    simulate.add_argument("--seed", metavar="S", type=seed, default=1,
                          help="seed of the whole simulation (default 1)")
    simulate.add_argument("--json", action="store_true",
                          help="print machine-readable results as JSON on stdout")
    simulate.add_argument("--plot", metavar="FILE.png", type=non_empty,
                          help="draw the loss and exit-time distributions into FILE.png "
                               "(needs matplotlib: pip install 'exitguard[plot]')")
    simulate.add_argument("--no-progress", action="store_true",
                          help="do not show the progress bar")
    add_verbose(simulate)
    add_serve_options(simulate, "a demo bot under randomly drawn fault phases")
    simulate.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.serve:
        refuse_combined(args, ("--json", args.json), ("--plot", args.plot), ("--runs", args.runs))
        return run_serve(args, "simulate")
    refuse_serve_only_options(args)
    from ..sim.report import (
        PlotError,
        check_plot_path,
        plot_monte_carlo,
        simulate_heading,
        simulate_notes,
        simulate_table,
    )
    from ..sim.run import VARIANTS, run_monte_carlo

    total = DEFAULT_RUNS if args.runs is None else args.runs
    plot = Path(args.plot) if args.plot else None
    if plot is not None:
        try:
            check_plot_path(plot)
        except PlotError as exc:
            raise CliError(str(exc)) from None
    with quiet_logging(args.verbose), _progress(total, enabled=not args.no_progress) as tick:
        result = run_monte_carlo(total, args.seed, progress=tick)
    if args.json:
        print_json(result.as_dict())
    else:
        out = console()
        out.print(simulate_heading(result))
        out.print(simulate_table(result))
        out.print(simulate_notes(result))
    sys.stdout.flush()
    rate = total / result.wall_s if result.wall_s > 0 else float("inf")
    print(f"{total} runs x {len(VARIANTS)} executors in {result.wall_s:.2f} s "
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
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console(stderr=True),
                  transient=True) as progress:
        task = progress.add_task("runs", total=total)
        last = [0.0]

        def tick(done: int) -> None:
            now = time.monotonic()
            if done == total or now - last[0] > 0.05:
                last[0] = now
                progress.update(task, completed=done)

        yield tick
