"""A fleet through Redis: halt propagation across processes, the shared breaker's cost on an
exit, and what a dead Redis does to exits and entries.

One real redis-server on a free loopback port (no persistence) for the whole run:

1. **Propagation**: two bot processes (tests/support/fleet_bot.py) share the halt with this
   process, which halts and resumes ``--changes`` times. A latency runs from the moment before
   ``halt()``/``resume()`` is called here to the moment each bot's halt listener ran
   (``time.monotonic()``: one CLOCK_MONOTONIC on one machine): Redis write, publish,
   the bot's subscriber thread, its ``TradingHalt`` refresh. p50 / p99 / max over both bots.
2. **Cost on an exit**: single-attempt exits of an ``ExitGuard`` over an instant venue, with
   a local breaker and with a shared one (``RedisBreakerBackend``: two scripts per exit),
   interleaved round by round; the median per exit of each, side by side, and the breaker
   calls alone (``allow`` + ``record_success``).
3. **Redis down** (killed): the same exits with the shared breaker (it decides alone, and
   tries Redis again once a second), ``check_entry`` of the shared halt (refused: fail safe),
   and how many calls reached for Redis.

    .venv/bin/python benchmarks/bench_fleet.py [--changes 200] [--exits 500] [--rounds 9]
                                               [--no-check]

Targets: propagation p99 < 100 ms; the shared breaker adds < 1 ms to a healthy exit. The
first figure printed is the control: a Redis round trip (PING) on this machine, now, with the
load average: on a loaded machine every figure here moves with it. Exits 1 when one is
missed (``--no-check`` to only print); without redis-server or redis-py it says so and exits 0
(in CI, CI=true, it fails).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the test helpers import as tests.support

import pytest  # noqa: E402  (for the skip raised by require_binary)
from tests.support.fleet import HALT_KEY, FleetBot  # noqa: E402
from tests.support.servers import RedisServer, in_ci, redis_server  # noqa: E402

PROPAGATION_P99_TARGET = 0.100
BREAKER_ADDED_TARGET = 0.001


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def propagation(server: RedisServer, workdir: Path, changes: int) -> list[float]:
    from exitguard.fleet import shared_halt

    os.environ["EXITGUARD_HALT_KEY"] = HALT_KEY
    bots = [FleetBot(f"listener-{i}", server.url, workdir, ("bench",)) for i in (1, 2)]
    halt = shared_halt(server.url, ["bench"], namespace="fleet")
    lags: list[float] = []
    try:
        for bot in bots:
            bot.start()
        for change in range(changes):
            halting = change % 2 == 0
            event = "halted" if halting else "resumed"
            started = time.monotonic()
            if halting:
                halt.halt(f"bench {change}", actor="bench")
            else:
                halt.resume("bench", f"bench {change}")
            for bot in bots:
                heard = bot.wait(event, timeout=30)
                lags.append(heard["mono"] - started)
    finally:
        for bot in bots:
            bot.stop()
        close = getattr(halt.store, "close", None)
        if close is not None:
            close()
    return lags


def verify_cost(length: int) -> float:
    """Seconds per record to decode and verify a chain of ``length`` records, as
    ``TradingHalt`` does at a process's first load (a reload verifies only new records)."""
    import json

    from exitguard.halt import HaltRecord, seal, verify

    key = b"k" * 32
    chain = seal(key, [HaltRecord(i % 2 == 0, f"bench {i}", "bench", time.time(), ("bench",),
                                  "bench") for i in range(length)])
    payload = [json.dumps(r) for r in chain]
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        verify(key, [json.loads(p) for p in payload])
        runs.append((time.perf_counter() - started) / length)
    return statistics.median(runs)


def reload_cost(lengths: tuple[int, ...]) -> dict[int, float]:
    """Seconds per change (a write, then another process's reload) in one process over a
    memory store, at each chain length: what the halt itself costs, without Redis."""
    import logging

    from exitguard.halt import MemoryHaltStore, TradingHalt

    logging.disable(logging.CRITICAL)  # a halt logs at every change
    try:
        store = MemoryHaltStore()
        writer, reader = (TradingHalt(["bench"], store=store, key=b"k" * 32, poll_interval=0)
                          for _ in range(2))
        out: dict[int, float] = {}
        for length in lengths:
            runs = []
            while len(writer.history) < length:
                started = time.perf_counter()
                if writer.is_halted:
                    writer.resume("bench", "bench")
                else:
                    writer.halt("bench")
                _ = reader.is_halted
                runs.append(time.perf_counter() - started)
            out[length] = statistics.median(runs[-10:])
        return out
    finally:
        logging.disable(logging.NOTSET)


