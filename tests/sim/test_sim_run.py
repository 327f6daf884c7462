"""Runs of the simulator: the naive executor, the demo's thresholds, the Monte Carlo."""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any

import pytest

from exitguard.breaker import CircuitBreaker
from exitguard.sim import (
    VARIANTS,
    BlindVenue,
    MarketPath,
    NaiveConfig,
    get_scenario,
    naive_exit,
    percentile,
    run_demo,
    run_monte_carlo,
    scenario_names,
)
from exitguard.sim.run import build_guard
from exitguard.sim.venue import Conditions, Ledger, SimVenue, VenueSpec
from exitguard.venue import OrderMode, Position, TxStatus
from exitguard.vtime import run_virtual

# The Monte Carlo fixture runs 400 simulated exits per variant in its first test: about 100 s
# on an idle 2-core machine, near 300 s (the suite's default per-test timeout) at load 9.
pytestmark = pytest.mark.timeout(1200)

FLAT = MarketPath.from_prices([95.0] * 1000)


def sim_venue(conditions: Conditions, *, ledger: Ledger | None = None, seed: int = 1,
              name: str = "sim-dex") -> SimVenue:
    return SimVenue(VenueSpec(name=name, base=conditions), rng=random.Random(seed),
                    ledger=ledger, market=FLAT, origin=0.0)


# -- the naive executor -----------------------------------------------------------------------


def test_naive_retries_the_same_order_every_poll_without_limit() -> None:
    broken = sim_venue(Conditions(permanent_error_rate=1.0, rpc_latency=0.0, send_latency=0.0))
    position = Position("p", "SOL", 10.0, 100.0)
    seen: list[tuple[OrderMode, int, int | None, float]] = []
    submit = broken.submit

    async def spy(order):  # type: ignore[no-untyped-def]
        seen.append((order.mode, order.max_slippage_bps, order.priority_fee,
                     asyncio.get_running_loop().time()))
        return await submit(order)

    broken.submit = spy  # type: ignore[method-assign]
    result = run_virtual(naive_exit(broken, position, until=300.0))
    assert not result.closed
    assert result.attempts == 30  # one every 10 s poll for 300 s: no limit but the horizon
    assert {(mode, bps, fee) for mode, bps, fee, _ in seen} == {(OrderMode.LIMIT, 100, None)}
    gaps = {round(b[3] - a[3], 6) for a, b in itertools.pairwise(seen)}
    assert gaps == {10.0}


def test_naive_waits_60_seconds_for_a_confirmation_then_sends_again() -> None:
    stalled = sim_venue(Conditions(rpc_timeout_rate=1.0, rpc_timeout_after=(500.0, 500.0),
                                   land_rate=0.0, send_latency=0.0, rpc_latency=0.0))
    result = run_virtual(naive_exit(stalled, Position("p", "SOL", 1.0, 100.0),
                                    config=NaiveConfig(max_attempts=3)))
    assert result.attempts == 3
    assert result.elapsed_s == pytest.approx(3 * 70.0)


def test_naive_double_sells_when_confirmations_time_out_while_transactions_land() -> None:
    result = run_demo("double-sell", seed=1)
    assert result.naive.double_sells >= 1
    assert result.naive.oversold > 0
    assert result.guarded.double_sells == 0


# -- the demo ---------------------------------------------------------------------------------


def test_demo_incident_meets_the_thresholds_by_default() -> None:
    result = run_demo()
    assert result.scenario.name == "incident"
    assert result.naive.loss_pct >= 15.0
    assert result.guarded.loss_pct <= 7.0
    assert result.wall_s < 5.0


@pytest.mark.parametrize("seed", range(60))
def test_demo_incident_thresholds_hold_across_seeds(seed: int) -> None:
    result = run_demo("incident", seed)
    assert result.naive.loss_pct >= 15.0, result.naive
    assert result.guarded.loss_pct <= 7.0, result.guarded
    assert result.guarded.double_sells == 0


def test_demo_losses_come_from_the_prices_really_sold_at() -> None:
    result = run_demo("incident", 3)
    entry = result.scenario.entry_price
    for run in (result.naive, result.guarded):
        assert run.exit_time_s is not None
        assert run.avg_price is not None
        assert run.loss_pct == pytest.approx(100 * (entry - run.avg_price) / entry)
        # the market really was that low when it sold
        mid = result.market.price(run.exit_time_s)
        assert run.avg_price <= mid
    assert result.naive.exit_time_s is not None
    assert result.guarded.exit_time_s is not None
    assert result.naive.exit_time_s > 60 > 20 > result.guarded.exit_time_s


def test_the_demo_is_deterministic_by_seed() -> None:
    one, two = run_demo("incident", 5), run_demo("incident", 5)
    assert (one.naive, one.guarded) == (two.naive, two.guarded)
    assert run_demo("incident", 6).naive != one.naive


@pytest.mark.parametrize("name", scenario_names())
def test_every_scenario_runs_and_the_guard_never_double_sells(name: str) -> None:
    result = run_demo(name, 2)
    assert result.guarded.double_sells == 0
    assert result.guarded.exit_time_s is not None
    assert result.guarded.loss_pct <= result.naive.loss_pct + 0.5


def test_outage_trips_the_breaker_and_routes_to_the_backup() -> None:
    result = run_demo("outage", 1)
    assert result.naive.exit_time_s is None  # the naive exit retries a permanent error forever
    assert result.guarded.statuses[-1] == "closed"
    assert result.guarded.statuses[:3] == ("failed", "failed", "failed")


