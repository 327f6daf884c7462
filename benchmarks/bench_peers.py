"""Peers, side by side: BoundedRetryExecutor against tenacity and stamina.

tenacity (``AsyncRetrying``) and stamina (``retry_context``) are benchmark-only dependencies
(the ``bench`` extra); exitguard never imports them.

1. Overhead per attempt: the same operation, which fails at once with ConnectionError, is
   retried N times (default 2,000) with no backoff to speak of (0 for the peers; ours needs
   a positive one: 1 ns) and every library's logging and instrumentation off. Reported as
   microseconds per attempt, with a hand-written ``try/except`` loop as the floor, and the
   ratios ours / peer. Ours also puts a per-attempt timeout around each attempt (the peers
   have none): that is part of its cost.
2. Deadline overshoot when the total budget is the stopping condition: an operation that
   fails after 50 ms, exponential backoff 0.1 s x2 (no jitter, max 2 s), budgets 0.3 to
   2.5 s. tenacity ``stop_after_delay`` (and stamina's ``timeout``, built on it) checks the
   budget only after an attempt, so it sleeps a whole backoff past it and runs one more
   attempt; tenacity ``stop_before_delay`` gives up early instead, leaving budget unused.
   Ours cuts the last backoff to the time left and never starts an attempt that cannot
   finish: it ends at the budget.
3. An operation that hangs: ours bounds each attempt by the time left; the peers wait for
   the attempt forever (capped here at budget + 3 s).

    .venv/bin/python benchmarks/bench_peers.py
    .venv/bin/python benchmarks/bench_peers.py --attempts 2000 --repeat 7

Exits 1 when exitguard misses a budget by more than 20 ms (``--no-check`` to only print).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from importlib.metadata import version

from bench_deadline_load import machine
from exitguard import BoundedRetryExecutor, ErrorClass, RetryExhaustedError, RetryPolicy

try:
    import stamina
    import tenacity
    from stamina.instrumentation import set_on_retry_hooks
except ImportError as exc:  # pragma: no cover - the bench extra is missing
    print(f"bench_peers: needs the benchmark-only peers: pip install -e '.[bench]' ({exc})")
    sys.exit(0)

Operation = Callable[[], Awaitable[None]]
Runner = Callable[[Operation], Awaitable[None]]


async def fail_at_once() -> None:
    raise ConnectionError("connection refused")


async def fail_after_50ms() -> None:
    await asyncio.sleep(0.05)
    raise ConnectionError("connection refused")


async def hang() -> None:
    await asyncio.get_running_loop().create_future()


# -- the libraries, configured alike ---------------------------------------------------------


def ours(policy: RetryPolicy) -> Runner:
    executor = BoundedRetryExecutor(policy)

    async def run(operation: Operation) -> None:
        with contextlib.suppress(RetryExhaustedError):
            await executor.execute(operation)

    return run


def ours_overhead(attempts: int) -> Runner:
    return ours(RetryPolicy(
        max_attempts=attempts, initial_backoff=1e-9, max_backoff=1e-9, backoff_multiplier=1.0,
        total_timeout=1e6, attempt_timeout=1e6, min_attempt_time=0.0,
        retryable=frozenset({ErrorClass.NETWORK}),
    ))


def tenacity_runner(**options: object) -> Runner:
    async def run(operation: Operation) -> None:
        try:
            async for attempt in tenacity.AsyncRetrying(
                retry=tenacity.retry_if_exception_type(ConnectionError), reraise=True,
                **options,  # type: ignore[arg-type]
            ):
                with attempt:
                    await operation()
        except ConnectionError:
            pass

    return run


def stamina_runner(**options: object) -> Runner:
    async def run(operation: Operation) -> None:
        try:
            async for attempt in stamina.retry_context(
                on=ConnectionError, wait_jitter=0.0, **options,  # type: ignore[arg-type]
            ):
                with attempt:
                    await operation()
        except ConnectionError:
            pass

    return run


def floor(attempts: int) -> Runner:
    """A hand-written loop: the least a retry can cost on this loop."""

    async def run(operation: Operation) -> None:
        for _ in range(attempts):
            try:
                await operation()
            except ConnectionError:
                await asyncio.sleep(0)

    return run


# -- 1. overhead per attempt ----------------------------------------------------------------


async def time_runner(runner: Runner, attempts: int, repeat: int) -> float:
    """Median microseconds per attempt over ``repeat`` runs of ``attempts`` attempts."""
    samples = []
    calls = 0

    async def counted() -> None:
        nonlocal calls
        calls += 1
        await fail_at_once()

    for _ in range(repeat):
        calls = 0
        started = time.perf_counter()
        await runner(counted)
        elapsed = time.perf_counter() - started
        assert calls == attempts, (calls, attempts)
        samples.append(elapsed / attempts * 1e6)
    return statistics.median(samples)


async def overhead(attempts: int, repeat: int) -> None:
    print(f"\n  1. overhead per attempt: {attempts} attempts of an operation that fails at once,"
          f" no backoff, logging off; median of {repeat} runs")
    candidates: list[tuple[str, Runner]] = [
        ("hand-written try/except loop (floor)", floor(attempts)),
        ("exitguard BoundedRetryExecutor", ours_overhead(attempts)),
        ("tenacity AsyncRetrying", tenacity_runner(
            stop=tenacity.stop_after_attempt(attempts), wait=tenacity.wait_none())),
        ("stamina retry_context", stamina_runner(
            attempts=attempts, timeout=None, wait_initial=0.0, wait_max=0.0)),
    ]
    results: dict[str, float] = {}
    for name, runner in candidates:  # warm up, then measure
        await time_runner(runner, attempts, 1)
        results[name] = await time_runner(runner, attempts, repeat)
    base = results["hand-written try/except loop (floor)"]
    mine = results["exitguard BoundedRetryExecutor"]
    for name, micros in results.items():
        print(f"     {name:40s} {micros:7.2f} us/attempt   (floor + {micros - base:6.2f} us)")
    for peer in ("tenacity AsyncRetrying", "stamina retry_context"):
        print(f"     ratio exitguard / {peer.split()[0]:8s}: {mine / results[peer]:.2f}"
              f"  (overhead above the floor: {(mine - base) / (results[peer] - base):.2f})")


# -- 2. overshoot when the budget stops the retry ---------------------------------------------


def budget_runners(budget: float) -> list[tuple[str, Runner]]:
    return [
        ("exitguard (total_timeout)", ours(RetryPolicy(
            max_attempts=10_000, initial_backoff=0.1, backoff_multiplier=2.0, max_backoff=2.0,
            total_timeout=budget, attempt_timeout=10.0, min_attempt_time=0.05,
            retryable=frozenset({ErrorClass.NETWORK}),
        ))),
        ("tenacity stop_after_delay", tenacity_runner(
            stop=tenacity.stop_after_delay(budget),
            wait=tenacity.wait_exponential(multiplier=0.1, exp_base=2, max=2.0))),
        ("tenacity stop_before_delay", tenacity_runner(
            stop=tenacity.stop_before_delay(budget),
            wait=tenacity.wait_exponential(multiplier=0.1, exp_base=2, max=2.0))),
        ("stamina timeout", stamina_runner(
            attempts=None, timeout=budget, wait_initial=0.1, wait_max=2.0, wait_exp_base=2)),
    ]


async def stop_time(runner: Runner, operation: Operation, budget: float, cap: float) -> float:
    """Seconds from the start to the moment the retry gave up (``inf`` if cut at ``cap``)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with asyncio.timeout(cap):
            await runner(operation)
    except TimeoutError:
        return float("inf")
    return loop.time() - started


