"""``@instrumented_exit`` reads what a ccxt bot's exit function returns: the unified order dict.

The orders are real: the real ccxt Binance client places them on the loopback exchange
(``exitguard.venues.ccxt_testing.BinanceLoopback``) and parses the answers itself, so the
dicts are exactly what a bot gets back from ``create_order`` / ``cancel_order``. Each case
asserts the exit's outcome, its size and price against the exchange's ground truth, the
exits-by-outcome metric and the exit span. A value the decorator cannot read is named in a
warning, once per decorated function.
"""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

pytest.importorskip("ccxt")
import ccxt.async_support as ccxt_async

from exitguard import ExitStatus, Position
from exitguard.hooks import AttemptResult
from exitguard.outcome import ExitOutcome
from exitguard.telemetry import ExitResultWarning, instrumented_exit
from exitguard.testing import RecordingHooks
from exitguard.venues.ccxt_testing import BinanceLoopback, CreateFault
from tests.support.dropin import Kit

SYMBOL = "BTC/USDT"
SIGNAL = 101.0  # the loopback's bid is 100.0: a sell fills 1 % under the signal
POSITION = Position("pos-1", SYMBOL, 1.0, 110.0)


@contextlib.asynccontextmanager
async def binance() -> AsyncIterator[tuple[BinanceLoopback, Any]]:
    async with BinanceLoopback(balances={"BTC": 5.0}) as server:
        exchange = ccxt_async.binance({"timeout": 3000, "enableRateLimit": False})
        server.configure(exchange)
        try:
            yield server, exchange
        finally:
            await exchange.close()


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 30))


def outcomes(hooks: RecordingHooks) -> list[ExitOutcome]:
    return [p for n, p in hooks.events if n == "exit_finished"]


def results(hooks: RecordingHooks) -> list[AttemptResult]:
    return [p.result for n, p in hooks.events if n == "attempt_finished"]


def test_a_filled_market_order_closes_the_exit_at_its_average_price(kit: Kit) -> None:
    hooks = RecordingHooks()
    returned: list[dict[str, Any]] = []

    async def main() -> None:
        async with binance() as (server, exchange):
            @instrumented_exit(guard_name="bot", mode="market", hooks=[kit.hooks, hooks])
            async def close(position: Position, signal_price: float) -> dict[str, Any]:
                order: dict[str, Any] = await exchange.create_order(
                    position.symbol, "market", "sell", position.size)
                return order

            returned.append(await close(POSITION, SIGNAL))
            assert server.sold() == pytest.approx(1.0)

    with warnings.catch_warnings():
        warnings.simplefilter("error", ExitResultWarning)
        run(main)
    (order,) = returned
    assert (order["status"], order["filled"]) == ("closed", 1.0)
    (outcome,) = outcomes(hooks)
    assert outcome.status is ExitStatus.CLOSED
    assert outcome.filled_size == pytest.approx(1.0)
    assert outcome.avg_price == pytest.approx(100.0)
    assert outcome.slippage_bps == pytest.approx((SIGNAL - 100.0) / SIGNAL * 10_000)
    assert outcome.fills[0].tx_id == order["id"]
    assert kit.exits() == {"closed": 1}
    (span,) = kit.exit_spans()
    assert (span.attributes or {})["exitguard.slippage_bps"] == pytest.approx(99.0099, rel=1e-4)


def test_a_limit_order_partly_filled_and_still_open_is_unresolved(kit: Kit) -> None:
    hooks = RecordingHooks()
    returned: list[dict[str, Any]] = []

    async def main() -> None:
        async with binance() as (server, exchange):
            server.create_faults.append(CreateFault(fill=0.3))  # 0.3 at the bid, 0.7 rests

            @instrumented_exit(guard_name="bot", mode="limit", hooks=[kit.hooks, hooks])
            async def close(position: Position, signal_price: float) -> dict[str, Any]:
                order: dict[str, Any] = await exchange.create_order(
                    position.symbol, "limit", "sell", position.size, 99.0)
                return order

            returned.append(await close(POSITION, SIGNAL))
            assert server.sold() == pytest.approx(0.3)
            assert len(server.open_orders()) == 1

    run(main)
    (order,) = returned
    assert order["status"] == "open"
    (outcome,) = outcomes(hooks)
    assert outcome.status is ExitStatus.UNRESOLVED
    assert outcome.filled_size == pytest.approx(0.3)
    assert outcome.avg_price == pytest.approx(100.0)
    assert outcome.pending_tx_ids == (order["id"],)
    assert results(hooks) == [AttemptResult.PARTIAL]
    assert kit.exits() == {"unresolved": 1}
    (span,) = kit.exit_spans()
    assert (span.attributes or {})["exitguard.filled_size"] == pytest.approx(0.3)