def seconds_per_exit(make_guard: Callable[[], object], exits: int) -> float:
    """Seconds per exit of ``exits`` single-attempt exits over an instant venue."""
    from exitguard import ExitGuard, Position

    guard = make_guard()
    assert isinstance(guard, ExitGuard)

    async def run() -> float:
        started = time.perf_counter()
        for i in range(exits):
            position = Position(f"p{i}", "SOL", 1.0, 100.0)
            outcome = await guard.exit(position, signal_price=95.0)
            assert outcome.status.value == "closed", outcome
        return (time.perf_counter() - started) / exits

    return asyncio.run(run())


class InstantVenue:
    """Every call returns at once (benchmarks/bench_overhead.py's): what is measured is
    exitguard's own work, and the breaker's."""

    name = "instant"

    def __init__(self) -> None:
        self._n = 0

    async def price(self, position: Any) -> float:
        return 95.0

    async def submit(self, order: Any) -> Any:
        from exitguard.venue import Submission

        self._n += 1
        return Submission(f"tx{self._n}", order, None)

    async def confirm(self, submission: Any) -> Any:
        from exitguard.venue import Fill

        return Fill(submission.tx_id, submission.order.size, 94.9)

    async def lookup(self, submission: Any) -> Any:
        from exitguard.venue import Fill, Lookup, TxStatus

        return Lookup(TxStatus.LANDED, Fill(submission.tx_id, submission.order.size, 94.9))


def instant_guard(breaker: object) -> object:
    from exitguard import ExitGuard
    from exitguard.breaker import CircuitBreaker

    assert isinstance(breaker, CircuitBreaker)
    return ExitGuard(InstantVenue(), breaker=breaker)