OURS_TOLERANCE_MS = 20.0


async def overshoot(budgets: Sequence[float], repeat: int) -> bool:
    print("\n  2. overshoot past the total budget (ms; negative = gave up early, leaving budget"
          " unused): operation fails after 50 ms, backoff 0.1 s x2 up to 2 s, no jitter;"
          f" worst of {repeat} runs")
    names = [name for name, _ in budget_runners(1.0)]
    header = "".join(f"{b:>9.1f} s" for b in budgets)
    print(f"     {'budget:':30s}{header}   elapsed/budget")
    table: dict[str, list[float]] = {name: [] for name in names}
    for budget in budgets:
        runs: list[Awaitable[float]] = []
        for _ in range(repeat):  # all libraries and runs of one budget side by side
            runs.extend(stop_time(runner, fail_after_50ms, budget, budget + 5.0)
                        for _, runner in budget_runners(budget))
        stopped = await asyncio.gather(*runs)
        for i, name in enumerate(names):
            mine = stopped[i::len(names)]
            table[name].append(max(mine, key=lambda t: abs(t - budget)))
    for name in names:
        cells = "".join(f"{(t - b) * 1000:+11.1f}" for t, b in zip(table[name], budgets,
                                                                     strict=True))
        ratios = [t / b for t, b in zip(table[name], budgets, strict=True)]
        print(f"     {name:30s}{cells}   {min(ratios):.2f}x .. {max(ratios):.2f}x")
    mine = table[names[0]]
    for name in names[1:]:
        extra = [(p - m) * 1000 for p, m in zip(table[name], mine, strict=True)]
        mean = statistics.mean(extra)
        print(f"     {name} vs exitguard: stops {abs(mean):.0f} ms"
              f" {'later' if mean > 0 else 'earlier'} on average"
              f" (range {min(extra):+.0f} .. {max(extra):+.0f} ms)")
    ok = all(abs(t - b) * 1000 <= OURS_TOLERANCE_MS for t, b in zip(mine, budgets, strict=True))
    print(f"     check: exitguard ends within {OURS_TOLERANCE_MS:g} ms of every budget:"
          f" {'MET' if ok else 'MISSED'}")
    return ok


