"""Traces exported over OTLP/HTTP to a real receiver on 127.0.0.1, decoded with
opentelemetry-proto: parent/child links, attributes, status, events; the user's own span
as parent; an unreachable or slow collector never slows an exit (real clock)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from exitguard import (
    ExitGuard,
    ExitOutcome,
    ExitStatus,
    InsufficientBalance,
    Position,
    RpcTimeout,
)
from exitguard.telemetry import configure_tracing, instrument, shutdown_tracing
from exitguard.testing import ScriptedVenue, TxPlan
from tests.support.otlp_receiver import STATUS_ERROR, STATUS_UNSET, OtlpReceiver, ReceivedSpan
from tests.support.servers import free_port

POSITION = Position("pos-7", "SOL", 10.0, 100.0)


def provider_for(endpoint: str) -> TracerProvider:
    return configure_tracing(endpoint, service_name="exitguard-test", set_global=False,
                             schedule_delay=0.05)


def run_exits(
    venue: ScriptedVenue, provider: TracerProvider | None, count: int = 1, **options: object
) -> list[ExitOutcome]:
    async def main() -> list[ExitOutcome]:
        guard = ExitGuard(venue, name="bot", reconcile_interval=0.02, **options)  # type: ignore[arg-type]
        if provider is not None:
            instrument(guard, metrics=False, logs=False, tracer_provider=provider)
        outcomes = [await guard.exit(Position(f"pos-{i}", "SOL", 10.0, 100.0),
                                     signal_price=95.0, reason="stop_loss")
                    for i in range(count)]
        await guard.drain(5)
        return outcomes

    return asyncio.run(main())


def by_name(spans: list[ReceivedSpan], name: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name == name]


def transitions(span: ReceivedSpan) -> list[str]:
    return [e.attributes["exitguard.state.to"] for e in span.events
            if e.name == "exitguard.transition"]


def test_first_attempt_success_spans(otlp_receiver: OtlpReceiver) -> None:
    provider = provider_for(f"http://127.0.0.1:{otlp_receiver.port}")  # /v1/traces appended
    venue = ScriptedVenue([TxPlan(confirm_after=0.01, lands_after=0.01, price=94.5)], price=95.0)
    (outcome,) = run_exits(venue, provider)
    assert shutdown_tracing(provider, timeout=5)
    spans = otlp_receiver.wait_for(lambda s: len(s) >= 2)
    assert otlp_receiver.content_types[0] == "application/x-protobuf"
    (exit_span,) = by_name(spans, "exitguard.exit")
    (attempt,) = by_name(spans, "exitguard.exit.attempt")
    assert exit_span.parent_span_id == ""  # a root: no span was current
    assert attempt.parent_span_id == exit_span.span_id
    assert attempt.trace_id == exit_span.trace_id
    assert exit_span.resource["service.name"] == "exitguard-test"
    assert exit_span.scope == "exitguard"
    a = exit_span.attributes
    assert a["exitguard.guard"] == "bot"
    assert a["exitguard.position.id"] == "pos-0"
    assert a["exitguard.position.symbol"] == "SOL"
    assert a["exitguard.position.size"] == 10.0
    assert a["exitguard.signal_price"] == 95.0
    assert a["exitguard.reason"] == "stop_loss"
    assert a["exitguard.deadline_s"] == 30.0
    assert a["exitguard.outcome"] == "closed"
    assert a["exitguard.attempts"] == 1
    assert a["exitguard.filled_size"] == 10.0
    assert a["exitguard.slippage_bps"] == pytest.approx(outcome.slippage_bps)
    assert a["exitguard.deadline_exceeded"] is False
    assert exit_span.status_code == STATUS_UNSET
    assert transitions(exit_span) == ["exit_signal_received", "submitted", "position_closed"]
    b = attempt.attributes
    assert b["exitguard.attempt.number"] == 1
    assert b["exitguard.order.mode"] == "limit"
    assert b["exitguard.order.max_slippage_bps"] == 100
    assert b["exitguard.order.priority_fee"] == 10_000
    assert b["exitguard.tx_id"] == "tx1"
    assert b["exitguard.attempt.result"] == "filled"
    assert "error.type" not in b
    assert attempt.status_code == STATUS_UNSET
    assert exit_span.start_unix_nano <= attempt.start_unix_nano
    assert attempt.end_unix_nano <= exit_span.end_unix_nano


def test_timeout_then_reconcile_spans(otlp_receiver: OtlpReceiver) -> None:
    provider = provider_for(otlp_receiver.endpoint)
    plan = TxPlan(confirm_after=0.01, confirm_error=RpcTimeout("rpc timed out"),
                  lands_after=0.03)
    (outcome,) = run_exits(ScriptedVenue([plan], price=95.0), provider)
    assert outcome.status is ExitStatus.CLOSED
    assert shutdown_tracing(provider, timeout=5)
    spans = otlp_receiver.wait_for(lambda s: len(s) >= 2)
    (exit_span,) = by_name(spans, "exitguard.exit")
    (attempt,) = by_name(spans, "exitguard.exit.attempt")
    assert attempt.parent_span_id == exit_span.span_id
    assert attempt.attributes["exitguard.attempt.result"] == "timeout"
    assert attempt.attributes["error.type"] == "rpc_timeout"
    assert attempt.status_code == STATUS_ERROR
    assert "rpc timed out" in attempt.status_message
    assert transitions(exit_span) == [
        "exit_signal_received", "submitted", "confirmation_timeout", "reconciling",
        "position_closed",
    ]
    lookups = [e for e in exit_span.events if e.name == "exitguard.reconcile"]
    assert lookups
    assert lookups[-1].attributes == {"exitguard.tx_id": "tx1", "exitguard.tx.status": "landed"}
    assert exit_span.status_code == STATUS_UNSET


def test_retry_failure_and_status_error(otlp_receiver: OtlpReceiver) -> None:
    provider = provider_for(otlp_receiver.endpoint)
    first = TxPlan(confirm_after=0.01, confirm_error=RpcTimeout("slow"), lands_after=None,
                   expires_after=0.05)
    second = TxPlan(confirm_error=InsufficientBalance("insufficient funds"))
    (outcome,) = run_exits(ScriptedVenue([first, second], price=95.0), provider)
    assert outcome.status is ExitStatus.FAILED
    assert shutdown_tracing(provider, timeout=5)
    spans = otlp_receiver.wait_for(lambda s: len(s) >= 3)
    (exit_span,) = by_name(spans, "exitguard.exit")
    attempts = sorted(by_name(spans, "exitguard.exit.attempt"),
                      key=lambda s: s.attributes["exitguard.attempt.number"])
    assert [s.attributes["exitguard.attempt.result"] for s in attempts] == ["timeout",
                                                                              "rejected"]
    assert [s.attributes["exitguard.order.mode"] for s in attempts] == ["limit", "market"]
    assert {s.parent_span_id for s in attempts} == {exit_span.span_id}
    assert attempts[1].attributes["error.type"] == "insufficient_balance"
    assert exit_span.status_code == STATUS_ERROR
    assert exit_span.status_message == outcome.reason
    assert exit_span.attributes["exitguard.outcome"] == "failed"
    assert exit_span.attributes["error.type"] == "insufficient_balance"
    names = exit_span.event_names()
    assert "exitguard.retry" in names
    retry = next(e for e in exit_span.events if e.name == "exitguard.retry")
    assert retry.attributes == {"error.type": "rpc_timeout", "exitguard.attempt.next": 2}
    assert "escalated" in transitions(exit_span)
    assert transitions(exit_span)[-1] == "exit_failed"


def test_backoff_event(otlp_receiver: OtlpReceiver) -> None:
    from exitguard import RetryPolicy
    from exitguard.errors import OrderNotSent

    provider = provider_for(otlp_receiver.endpoint)
    plans = [TxPlan(send_error=OrderNotSent("refused")), TxPlan(confirm_after=0.01,
                                                                lands_after=0.01)]
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.02, max_backoff=0.05)
    (outcome,) = run_exits(ScriptedVenue(plans, price=95.0), provider, policy=policy)
    assert outcome.status is ExitStatus.CLOSED
    assert shutdown_tracing(provider, timeout=5)
    spans = otlp_receiver.wait_for(lambda s: len(s) >= 3)
    (exit_span,) = by_name(spans, "exitguard.exit")
    backoffs = [e for e in exit_span.events if e.name == "exitguard.backoff"]
    assert len(backoffs) == 1
    assert 0 < backoffs[0].attributes["exitguard.backoff.delay_s"] <= 0.02
    sends = by_name(spans, "exitguard.exit.attempt")
    assert sorted(s.attributes["exitguard.attempt.result"] for s in sends) == [
        "filled", "send_failed"]


def test_users_current_span_is_the_parent(otlp_receiver: OtlpReceiver) -> None:
    provider = provider_for(otlp_receiver.endpoint)
    tracer = provider.get_tracer("mybot")

    async def main() -> tuple[str, str]:
        guard = ExitGuard(ScriptedVenue([TxPlan(confirm_after=0.01, lands_after=0.01)]),
                          name="bot")
        instrument(guard, metrics=False, logs=False, tracer_provider=provider)
        with tracer.start_as_current_span("bot.on_signal") as parent:
            await guard.exit(POSITION, signal_price=95.0)
            from opentelemetry import trace

            # The exit's context was detached: the bot's span is current again.
            assert trace.get_current_span() is parent
            return format(parent.get_span_context().span_id, "016x"), format(
                parent.get_span_context().trace_id, "032x")

    parent_id, trace_id = asyncio.run(main())
    assert shutdown_tracing(provider, timeout=5)
    spans = otlp_receiver.wait_for(lambda s: len(s) >= 3)
    (exit_span,) = by_name(spans, "exitguard.exit")
    (attempt,) = by_name(spans, "exitguard.exit.attempt")
    (bot,) = by_name(spans, "bot.on_signal")
    assert bot.span_id == parent_id
    assert exit_span.parent_span_id == parent_id
    assert attempt.parent_span_id == exit_span.span_id
    assert {exit_span.trace_id, attempt.trace_id, bot.trace_id} == {trace_id}


def test_the_exit_span_is_current_for_the_venue(otlp_receiver: OtlpReceiver) -> None:
    """The venue's own spans (an instrumented HTTP client, say) nest under the attempt."""
    provider = provider_for(otlp_receiver.endpoint)
    tracer = provider.get_tracer("venue")

    class TracedVenue(ScriptedVenue):
        async def submit(self, order):  # type: ignore[no-untyped-def]
            with tracer.start_as_current_span("venue.send"):
                return await super().submit(order)

    run_exits(TracedVenue([TxPlan(confirm_after=0.01, lands_after=0.01)]), provider)
    assert shutdown_tracing(provider, timeout=5)
    spans = otlp_receiver.wait_for(lambda s: len(s) >= 3)
    (attempt,) = by_name(spans, "exitguard.exit.attempt")
    (send,) = by_name(spans, "venue.send")
    assert send.parent_span_id == attempt.span_id


