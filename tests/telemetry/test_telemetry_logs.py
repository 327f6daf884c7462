"""structlog events for transitions, attempts, retries, breaker, halt and resume, late
fills, with trace and span ids; JSON and console output; the standard library mode."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from structlog.testing import capture_logs

from exitguard import (
    CircuitBreaker,
    ExitGuard,
    ExitOutcome,
    InsufficientBalance,
    Position,
    RpcTimeout,
    TradingHalt,
)
from exitguard.errors import OrderNotSent
from exitguard.telemetry import (
    LogHooks,
    TracingHooks,
    add_trace_context,
    configure_logging,
    instrument,
    stdlib_formatter,
)
from exitguard.testing import ScriptedVenue, TxPlan, run_virtual
from tests.support.tracing import in_memory_tracing

#: A swap that fails on chain: confirm says so and nothing ever lands.
FAILS_ON_CHAIN = TxPlan(confirm_error=InsufficientBalance("insufficient funds"), lands_after=None)

POSITION = Position("pos-3", "SOL", 10.0, 100.0)
HEX32, HEX16 = 32, 16


@pytest.fixture(autouse=True)
def clean_logging() -> Iterator[None]:
    root, core = logging.getLogger(), logging.getLogger("exitguard")
    saved = (list(root.handlers), root.level, list(core.handlers), core.level, core.propagate)
    yield
    structlog.reset_defaults()
    root.handlers[:], root.level = saved[0], saved[1]
    core.handlers[:], core.level, core.propagate = saved[2], saved[3], saved[4]


def traced_guard_run(
    venue: ScriptedVenue, *, log_hooks: LogHooks | None = None, **options: Any
) -> tuple[ExitOutcome, list[ReadableSpan]]:
    provider, exporter = in_memory_tracing()

    async def main() -> ExitOutcome:
        guard = ExitGuard(venue, name="bot", **options)
        if log_hooks is None:
            instrument(guard, metrics=False, tracer_provider=provider)
        else:
            guard.add_hooks(TracingHooks(provider), log_hooks)
        outcome = await guard.exit(POSITION, signal_price=95.0, reason="stop_loss")
        await guard.drain()
        return outcome

    outcome = run_virtual(main())
    return outcome, list(exporter.get_finished_spans())


def ids(span: ReadableSpan) -> tuple[str, str]:
    return format(span.context.trace_id, "032x"), format(span.context.span_id, "016x")


def test_every_event_carries_trace_and_span_ids() -> None:
    first = TxPlan(confirm_after=0.1, confirm_error=RpcTimeout("slow"), lands_after=None,
                   expires_after=1.0)
    with capture_logs() as logs:
        outcome, spans = traced_guard_run(ScriptedVenue([first, TxPlan()], price=95.0),
                                          log_hooks=LogHooks(routine_level="info"))
    exit_span = next(s for s in spans if s.name == "exitguard.exit")
    attempts = sorted((s for s in spans if s.name == "exitguard.exit.attempt"),
                      key=lambda s: str(dict(s.attributes or {})["exitguard.attempt.number"]))
    trace_id, exit_span_id = ids(exit_span)
    events = [e for e in logs if e["event"].startswith("exit.")]
    assert events
    for event in events:
        assert event["guard"] == "bot"
        assert event["position_id"] == "pos-3"
        assert event["symbol"] == "SOL"
        assert event["trace_id"] == trace_id
        assert len(event["span_id"]) == HEX16
    transitions = [e for e in events if e["event"] == "exit.transition"]
    assert [e["to_state"] for e in transitions] == [r.to_state.value for r in outcome.history]
    attempt_events = [e for e in events if e["event"] == "exit.attempt"]
    assert [e["result"] for e in attempt_events] == ["timeout", "filled"]
    assert [e["span_id"] for e in attempt_events] == [ids(a)[1] for a in attempts]
    assert attempt_events[0]["log_level"] == "warning"
    assert attempt_events[0]["error_class"] == "rpc_timeout"
    (retry,) = [e for e in events if e["event"] == "exit.retry"]
    assert retry["error_class"] == "rpc_timeout"
    assert retry["next_attempt"] == 2
    assert retry["span_id"] == exit_span_id
    assert [e["event"] for e in events].count("exit.reconciled") >= 1
    (finished,) = [e for e in events if e["event"] == "exit.finished"]
    assert finished["outcome"] == "closed"
    assert finished["attempts"] == 2
    assert finished["span_id"] == exit_span_id
    assert finished["states"] == [r.to_state.value for r in outcome.history]


def test_an_unsampled_exit_still_ties_its_lines_together_by_trace_id() -> None:
    provider = TracerProvider(sampler=ALWAYS_OFF)

    async def main() -> None:
        guard = ExitGuard(ScriptedVenue([TxPlan()], price=95.0), name="bot")
        guard.add_hooks(TracingHooks(provider), LogHooks(routine_level="info"))
        await guard.exit(POSITION, signal_price=95.0, reason="stop_loss")

    with capture_logs() as logs:
        run_virtual(main())
    events = [e for e in logs if e["event"].startswith("exit.")]
    assert len(events) >= 4
    assert {len(e["trace_id"]) for e in events} == {HEX32}
    assert len({e["trace_id"] for e in events}) == 1


def test_default_levels_keep_a_clean_exit_to_one_info_line() -> None:
    stream = io.StringIO()
    configure_logging(json=True, level="INFO", stream=stream)
    outcome, spans = traced_guard_run(ScriptedVenue([TxPlan()], price=95.0))
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["exit.finished"]
    (line,) = lines
    assert line["level"] == "info"
    assert line["states"] == ["exit_signal_received", "submitted", "position_closed"]
    assert line["trace_id"] == ids(spans[-1])[0]
    assert line["timestamp"].endswith("Z")
    # At debug every transition and the attempt are there too.
    stream.truncate(0)
    stream.seek(0)
    configure_logging(json=True, level="DEBUG", stream=stream)
    traced_guard_run(ScriptedVenue([TxPlan()], price=95.0))
    events = [json.loads(line)["event"] for line in stream.getvalue().splitlines()]
    assert events == ["exit.transition", "exit.transition", "exit.transition", "exit.attempt",
                      "exit.finished"]
    assert outcome.attempts == 1


def test_anything_unusual_is_logged_at_info_or_above() -> None:
    stream = io.StringIO()
    configure_logging(json=True, level="INFO", stream=stream)
    plan = TxPlan(confirm_after=0.1, confirm_error=RpcTimeout("slow"), lands_after=0.2)
    traced_guard_run(ScriptedVenue([plan], price=95.0))
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    shown = [(line["event"], line.get("to_state") or line.get("result") or line.get("status"))
             for line in lines]
    assert ("exit.transition", "confirmation_timeout") in shown
    assert ("exit.transition", "reconciling") in shown
    assert ("exit.attempt", "timeout") in shown
    assert ("exit.reconciled", "landed") in shown
    assert shown[-1] == ("exit.finished", None)


def test_failed_exit_breaker_halt_and_resume_events() -> None:
    halt = TradingHalt(approvers=["alice"])
    plan = FAILS_ON_CHAIN
    with capture_logs() as logs:
        outcome, _ = traced_guard_run(ScriptedVenue([plan], price=95.0),
                                      breaker=CircuitBreaker(1, name="primary"), halt=halt)
        halt.resume("alice", "fixed the venue")
    events = {e["event"]: e for e in logs}
    assert events["exit.finished"]["log_level"] == "error"
    assert events["exit.finished"]["error_class"] == "insufficient_balance"
    breaker = events["breaker.transition"]
    assert breaker["log_level"] == "error"
    assert (breaker["breaker"], breaker["from_state"], breaker["to_state"]) == (
        "primary", "closed", "open")
    assert breaker["guard"] == "bot"
    assert len(breaker["trace_id"]) == HEX32  # the trip happened inside the exit's span
    assert events["trading.halted"]["log_level"] == "critical"
    assert "primary" in events["trading.halted"]["reason"]
    resumed = events["trading.resumed"]
    assert (resumed["approver"], resumed["reason"]) == ("alice", "fixed the venue")
    assert "trace_id" not in resumed  # resumed outside any span
    assert outcome.error_class is not None


def test_late_fill_event_joins_the_exit_trace() -> None:
    plan = TxPlan(hang=True, lands_after=15.0, expires_after=100.0)
    with capture_logs() as logs:
        _, spans = traced_guard_run(ScriptedVenue([plan], price=95.0), deadline=10.0)
    exit_span = next(s for s in spans if s.name == "exitguard.exit")
    (late,) = [e for e in logs if e["event"] == "exit.late_fill"]
    assert late["log_level"] == "error"
    assert late["tx_id"] == "tx1"
    assert late["trace_id"] == ids(exit_span)[0]
    late_span = next(s for s in spans if s.name == "exitguard.exit.late_fill")
    assert late_span.context.trace_id == exit_span.context.trace_id
    (resolved,) = [e for e in logs if e["event"] == "exit.pending_resolved"]
    assert resolved["status"] == "landed"


def test_secrets_in_error_texts_are_redacted() -> None:
    error = OrderNotSent("POST https://user:hunter2@rpc.example/?api-key=SECRET123 refused")
    with capture_logs() as logs:
        traced_guard_run(ScriptedVenue([TxPlan(send_error=error), TxPlan()], price=95.0),
                         log_hooks=LogHooks())
    text = json.dumps(logs)
    assert "hunter2" not in text
    assert "SECRET123" not in text
    (failed,) = [e for e in logs if e["event"] == "exit.attempt"
                 and e["result"] == "send_failed"]
    assert "api-key=***" in failed["error"]


def test_console_output_for_humans() -> None:
    stream = io.StringIO()
    configure_logging(json=False, level="DEBUG", stream=stream)
    traced_guard_run(ScriptedVenue([TxPlan()], price=95.0))
    text = stream.getvalue()
    assert "exit.finished" in text
    assert "trace_id=" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


#: A venue error that tries to forge a line and rewrite the terminal (clear the screen,
#: set the title, write the clipboard through OSC 52).
FORGING = ("quote down\n2026-01-01T00:00:00.000000Z [critical ] trading.resumed"
           "     approver=alice\r\x1b[2J\x1b]0;ok\x07\x1b]52;c;cm0gLXJmIH4=\x07\u2028done")


@pytest.mark.parametrize("stdlib", [False, True], ids=["native", "stdlib"])
def test_console_lines_cannot_be_forged_by_venue_text(stdlib: bool) -> None:
    """Each record is one console line: a venue's "\\n" or escape sequence is written
    escaped, in exitguard's events, the core's records and other libraries' records."""
    logging.getLogger().handlers[:] = []  # a process where nothing else set logging up
    stream = io.StringIO()
    configure_logging(json=False, level="INFO", stream=stream, stdlib=stdlib)
    venue = ScriptedVenue([TxPlan(send_error=OrderNotSent(FORGING)), TxPlan()], price=95.0,
                          price_error=ConnectionError(FORGING))
    traced_guard_run(venue, log_hooks=LogHooks())
    logging.getLogger("urllib3.connectionpool").warning("Retrying after %s", FORGING)
    text = stream.getvalue()
    assert "quote down" in text  # the venue's text did reach the console
    lines = text.splitlines()
    assert not any(line.startswith("2026-01-01") for line in lines), text
    assert not any(c in text for c in "\x1b\x07\r\u2028"), text
    assert "\\n2026-01-01" in text
    assert "\\x1b[2J" in text
    # One line per record: the core's quote warning, the failed attempt, the bot's line.
    assert sum("price quote failed" in line for line in lines) == 1
    assert sum("Retrying after" in line for line in lines) == 1


