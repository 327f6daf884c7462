"""instrument()/hooks() wiring, and the drop-in (track_exit, @instrumented_exit): the same
metrics, spans and logs as a guarded exit, from the same hook classes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from exitguard import ExitGuard, ExitStatus, Fill, Position, RpcTimeout
from exitguard import catalogue as cat
from exitguard.events import ExitInfo
from exitguard.hooks import SafeHooks
from exitguard.state_machine import is_valid_path
from exitguard.telemetry import (
    LogHooks,
    PrometheusHooks,
    TracingHooks,
    current_exit,
    instrument,
    instrumented_exit,
    track_exit,
)
from exitguard.testing import ScriptedVenue, TxPlan, run_virtual
from tests.support import REPO
from tests.support.dropin import Kit

POSITION = Position("pos-9", "SOL", 10.0, 100.0)


def comparable(samples: dict[Any, float]) -> dict[Any, float]:
    """Samples without what depends on time (duration sum and buckets)."""
    return {k: v for k, v in samples.items()
            if not k[0].startswith(cat.EXIT_DURATION.name) or k[0].endswith("_count")}


def span_shape(spans: list[ReadableSpan]) -> list[tuple[str, list[str], list[str]]]:
    return sorted(
        (s.name, sorted(s.attributes or {}),
         [str((e.attributes or {}).get("exitguard.state.to", e.name)) for e in s.events])
        for s in spans
    )


def test_instrument_attaches_in_the_right_order(kit: Kit) -> None:
    guard = ExitGuard(ScriptedVenue(), name="bot")
    inst = instrument(guard, registry=kit.registry, tracer_provider=kit.provider)
    assert guard.hooks is not None
    # One fan-out: the telemetry hooks are the guard's own, in call order.
    assert guard.hooks.hooks == inst.hooks.hooks
    assert [type(p) for p in inst.hooks.hooks] == [TracingHooks, PrometheusHooks, LogHooks]
    assert inst.prometheus is not None
    assert inst.prometheus.registry is kit.registry
    only_metrics = instrument(ExitGuard(ScriptedVenue()), traces=False, logs=False,
                              registry=CollectorRegistry())
    assert [type(p) for p in only_metrics.hooks.hooks] == [PrometheusHooks]
    assert only_metrics.tracing is None
    assert only_metrics.logs is None
    nothing = ExitGuard(ScriptedVenue())
    instrument(nothing, metrics=False, traces=False, logs=False)
    assert nothing.hooks is None


def test_hooks_at_construction_match_instrument(kit: Kit) -> None:
    async def main() -> None:
        guard = ExitGuard(ScriptedVenue([TxPlan(price=94.0)], price=95.0), name="bot",
                          hooks=kit.hooks)
        await guard.exit(POSITION, signal_price=95.0)

    run_virtual(main())
    assert kit.samples()[(cat.EXITS.name, (("guard", "bot"), ("outcome", "closed")))] == 1
    assert {s.name for s in kit.spans()} == {"exitguard.exit", "exitguard.exit.attempt"}


def test_a_raising_part_is_isolated(kit: Kit) -> None:
    class Broken:
        def __call__(self, event: Any) -> Any:
            if isinstance(event, ExitInfo):
                raise RuntimeError("boom")

    async def main() -> bool:
        guard = ExitGuard(ScriptedVenue([TxPlan()]), name="bot",
                          hooks=SafeHooks(Broken(), PrometheusHooks(kit.registry)))
        return (await guard.exit(POSITION, signal_price=95.0)).ok

    assert run_virtual(main())
    assert kit.samples()[(cat.EXITS.name, (("guard", "bot"), ("outcome", "closed")))] == 1


def guarded(kit: Kit, plans: list[TxPlan]) -> None:
    async def main() -> None:
        guard = ExitGuard(ScriptedVenue(plans, price=95.0), name="bot", hooks=kit.hooks)
        await guard.exit(POSITION, signal_price=95.0, reason="stop_loss")

    run_virtual(main())


def test_track_exit_records_what_the_guard_records() -> None:
    reference, dropin = Kit(), Kit()
    guarded(reference, [TxPlan(price=94.0)])

    async def main() -> None:
        async with track_exit(position_id="pos-9", symbol="SOL", size=10.0, entry_price=100.0,
                              signal_price=95.0, guard_name="bot", reason="stop_loss",
                              venue="scripted", hooks=dropin.hooks) as exit_:
            assert current_exit() is exit_
            async with exit_.attempt(mode="limit", max_slippage_bps=100,
                                     priority_fee=10_000) as attempt:
                attempt.submitted("tx1")
                await asyncio.sleep(0.05)
                attempt.filled(price=94.0)
        assert current_exit() is None
        assert exit_.outcome is not None
        assert exit_.outcome.status is ExitStatus.CLOSED
        assert is_valid_path(exit_.outcome.history)

    run_virtual(main())
    assert comparable(dropin.samples()) == comparable(reference.samples())
    assert span_shape(dropin.spans()) == span_shape(reference.spans())
    exit_span = next(s for s in dropin.spans() if s.name == "exitguard.exit")
    attempt_span = next(s for s in dropin.spans() if s.name == "exitguard.exit.attempt")
    assert attempt_span.parent is not None
    assert attempt_span.parent.span_id == exit_span.context.span_id
    assert (exit_span.attributes or {})["exitguard.slippage_bps"] == pytest.approx(
        (95 - 94) / 95 * 10_000)


def test_track_exit_retry_after_timeout_matches_the_guard() -> None:
    reference, dropin = Kit(), Kit()
    guarded(reference, [TxPlan(confirm_after=0.1, confirm_error=RpcTimeout("t"),
                               lands_after=None, expires_after=1.0), TxPlan()])

    async def main() -> None:
        async with track_exit(POSITION, signal_price=95.0, guard_name="bot", reason="stop_loss",
                              venue="scripted", hooks=dropin.hooks) as exit_:
            first = exit_.attempt_started("limit", max_slippage_bps=100, priority_fee=10_000)
            first.submitted("tx1")
            exit_.attempt_finished(first, error=RpcTimeout("t"))
            # The bot found tx1 expired, and went on.
            async with exit_.attempt("market", max_slippage_bps=500, step=1,
                                     priority_fee=100_000) as second:
                second.submitted("tx2")
                second.filled(price=95.0)

    run_virtual(main())
    ref, got = comparable(reference.samples()), comparable(dropin.samples())
    for series in (
        (cat.EXIT_RETRIES.name, (("error_class", "rpc_timeout"), ("guard", "bot"))),
        (cat.EXITS_RETRIED.name, (("guard", "bot"),)),
        (cat.EXIT_ATTEMPTS.name, (("guard", "bot"), ("mode", "limit"), ("result", "timeout"))),
        (cat.EXIT_ATTEMPTS.name, (("guard", "bot"), ("mode", "market"), ("result", "filled"))),
        (cat.EXITS.name, (("guard", "bot"), ("outcome", "closed"))),
    ):
        assert got[series] == ref[series] == 1, series
    assert (cat.EXITS_FIRST_ATTEMPT.name, (("guard", "bot"),)) not in got
    assert got.get((cat.UNRESOLVED_TRANSACTIONS.name, (("guard", "bot"),)), 0) == 0


def test_track_exit_exception_is_a_failed_exit_and_propagates(kit: Kit) -> None:
    async def main() -> None:
        with pytest.raises(ConnectionError, match="down"):
            async with track_exit(POSITION, signal_price=95.0, guard_name="bot",
                                  hooks=kit.hooks) as exit_, exit_.attempt("market"):
                raise ConnectionError("down")
        assert exit_.outcome is not None
        assert exit_.outcome.status is ExitStatus.FAILED
        assert exit_.outcome.error_class is not None

    run_virtual(main())
    samples = kit.samples()
    assert samples[(cat.EXITS.name, (("guard", "bot"), ("outcome", "failed")))] == 1
    assert samples[(cat.EXIT_ATTEMPTS.name, (("guard", "bot"), ("mode", "market"),
                                             ("result", "send_failed")))] == 1
    exit_span = next(s for s in kit.spans() if s.name == "exitguard.exit")
    assert exit_span.status.status_code is trace.StatusCode.ERROR


def test_unresolved_drop_in_exit_and_its_late_fill(kit: Kit) -> None:
    async def main() -> None:
        async with track_exit(POSITION, signal_price=95.0, guard_name="bot",
                              hooks=kit.hooks) as exit_:
            attempt = exit_.attempt_started("market")
            attempt.submitted("tx-a")
            attempt.timed_out()
            attempt.finish()
            exit_.failed("gave up waiting")
        assert exit_.outcome is not None
        assert exit_.outcome.status is ExitStatus.UNRESOLVED
        assert exit_.outcome.pending_tx_ids == ("tx-a",)
        unresolved = kit.registry.get_sample_value(cat.UNRESOLVED_TRANSACTIONS.name,
                                                   {"guard": "bot"})
        assert unresolved == 1
        exit_.resolved("tx-a", "landed", fill_price=93.0)

    with capture_logs() as logs:
        run_virtual(main())
    samples = kit.samples()
    assert samples[(cat.EXITS.name, (("guard", "bot"), ("outcome", "unresolved")))] == 1
    assert samples[(cat.LATE_FILLS.name, (("guard", "bot"),))] == 1
    assert (cat.UNRESOLVED_TRANSACTIONS.name, (("guard", "bot"),)) not in samples
    assert [e["event"] for e in logs if e["event"] == "exit.late_fill"] == ["exit.late_fill"]


def test_refused_drop_in_exit(kit: Kit) -> None:
    async def main() -> None:
        async with track_exit(POSITION, signal_price=95.0, guard_name="bot",
                              hooks=kit.hooks) as exit_:
            exit_.refused("my breaker is open")

    run_virtual(main())
    assert kit.samples()[(cat.EXITS.name, (("guard", "bot"), ("outcome", "refused")))] == 1


def test_decorator_records_an_exit_per_call(kit: Kit) -> None:
    @instrumented_exit(guard_name="bot", mode="market", hooks=kit.hooks)
    async def close_position(position: Position, signal_price: float) -> Fill:
        await asyncio.sleep(0.02)
        return Fill("tx-9", position.size, 94.0)

    @instrumented_exit(guard_name="bot", hooks=kit.hooks)
    async def broken(position_id: str, size: float, signal_price: float) -> None:
        raise TimeoutError("venue did not answer")

    async def main() -> None:
        fill = await close_position(POSITION, signal_price=95.0)
        assert fill.price == 94.0
        with pytest.raises(TimeoutError):
            await broken("pos-10", 1.0, 95.0)

    run_virtual(main())
    samples = kit.samples()
    assert samples[(cat.EXITS.name, (("guard", "bot"), ("outcome", "closed")))] == 1
    # A timed-out call may have placed the order: it may still land (the guard's rule).
    assert samples[(cat.EXITS.name, (("guard", "bot"), ("outcome", "unresolved")))] == 1
    assert samples[(cat.EXITS_FIRST_ATTEMPT.name, (("guard", "bot"),))] == 1
    assert samples[(cat.EXIT_ATTEMPTS.name, (("guard", "bot"), ("mode", "market"),
                                             ("result", "filled")))] == 1
    assert samples[(cat.EXIT_ATTEMPTS.name, (("guard", "bot"), ("mode", "market"),
                                             ("result", "timeout")))] == 1
    assert samples[(cat.EXIT_SLIPPAGE.series("count"), (("guard", "bot"),))] == 1
    spans = kit.spans()
    exits = [s for s in spans if s.name == "exitguard.exit"]
    assert len(exits) == 2
    closed = next(s for s in exits if (s.attributes or {})["exitguard.outcome"] == "closed")
    assert (closed.attributes or {})["exitguard.position.id"] == "pos-9"
    attempt = next(s for s in spans if s.name == "exitguard.exit.attempt"
                   and s.parent is not None and s.parent.span_id == closed.context.span_id)
    assert (attempt.attributes or {})["exitguard.tx_id"] == "tx-9"


def test_decorator_with_the_functions_own_attempts(kit: Kit) -> None:
    @instrumented_exit(guard_name="bot", mode=None, hooks=kit.hooks)
    async def close(position: Position, signal_price: float, reason: str = "tp") -> float:
        exit_ = current_exit()
        assert exit_ is not None
        for step, mode in enumerate(("limit", "market")):
            async with exit_.attempt(mode, step=step) as attempt:
                if mode == "limit":
                    attempt.failed("slippage exceeded", result="rejected")
                else:
                    attempt.filled(price=96.0)
        return 96.0

    assert run_virtual(close(POSITION, 95.0)) == 96.0
    samples = kit.samples()
    assert samples[(cat.EXITS_RETRIED.name, (("guard", "bot"),))] == 1
    assert samples[(cat.EXIT_ATTEMPTS.name, (("guard", "bot"), ("mode", "limit"),
                                             ("result", "rejected")))] == 1
    exit_span = next(s for s in kit.spans() if s.name == "exitguard.exit")
    assert (exit_span.attributes or {})["exitguard.reason"] == "tp"
    slippage = (exit_span.attributes or {})["exitguard.slippage_bps"]
    assert isinstance(slippage, float)
    assert slippage < 0  # a better price than the signal


def test_decorator_needs_the_parameters_it_reads() -> None:
    with pytest.raises(TypeError, match="signal_price"):
        @instrumented_exit()
        async def wrong(symbol: str) -> None: ...


def test_track_exit_validates_its_input() -> None:
    with pytest.raises(ValueError, match="signal_price"):
        track_exit(position_id="p", size=1.0, signal_price=float("nan"))
    with pytest.raises(TypeError, match="position"):
        track_exit(signal_price=95.0)
    with pytest.raises(ValueError, match="size"):
        track_exit(position_id="p", size=-1.0, signal_price=95.0)


def test_former_names_of_guard_name_and_deadline_still_work_with_a_warning(kit: Kit) -> None:
    """``guard_name`` and ``deadline`` (seconds) are the names; ``guard=``/``deadline_s=`` are
    kept, deprecated."""
    with pytest.warns(DeprecationWarning, match="guard_name"):
        old = track_exit(POSITION, signal_price=95.0, guard="old-bot", hooks=kit.hooks)
    assert old.guard == "old-bot"
    with pytest.warns(DeprecationWarning, match="deadline="):
        old = track_exit(POSITION, signal_price=95.0, deadline_s=7.0, hooks=kit.hooks)
    assert old.deadline_s == 7.0
    new = track_exit(POSITION, signal_price=95.0, guard_name="bot", deadline=9.0,
                     hooks=kit.hooks)
    assert (new.guard, new.deadline_s) == ("bot", 9.0)


def test_the_documented_drop_in_example_runs() -> None:
    import re
    import subprocess
    import sys

    doc = REPO / "docs" / "instrumentation.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)
    example = next(b for b in blocks if "track_exit" in b and "asyncio.run" in b)
    done = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "outcome: closed" in done.stdout
    assert 'exitguard_exits_total{guard="mybot",outcome="closed"} 2.0' in done.stdout