def exit_times(provider: TracerProvider | None, count: int = 20) -> list[float]:
    """Wall time of each of ``count`` quick exits (real clock), one after the other."""
    async def main() -> list[float]:
        guard = ExitGuard(ScriptedVenue(default=TxPlan(confirm_after=0.0, lands_after=0.0)),
                          name="bot")
        if provider is not None:
            instrument(guard, metrics=False, logs=False, tracer_provider=provider)
        times = []
        for i in range(count):
            started = time.perf_counter()
            await guard.exit(Position(f"p{i}", "SOL", 1.0, 100.0), signal_price=95.0)
            times.append(time.perf_counter() - started)
            await asyncio.sleep(0.01)  # let the exporter thread run between exits
        return times

    return asyncio.run(main())


#: How much slower than the same exits without tracing (the control, measured in the same
#: test) traced exits may be, seconds. An export the event loop waited on would block it for
#: about a second (the OTLP client's first retry backoff, within the 2 s export timeout) or
#: the full 2 s (a slow collector); half a second catches that and stays above scheduling
#: noise on a loaded 2-core machine.
SLOWER_BY_AT_MOST = 0.5
#: shutdown_tracing's own timeout in these tests, and how much later it may return on a
#: loaded machine (a shutdown that waited on the 5 s collector would take 5 s).
SHUTDOWN_TIMEOUT, SHUTDOWN_SLACK = 1.0, 1.0