def test_one_log_hooks_follows_every_reconfiguration() -> None:
    # The exit's logger is reused while structlog's configuration stays, rebuilt when it
    # changes: each exit goes where the configuration of its start says.
    first, second, third = io.StringIO(), io.StringIO(), io.StringIO()
    hooks = LogHooks()

    async def one_exit(n: int) -> None:
        guard = ExitGuard(ScriptedVenue([TxPlan()], price=95.0), name="bot", hooks=hooks)
        await guard.exit(Position(f"pos-{n}", "SOL", 10.0, 100.0), signal_price=95.0)

    configure_logging(json=True, level="INFO", stream=first)
    run_virtual(one_exit(1))
    run_virtual(one_exit(2))
    configure_logging(json=True, level="INFO", stream=second)
    run_virtual(one_exit(3))
    configure_logging(json=True, level="ERROR", stream=third)
    run_virtual(one_exit(4))  # a clean exit logs nothing at error
    configure_logging(json=False, level="INFO", stream=third)
    run_virtual(one_exit(5))
    assert [json.loads(line)["position_id"] for line in first.getvalue().splitlines()] == [
        "pos-1", "pos-2"]
    assert [json.loads(line)["position_id"] for line in second.getvalue().splitlines()] == [
        "pos-3"]
    (console,) = third.getvalue().splitlines()
    assert "exit.finished" in console
    assert "position_id=pos-5" in console


