"""Run executors against scenarios in virtual time: one run, the demo, the Monte Carlo.

Every run replays a scenario's market path and venue faults against one executor:

- ``naive``: the seed's passive retry (``exitguard.sim.naive``);
- ``guarded``: a bot that calls ``ExitGuard.exit`` (the seed's exit policy: 2 attempts,
  8 s per attempt, 20 s of submissions within a 30 s deadline; the default ladder; a
  breaker opening on the 3rd consecutive failed exit, routing to the backup venue when
  the scenario has one) and, when an exit fails or is refused, signals it again on its next
  tick (1 s); when one is unresolved it waits for the guard's reconciliation;
- the guarded bot with one safeguard switched off:
  ``no-deadline`` (no total deadline; each attempt waits the seed's 60 s),
  ``no-escalation`` (a one-step ladder: limit at 1 %, the same fee every time),
  ``no-reconciliation`` (the venue's look-ups are hidden: see ``BlindVenue``),
  ``no-breaker`` (a breaker that never opens, so no routing to the backup venue).

What a run reports comes from the venues' ground truth (the ``Ledger``), not from what the
executor believed: the realized loss counts the position's own size at the prices it really
sold at, plus any unsold remainder marked at the market price at the horizon; double-sells
are landings that sold more than the position held.

Why one module of about 520 lines: the executors, one run and the Monte Carlo share the same
run record and seeding rules (a seed must replay the same figures in one process or many);
split, those rules would be spread over files that must change together.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import itertools
import logging
import math
import multiprocessing
import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._validate import whole
from ..breaker import CircuitBreaker
from ..guard import ExitGuard
from ..halt import TradingHalt
from ..hooks import Hooks
from ..outcome import ExitStatus
from ..policy import EscalationLadder, EscalationStep, RetryPolicy
from ..venue import ExitOrder, Fill, Lookup, Position, Submission, TxStatus, Venue
from ..vtime import VirtualTimeLoop
from .market import MarketPath
from .naive import NaiveConfig, naive_exit
from .scenarios import Scenario, get_scenario, random_scenario
from .venue import Ledger, SimVenue

__all__ = [
    "ABLATIONS",
    "VARIANTS",
    "VARIANT_LABELS",
    "BlindVenue",
    "DemoResult",
    "MonteCarloResult",
    "RunResult",
    "Summary",
    "build_guard",
    "guarded_exit",
    "percentile",
    "run_demo",
    "run_monte_carlo",
    "run_variant",
]

VARIANTS: tuple[str, ...] = (
    "naive", "guarded", "no-deadline", "no-escalation", "no-reconciliation", "no-breaker",
)
ABLATIONS: tuple[str, ...] = VARIANTS[2:]
VARIANT_LABELS: dict[str, str] = {
    "naive": "naive (seed)",
    "guarded": "exitguard",
    "no-deadline": "guard, no deadline",
    "no-escalation": "guard, no escalation",
    "no-reconciliation": "guard, no reconciliation",
    "no-breaker": "guard, no breaker",
}

#: How long after its horizon a run's market path goes on (late landings are priced too).
_TAIL = 120.0
#: "No deadline" still needs a finite number: a year.
_NO_DEADLINE = 365 * 24 * 3600.0
#: The seed's confirmation timeout, which is what an attempt waits without a deadline.
_SEED_CONFIRM_TIMEOUT = 60.0
#: How long the guarded bot waits before signalling a failed exit again (its price tick).
BOT_RETRY_AFTER = 1.0

_DUST = 1e-9


class BlindVenue:
    """A venue whose look-ups are hidden: the guard without reconciliation.

    The core always reconciles a timed-out submission with ``venue.lookup`` and has no
    switch to stop it, so the ablation lives here: every look-up answers EXPIRED, which is
    the seed's assumption that a transaction it stopped waiting for did not land. The guard
    then resubmits at once, and a transaction that lands anyway sells twice.
    """

    def __init__(self, inner: SimVenue) -> None:
        self.inner = inner
        self.name = inner.name

    async def price(self, position: Position) -> float:
        return await self.inner.price(position)

    async def submit(self, order: ExitOrder) -> Submission:
        return await self.inner.submit(order)

    async def confirm(self, submission: Submission) -> Fill:
        return await self.inner.confirm(submission)

    async def lookup(self, submission: Submission) -> Lookup:
        return Lookup(TxStatus.EXPIRED)


def build_guard(
    variant: str,
    primary: SimVenue,
    fallback: SimVenue | None = None,
    *,
    name: str = "sim",
    halt: TradingHalt | None = None,
    hooks: Hooks | Sequence[Hooks] | None = None,
    breaker_threshold: int = 3,
    breaker_cooldown: float = 30.0,
) -> ExitGuard:
    """The guard for a variant ("guarded" or one of ``ABLATIONS``)."""
    if variant not in VARIANTS or variant == "naive":
        raise ValueError(f"not a guard variant: {variant!r}")
    policy = RetryPolicy.exit_policy()
    deadline = 30.0
    ladder = EscalationLadder.default()
    threshold = breaker_threshold
    venues: list[Venue] = [primary] if fallback is None else [primary, fallback]
    if variant == "no-deadline":
        policy = dataclasses.replace(policy, total_timeout=_NO_DEADLINE,
                                     attempt_timeout=_SEED_CONFIRM_TIMEOUT)
        deadline = _NO_DEADLINE
    elif variant == "no-escalation":
        first = ladder.steps[0]
        ladder = EscalationLadder(
            (EscalationStep(first.mode, first.max_slippage_bps, first.priority_fee),),
            fee_multiplier=1.0, max_slippage_bps=first.max_slippage_bps,
        )
    elif variant == "no-reconciliation":
        venues = [BlindVenue(v) if isinstance(v, SimVenue) else v for v in venues]
    elif variant == "no-breaker":
        threshold = 2**31
    breaker = CircuitBreaker(threshold, name=primary.name, cooldown=breaker_cooldown)
    return ExitGuard(
        venues[0], policy=policy, deadline=deadline, ladder=ladder, breaker=breaker,
        halt=halt, hooks=hooks, name=name, fallback_venues=tuple(venues[1:]),
    )


@dataclass(slots=True)
class BotResult:
    """What the guarded bot believes happened."""

    closed: bool
    exits: int
    attempts: int
    statuses: list[ExitStatus] = field(default_factory=list)
    known_at: float | None = None


async def guarded_exit(
    guard: ExitGuard,
    position: Position,
    *,
    signal_price: float,
    until: float,
    retry_after: float = BOT_RETRY_AFTER,
    reason: str = "stop_loss",
) -> BotResult:
    """A bot's exit through the guard, signalled again after each failure until ``until``.

    Every signal exits the same position: the guard keeps what earlier exits of it sold (late
    landings included) and sends only the rest. An UNRESOLVED exit is waited for (the guard
    reconciles it in the background) before the bot signals again.
    """
    loop = asyncio.get_running_loop()
    result = BotResult(closed=False, exits=0, attempts=0)
    try:
        while loop.time() < until:
            outcome = await guard.exit(position, signal_price=signal_price, reason=reason)
            result.exits += 1
            result.attempts += outcome.attempts
            result.statuses.append(outcome.status)
            if outcome.status is ExitStatus.UNRESOLVED:
                await guard.drain(timeout=max(0.0, until - loop.time()))
            if guard.sold(position.id) >= position.size * (1 - _DUST):
                result.closed = True
                result.known_at = loop.time()
                break
            await asyncio.sleep(retry_after)
    finally:
        await guard.aclose()
    return result


@dataclass(frozen=True, slots=True)
class RunResult:
    """One executor's run, by the ground truth. Times are seconds after the signal."""

    variant: str
    loss_pct: float
    exit_time_s: float | None  # when the position was fully sold; None: not by the horizon
    known_at_s: float | None  # when the executor believed it closed
    attempts: int
    sent: int
    double_sells: int
    oversold: float
    avg_price: float | None
    exits: int
    statuses: tuple[str, ...]

    @property
    def failed(self) -> bool:
        """Not fully sold by the horizon."""
        return self.exit_time_s is None


