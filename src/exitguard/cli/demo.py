"""``exitguard demo``: replay a scenario (the seed's incident by default), naive vs guarded."""

from __future__ import annotations

import argparse
import textwrap

from ._common import (
    EXIT_OK,
    CliError,
    Commands,
    Formatter,
    add_verbose,
    console,
    print_json,
    quiet_logging,
    seed,
)
from .serve import add_serve_options, refuse_combined, refuse_serve_only_options, run_serve

#: The demo cycle's phases (exitguard.sim.serve.demo_phase_names(); kept here so that
#: ``--help`` imports no simulator).
_PHASES = ("normal", "congestion", "outage")


def _scenario(text: str) -> str:
    from ..sim.scenarios import scenario_names

    names = scenario_names()
    if text not in names:
        raise argparse.ArgumentTypeError(
            f"unknown scenario {text!r} (choose from {', '.join(names)})"
        )
    return text


def add_parser(commands: Commands) -> None:
    demo = commands.add_parser(
        "demo", formatter_class=Formatter,
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
    demo.add_argument("--seed", metavar="S", type=seed, default=1,
                      help="seed of the price path and the faults (default 1)")
    demo.add_argument("--json", action="store_true", help="print the results as JSON")
    add_verbose(demo)
    add_serve_options(demo, "a demo bot cycling through normal trading, congestion and outages")
    demo.add_argument("--start-phase", metavar="PHASE", choices=_PHASES,
                      help="with --serve: begin the cycle at this phase (normal, congestion, "
                           "outage); 'outage' fails exits at once, so a breaker trips and pages "
                           "within seconds (default normal)")
    demo.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.serve:
        refuse_combined(args, ("--json", args.json), ("--scenario", args.scenario))
        return run_serve(args, "demo")
    refuse_serve_only_options(args)
    if args.start_phase is not None:
        raise CliError("--start-phase only makes sense with --serve")
    from ..sim.report import demo_dict, demo_heading, demo_notes, demo_table
    from ..sim.run import run_demo

    with quiet_logging(args.verbose):
        result = run_demo(args.scenario or "incident", args.seed)
    if args.json:
        print_json(demo_dict(result))
        return EXIT_OK
    out = console()
    out.print(textwrap.fill(result.scenario.description, width=100))
    out.print()
    out.print(demo_heading(result))
    out.print(demo_table(result))
    out.print(demo_notes(result))
    return EXIT_OK