def test_a_market_order_whose_rest_expired_is_a_partial_failed_exit(kit: Kit) -> None:
    hooks = RecordingHooks()

    async def main() -> None:
        async with binance() as (server, exchange):
            server.create_faults.append(CreateFault(fill=0.4))  # Binance expires the rest

            @instrumented_exit(guard_name="bot", mode="market", hooks=[kit.hooks, hooks])
            async def close(position: Position, signal_price: float) -> dict[str, Any]:
                order: dict[str, Any] = await exchange.create_order(
                    position.symbol, "market", "sell", position.size)
                assert order["status"] == "expired"
                return order

            await close(POSITION, SIGNAL)
            assert server.sold() == pytest.approx(0.4)

    run(main)
    (outcome,) = outcomes(hooks)
    assert outcome.status is ExitStatus.FAILED
    assert outcome.filled_size == pytest.approx(0.4)
    assert outcome.remaining_size == pytest.approx(0.6)
    assert outcome.pending_tx_ids == ()
    assert kit.exits() == {"failed": 1}


def test_a_cancelled_order_with_nothing_filled_is_a_failed_exit(kit: Kit) -> None:
    hooks = RecordingHooks()

    async def main() -> None:
        async with binance() as (server, exchange):
            @instrumented_exit(guard_name="bot", mode="limit", hooks=[kit.hooks, hooks])
            async def close(position: Position, signal_price: float) -> dict[str, Any]:
                placed = await exchange.create_order(
                    position.symbol, "limit", "sell", position.size, 150.0)  # never fills
                order: dict[str, Any] = await exchange.cancel_order(placed["id"],
                                                                    position.symbol)
                assert order["status"] == "canceled"
                return order

            await close(POSITION, SIGNAL)
            assert server.sold() == 0.0

    run(main)
    (outcome,) = outcomes(hooks)
    assert outcome.status is ExitStatus.FAILED
    assert outcome.filled_size == 0.0
    assert results(hooks) == [AttemptResult.EXPIRED]
    assert kit.exits() == {"failed": 1}
    (span,) = kit.exit_spans()
    assert (span.attributes or {})["exitguard.outcome"] == "failed"


#: ccxt's documented unified order structure, as some exchanges answer create_order: the id
#: only, everything else None (https://docs.ccxt.com/#/README?id=order-structure).
ID_ONLY: dict[str, Any] = {
    "id": "12345", "clientOrderId": None, "datetime": None, "timestamp": None,
    "lastTradeTimestamp": None, "status": None, "symbol": SYMBOL, "type": "market",
    "timeInForce": None, "side": "sell", "price": None, "average": None, "amount": 1.0,
    "filled": None, "remaining": None, "cost": None, "trades": [], "fee": None, "info": {},
}


def test_a_ccxt_order_that_says_nothing_may_still_land_and_says_so(kit: Kit) -> None:
    @instrumented_exit(guard_name="bot", hooks=kit.hooks)
    def close(position: Position, signal_price: float) -> dict[str, Any]:
        return dict(ID_ONLY)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # repeats are ours to drop, not the filter's
        close(POSITION, SIGNAL)
        close(POSITION, SIGNAL)
    (warning,) = [w for w in caught if w.category is ExitResultWarning]
    assert "fetch_order" in str(warning.message)
    assert kit.exits() == {"unresolved": 2}


def test_a_rejected_ccxt_order_is_a_failed_exit(kit: Kit) -> None:
    @instrumented_exit(guard_name="bot", hooks=kit.hooks)
    def close(position: Position, signal_price: float) -> dict[str, Any]:
        return {**ID_ONLY, "status": "rejected", "filled": 0.0, "remaining": 1.0}

    close(POSITION, SIGNAL)
    assert kit.exits() == {"failed": 1}


def test_an_unrecognised_value_is_named_in_one_warning(kit: Kit) -> None:
    @instrumented_exit(guard_name="bot", hooks=kit.hooks)
    def close(position: Position, signal_price: float) -> dict[str, str]:
        return {"orderId": "123", "state": "done"}  # an exchange's raw answer

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # repeats are ours to drop, not the filter's
        for _ in range(3):
            close(POSITION, SIGNAL)
    (warning,) = [w for w in caught if w.category is ExitResultWarning]
    text = str(warning.message)
    assert "close" in text
    assert "ccxt order dict (id, status, filled, average/price" in text
    assert "without price or slippage" in text
    # The call returned, which is its own word that the order went through; no figures.
    assert kit.exits() == {"closed": 3}
    spans = kit.exit_spans()
    assert all("exitguard.slippage_bps" not in (s.attributes or {}) for s in spans)
