"""The hot path: a bare exit's cost and the reaction time from ``guard.exit()`` to the order.

Against an instant in-memory venue (every call answers at once, so what is measured is
exitguard's own work), on a normal asyncio loop, one exit after another:

- **bare exit**: microseconds per single-attempt exit with no hooks (target <= 15 us);
- **reaction time**: from the moment the caller calls ``guard.exit()`` to the moment the
  venue's ``submit`` is called, per exit, p50 and p99, bare and with full instrumentation
  (``instrument(guard)``: metrics, traces, logs; target p99 <= 25 us with full
  instrumentation: telemetry that can wait until the order is sent must wait);
- **per-attempt Protocol check**: what ``isinstance(venue, TwoPhaseVenue)`` (a
  ``runtime_checkable`` Protocol) costs on this machine, measured in the same run: the
  guard used to pay it on every attempt and now pays it once per route.

The set-ups run interleaved, round by round (the machine is shared: drift hits all alike);
each figure is the median over rounds.

    .venv/bin/python benchmarks/bench_hotpath.py [--exits 2000] [--rounds 7]

Exits 1 when a target is missed (``--no-check`` to only print).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
import timeit
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_deadline_load import machine, percentile, setup_telemetry
from exitguard import ExitGuard, Position
from exitguard.venue import (
    ExitOrder,
    Fill,
    Lookup,
    Submission,
    TwoPhaseVenue,
    TxStatus,
)

BARE_TARGET_US = 15.0
REACTION_P99_TARGET_US = 25.0


class InstantVenue:
    """Every call answers at once; ``submit`` notes when it was called."""

    name = "instant"

    def __init__(self) -> None:
        self._n = 0
        self.submitted_at: list[float] = []

    async def price(self, position: Position) -> float:
        return 95.0

    async def submit(self, order: ExitOrder) -> Submission:
        self.submitted_at.append(time.perf_counter())
        self._n += 1
        return Submission(f"tx{self._n}", order, None)

    async def confirm(self, submission: Submission) -> Fill:
        return Fill(submission.tx_id, submission.order.size, 94.9)

    async def lookup(self, submission: Submission) -> Lookup:
        return Lookup(TxStatus.LANDED, Fill(submission.tx_id, submission.order.size, 94.9))


async def one_round(guard: ExitGuard, venue: InstantVenue, positions: list[Position],
                    ) -> tuple[float, float, list[float]]:
    """(us per exit, CPU us per exit, reaction times in us) for one round of exits."""
    venue.submitted_at.clear()
    called: list[float] = []
    exit_ = guard.exit
    started, cpu = time.perf_counter(), time.thread_time()
    for position in positions:
        called.append(time.perf_counter())
        await exit_(position, signal_price=95.0, reason="stop_loss")
    per_exit = (time.perf_counter() - started) / len(positions) * 1e6
    cpu_per_exit = (time.thread_time() - cpu) / len(positions) * 1e6
    reactions = [(s - c) * 1e6 for c, s in zip(called, venue.submitted_at, strict=True)]
    return per_exit, cpu_per_exit, reactions


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exits", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-check", action="store_true")
    args = parser.parse_args(argv)

    print("bench_hotpath: bare exit cost and reaction time (guard.exit -> venue.submit)")
    print(f"  machine: {machine()}")
    full = setup_telemetry(True)
    venues = {"bare": InstantVenue(), "full": InstantVenue()}
    guards = {name: ExitGuard(venue, name=name) for name, venue in venues.items()}
    full.attach(guards["full"])
    per_exit: dict[str, list[float]] = {name: [] for name in guards}
    cpu_exit: dict[str, list[float]] = {name: [] for name in guards}
    reaction: dict[str, list[list[float]]] = {name: [] for name in guards}

    async def run() -> None:
        for round_ in range(args.rounds + 1):  # round 0 warms up
            for name, guard in guards.items():
                positions = [Position(f"{name}-{round_}-{i}", "SOL", 1.0, 100.0)
                             for i in range(args.exits)]
                gc.collect()
                cost, cpu, reactions = await one_round(guard, venues[name], positions)
                if round_:
                    per_exit[name].append(cost)
                    cpu_exit[name].append(cpu)
                    reaction[name].append(reactions)

    asyncio.run(run())
    full.close()
    venue = InstantVenue()
    check = min(timeit.repeat(lambda: isinstance(venue, TwoPhaseVenue), number=2000,
                              repeat=5)) / 2000 * 1e6

    print(f"  {args.exits} single-attempt exits x {args.rounds} rounds, interleaved;"
          " median of the rounds")
    print("  (us/exit is wall time; cpu us/exit the loop thread's CPU time, less sensitive to"
          " other processes on a shared machine)")
    print(f"  {'set-up':<6} {'us/exit':>8} {'cpu us':>8} {'reaction p50':>13} {'p99':>8}"
          "   target")
    missed = []
    for name in guards:
        cost = statistics.median(per_exit[name])
        p50 = statistics.median(percentile(r, 50) for r in reaction[name])
        p99 = statistics.median(percentile(r, 99) for r in reaction[name])
        if name == "bare":
            ok = cost <= BARE_TARGET_US
            target = f"exit <= {BARE_TARGET_US:g} us: {'met' if ok else 'MISSED'}"
            if not ok:
                missed.append("bare exit")
        else:
            ok = p99 <= REACTION_P99_TARGET_US
            target = (f"reaction p99 <= {REACTION_P99_TARGET_US:g} us:"
                      f" {'met' if ok else 'MISSED'}")
            if not ok:
                missed.append("reaction time")
        cpu = statistics.median(cpu_exit[name])
        print(f"  {name:<6} {cost:8.1f} {cpu:8.1f} {p50:13.1f} {p99:8.1f}   {target}")
    bare = statistics.median(per_exit["bare"])
    print(f"  ratios: full / bare per exit {statistics.median(per_exit['full']) / bare:.2f};"
          f" target / bare exit {BARE_TARGET_US / bare:.2f}")
    print(f"  isinstance(venue, TwoPhaseVenue) (runtime Protocol): {check:.1f} us, once per"
          f" route now ({check / bare:.2f}x a bare exit; it was paid on every attempt)")
    print(f"  telemetry: {full.stats()}")
    if missed and not args.no_check:
        print(f"MISSED: {', '.join(missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