async def hanging(budget: float) -> bool:
    cap = budget + 3.0
    print(f"\n  3. an operation that hangs, budget {budget:g} s (peers cut at {cap:g} s):")
    runs = [stop_time(runner, hang, budget, cap) for _, runner in budget_runners(budget)]
    stopped = await asyncio.gather(*runs)
    for (name, _), t in zip(budget_runners(budget), stopped, strict=True):
        what = (f"gave up after {t:.3f} s (overshoot {(t - budget) * 1000:+.1f} ms)"
                if t != float("inf") else f"still waiting for its first attempt at {cap:g} s")
        print(f"     {name:30s} {what}")
    ok = abs(stopped[0] - budget) * 1000 <= OURS_TOLERANCE_MS
    print(f"     check: exitguard gives up within {OURS_TOLERANCE_MS:g} ms of the budget:"
          f" {'MET' if ok else 'MISSED'}")
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attempts", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.3, 0.6, 1.0, 1.5, 2.5])
    parser.add_argument("--no-check", action="store_true",
                        help="print the figures; do not exit 1 when a check fails")
    args = parser.parse_args(argv)

    # Every library's logging and instrumentation off: the mechanism is what is compared.
    logging.getLogger("exitguard").setLevel(logging.ERROR)
    set_on_retry_hooks([])
    print("bench_peers: BoundedRetryExecutor vs tenacity vs stamina")
    print(f"  machine: {machine()}")
    print(f"  exitguard {version('exitguard')}, tenacity {version('tenacity')},"
          f" stamina {version('stamina')}")
    asyncio.run(overhead(args.attempts, args.repeat))
    bounded = asyncio.run(overshoot(args.budgets, max(1, args.repeat // 2)))
    bounded = asyncio.run(hanging(1.0)) and bounded
    sys.stdout.flush()
    return 0 if bounded or args.no_check else 1


if __name__ == "__main__":
    sys.exit(main())