def test_unreachable_collector_never_slows_an_exit() -> None:
    provider = configure_tracing(f"http://127.0.0.1:{free_port()}", set_global=False,
                                 schedule_delay=0.01, timeout=2.0)
    bare = exit_times(None)
    traced = exit_times(provider)
    assert max(traced) < max(bare) + SLOWER_BY_AT_MOST, (bare, traced)
    assert sum(traced) < sum(bare) + SLOWER_BY_AT_MOST
    started = time.perf_counter()
    shutdown_tracing(provider, timeout=SHUTDOWN_TIMEOUT)
    assert time.perf_counter() - started < SHUTDOWN_TIMEOUT + SHUTDOWN_SLACK


def test_slow_collector_never_slows_an_exit() -> None:
    with OtlpReceiver(delay=5.0) as slow:
        provider = configure_tracing(slow.endpoint, set_global=False, schedule_delay=0.01,
                                     timeout=2.0)
        bare = exit_times(None)
        traced = exit_times(provider)
        # The exporter thread is stuck in a request the collector answers in 5 s.
        assert slow.requests == 0
        assert max(traced) < max(bare) + SLOWER_BY_AT_MOST, (bare, traced)
        assert sum(traced) < sum(bare) + SLOWER_BY_AT_MOST
        started = time.perf_counter()
        finished = shutdown_tracing(provider, timeout=SHUTDOWN_TIMEOUT)
        # Bounded, whatever the collector does.
        assert time.perf_counter() - started < SHUTDOWN_TIMEOUT + SHUTDOWN_SLACK
        assert finished is False  # the export was still waiting on the collector


