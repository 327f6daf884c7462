"""Faults around telemetry: a collector that is down or hangs, /metrics that nobody scrapes.

Traces go to an OTLP endpoint where nothing listens, or to one that accepts connections and
never answers: exits still return within their deadline, the event loop never stalls, metrics
count each exit once, shutdown is bounded, and the export failures are counted per batch and
logged once (real clock). Metrics that are never scraped keep a fixed set of series and
memory per exit (virtual time).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import tracemalloc
import urllib.request
from collections import Counter
from collections.abc import Coroutine
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from prometheus_client import CollectorRegistry

from exitguard import (
    CircuitBreaker,
    ExitGuard,
    ExitOutcome,
    ExitStatus,
    NetworkError,
    Position,
    catalogue,
    telemetry,
)
from exitguard.telemetry._export_failures import TRACE_EXPORT_FAILURES
from exitguard.testing import FaultyVenue, TxPlan, run_virtual
from tests.support.faults import (
    DEADLINE,
    HANG_FOREVER,
    POLICY,
    PRICE,
    REAL_DEADLINE,
    REAL_POLICY,
    REAL_SLACK,
)
from tests.support.logs import LogRecords
from tests.support.servers import free_port


class BlackHoleCollector:
    """Accepts TCP connections (the kernel's backlog does) and never answers a byte."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port: int = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


def _loop_lag_monitor(stop: asyncio.Event, lags: list[float]) -> Coroutine[Any, Any, None]:
    async def watch() -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            before = loop.time()
            await asyncio.sleep(0.005)
            lags.append(loop.time() - before - 0.005)

    return watch()


def _exits_with_tracing(endpoint: str, exits: int = 120) -> tuple[
    list[ExitOutcome], list[float], float, Any, int, int, LogRecords
]:
    """``exits`` exits (a quarter hang: UNRESOLVED) with traces to ``endpoint`` and metrics,
    twelve at a time; returns the outcomes, loop lags, the time shutdown took, the registry,
    the number of spans ended, the failed batches counted and the export's log records."""
    class Ended(SpanProcessor):
        def __init__(self) -> None:
            self.count = 0

        def on_end(self, span: ReadableSpan) -> None:
            self.count += 1

    ended = Ended()
    provider = telemetry.configure_tracing(endpoint, set_global=False, timeout=0.5,
                                           schedule_delay=0.05)
    provider.add_span_processor(ended)
    registry = CollectorRegistry()
    venue = FaultyVenue(
        lambda i: HANG_FOREVER if i % 4 == 0 else TxPlan(confirm_after=0.01, lands_after=0.01),
        price=PRICE,
    )

    async def main() -> tuple[list[ExitOutcome], list[float]]:
        guard = ExitGuard(venue, policy=REAL_POLICY, deadline=REAL_DEADLINE, name="traced",
                          breaker=CircuitBreaker(10**6), background_reconcile_for=0.2)
        telemetry.instrument(guard, registry=registry, tracer_provider=provider, logs=False)
        stop, lags = asyncio.Event(), list[float]()
        monitor = asyncio.ensure_future(_loop_lag_monitor(stop, lags))
        outcomes: list[ExitOutcome] = []
        for start in range(0, exits, 12):
            outcomes += await asyncio.gather(*(
                guard.exit(Position(f"pos-{i}", "SOL", 1.0, 100.0), signal_price=95.0)
                for i in range(start, min(start + 12, exits))
            ))
        stop.set()
        await monitor
        await guard.aclose()
        return outcomes, lags

    records = LogRecords()
    watched = [logging.getLogger(name) for name in (
        "exitguard.telemetry", "opentelemetry.exporter.otlp.proto.http.trace_exporter")]
    for logger in watched:
        logger.addHandler(records)
    before = TRACE_EXPORT_FAILURES.total
    try:
        outcomes, lags = asyncio.run(main())
        started = time.perf_counter()
        telemetry.shutdown_tracing(provider, timeout=2.0)
        shutdown = time.perf_counter() - started
    finally:
        for logger in watched:
            logger.removeHandler(records)
    assert venue.violations == []
    scraped = registry.get_sample_value(catalogue.TRACE_EXPORT_FAILURES.name)
    assert scraped == TRACE_EXPORT_FAILURES.total
    return (outcomes, lags, shutdown, registry, ended.count,
            TRACE_EXPORT_FAILURES.total - before, records)


def _assert_unharmed(outcomes: list[ExitOutcome], lags: list[float], shutdown: float,
                     registry: Any, spans: int, failed: int, records: LogRecords) -> None:
    assert all(o.elapsed_s <= REAL_DEADLINE + REAL_SLACK for o in outcomes)
    statuses = Counter(o.status for o in outcomes)
    assert statuses == {ExitStatus.CLOSED: 90, ExitStatus.UNRESOLVED: 30}
    assert max(lags) < 0.1, f"the event loop stalled for {max(lags) * 1000:.0f} ms"
    assert shutdown <= 2.0 + 0.5  # bounded, whatever the collector does
    # Metrics are untouched by the traces' trouble: each exit counted once.
    for status, count in statuses.items():
        value = registry.get_sample_value(
            catalogue.EXITS.name, {"guard": "traced", "outcome": status.value}
        )
        assert value == count
    assert spans >= 2 * len(outcomes)  # every exit and attempt span was still made
    # The outage is counted per failed batch (one process-wide series) and logged once:
    # exitguard's line, and the OTLP exporter's own lines for the first batch only.
    assert failed >= 2, "the exports should have failed batch after batch"
    ours = records.matching("exitguard trace export failed", logging.ERROR)
    assert len(ours) == 1
    theirs = records.of("opentelemetry", logging.WARNING)
    assert len(theirs) <= 3, [r.getMessage() for r in theirs]


def test_an_otlp_collector_that_is_down_never_slows_an_exit() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}/v1/traces"
    _assert_unharmed(*_exits_with_tracing(endpoint))


