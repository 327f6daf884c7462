"""The simulator's models: the price process and the flaky venue, by their statistics."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import random
import statistics

import pytest

from exitguard.errors import (
    ErrorClass,
    InvalidAccount,
    NetworkError,
    RpcTimeout,
    SlippageExceeded,
    TxExpired,
    default_classifier,
)
from exitguard.sim.market import MarketPath, MarketSpec, Regime
from exitguard.sim.venue import Conditions, Ledger, SimTx, SimVenue, VenueSpec, Window
from exitguard.venue import ExitOrder, Fill, Lookup, OrderMode, Position, Submission, TxStatus
from exitguard.vtime import run_virtual

POSITION = Position("p", "SOL", 10.0, 100.0)
FLAT = MarketPath.from_prices([95.0] * 1000)


def order(size: float = 10.0, *, fee: int | None = None, slippage: int = 500,
          valid_for: float | None = None, reference: float = 95.0,
          position: Position = POSITION) -> ExitOrder:
    return ExitOrder(position, size, OrderMode.MARKET, reference, slippage, 1, fee, valid_for)


def venue(base: Conditions | None = None, *, seed: int = 1, market: MarketPath = FLAT,
          **spec: object) -> SimVenue:
    return SimVenue(VenueSpec(base=base or Conditions(), **spec),  # type: ignore[arg-type]
                    rng=random.Random(seed), market=market, origin=0.0)


# -- market -------------------------------------------------------------------------------


def test_same_seed_same_path_and_different_seeds_differ() -> None:
    spec = MarketSpec(95.0, drift=-0.001, volatility=0.002)
    one = spec.path(300, random.Random(5)).prices
    assert one == spec.path(300, random.Random(5)).prices
    assert one != spec.path(300, random.Random(6)).prices
    assert len(one) == 301


def test_drift_and_volatility_match_the_parameters() -> None:
    drift, vol = -0.0005, 0.002
    spec = MarketSpec(100.0, drift=drift, volatility=vol)
    rng = random.Random(11)
    returns: list[float] = []
    totals: list[float] = []
    for _ in range(200):
        prices = spec.path(100, rng).prices
        returns += [math.log(b / a) for a, b in itertools.pairwise(prices)]
        totals.append(math.log(prices[-1] / prices[0]))
    assert statistics.fmean(returns) == pytest.approx(drift, abs=4 * vol / math.sqrt(len(returns)))
    assert statistics.stdev(returns) == pytest.approx(vol, rel=0.03)
    assert statistics.fmean(totals) == pytest.approx(drift * 100, abs=0.004)


def test_a_crash_regime_changes_drift_and_volatility_for_its_stretch_only() -> None:
    crash = Regime(10.0, 20.0, drift=-0.01, volatility=0.0)
    spec = MarketSpec(100.0, drift=0.0, volatility=0.0, regimes=(crash,))
    path = spec.path(30, random.Random(1))
    assert spec.regime_at(5) == (0.0, 0.0)
    assert spec.regime_at(15) == (-0.01, 0.0)
    assert path.price(10) == pytest.approx(100.0)
    assert path.price(20) == pytest.approx(100.0 * math.exp(-0.1))
    assert path.price(30) == pytest.approx(path.price(20))
    assert path.volatility(15) == 0.0


def test_prices_are_interpolated_and_clamped() -> None:
    path = MarketPath.from_prices([100.0, 90.0, 80.0], step=2.0)
    assert path.price(-5) == 100.0
    assert path.price(1) == pytest.approx(95.0)
    assert path.price(3) == pytest.approx(85.0)
    assert path.price(100) == 80.0
    assert path.first_time_below(85.0) == 4.0


@pytest.mark.parametrize("bad", [
    {"start_price": 0.0}, {"start_price": math.nan}, {"start_price": 1.0, "volatility": -1.0},
    {"start_price": 1.0, "step": 0.0},
])
def test_market_spec_rejects_impossible_values(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="MarketSpec"):
        MarketSpec(**bad)  # type: ignore[arg-type]


def test_regime_rejects_an_empty_stretch() -> None:
    with pytest.raises(ValueError, match="after start"):
        Regime(5.0, 5.0, 0.0, 0.0)


# -- venue: rates -------------------------------------------------------------------------


def test_rpc_timeout_rate_is_close_to_the_configured_rate() -> None:
    rate, calls = 0.3, 4000
    sim = venue(Conditions(rpc_timeout_rate=rate, rpc_timeout_after=(0.5, 1.0), land_rate=1.0,
                           send_failure_rate=0.0, latency_median=0.2))

    async def main() -> int:
        timeouts = 0
        for _ in range(calls):
            submission = await sim.submit(order())
            try:
                await sim.confirm(submission)
            except RpcTimeout:
                timeouts += 1
        return timeouts

    timeouts = run_virtual(main())
    sigma = math.sqrt(rate * (1 - rate) / calls)
    assert timeouts / calls == pytest.approx(rate, abs=4 * sigma)
    assert sim.stats.rpc_timeouts == timeouts


def test_send_failure_and_permanent_error_rates() -> None:
    calls = 3000
    sim = venue(Conditions(send_failure_rate=0.2, permanent_error_rate=0.1))

    async def main() -> list[Exception]:
        errors: list[Exception] = []
        for _ in range(calls):
            try:
                await sim.submit(order())
            except (NetworkError, InvalidAccount) as exc:
                errors.append(exc)
        return errors

    errors = run_virtual(main())
    classes = [default_classifier(exc) for exc in errors]
    network = classes.count(ErrorClass.NETWORK)
    permanent = sum(1 for c in classes if c.is_permanent)
    assert network + permanent == len(errors)
    assert permanent / calls == pytest.approx(0.1, abs=0.025)
    # a send failure is drawn only for orders that passed the permanent check
    assert network / (calls - permanent) == pytest.approx(0.2, abs=0.03)
    assert sim.stats.sent == calls - network - permanent


def test_priority_fee_raises_the_chance_of_landing_as_modelled() -> None:
    spec = VenueSpec(fee_scale=10_000)
    conditions = Conditions(land_rate=0.2, latency_median=1.0, send_failure_rate=0.0)
    sim = venue(conditions, fee_scale=10_000)
    draws = 3000

    async def share(fee: int | None) -> float:
        landed = 0
        for _ in range(draws):
            await sim.submit(order(fee=fee))
        landed = sum(1 for tx in sim.ledger.txs[-draws:] if tx.lands_at is not None)
        return landed / draws

    async def main() -> tuple[float, float, float]:
        return await share(None), await share(10_000), await share(50_000)

    none, some, high = run_virtual(main())
    for observed, fee in ((none, None), (some, 10_000), (high, 50_000)):
        expected = spec.land_probability(conditions, fee)
        assert observed == pytest.approx(expected, abs=0.035), fee
    assert none < some < high


def test_inclusion_latency_median_shrinks_with_the_fee() -> None:
    sim = venue(Conditions(land_rate=1.0, latency_median=4.0, latency_sigma=0.5,
                           send_failure_rate=0.0))

    async def medians() -> tuple[float, float]:
        out = []
        for fee in (0, 30_000):
            start = len(sim.ledger.txs)
            for _ in range(1500):
                await sim.submit(order(fee=fee))
            out.append(statistics.median(
                tx.lands_at - tx.sent_at for tx in sim.ledger.txs[start:]
                if tx.lands_at is not None
            ))
        return out[0], out[1]

    slow, fast = run_virtual(medians())
    assert slow == pytest.approx(4.0, rel=0.06)
    assert fast == pytest.approx(1.0, rel=0.06)


# -- venue: expiry, late landings, slippage ------------------------------------------------


def test_nothing_lands_after_its_blockhash_or_the_orders_valid_for() -> None:
    sim = venue(Conditions(land_rate=1.0, latency_median=5.0, latency_sigma=1.0,
                           send_failure_rate=0.0))

    async def main() -> None:
        for valid_for in (None, 3.0):
            for _ in range(500):
                submission = await sim.submit(order(valid_for=valid_for))
                tx = sim.ledger.txs[-1]
                lifetime = tx.expires_at - tx.sent_at
                assert submission.expires_at == tx.expires_at
                if valid_for is None:
                    assert 60.0 <= lifetime <= 90.0
                else:
                    assert lifetime == pytest.approx(valid_for)
                if tx.lands_at is not None:
                    assert tx.lands_at < tx.expires_at

    run_virtual(main())
    short = list(sim.ledger.txs[500:])
    assert any(tx.lands_at is None for tx in short)  # some ran out of time


def test_a_stale_blockhash_shortens_the_lifetime_and_confirm_reports_expiry() -> None:
    sim = venue(Conditions(land_rate=0.0, send_failure_rate=0.0, rpc_timeout_rate=0.0,
                           blockhash_age=(58.0, 58.0)), blockhash_lifetime=(60.0, 60.0))

    async def main() -> float:
        submission = await sim.submit(order(valid_for=8.0))
        started = asyncio.get_running_loop().time()
        with pytest.raises(TxExpired):
            await sim.confirm(submission)
        return asyncio.get_running_loop().time() - started

    assert run_virtual(main()) == pytest.approx(2.0 + sim.spec.confirm_lag)
    assert sim.ledger.txs[0].expires_at - sim.ledger.txs[0].sent_at == pytest.approx(2.0)


def test_a_transaction_can_land_after_the_caller_stopped_waiting() -> None:
    sim = venue(Conditions(land_rate=1.0, latency_median=20.0, latency_sigma=0.0,
                           send_failure_rate=0.0, rpc_timeout_rate=0.0))

    async def main() -> list[TxStatus]:
        submission = await sim.submit(order())
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(5.0):
                await sim.confirm(submission)
        seen = [(await sim.lookup(submission)).status]
        await asyncio.sleep(20.0)
        lookup = await sim.lookup(submission)
        seen.append(lookup.status)
        assert lookup.fill is not None
        assert lookup.fill.size == 10.0
        return seen

    assert run_virtual(main()) == [TxStatus.PENDING, TxStatus.LANDED]


def test_confirm_reports_expiry_and_lookup_says_expired() -> None:
    sim = venue(Conditions(land_rate=0.0, send_failure_rate=0.0, rpc_timeout_rate=0.0))

    async def main() -> TxStatus:
        submission = await sim.submit(order(valid_for=2.0))
        with pytest.raises(TxExpired) as caught:
            await sim.confirm(submission)
        assert default_classifier(caught.value) is ErrorClass.TX_EXPIRED
        return (await sim.lookup(submission)).status

    assert run_virtual(main()) is TxStatus.EXPIRED


def test_slippage_grows_with_size_and_volatility() -> None:
    calm = MarketPath.from_prices([95.0] * 1000)
    wild = MarketSpec(95.0, volatility=0.004).path(1000, random.Random(3))

    def mean_slippage_bps(market: MarketPath, size: float) -> float:
        sim = venue(Conditions(land_rate=1.0, send_failure_rate=0.0), market=market, seed=4)
        position = Position("p", "SOL", size, 100.0)

        async def main() -> float:
            values = []
            for _ in range(300):
                await sim.submit(order(size, slippage=9_000, position=position))
                tx = sim.ledger.txs[-1]
                assert tx.fill is not None
                assert tx.lands_at is not None
                mid = market.price(tx.lands_at)
                values.append((mid - tx.fill.price) / mid * 10_000)
            return statistics.fmean(values)

        return run_virtual(main())

    small, large = mean_slippage_bps(calm, 1.0), mean_slippage_bps(calm, 100.0)
    assert large - small == pytest.approx(99.0, abs=3.0)  # 1 bp per unit of size
    assert mean_slippage_bps(wild, 1.0) > small + 50  # 2 x 40 bps of volatility


def test_a_swap_past_its_slippage_limit_fails_and_sells_nothing() -> None:
    sim = venue(Conditions(land_rate=1.0, send_failure_rate=0.0, rpc_timeout_rate=0.0))

    async def main() -> None:
        tight = await sim.submit(order(slippage=0))  # spread alone exceeds 0 bps
        with pytest.raises(SlippageExceeded) as caught:
            await sim.confirm(tight)
        assert default_classifier(caught.value) is ErrorClass.SLIPPAGE_EXCEEDED
        assert (await sim.lookup(tight)).status is TxStatus.FAILED
        loose = await sim.submit(order(slippage=500))
        fill = await sim.confirm(loose)
        assert fill.price >= loose.order.worst_price

    run_virtual(main())
    truth = sim.ledger.truth(POSITION)
    assert truth.failed_landings == 1
    assert truth.landed == 1
    assert truth.sold == 10.0


def test_partial_fill_rate_is_close_to_the_configured_rate() -> None:
    sim = venue(Conditions(land_rate=1.0, send_failure_rate=0.0, partial_fill_rate=0.25))

    async def main() -> None:
        for _ in range(2000):
            await sim.submit(order())

    run_virtual(main())
    sizes = [tx.fill.size for tx in sim.ledger.txs if tx.fill is not None]
    partial = [size for size in sizes if size < 10.0]
    assert len(partial) / len(sizes) == pytest.approx(0.25, abs=0.04)
    assert all(3.0 <= size <= 9.0 for size in partial)


def test_windows_change_conditions_for_their_stretch() -> None:
    sim = venue(Conditions(send_failure_rate=0.0),
                windows=(Window.of(10.0, 20.0, send_failure_rate=1.0),))

    async def main() -> list[bool]:
        failed = []
        for at in (5.0, 15.0, 25.0):
            loop = asyncio.get_running_loop()
            await asyncio.sleep(at - loop.time())
            try:
                await sim.submit(order())
                failed.append(False)
            except NetworkError:
                failed.append(True)
        return failed

    assert run_virtual(main()) == [False, True, False]
    with pytest.raises(ValueError, match="unknown condition"):
        Window.of(0, 1, nonsense=1)


def test_same_seed_same_fates() -> None:
    def fates(seed: int) -> list[tuple[float | None, float | None]]:
        sim = venue(Conditions(land_rate=0.5, send_failure_rate=0.1), seed=seed)

        async def main() -> None:
            for _ in range(50):
                with contextlib.suppress(NetworkError):
                    await sim.submit(order(fee=5_000))

        run_virtual(main())
        return [(tx.lands_at, tx.fill.price if tx.fill else None) for tx in sim.ledger.txs]

    assert fates(9) == fates(9)
    assert fates(9) != fates(10)


def test_the_venue_has_a_name_and_says_an_unknown_order_can_never_land() -> None:
    sim = venue()
    assert sim.name == "sim-dex"

    async def main() -> Lookup:
        return await sim.lookup(Submission("nope", order()))

    assert run_virtual(main()).status is TxStatus.EXPIRED  # it never reached the chain


@pytest.mark.parametrize("bad", [
    {"send_failure_rate": 1.5}, {"land_rate": -0.1}, {"latency_median": 0.0},
    {"rpc_timeout_after": (5.0, 1.0)},
])
def test_conditions_reject_impossible_values(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="Conditions"):
        Conditions(**bad)  # type: ignore[arg-type]


# -- ledger ---------------------------------------------------------------------------------


def _tx(tx_id: str, lands_at: float | None, price: float | None, size: float = 10.0) -> SimTx:
    fill = None if price is None else Fill(tx_id, size, price)
    return SimTx(tx_id, "v", order(size), 0.0, 100.0, lands_at, price is None, fill)


def test_the_ledger_counts_double_sells_by_landing_order() -> None:
    ledger = Ledger()
    ledger.open(POSITION)
    for tx in (_tx("b", 30.0, 80.0), _tx("a", 5.0, 94.0), _tx("c", 40.0, None),
               _tx("d", None, None)):
        ledger.record(tx)
    truth = ledger.truth(POSITION)
    assert truth.sent == 4
    assert truth.closed_at == 5.0
    assert truth.avg_price == 94.0  # the first landing sold the position...
    assert truth.double_sells == 1  # ...the second sold it again
    assert truth.oversold == 10.0
    assert truth.failed_landings == 1
    assert truth.pnl == pytest.approx(-60.0)
    assert ledger.truth(POSITION, until=4.0).sold == 0.0