def _position(scenario: Scenario, position_id: str = "pos-1") -> Position:
    return Position(position_id, scenario.symbol, scenario.size, scenario.entry_price)


async def run_variant(
    scenario: Scenario,
    market: MarketPath,
    variant: str,
    venue_seed: int,
) -> RunResult:
    """Run one executor against ``scenario`` on ``market``, in the running loop's time."""
    loop = asyncio.get_running_loop()
    origin = loop.time()
    until = origin + scenario.horizon
    ledger = Ledger()
    position = _position(scenario)
    ledger.open(position)
    seeds = random.Random(venue_seed)
    primary = SimVenue(scenario.primary, rng=random.Random(seeds.getrandbits(64)),
                       ledger=ledger, market=market, origin=origin)
    fallback_seed = seeds.getrandbits(64)
    if variant == "naive":
        naive = await naive_exit(primary, position, config=NaiveConfig(), until=until)
        attempts, exits = naive.attempts, 1
        statuses: tuple[str, ...] = ("closed" if naive.closed else "open",)
        known = naive.elapsed_s if naive.closed else None
    else:
        fallback = None
        if scenario.fallback is not None:
            fallback = SimVenue(scenario.fallback, rng=random.Random(fallback_seed),
                                ledger=ledger, market=market, origin=origin)
        guard = build_guard(variant, primary, fallback)
        bot = await guarded_exit(guard, position, signal_price=scenario.signal_price,
                                 until=until)
        attempts, exits = bot.attempts, bot.exits
        statuses = tuple(str(s) for s in bot.statuses)
        known = None if bot.known_at is None else bot.known_at - origin
    truth = ledger.truth(position)
    closed_at = truth.closed_at
    exit_time = None if closed_at is None or closed_at > until else closed_at - origin
    mark = market.price(scenario.horizon)
    pnl = truth.pnl + (position.size - truth.sold) * position.pnl_per_unit(mark)
    loss_pct = -100.0 * pnl / (position.size * position.entry_price)
    return RunResult(
        variant=variant,
        loss_pct=loss_pct,
        exit_time_s=exit_time,
        known_at_s=known,
        attempts=attempts,
        sent=truth.sent,
        double_sells=truth.double_sells,
        oversold=truth.oversold,
        avg_price=truth.avg_price,
        exits=exits,
        statuses=statuses,
    )