def test_stdlib_mode_renders_ours_and_the_cores_records() -> None:
    stream = io.StringIO()
    configure_logging(stdlib=True, json=True, level="INFO", stream=stream)
    venue = ScriptedVenue([TxPlan()], price=95.0, price_error=ConnectionError("quote down"))
    _, spans = traced_guard_run(venue)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    ours = [line for line in lines if line["event"] == "exit.finished"]
    assert ours[0]["logger"] == "exitguard"
    assert ours[0]["trace_id"] == ids(spans[-1])[0]
    # The core's own stdlib warning (a failed price quote), rendered the same way, with the
    # exit's trace id (it was logged inside the exit's span).
    core = [line for line in lines if line.get("logger") == "exitguard.guard"]
    assert core
    assert "price quote failed" in core[0]["event"]
    assert core[0]["trace_id"] == ids(spans[-1])[0]
    assert core[0]["level"] == "warning"


def test_stdlib_mode_with_the_bots_own_handler() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(stdlib_formatter(json=True))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    configure_logging(stdlib=True, install_handler=False)
    logging.getLogger("mybot").info("bot started")
    traced_guard_run(ScriptedVenue([TxPlan()], price=95.0))
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["event"] == "bot started"
    assert lines[0]["logger"] == "mybot"
    assert [line["event"] for line in lines[1:]] == ["exit.finished"]


