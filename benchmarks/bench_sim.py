"""Simulator speed: Monte Carlo runs per second, and the demo's wall time.

``exitguard simulate`` runs every random scenario with 6 executors (naive, guarded, and the
guard with each of 4 safeguards off), in virtual time. Targets on the 2-core CI machine:
1,000 runs (6,000 simulated exits) in at most 3 s (issue 20) with the same figures for the
same seed, and ``exitguard demo`` in under 5 s. One process (``jobs=1``) and the default
(one worker process per CPU) run interleaved, round by round; the figures of both must be
identical. Prints the rates, the ratio, the share of each budget used, and checks the targets.

    .venv/bin/python benchmarks/bench_sim.py [--runs 1000] [--seed 1] [--repeat 3]

Exits 1 when a target is missed (``--no-check`` to only print).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

from exitguard.sim import VARIANTS, run_demo, run_monte_carlo
from exitguard.sim.run import default_jobs

BUDGET_1000_RUNS_S = 3.0
BUDGET_DEMO_S = 5.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="Monte Carlo repetitions")
    parser.add_argument("--no-check", action="store_true")
    args = parser.parse_args(argv)
    logging.getLogger("exitguard").setLevel(logging.CRITICAL + 1)

    print(f"python {platform.python_version()} on {platform.machine()}, "
          f"{os.cpu_count()} CPU(s)")

    walls: dict[str, list[float]] = {"1 process": [], f"{default_jobs()} processes": []}
    figures = []
    for _ in range(max(1, args.repeat)):
        for label, jobs in (("1 process", 1), (f"{default_jobs()} processes", None)):
            result = run_monte_carlo(args.runs, args.seed, jobs=jobs)
            walls[label].append(result.wall_s)
            figures.append(result.as_dict())
    same = all(f == figures[0] for f in figures)
    single = statistics.median(walls["1 process"])
    wall = statistics.median(walls[f"{default_jobs()} processes"])
    exits = args.runs * len(VARIANTS)
    per_1000 = wall * 1000 / args.runs
    print(f"one process: {single:.2f} s; {default_jobs()} worker processes: {wall:.2f} s"
          f" (median of {len(walls['1 process'])} interleaved rounds each);"
          f" ratio {wall / single:.2f}; identical figures in every round: {same}")
    print(f"simulate: {args.runs} runs x {len(VARIANTS)} executors = {exits} simulated exits "
          f"in {wall:.2f} s with {default_jobs()} processes: {args.runs / wall:.0f} runs/s, "
          f"{exits / wall:.0f} exits/s")
    print(f"  1,000 runs would take {per_1000:.2f} s: "
          f"{per_1000 / BUDGET_1000_RUNS_S:.0%} of the {BUDGET_1000_RUNS_S:g} s budget "
          f"({BUDGET_1000_RUNS_S / per_1000:.1f}x headroom)")

    demo_inproc = min(run_demo("incident", args.seed).wall_s for _ in range(5))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "exitguard", "demo"], capture_output=True,
                          text=True, check=False)
    demo_cli = time.perf_counter() - started
    print(f"demo: the incident replays in {demo_inproc * 1000:.1f} ms in-process; "
          f"`python -m exitguard demo` takes {demo_cli:.2f} s end to end: "
          f"{demo_cli / BUDGET_DEMO_S:.0%} of the {BUDGET_DEMO_S:g} s budget")

    if args.no_check:
        return 0
    failures = []
    if not same:
        failures.append("the figures differ between rounds or process counts")
    if per_1000 > BUDGET_1000_RUNS_S:
        failures.append(f"1,000 runs take {per_1000:.1f} s > {BUDGET_1000_RUNS_S:g} s")
    if done.returncode != 0 or demo_cli > BUDGET_DEMO_S:
        failures.append(f"demo: exit {done.returncode}, {demo_cli:.1f} s")
    for failure in failures:
        print(f"MISSED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
