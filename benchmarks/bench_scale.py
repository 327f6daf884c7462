"""Scale: 10,000 concurrent exits on one event loop, memory per in-flight exit, and no leak
across 100,000 sequential exits.

Part 1 (concurrent): N exits (default 10,000) are started at once; every confirmation waits
on one gate, so all N are in flight together. With tracemalloc on, the Python memory they
hold is measured (traced bytes after - before, divided by N; broken down by package), then
the gate opens and every exit must close. Bare and with full instrumentation.

Part 2 (sequential): M exits (default 100,000) one after the other, with full
instrumentation, on a realistic mix: most fill at once, every 10th has a send failure and a
retry after a backoff, every 50th a partial fill, every 100th a confirmation error that is
reconciled, and every 1,000th goes through a second guard with a 50 ms deadline whose
confirmation hangs: UNRESOLVED, then a late fill found by the background reconciliation.
At every 10 % the process's RSS, the gc-tracked objects and the allocated memory blocks are
recorded; memory must stay flat (RSS within 5 % from the first checkpoint after warm-up to
the end).

    .venv/bin/python benchmarks/bench_scale.py
    .venv/bin/python benchmarks/bench_scale.py --concurrent 10000 --sequential 100000

Exits 1 when a target is missed (``--no-check`` to only print).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import os
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from bench_deadline_load import Telemetry, machine, setup_telemetry
from exitguard import (
    CircuitBreaker,
    ExitGuard,
    ExitOrder,
    ExitStatus,
    Fill,
    Lookup,
    NetworkError,
    Position,
    RetryPolicy,
    RpcTimeout,
    Submission,
    TxStatus,
)

PER_EXIT_TARGET_KIB = 20.0
FLAT_TARGET = 0.05


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


# -- part 1: concurrent ---------------------------------------------------------------------


class GatedVenue:
    """Every confirmation waits for one gate; then the order fills whole. O(1) per call."""

    name = "gated"

    def __init__(self, expected: int) -> None:
        self.gate = asyncio.Event()
        self.all_waiting = asyncio.Event()
        self.expected = expected
        self._ids = itertools.count(1)
        self.waiting = 0

    async def price(self, position: Position) -> float:
        return 95.0

    async def submit(self, order: ExitOrder) -> Submission:
        return Submission(f"tx{next(self._ids)}", order, None)

    async def confirm(self, submission: Submission) -> Fill:
        self.waiting += 1
        if self.waiting == self.expected:
            self.all_waiting.set()
        await self.gate.wait()
        return Fill(submission.tx_id, submission.order.size, 94.9)

    async def lookup(self, submission: Submission) -> Lookup:
        return Lookup(TxStatus.LANDED, Fill(submission.tx_id, submission.order.size, 94.9))


def _bucket(filename: str) -> str:
    for marker, name in (
        ("/exitguard/telemetry/", "exitguard.telemetry"),
        ("/exitguard/", "exitguard core"),
        ("/opentelemetry/", "opentelemetry"),
        ("/prometheus_client/", "prometheus_client"),
        ("/structlog/", "structlog"),
        ("/asyncio/", "asyncio (tasks, futures, timers)"),
        ("bench_", "benchmark (venue, caller)"),
    ):
        if marker in filename:
            return name
    return "other"


@dataclass
class Concurrent:
    exits: int
    traced: bool
    per_exit_bytes: float  # tracemalloc (traced rounds) or RSS growth (untraced rounds)
    objects_per_exit: float
    breakdown: list[tuple[str, int]]
    launch_s: float
    complete_s: float
    statuses: Counter[str]
    max_in_flight: int


async def concurrent_round(n: int, telemetry: Telemetry, *, traced: bool) -> Concurrent:
    """All ``n`` exits in flight at once; with ``traced``, tracemalloc measures what they
    hold (by package), else the RSS growth does (tracemalloc's own bookkeeping would
    inflate it)."""
    venue = GatedVenue(n)
    guard = ExitGuard(venue, policy=RetryPolicy(attempt_timeout=500.0, total_timeout=550.0),
                      deadline=600.0, name="bench-scale")
    telemetry.attach(guard)
    positions = [Position(f"pos-{i}", "SOL", 1.0, 100.0) for i in range(n)]
    gc.collect()
    objects0 = len(gc.get_objects())
    if traced:
        tracemalloc.start(1)
        before = tracemalloc.take_snapshot()
        base = tracemalloc.get_traced_memory()[0]
    else:
        base = rss_bytes()

    started = time.perf_counter()
    tasks = [asyncio.ensure_future(guard.exit(p, signal_price=95.0)) for p in positions]
    await venue.all_waiting.wait()
    launch = time.perf_counter() - started
    in_flight = guard.in_flight
    gc.collect()
    objects = len(gc.get_objects()) - objects0
    buckets: Counter[str] = Counter()
    if traced:
        held = tracemalloc.get_traced_memory()[0] - base
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        for stat in after.compare_to(before, "filename"):
            buckets[_bucket(stat.traceback[0].filename)] += stat.size_diff
        del before, after
    else:
        held = rss_bytes() - base

    started = time.perf_counter()
    venue.gate.set()
    outcomes = await asyncio.gather(*tasks)
    complete = time.perf_counter() - started
    statuses = Counter(o.status.value for o in outcomes)
    assert guard.in_flight == 0
    await guard.aclose()
    return Concurrent(n, traced, held / n, objects / n, buckets.most_common(), launch,
                      complete, statuses, in_flight)


def report_concurrent(label: str, result: Concurrent) -> None:
    how = "tracemalloc on" if result.traced else "tracemalloc off"
    print(f"  {label} ({how}): {result.exits} exits in flight at once (guard.in_flight ="
          f" {result.max_in_flight}); all started in {result.launch_s:.2f} s,"
          f" all finished {result.complete_s:.2f} s after the gate opened;"
          f" outcomes {dict(result.statuses)}")
    if result.traced:
        print(f"    memory per in-flight exit: {result.per_exit_bytes / 1024:.2f} KiB"
              " (Python allocations held, everything included: task, coroutine frames,"
              " guard state, telemetry, venue's Submission)")
        for name, size in result.breakdown:
            if abs(size) >= 1024:
                print(f"      {name:36s} {size / result.exits / 1024:7.2f} KiB/exit")
    else:
        print(f"    RSS growth per in-flight exit: {result.per_exit_bytes / 1024:.2f} KiB"
              f" (includes allocator slack); GC-tracked objects per in-flight exit:"
              f" {result.objects_per_exit:.0f}")


# -- part 2: sequential ---------------------------------------------------------------------


class MixedVenue:
    """The mix of part 2, decided by the exit number; O(1) per call, keeps nothing."""

    name = "mixed"

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.exit_number = 0
        self.submits_this_exit = 0
        self.late: dict[str, float] = {}  # hanging tx id -> loop time it lands

    def start(self, number: int) -> None:
        self.exit_number = number
        self.submits_this_exit = 0

    async def price(self, position: Position) -> float:
        return 95.0

    async def submit(self, order: ExitOrder) -> Submission:
        self.submits_this_exit += 1
        if self.exit_number % 10 == 0 and self.submits_this_exit == 1:
            raise NetworkError("connection reset by peer")
        tx_id = f"tx{next(self._ids)}"
        if self.exit_number % 1000 == 999:
            self.late[tx_id] = asyncio.get_running_loop().time() + 0.08
        return Submission(tx_id, order, None)

    async def confirm(self, submission: Submission) -> Fill:
        order = submission.order
        if submission.tx_id in self.late:
            await asyncio.get_running_loop().create_future()  # hangs
        if self.exit_number % 100 == 1 and self.submits_this_exit == 1:
            raise RpcTimeout("confirmation timed out")
        if self.exit_number % 50 == 2 and self.submits_this_exit == 1:
            return Fill(submission.tx_id, order.size / 2, 94.9)
        return Fill(submission.tx_id, order.size, 94.9)

    async def lookup(self, submission: Submission) -> Lookup:
        lands = self.late.get(submission.tx_id)
        if lands is not None:
            if asyncio.get_running_loop().time() < lands:
                return Lookup(TxStatus.PENDING)
            del self.late[submission.tx_id]
        return Lookup(TxStatus.LANDED, Fill(submission.tx_id, submission.order.size, 94.9))


@dataclass
class Checkpoint:
    done: int
    rss: int
    objects: int
    blocks: int
    seconds: float


async def sequential(n: int, telemetry: Telemetry) -> tuple[list[Checkpoint], Counter[str],
                                                            int]:
    venue = MixedVenue()
    policy = RetryPolicy(initial_backoff=0.0005, max_backoff=0.001, attempt_timeout=5.0,
                         total_timeout=20.0, min_attempt_time=0.0001, max_attempts=3)
    guard = ExitGuard(venue, policy=policy, deadline=30.0, name="bench-seq")
    hasty = ExitGuard(venue, policy=RetryPolicy(total_timeout=0.04, attempt_timeout=0.02,
                                                min_attempt_time=0.005),
                      deadline=0.05, name="bench-seq-hasty", reconcile_interval=0.01,
                      max_reconcile_interval=0.02,
                      breaker=CircuitBreaker(failure_threshold=10**9, name="mixed"))
    telemetry.attach(guard)
    telemetry.attach(hasty)
    statuses: Counter[str] = Counter()
    checkpoints: list[Checkpoint] = []
    step = max(1, n // 10)
    started = time.perf_counter()
    position = Position("pos-seq", "SOL", 1.0, 100.0)
    for i in range(1, n + 1):
        venue.start(i)
        chosen = hasty if i % 1000 == 999 else guard
        outcome = await chosen.exit(position, signal_price=95.0, reason="take_profit")
        statuses[outcome.status.value] += 1
        if i % step == 0:
            await hasty.drain(timeout=5.0)
            gc.collect()
            checkpoints.append(Checkpoint(i, rss_bytes(), len(gc.get_objects()),
                                          sys.getallocatedblocks(),
                                          time.perf_counter() - started))
    late = len(hasty.late_fills)
    await guard.aclose()
    await hasty.aclose()
    return checkpoints, statuses, late


def report_sequential(checkpoints: list[Checkpoint], statuses: Counter[str], late: int,
                      n: int) -> bool:
    print(f"  sequential: {n} exits, outcomes {dict(statuses)}, late fills found {late}")
    print("    exits done      RSS MiB   gc objects   alloc blocks   elapsed s")
    for c in checkpoints:
        print(f"    {c.done:10d}   {c.rss / 2**20:9.2f}   {c.objects:10d}   {c.blocks:12d}"
              f"   {c.seconds:9.1f}")
    if len(checkpoints) < 3:
        return True
    warm, last = checkpoints[1], checkpoints[-1]
    growth = (last.rss - warm.rss) / warm.rss
    after = checkpoints[1:]

    def slope(values: list[float]) -> float:
        """Least-squares growth per exit over the checkpoints after warm-up."""
        xs = [float(c.done) for c in after]
        mean_x, mean_y = sum(xs) / len(xs), sum(values) / len(values)
        num = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, values, strict=True))
        den = sum((x - mean_x) ** 2 for x in xs)
        return num / den if den else 0.0

    objects = [float(c.objects) for c in after]
    blocks = [float(c.blocks) for c in after]
    rate = last.done / last.seconds
    print(f"    from {warm.done} to {last.done} exits: RSS {growth:+.2%}"
          f" ({(last.rss - warm.rss) / 2**20:+.2f} MiB); gc objects stay between"
          f" {min(objects):.0f} and {max(objects):.0f} (trend {slope(objects):+.4f}/exit);"
          f" allocated blocks between {min(blocks):.0f} and {max(blocks):.0f}"
          f" (trend {slope(blocks):+.4f}/exit); {rate:.0f} exits/s")
    print("    (the saw-tooth is the BatchSpanProcessor's queue filling and being exported)")
    flat = abs(growth) <= FLAT_TARGET
    print(f"    target: memory flat within {FLAT_TARGET:.0%}: {'MET' if flat else 'MISSED'}")
    return flat


def run_part(part: str, args: argparse.Namespace) -> bool:
    """Runs one part; False when a target was missed."""
    if part.startswith("concurrent"):
        enabled = part == "concurrent-instrumented"
        telemetry = setup_telemetry(enabled, exporter=args.exporter)
        label = "instrumented" if telemetry.enabled else "bare"
        print(f"  [{part}] instrumentation: {telemetry.description}")
        try:
            untraced = asyncio.run(concurrent_round(args.concurrent, telemetry, traced=False))
            traced = asyncio.run(concurrent_round(args.concurrent, telemetry, traced=True))
        finally:
            telemetry.close()
        report_concurrent(label, untraced)
        report_concurrent(label, traced)
        ok = all(r.statuses.get(ExitStatus.CLOSED.value, 0) == args.concurrent
                 for r in (untraced, traced))
        print(f"    all {args.concurrent} closed, twice: {'yes' if ok else 'NO'}")
        met = True
        if telemetry.enabled:
            met = traced.per_exit_bytes / 1024 <= PER_EXIT_TARGET_KIB
            print(f"    target <= {PER_EXIT_TARGET_KIB:g} KiB per in-flight exit with full"
                  f" instrumentation: {'MET' if met else 'MISSED'}")
        return ok and met
    telemetry = setup_telemetry(True, exporter=args.exporter)
    print(f"  [{part}] instrumentation: {telemetry.description}")
    try:
        checkpoints, statuses, late = asyncio.run(sequential(args.sequential, telemetry))
        print(f"    telemetry: {telemetry.stats()}")
    finally:
        telemetry.close()
    flat = report_sequential(checkpoints, statuses, late, args.sequential)
    leftovers = statuses.get(ExitStatus.FAILED.value, 0) + statuses.get(
        ExitStatus.REFUSED.value, 0)
    return flat and leftovers == 0


PARTS = ("concurrent-bare", "concurrent-instrumented", "sequential")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrent", type=int, default=10_000)
    parser.add_argument("--sequential", type=int, default=100_000)
    parser.add_argument("--exporter", choices=["drop", "otlp-closed"], default="drop")
    parser.add_argument("--part", choices=PARTS, help="run one part in this process")
    parser.add_argument("--no-check", action="store_true",
                        help="print the figures; do not exit 1 when a target is missed")
    args = parser.parse_args(argv)

    if args.part:
        ok = run_part(args.part, args)
        sys.stdout.flush()
        return 0 if ok or args.no_check else 1
    print("bench_scale: concurrency, memory per in-flight exit, leaks")
    print(f"  machine: {machine()}")
    # Each part in a fresh process, so one part's memory does not hide another's.
    passed = [f"--concurrent={args.concurrent}", f"--sequential={args.sequential}",
              f"--exporter={args.exporter}", *(["--no-check"] if args.no_check else [])]
    code = 0
    for part in PARTS:
        if part == "sequential" and not args.sequential:
            continue
        sys.stdout.flush()
        done = subprocess.run([sys.executable, os.path.abspath(__file__), *passed,
                               f"--part={part}"], check=False)
        if done.returncode:
            print(f"  [{part}] exit code {done.returncode} (a target missed or an error)")
            code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
