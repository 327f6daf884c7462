"""ExitGuard through CcxtVenue, the real ccxt client and the loopback Binance: each scenario
scripts the exchange's faults and asserts on the exchange's ground truth.

Every scenario checks the same three properties (``assert_safe``):
- never more sold than held;
- no order of the exit was placed while an earlier one was live (the remainder goes out only
  after the earlier order is dead: filled, cancelled or expired, on the exchange's record);
- every submission whose outcome was unknown to the client was looked up on the exchange by
  its client order id before the next order request;
and that the metrics tell the same story as the exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

pytest.importorskip("ccxt")
import itertools

import ccxt.async_support as ccxt_async
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from exitguard import ExitGuard, ExitStatus, Position, RetryPolicy
from exitguard.errors import ErrorClass
from exitguard.hooks import AttemptReport, AttemptResult
from exitguard.outcome import ExitOutcome
from exitguard.telemetry import instrument
from exitguard.testing import RecordingHooks
from exitguard.venues.ccxt import CcxtVenue
from exitguard.venues.ccxt_testing import (
    BinanceLoopback,
    CreateFault,
    EndpointFault,
)

SYMBOL = "BTC/USDT"
#: The account holds more than the position (the bot's other BTC): an oversell would go
#: through on the exchange, so "never more sold than held" is a real check.
BALANCES = {"BTC": 10.0}
POLICY = RetryPolicy(max_attempts=3, initial_backoff=0.05, max_backoff=0.2,
                     backoff_multiplier=2.0, total_timeout=5.0, attempt_timeout=1.0)
UNKNOWN = {ErrorClass.RPC_TIMEOUT, ErrorClass.NETWORK, ErrorClass.INVALID_RESPONSE,
           ErrorClass.ALREADY_PROCESSED, ErrorClass.UNKNOWN}


@dataclass
class Rig:
    server: BinanceLoopback
    venue: CcxtVenue
    guard: ExitGuard
    hooks: RecordingHooks
    registry: CollectorRegistry
    spans: InMemorySpanExporter

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, {"guard": "ccxt", **labels})
        return 0.0 if value is None else value

    def spans_named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.name == name]

    def reports(self) -> list[AttemptReport]:
        return [p for n, p in self.hooks.events if n == "attempt_finished"]


@contextlib.asynccontextmanager
async def rig(deadline: float = 6.0, **venue_options: Any) -> AsyncIterator[Rig]:
    async with BinanceLoopback(balances=dict(BALANCES)) as server:
        exchange = ccxt_async.binance({"timeout": 300, "enableRateLimit": False})
        server.configure(exchange, recv_window_ms=1000)
        venue_options.setdefault("poll_interval", 0.05)
        venue_options.setdefault("visibility_lag", 0.3)
        venue = CcxtVenue(exchange, **venue_options)
        hooks = RecordingHooks()
        guard = ExitGuard(venue, policy=POLICY, deadline=deadline, reconcile_interval=0.1,
                          max_reconcile_interval=0.3, background_reconcile_for=10.0,
                          hooks=[hooks], name="ccxt")
        registry = CollectorRegistry()
        spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(spans))
        instrument(guard, metrics=True, traces=True, logs=False, registry=registry,
                   tracer_provider=provider)
        try:
            yield Rig(server, venue, guard, hooks, registry, spans)
        finally:
            await guard.aclose()
            await exchange.close()


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 40))


async def exit_position(r: Rig, size: float = 1.0) -> tuple[Position, ExitOutcome]:
    position = Position("pos-1", SYMBOL, size, 110.0)
    return position, await r.guard.exit(position, signal_price=100.0, reason="stop_loss")


def assert_safe(r: Rig, position: Position) -> None:
    server = r.server
    assert server.sold() <= position.size + 1e-9, "sold more than held"
    placed = sorted(server.orders, key=lambda o: o.accepted_at)
    for earlier, later in itertools.pairwise(placed):
        assert earlier.ended_at is not None, f"{earlier.client_order_id} still live"
        assert earlier.ended_at <= later.accepted_at, (
            f"{later.client_order_id} placed while {earlier.client_order_id} was live")
    # Every submission with an unknown outcome was looked up by its client id before the
    # next order request went out.
    requests = server.requests
    for report in r.reports():
        if report.error_class not in UNKNOWN:
            continue
        client_id = report.attempt.order.client_order_id
        sent = max(i for i, (m, p, q) in enumerate(requests)
                   if (m, p) == ("POST", "/api/v3/order")
                   and q.get("newClientOrderId") == client_id)
        following = [i for i, (m, p, _) in enumerate(requests)
                     if i > sent and (m, p) == ("POST", "/api/v3/order")]
        looked_up = [i for i, (m, p, q) in enumerate(requests)
                     if i > sent and (m, p) == ("GET", "/api/v3/order")
                     and q.get("origClientOrderId") == client_id]
        assert looked_up, f"{client_id} was never reconciled"
        if following:
            assert looked_up[0] < following[0], f"{client_id} not reconciled before resending"
    # The telemetry tells the exchange's story: one attempt span per attempt, each order
    # request is an attempt's (an attempt without one was refused before sending), the
    # exit span's filled size is what the exchange sold within the exit, and a reconcile
    # event for every submission whose outcome was unknown.
    reconciled = {event.attributes.get("exitguard.tx_id")
                  for span in r.spans.get_finished_spans() for event in span.events
                  if event.name == "exitguard.reconcile" and event.attributes is not None}
    for report in r.reports():
        if report.error_class in UNKNOWN:
            assert {report.tx_id, report.attempt.order.client_order_id} & reconciled
    attempts = r.spans_named("exitguard.exit.attempt")
    assert len(attempts) == len(r.reports())
    requested = [q["newClientOrderId"] for q in server.order_requests()]
    attempted = [report.attempt.order.client_order_id for report in r.reports()]
    assert requested == [client_id for client_id in attempted if client_id in requested]
    assert all(report.result is AttemptResult.REJECTED for report in r.reports()
               if report.attempt.order.client_order_id not in requested)
    (exit_span,) = r.spans_named("exitguard.exit")
    assert exit_span.attributes is not None
    late = sum(fill.size for _, fill in r.guard.late_fills)
    assert exit_span.attributes["exitguard.filled_size"] == pytest.approx(server.sold() - late)
    assert r.metric("exitguard_exit_attempts_total", mode="limit", result="filled") + sum(
        r.metric("exitguard_exit_attempts_total", mode=mode, result=result)
        for mode in ("limit", "market")
        for result in ("partial", "timeout", "expired", "rejected", "send_failed")
    ) + r.metric("exitguard_exit_attempts_total", mode="market", result="filled") == len(
        attempts)


def test_a_plain_exit_closes_and_the_metrics_agree() -> None:
    async def main() -> None:
        async with rig() as r:
            position, outcome = await exit_position(r)
            assert outcome.status is ExitStatus.CLOSED
            assert outcome.filled_size == 1.0 == r.server.sold()
            assert_safe(r, position)
            assert r.metric("exitguard_exits_total", outcome="closed") == 1
            assert r.metric("exitguard_exit_attempts_total", mode="limit", result="filled") == 1
    run(main)


def test_an_order_that_fills_while_the_client_times_out_is_sold_once() -> None:
    async def main() -> None:
        async with rig() as r:
            r.server.create_faults.append(CreateFault(answer="hang"))
            position, outcome = await exit_position(r)
            assert_safe(r, position)
            assert outcome.status is ExitStatus.CLOSED, outcome.reason
            assert outcome.filled_size == 1.0 == r.server.sold()
            assert len(r.server.orders) == 1
            assert r.metric("exitguard_exits_total", outcome="closed") == 1
    run(main)


def test_a_5xx_after_the_fill_is_reconciled_not_resent() -> None:
    async def main() -> None:
        async with rig() as r:
            r.server.create_faults.append(CreateFault(answer="5xx"))
            position, outcome = await exit_position(r)
            assert_safe(r, position)
            assert outcome.status is ExitStatus.CLOSED, outcome.reason
            assert r.server.sold() == 1.0
            assert len(r.server.orders) == 1
    run(main)


def test_order_does_not_exist_for_a_while_after_creation() -> None:
    async def main() -> None:
        async with rig() as r:
            r.server.create_faults.append(CreateFault(answer="hang", invisible_for=0.8))
            position, outcome = await exit_position(r)
            assert_safe(r, position)
            assert outcome.status is ExitStatus.CLOSED, outcome.reason
            assert r.server.sold() == 1.0
            assert len(r.server.orders) == 1
    run(main)


def test_a_partial_fill_then_the_remainder_only_after_the_rest_is_cancelled() -> None:
    async def main() -> None:
        async with rig() as r:
            r.server.create_faults.append(CreateFault(fill=0.4))  # the rest rests
            position, outcome = await exit_position(r)
            assert_safe(r, position)
            assert outcome.status is ExitStatus.CLOSED, outcome.reason
            assert r.server.sold() == pytest.approx(1.0)
            first, second = r.server.orders
            assert first.status == "CANCELED"
            assert first.executed == pytest.approx(0.4)
            assert second.quantity == pytest.approx(0.6)
            assert r.metric("exitguard_exit_attempts_total", mode="limit",
                            result="partial") + r.metric(
                "exitguard_exit_attempts_total", mode="limit", result="timeout") >= 1
    run(main)


def test_a_fill_after_the_deadline_is_a_late_fill_never_a_second_sale() -> None:
    async def main() -> None:
        async with rig(deadline=2.0) as r:
            server = r.server
            server.set_book("BTCUSDT", 90.0, 90.1)  # the limit at 99 rests
            server.create_faults.append(CreateFault(fill=0.0, fill_later=2.6))
            server.faults[("DELETE", "/api/v3/order")] = deque(
                EndpointFault("hang") for _ in range(100))  # its cancel never gets through
            position, outcome = await exit_position(r)
            assert outcome.status is ExitStatus.UNRESOLVED, outcome.reason
            (live,) = server.orders
            assert live.open
            assert outcome.pending_tx_ids == (str(live.order_id),)
            assert r.metric("exitguard_exit_unresolved_transactions") == 1
            assert await r.guard.drain(timeout=15.0)
            assert_safe(r, position)
            (late,) = [fill for _, fill in r.guard.late_fills]
            assert late.size == 1.0 == server.sold()
            assert len(server.orders) == 1
            assert r.metric("exitguard_exit_late_fills_total") == 1
            assert r.metric("exitguard_exit_unresolved_transactions") == 0
    run(main)


def test_a_rate_limited_order_is_reconciled_then_resent() -> None:
    async def main() -> None:
        async with rig(deadline=8.0) as r:
            r.server.create_faults.append(
                CreateFault(reject=(429, -1003, "Too many requests; current limit is 6000.")))
            position, outcome = await exit_position(r)
            assert_safe(r, position)
            assert outcome.status is ExitStatus.CLOSED, outcome.reason
            assert r.server.sold() == 1.0
            assert len(r.server.order_requests()) == 2
    run(main)


def test_a_timestamp_refusal_is_resent_at_once_and_sold_once() -> None:
    async def main() -> None:
        async with rig() as r:
            r.server.clock_skew_ms = 4000
            position, outcome = await exit_position(r)
            assert_safe(r, position)
            assert outcome.status is ExitStatus.CLOSED, outcome.reason
            first, second = r.server.order_requests()
            assert (first["quantity"], first["price"]) == (second["quantity"], second["price"])
            assert r.server.sold() == 1.0
            assert len(r.server.orders) == 1
            # The refusal spent no attempt (a definite "not sent").
            assert r.metric("exitguard_exit_attempts_total", mode="limit",
                            result="send_failed") == 1
    run(main)


def test_a_timestamp_refusal_is_resent_with_the_same_client_order_id() -> None:
    async def main() -> None:
        async with rig() as r:
            r.server.clock_skew_ms = 4000
            await exit_position(r)
            first, second = r.server.order_requests()
            assert first["newClientOrderId"] == second["newClientOrderId"]
    run(main)


# -- random faults through the real guard -----------------------------------------------------

#: What one order request may meet (the client times out after 0.3 s; recvWindow is 1 s).
FAULTS: list[CreateFault | None] = [
    None,
    CreateFault(answer="hang"),
    CreateFault(answer="5xx"),
    CreateFault(reject=(429, -1003, "Too many requests.")),
    CreateFault(delay=0.45),  # the client times out; the order is placed after that
    CreateFault(delay=1.2),  # the client times out; refused unseen (-1021): never placed
    CreateFault(answer="hang", invisible_for=0.8),
    CreateFault(answer="5xx", invisible_for=0.8),
]
#: CCXT_GUARD_SEEDS=1,2,...,30 for a longer run.
GUARD_SEEDS = [int(s) for s in os.environ.get("CCXT_GUARD_SEEDS", "1,2,3").split(",")]


@pytest.mark.parametrize("seed", GUARD_SEEDS)
def test_random_faults_through_the_guard_never_sell_more_than_held(seed: int) -> None:
    """Whatever the exit's outcome, the exchange sold at most the position, the guard's
    account of it (fills within the exit plus late fills) is the exchange's, and every
    unknown submit was reconciled before the next order."""
    async def main() -> None:
        async with rig(deadline=6.0) as r:
            rng = random.Random(seed)
            for kind in rng.choices(FAULTS, k=6):  # and each order fills a random part
                fault = CreateFault() if kind is None else dataclasses.replace(kind)
                fault.fill = rng.choice([0.3, 0.6, 1.0])
                r.server.create_faults.append(fault)
            position, outcome = await exit_position(r)
            if outcome.status is ExitStatus.UNRESOLVED:
                assert await r.guard.drain(timeout=20.0)
            assert_safe(r, position)
            late = sum(fill.size for _, fill in r.guard.late_fills)
            assert outcome.filled_size + late == pytest.approx(r.server.sold())
            if outcome.status is ExitStatus.CLOSED:
                assert r.server.sold() == pytest.approx(position.size)
    run(main)