def test_unknown_scenario() -> None:
    with pytest.raises(KeyError, match="unknown scenario 'nope'"):
        get_scenario("nope")


# -- variants ---------------------------------------------------------------------------------


def test_build_guard_switches_off_one_safeguard_at_a_time() -> None:
    async def main() -> None:
        primary = sim_venue(Conditions())
        backup = sim_venue(Conditions(), name="sim-dex-backup")
        full = build_guard("guarded", primary, backup)
        assert full.deadline == 30.0
        assert len(full.ladder.steps) == 2
        assert [name for name, _ in full.routes] == ["sim-dex", "sim-dex-backup"]
        assert full.breaker.failure_threshold == 3
        no_deadline = build_guard("no-deadline", primary)
        assert no_deadline.deadline > 1e6
        assert no_deadline.policy.attempt_timeout == 60.0
        flat = build_guard("no-escalation", primary)
        assert len(flat.ladder.steps) == 1
        assert flat.ladder.fee_multiplier == 1.0
        blind = build_guard("no-reconciliation", primary)
        assert [name for name, _ in blind.routes] == ["sim-dex"]
        no_breaker = build_guard("no-breaker", primary)
        assert no_breaker.breaker.failure_threshold > 1e9
        with pytest.raises(ValueError, match="not a guard variant"):
            build_guard("naive", primary)

    run_virtual(main())


def test_blind_venue_hides_lookups() -> None:
    async def main() -> TxStatus:
        inner = sim_venue(Conditions(land_rate=1.0, send_failure_rate=0.0))
        blind = BlindVenue(inner)
        assert blind.name == "sim-dex"
        from exitguard.venue import ExitOrder

        order = ExitOrder(Position("p", "SOL", 1.0, 100.0), 1.0, OrderMode.MARKET, 95.0,
                          500, 1)
        submission = await blind.submit(order)
        await asyncio.sleep(30)
        assert (await inner.lookup(submission)).status is TxStatus.LANDED
        return (await blind.lookup(submission)).status

    assert run_virtual(main()) is TxStatus.EXPIRED


# -- Monte Carlo ------------------------------------------------------------------------------


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0, float("inf")], 99) == float("inf")


def test_same_seed_same_results_and_another_seed_differs() -> None:
    one = run_monte_carlo(25, 42).as_dict()
    assert one == run_monte_carlo(25, 42).as_dict()
    assert one != run_monte_carlo(25, 43).as_dict()
    assert set(one["variants"]) == set(VARIANTS)


def test_worker_processes_give_the_same_results_as_one_process() -> None:
    # Each run has its own loop and seeds: how runs are shared among processes (and in
    # which chunks) cannot change a figure.
    one = run_monte_carlo(6, 42, jobs=1).as_dict()
    assert one == run_monte_carlo(6, 42, jobs=2).as_dict()
    with pytest.raises(ValueError, match="jobs"):
        run_monte_carlo(1, 1, jobs=0)


def test_progress_is_reported_per_run() -> None:
    ticks: list[int] = []
    run_monte_carlo(5, 1, progress=ticks.append)
    assert ticks == [1, 2, 3, 4, 5]


def test_run_monte_carlo_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="runs"):
        run_monte_carlo(0, 1)
    with pytest.raises(ValueError, match="unknown variant"):
        run_monte_carlo(1, 1, variants=("nope",))


@pytest.fixture(scope="module")
def monte_carlo() -> dict[str, Any]:
    return run_monte_carlo(400, 2024).as_dict()


def _figures(result: dict[str, Any], variant: str) -> dict[str, Any]:
    figures: dict[str, Any] = result["variants"][variant]
    return figures


def _p(figures: dict[str, Any], metric: str, q: str) -> float:
    value = figures[metric][q]
    return float("inf") if value is None else float(value)


def test_the_guard_beats_the_naive_exit(monte_carlo: dict[str, Any]) -> None:
    naive, guarded = _figures(monte_carlo, "naive"), _figures(monte_carlo, "guarded")
    assert _p(guarded, "loss_pct", "p95") < _p(naive, "loss_pct", "p95") - 5
    assert _p(guarded, "exit_time_s", "p95") < _p(naive, "exit_time_s", "p95")
    assert float(guarded["failure_rate"]) < float(naive["failure_rate"])
    assert guarded["double_sells"] == 0
    assert float(naive["double_sell_rate"]) > 0


def test_each_safeguard_is_worth_something(monte_carlo: dict[str, Any]) -> None:
    guarded = _figures(monte_carlo, "guarded")
    assert _p(_figures(monte_carlo, "no-deadline"), "exit_time_s", "p95") > _p(
        guarded, "exit_time_s", "p95")
    assert _p(_figures(monte_carlo, "no-escalation"), "loss_pct", "p95") > _p(
        guarded, "loss_pct", "p95")
    blind = _figures(monte_carlo, "no-reconciliation")
    assert float(blind["double_sell_rate"]) > 0.02
    no_breaker = _figures(monte_carlo, "no-breaker")
    assert float(no_breaker["failure_rate"]) > float(guarded["failure_rate"])
    for variant in ("guarded", "no-deadline", "no-escalation", "no-breaker"):
        assert _figures(monte_carlo, variant)["double_sells"] == 0


def test_a_breaker_that_never_opens_never_routes() -> None:
    breaker = CircuitBreaker(2**31)
    for _ in range(100):
        breaker.record_failure()
    assert breaker.allow() is not None