def test_an_otlp_collector_that_hangs_never_slows_an_exit() -> None:
    collector = BlackHoleCollector()
    try:
        _assert_unharmed(*_exits_with_tracing(f"http://127.0.0.1:{collector.port}/v1/traces"))
    finally:
        collector.close()


def test_metrics_never_scraped_stay_bounded_and_count_every_exit_once() -> None:
    registry = CollectorRegistry()
    venue = FaultyVenue(lambda i: TxPlan() if i % 10 else TxPlan(
        send_error=NetworkError("connection reset")), price=PRICE)
    server = telemetry.serve_metrics(port=0, registry=registry)

    def series() -> int:
        return sum(len(metric.samples) for metric in registry.collect())

    async def main() -> tuple[int, int, int, int]:
        guard = ExitGuard(venue, policy=POLICY, deadline=DEADLINE, name="unscraped")
        telemetry.instrument(guard, registry=registry, traces=False, logs=False)

        async def exits(count: int) -> None:
            for i in range(count):
                await guard.exit(Position(f"p{i}", "SOL", 1.0, 100.0), signal_price=95.0)

        await exits(300)
        tracemalloc.start()
        first, first_series = tracemalloc.get_traced_memory()[0], series()
        await exits(1_500)
        second, second_series = tracemalloc.get_traced_memory()[0], series()
        tracemalloc.stop()
        return first, second, first_series, second_series

    try:
        first, second, first_series, second_series = run_virtual(main())
        # Nothing accumulates per exit while nobody scrapes: the same series, and the
        # traced memory (the venue's own record of 1,500 orders aside) barely moves.
        assert second_series == first_series
        per_exit = (second - first) / 1_500
        assert per_exit < 1_000, f"{per_exit:.0f} bytes kept per exit"
        with urllib.request.urlopen(server.url, timeout=5) as response:
            body = response.read().decode()
    finally:
        server.close()
    total = registry.get_sample_value(catalogue.EXITS.name,
                                      {"guard": "unscraped", "outcome": "closed"})
    assert total == 1_800
    assert f'{catalogue.EXITS.name}{{guard="unscraped",outcome="closed"}} 1800.0' in body