def breaker_calls(breaker: object, calls: int) -> float:
    from exitguard.breaker import CircuitBreaker

    assert isinstance(breaker, CircuitBreaker)
    started = time.perf_counter()
    for _ in range(calls):
        breaker.record_success(breaker.allow())
    return (time.perf_counter() - started) / calls


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=100, help="halts + resumes")
    parser.add_argument("--exits", type=int, default=500, help="exits per round")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--no-check", action="store_true")
    args = parser.parse_args(argv)
    try:
        import redis  # noqa: F401
    except ImportError:
        print("redis-py is not installed (pip install -e '.[redis]'): nothing measured")
        return 1 if in_ci() else 0

    from exitguard.breaker import CircuitBreaker
    from exitguard.errors import TradingHalted
    from exitguard.fleet import RedisBreakerBackend, shared_halt

    # The halts and the outage would log a line each: the figures are the output here.
    logging.disable(logging.CRITICAL)
    print(f"bench_fleet: {time.strftime('%Y-%m-%d', time.gmtime())}, Python"
          f" {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}")
    missed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        workdir = Path(tmp)
        try:
            server_cm = redis_server(workdir)
            server = server_cm.__enter__()
        except pytest.skip.Exception as exc:
            print(f"skipped: {exc}")
            return 0
        try:
            # The control: one Redis round trip (PING) on this machine, now.
            import redis as redis_py

            client = redis_py.Redis.from_url(server.url)
            pings = []
            for _ in range(500):
                started = time.perf_counter()
                client.ping()
                pings.append(time.perf_counter() - started)
            rtt = statistics.median(pings)
            print(f"control: one Redis round trip (PING) {rtt * 1e6:.0f} us median,"
                  f" p99 {percentile(pings, 0.99) * 1e6:.0f} us; load average"
                  f" {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

            # 1. propagation
            lags = propagation(server, workdir, args.changes)
            p50, p99 = percentile(lags, 0.5), percentile(lags, 0.99)
            fifth = max(2, len(lags) // 5)
            print(f"\nhalt propagation across processes ({len(lags)} deliveries: {args.changes}"
                  f" halts/resumes x 2 bots; the audit chain grows to {args.changes} records,"
                  " verified in full once per process, then only the new records at each load)")
            print(f"  p50 {p50 * 1000:7.2f} ms   p99 {p99 * 1000:7.2f} ms   max"
                  f" {max(lags) * 1000:7.2f} ms   target p99 < 100 ms:"
                  f" {'ok' if p99 < PROPAGATION_P99_TARGET else 'MISSED'}")
            for label, part in (("first fifth (short chain)", lags[:fifth]),
                                 ("last fifth (long chain)", lags[-fifth:])):
                print(f"    {label:26} p50 {percentile(part, 0.5) * 1000:7.2f} ms   p99"
                      f" {percentile(part, 0.99) * 1000:7.2f} ms")
            per_record = verify_cost(args.changes)
            print(f"  control: exitguard.halt.verify of a {args.changes}-record chain"
                  f" {per_record * args.changes * 1000:.1f} ms ({per_record * 1e6:.0f} us a"
                  " record): a process's first load; a propagation now verifies about one new"
                  " record twice (writer, then listener)")
            costs = reload_cost((100, 1000))
            print("  control: in one process over a memory store, a change (write + another"
                  " TradingHalt's reload) " + ", ".join(
                      f"{ms * 1000:.2f} ms at {n} records" for n, ms in costs.items()))
            if p99 >= PROPAGATION_P99_TARGET:
                missed.append("propagation p99")

            # 2. the shared breaker's cost on an exit
            backend = RedisBreakerBackend(server.url, namespace="bench")
            polling = RedisBreakerBackend(server.url, namespace="bench", push=False)
            assert backend.subscribed is None  # the subscription starts with a breaker
            setups: dict[str, Callable[[], CircuitBreaker]] = {
                "local breaker": lambda: CircuitBreaker(name="local"),
                "shared, push live": lambda: CircuitBreaker(name="shared", shared=backend),
                "shared, every call asks": lambda: CircuitBreaker(name="polled",
                                                                  shared=polling),
            }
            CircuitBreaker(name="shared", shared=backend)
            subscribed = backend.subscribed
            assert subscribed is not None
            assert subscribed.wait(10)
            per_exit: dict[str, list[float]] = {name: [] for name in setups}
            per_call: dict[str, list[float]] = {name: [] for name in setups}
            round_trips: list[float] = []
            for _ in range(args.rounds):
                started = time.perf_counter()
                for _ in range(200):
                    client.ping()
                round_trips.append((time.perf_counter() - started) / 200)
                for name, make in setups.items():
                    per_exit[name].append(seconds_per_exit(
                        lambda make=make: instant_guard(make()), args.exits))
                    per_call[name].append(breaker_calls(make(), args.exits))
            local = statistics.median(per_exit["local breaker"])
            local_call = statistics.median(per_call["local breaker"])
            print(f"\nshared breaker on a healthy exit ({args.exits} exits x {args.rounds}"
                  " rounds, medians, Redis on loopback)")
            print(f"  {'':26}{'us/exit':>9}{'added us':>10}{'ratio':>8}"
                  f"{'breaker calls us':>18}")
            for name in setups:
                value = statistics.median(per_exit[name])
                call = statistics.median(per_call[name])
                print(f"  {name:26}{value * 1e6:9.1f}{(value - local) * 1e6:+10.1f}"
                      f"{value / local:7.2f}x{call * 1e6:12.1f} ({call / local_call:.0f}x)")
            rtt = statistics.median(round_trips)
            print(f"  {'control: a PING':26}{rtt * 1e6:9.1f}   (one Redis round trip,"
                  " measured in the same rounds)")
            added = statistics.median(per_exit["shared, push live"]) - local
            worst = statistics.median(per_exit["shared, every call asks"]) - local
            print(f"  target: < 1000 us added to a healthy exit (push live, the default):"
                  f" {added * 1e6:+.1f} us {'ok' if added < BREAKER_ADDED_TARGET else 'MISSED'};"
                  f" every call asking (no push: two scripts) adds"
                  f" {worst / rtt:.1f} PINGs' worth ({worst * 1e6:.0f} us)")
            if added >= BREAKER_ADDED_TARGET:
                missed.append("shared breaker cost")

            # 3. Redis down
            halt = shared_halt(server.url, ["bench"], namespace="bench-down")
            breaker = CircuitBreaker(name="down", shared=backend)
            up_entry = time.perf_counter()
            for _ in range(args.exits):
                halt.check_entry()
            up_entry = (time.perf_counter() - up_entry) / args.exits
            server.kill()
            time.sleep(0.2)  # the subscriber notices
            down = seconds_per_exit(lambda: instant_guard(breaker), args.exits)
            refused = 0
            started = time.perf_counter()
            for _ in range(args.exits):
                try:
                    halt.check_entry()
                except TradingHalted:
                    refused += 1
            down_entry = (time.perf_counter() - started) / args.exits
            print(f"\nRedis down (killed): {args.exits} exits, {args.exits} entry checks")
            print(f"  exits: all closed, {down * 1e6:.1f} us/exit ({down / local:.2f}x the local"
                  f" breaker); Redis tried {breaker.shared_failures} time(s) (once per"
                  f" {breaker.shared_retry:g} s), the breaker decided alone")
            print(f"  entries: {refused} of {args.exits} refused (fail safe);"
                  f" check_entry {down_entry * 1e6:.1f} us (with Redis up:"
                  f" {up_entry * 1e6:.1f} us, from the pushed version);"
                  f" halt store failures counted: {halt.store_failures}")
            if refused != args.exits:
                missed.append("entries not halted while Redis is down")
            backend.close()
            polling.close()
            close = getattr(halt.store, "close", None)
            if close is not None:
                close()
        finally:
            server_cm.__exit__(None, None, None)
    if missed and not args.no_check:
        print(f"\nMISSED: {', '.join(missed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