def test_configure_tracing_without_endpoint_still_makes_trace_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    provider = configure_tracing(None, set_global=False)
    span = provider.get_tracer("t").start_span("x")
    assert span.get_span_context().is_valid
    span.end()
    assert shutdown_tracing(provider)
    with pytest.raises(ValueError, match="timeout"):
        configure_tracing(None, timeout=0, set_global=False)


def test_sample_ratio_keeps_whole_traces_and_drops_the_others(otlp_receiver: OtlpReceiver) -> None:
    provider = configure_tracing(otlp_receiver.endpoint, set_global=False, schedule_delay=0.05,
                                 sample_ratio=0.5)
    outcomes = run_exits(ScriptedVenue(price=95.0), provider, count=200)
    assert all(o.status is ExitStatus.CLOSED for o in outcomes)
    assert shutdown_tracing(provider, timeout=5)
    spans = otlp_receiver.spans
    exits, attempts = by_name(spans, "exitguard.exit"), by_name(spans, "exitguard.exit.attempt")
    assert 50 <= len(exits) <= 150, len(exits)  # binomial(200, 0.5): outside is > 7 sigma
    # A sampled exit keeps its whole trace; an unsampled one sends nothing at all.
    assert sorted(a.parent_span_id for a in attempts) == sorted(e.span_id for e in exits)
    assert {a.trace_id for a in attempts} == {e.trace_id for e in exits}
    assert len({e.attributes["exitguard.position.id"] for e in exits}) == len(exits)
    assert all(e.attributes["exitguard.outcome"] == "closed" for e in exits)


def test_sample_ratio_zero_sends_nothing_and_one_overrides_the_environment(
    otlp_receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    for dropped in (configure_tracing(otlp_receiver.endpoint, set_global=False, sample_ratio=0.0),
                    configure_tracing(otlp_receiver.endpoint, set_global=False)):  # from the env
        (outcome,) = run_exits(ScriptedVenue(price=95.0), dropped)
        assert outcome.status is ExitStatus.CLOSED
        assert shutdown_tracing(dropped, timeout=5)
    assert otlp_receiver.requests == 0
    assert otlp_receiver.spans == []
    kept = configure_tracing(otlp_receiver.endpoint, set_global=False, sample_ratio=1.0)
    run_exits(ScriptedVenue(price=95.0), kept)
    assert shutdown_tracing(kept, timeout=5)
    assert sorted(s.name for s in otlp_receiver.wait_for(lambda s: len(s) >= 2)) == [
        "exitguard.exit", "exitguard.exit.attempt"]


@pytest.mark.parametrize("bad", [-0.1, 1.01, float("nan"), True, "0.5"])
def test_bad_sample_ratio_is_a_clear_error(bad: object) -> None:
    with pytest.raises(ValueError, match=r"sample_ratio must be a number in \[0, 1\]"):
        configure_tracing(None, set_global=False, sample_ratio=bad)  # type: ignore[arg-type]


def test_endpoint_from_environment(
    otlp_receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{otlp_receiver.port}")
    provider = configure_tracing(None, set_global=False, schedule_delay=0.05)
    provider.get_tracer("t").start_span("from-env").end()
    assert shutdown_tracing(provider, timeout=5)
    assert [s.name for s in otlp_receiver.wait_for(lambda s: len(s) >= 1)] == ["from-env"]


def test_an_export_outage_is_logged_once_counted_per_batch_and_its_end_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    from exitguard.telemetry import CountingSpanExporter
    from exitguard.telemetry._export_failures import TRACE_EXPORT_FAILURES

    class Flaky(SpanExporter):
        def __init__(self) -> None:
            self.answers: list[SpanExportResult | Exception] = [
                SpanExportResult.FAILURE, RuntimeError("token=s3cret refused"),
                SpanExportResult.FAILURE, SpanExportResult.SUCCESS, SpanExportResult.FAILURE,
            ]

        def export(self, spans: Any) -> SpanExportResult:
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

    before = TRACE_EXPORT_FAILURES.total
    exporter = CountingSpanExporter(Flaky())
    with caplog.at_level(logging.WARNING, logger="exitguard.telemetry"):
        results = [exporter.export([]) for _ in range(5)]
    assert results == [SpanExportResult.FAILURE] * 3 + [SpanExportResult.SUCCESS,
                                                        SpanExportResult.FAILURE]
    assert exporter.failures == 4
    assert TRACE_EXPORT_FAILURES.total - before == 4
    messages = [r.getMessage() for r in caplog.records if r.name == "exitguard.telemetry"]
    assert len([m for m in messages if "trace export failed" in m]) == 2  # two outages
    assert len([m for m in messages if "recovered after 3 failed" in m]) == 1
    assert not any("s3cret" in m for m in messages)
    exporter.shutdown()