def test_stdlib_levels_are_honoured() -> None:
    stream = io.StringIO()
    configure_logging(stdlib=True, json=True, level="ERROR", stream=stream)
    traced_guard_run(ScriptedVenue([TxPlan()], price=95.0))
    assert stream.getvalue() == ""


def test_logger_above_error_costs_no_observer() -> None:
    configure_logging(level="CRITICAL", stream=io.StringIO())
    hooks = LogHooks()
    from exitguard.events import ExitInfo

    info = ExitInfo("bot", POSITION, 95.0, "x", 30.0, 0.0, 0.0)
    assert hooks(info) is None
    configure_logging(level="INFO", stream=io.StringIO())
    assert hooks(info) is not None


def test_add_trace_context_for_the_bots_own_events() -> None:
    provider = TracerProvider()
    with provider.get_tracer("t").start_as_current_span("s") as span:
        event = add_trace_context(None, "info", {"event": "x"})
    assert event["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert event["span_id"] == format(span.get_span_context().span_id, "016x")
    assert add_trace_context(None, "info", {"event": "y"}) == {"event": "y"}


def test_bad_level_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="level"):
        configure_logging(level="LOUD")


def test_logging_failure_never_breaks_an_exit() -> None:
    class Broken:
        def bind(self, **_: Any) -> Broken:
            return self

        def __getattr__(self, name: str) -> Any:
            raise RuntimeError("log sink down")

    async def main() -> ExitOutcome:
        guard = ExitGuard(ScriptedVenue([TxPlan()], price=95.0), name="bot")
        instrument(guard, metrics=False, traces=False, logger=Broken())
        return await asyncio.wait_for(guard.exit(POSITION, signal_price=95.0), 5)

    assert run_virtual(main()).ok