# -- the demo -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DemoResult:
    scenario: Scenario
    seed: int
    naive: RunResult
    guarded: RunResult
    wall_s: float
    market: MarketPath


def _market(scenario: Scenario, seed: int) -> MarketPath:
    return scenario.market.path(scenario.horizon + _TAIL, random.Random(seed))


def run_demo(scenario: str | Scenario = "incident", seed: int = 1) -> DemoResult:
    """Naive and guarded against the same scenario, price path and fault seed."""
    chosen = get_scenario(scenario) if isinstance(scenario, str) else scenario
    seeds = random.Random(seed)
    market = _market(chosen, seeds.getrandbits(64))
    venue_seed = seeds.getrandbits(64)

    async def both() -> tuple[RunResult, RunResult]:
        naive = await run_variant(chosen, market, "naive", venue_seed)
        guarded = await run_variant(chosen, market, "guarded", venue_seed)
        return naive, guarded

    started = time.perf_counter()
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        naive, guarded = runner.run(both())
    return DemoResult(chosen, seed, naive, guarded, time.perf_counter() - started, market)


# -- the Monte Carlo ------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0-100) of ``values``; inf sorts last."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True, slots=True)
class Summary:
    """One variant's figures over all runs. Exit-time percentiles are inf past the horizon."""

    variant: str
    runs: int
    loss_p50: float
    loss_p95: float
    loss_p99: float
    loss_mean: float
    exit_p50: float
    exit_p95: float
    exit_p99: float
    failure_rate: float
    double_sell_rate: float
    double_sells: int
    attempts_mean: float
    sent_mean: float

    @classmethod
    def of(cls, variant: str, results: Sequence[RunResult]) -> Summary:
        n = len(results)
        losses = [r.loss_pct for r in results]
        times = [math.inf if r.exit_time_s is None else r.exit_time_s for r in results]
        return cls(
            variant=variant,
            runs=n,
            loss_p50=percentile(losses, 50),
            loss_p95=percentile(losses, 95),
            loss_p99=percentile(losses, 99),
            loss_mean=sum(losses) / n if n else math.nan,
            exit_p50=percentile(times, 50),
            exit_p95=percentile(times, 95),
            exit_p99=percentile(times, 99),
            failure_rate=sum(1 for r in results if r.failed) / n if n else math.nan,
            double_sell_rate=sum(1 for r in results if r.double_sells) / n if n else math.nan,
            double_sells=sum(r.double_sells for r in results),
            attempts_mean=sum(r.attempts for r in results) / n if n else math.nan,
            sent_mean=sum(r.sent for r in results) / n if n else math.nan,
        )

    def as_dict(self) -> dict[str, Any]:
        def number(value: float) -> float | None:
            return None if not math.isfinite(value) else round(value, 6)

        return {
            "runs": self.runs,
            "loss_pct": {"p50": number(self.loss_p50), "p95": number(self.loss_p95),
                         "p99": number(self.loss_p99), "mean": number(self.loss_mean)},
            "exit_time_s": {"p50": number(self.exit_p50), "p95": number(self.exit_p95),
                            "p99": number(self.exit_p99)},
            "failure_rate": number(self.failure_rate),
            "double_sell_rate": number(self.double_sell_rate),
            "double_sells": self.double_sells,
            "attempts_mean": number(self.attempts_mean),
            "transactions_sent_mean": number(self.sent_mean),
        }


@dataclass(frozen=True, slots=True)
class MonteCarloResult:
    runs: int
    seed: int
    horizon: float
    variants: tuple[str, ...]
    results: dict[str, list[RunResult]]
    wall_s: float

    def summaries(self) -> list[Summary]:
        return [Summary.of(v, self.results[v]) for v in self.variants]

    def as_dict(self) -> dict[str, Any]:
        """Machine-readable figures; the same seed gives the same dict (no wall time in it)."""
        return {
            "runs": self.runs,
            "seed": self.seed,
            "horizon_s": self.horizon,
            "notes": {
                "loss_pct": "realized loss in % of the entry value; any unsold remainder is "
                            "marked at the market price at the horizon",
                "exit_time_s": "seconds from the exit signal until the position was really "
                               "sold; null: not sold within the horizon",
                "failure_rate": "share of runs not fully sold within the horizon",
                "double_sell_rate": "share of runs that sold more than the position held",
            },
            "variants": {s.variant: s.as_dict() for s in self.summaries()},
        }


def _run_one(run_seed: int, horizon: float, variants: tuple[str, ...]) -> list[RunResult]:
    """One Monte Carlo run (every variant in turn) in a fresh virtual-time loop starting at
    0, so its results depend only on ``run_seed``: not on which process ran it, nor on the
    runs before it (their leftover background tasks are cancelled with their loop)."""
    rng = random.Random(run_seed)
    scenario = random_scenario(rng, horizon=horizon)
    market = _market(scenario, rng.getrandbits(64))
    venue_seed = rng.getrandbits(64)

    async def one() -> list[RunResult]:
        return [await run_variant(scenario, market, variant, venue_seed) for variant in variants]

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(one())


def _run_chunk(run_seeds: Sequence[int], horizon: float,
               variants: tuple[str, ...]) -> list[list[RunResult]]:
    """A worker process's share: runs in order (module level, so it pickles)."""
    logging.getLogger("exitguard").setLevel(logging.CRITICAL + 1)  # as the CLI's quiet mode
    return [_run_one(run_seed, horizon, variants) for run_seed in run_seeds]


#: At most this many runs per task handed to a worker process: small enough for progress
#: and balance, large enough that pickling and scheduling stay negligible (a run takes
#: about 10 ms).
_CHUNK = 25


def default_jobs() -> int:
    """Worker processes by default: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def run_monte_carlo(
    runs: int,
    seed: int,
    *,
    variants: Iterable[str] = VARIANTS,
    horizon: float = 300.0,
    progress: Callable[[int], None] | None = None,
    jobs: int | None = None,
) -> MonteCarloResult:
    """``runs`` random scenarios, each run by every variant on the same market and seed.

    Each run has its own virtual-time loop and its own seeds (drawn in order from ``seed``),
    so nothing one run does can change another's: the same seed gives the same results
    whatever ``jobs`` is. ``jobs`` worker processes share the runs (default: one per CPU;
    1 runs them all in this process). ``progress`` gets the number of runs done, in order.
    """
    whole("run_monte_carlo", "runs", runs, 1)
    if jobs is not None:
        whole("run_monte_carlo", "jobs", jobs, 1)
    chosen = tuple(variants)
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}")
    master = random.Random(seed)
    run_seeds = [master.getrandbits(64) for _ in range(runs)]
    started = time.perf_counter()
    workers = min(default_jobs() if jobs is None else jobs, runs)
    per_run: list[list[RunResult]] = []
    if workers <= 1:
        for run_seed in run_seeds:
            per_run.append(_run_one(run_seed, horizon, chosen))
            if progress is not None:
                progress(len(per_run))
    else:
        size = max(1, min(_CHUNK, runs // (4 * workers)))
        chunks = [run_seeds[i:i + size] for i in range(0, runs, size)]
        # fork where there is one: no re-import of the caller's __main__ (a script without
        # a main guard works), and workers start in milliseconds. The children only run
        # ``_run_chunk``; logging re-creates its locks after a fork.
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            for chunk in pool.map(_run_chunk, chunks, itertools.repeat(horizon),
                                  itertools.repeat(chosen)):
                for results in chunk:
                    per_run.append(results)
                    if progress is not None:
                        progress(len(per_run))
    by_variant: dict[str, list[RunResult]] = {
        variant: [results[i] for results in per_run] for i, variant in enumerate(chosen)
    }
    return MonteCarloResult(runs, seed, horizon, chosen, by_variant,
                            time.perf_counter() - started)


def scenario_position(scenario: Scenario) -> Position:
    """The position a scenario exits."""
    return _position(scenario)

