"""The drop-in never reports more than happened: an exit is CLOSED only when what it filled
covers the position; a partial exit says how much; an unanswered submission may still land;
an exception before anything was sent is "not sent"; a plain ``def`` runs, synchronously.

Each case asserts the outcome, the exits-by-outcome metric, the ``exit.finished`` log line and
the exit span: the three places an operator would see the lie.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import pytest
from structlog.testing import capture_logs

from exitguard import ExitStatus, Fill, Position
from exitguard.errors import OrderNotSent
from exitguard.hooks import AttemptResult
from exitguard.ledger import DUST
from exitguard.outcome import ExitOutcome
from exitguard.state_machine import ExitState, is_valid_path
from exitguard.telemetry import (
    TrackedExit,
    current_exit,
    instrumented_exit,
    track_exit,
)
from exitguard.testing import RecordingHooks, run_virtual
from tests.support.dropin import Kit

POSITION = Position("pos-1", "SOL", 10.0, 100.0)


def states(outcome: ExitOutcome) -> list[ExitState]:
    return [record.to_state for record in outcome.history]


def finished_line(logs: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    (line,) = [e for e in logs if e["event"] == "exit.finished"]
    return line


def span_attributes(kit: Kit) -> dict[str, Any]:
    (span,) = kit.exit_spans()
    return dict(span.attributes or {})


def tracked(kit: Kit, body: Callable[[TrackedExit], Awaitable[None]]
            ) -> tuple[ExitOutcome, Mapping[str, Any]]:
    """Run ``body`` inside ``track_exit`` (no verdict given); the outcome and its log line."""
    holder: list[TrackedExit] = []

    async def main() -> None:
        async with track_exit(POSITION, signal_price=95.0, guard_name="bot",
                              hooks=kit.hooks) as exit_:
            holder.append(exit_)
            await body(exit_)

    with capture_logs() as logs:
        run_virtual(main())
    outcome = holder[0].outcome
    assert outcome is not None
    assert is_valid_path(outcome.history)
    return outcome, finished_line(logs)


# -- item 5: never CLOSED with the full size unless it was sold ---------------------------


def test_a_submitted_attempt_never_filled_may_still_land(kit: Kit) -> None:
    async def body(exit_: TrackedExit) -> None:
        async with exit_.attempt("market") as attempt:
            attempt.submitted("tx-1")

    outcome, line = tracked(kit, body)
    assert outcome.status is ExitStatus.UNRESOLVED
    assert outcome.filled_size == 0.0
    assert outcome.pending_tx_ids == ("tx-1",)
    assert outcome.remaining_size == 10.0
    assert kit.exits() == {"unresolved": 1}
    assert (line["outcome"], line["filled_size"]) == ("unresolved", 0.0)
    assert line["pending_tx_ids"] == ["tx-1"]
    attributes = span_attributes(kit)
    assert attributes["exitguard.outcome"] == "unresolved"
    assert attributes["exitguard.filled_size"] == 0.0
    assert kit.registry.get_sample_value(
        "exitguard_exit_attempts_total",
        {"guard": "bot", "mode": "market", "result": "timeout"}) == 1


def test_an_attempt_reported_failed_leaves_the_exit_failed(kit: Kit) -> None:
    async def body(exit_: TrackedExit) -> None:
        async with exit_.attempt("limit") as attempt:
            attempt.submitted("tx-1")
            attempt.failed("order expired unfilled", result="expired")

    outcome, line = tracked(kit, body)
    assert outcome.status is ExitStatus.FAILED
    assert outcome.filled_size == 0.0
    assert outcome.reason == "nothing was filled"
    assert kit.exits() == {"failed": 1}
    assert line["outcome"] == "failed"
    assert span_attributes(kit)["exitguard.outcome"] == "failed"


def test_a_block_without_any_attempt_is_a_failed_exit(kit: Kit) -> None:
    async def body(exit_: TrackedExit) -> None:
        await asyncio.sleep(0)

    outcome, line = tracked(kit, body)
    assert outcome.status is ExitStatus.FAILED
    assert outcome.reason == "no attempt was reported"
    assert (outcome.filled_size, outcome.attempts) == (0.0, 0)
    assert states(outcome)[-1] is ExitState.EXIT_FAILED
    assert kit.exits() == {"failed": 1}
    assert (line["outcome"], line["filled_size"]) == ("failed", 0.0)
    assert span_attributes(kit)["exitguard.outcome"] == "failed"


@pytest.mark.parametrize("priced", [True, False], ids=["with-price", "without-price"])
def test_three_of_ten_filled_is_a_partial_exit_with_its_size(kit: Kit, priced: bool) -> None:
    async def body(exit_: TrackedExit) -> None:
        async with exit_.attempt("market") as attempt:
            attempt.submitted("tx-1")
            attempt.filled(price=94.0 if priced else None, size=3.0)

    outcome, line = tracked(kit, body)
    assert outcome.status is ExitStatus.FAILED
    assert outcome.filled_size == pytest.approx(3.0)
    assert outcome.remaining_size == pytest.approx(7.0)
    assert outcome.reason == "partially filled: 3 of 10 sold, 7 left"
    assert outcome.avg_price == (94.0 if priced else None)
    assert ExitState.PARTIALLY_FILLED in states(outcome)
    assert ExitState.POSITION_CLOSED not in states(outcome)
    assert kit.exits() == {"failed": 1}
    assert (line["outcome"], line["filled_size"]) == ("failed", 3.0)
    attributes = span_attributes(kit)
    assert attributes["exitguard.outcome"] == "failed"
    assert attributes["exitguard.filled_size"] == 3.0
    assert kit.registry.get_sample_value(
        "exitguard_exit_attempts_total",
        {"guard": "bot", "mode": "market", "result": "partial"}) == 1


def test_an_explicit_closed_short_of_the_position_is_partial(kit: Kit) -> None:
    async def body(exit_: TrackedExit) -> None:
        exit_.closed(fill_price=94.0, filled_size=3.0)

    outcome, line = tracked(kit, body)
    assert outcome.status is ExitStatus.FAILED
    assert outcome.filled_size == 3.0
    assert kit.exits() == {"failed": 1}
    assert line["outcome"] == "failed"


def test_fills_that_cover_the_position_close_it_down_to_the_ledgers_dust(kit: Kit) -> None:
    async def body(exit_: TrackedExit) -> None:
        async with exit_.attempt("limit") as first:
            first.submitted("tx-1")
            first.filled(price=94.0, size=4.0)
        async with exit_.attempt("market") as second:
            second.submitted("tx-2")
            second.filled(price=93.0, size=6.0 * (1 - DUST / 10))  # dust left

    outcome, line = tracked(kit, body)
    assert outcome.status is ExitStatus.CLOSED
    assert outcome.avg_price == pytest.approx((4 * 94 + 6 * 93) / 10)
    assert kit.exits() == {"closed": 1}
    assert line["outcome"] == "closed"
    assert span_attributes(kit)["exitguard.slippage_bps"] == pytest.approx(
        (95 - 93.4) / 95 * 10_000)


def test_an_exception_after_a_partial_fill_keeps_its_size(kit: Kit) -> None:
    async def body(exit_: TrackedExit) -> None:
        async with exit_.attempt("market") as attempt:
            attempt.submitted("tx-1")
            attempt.filled(price=94.0, size=3.0)
        raise RuntimeError("bot gave up")

    with pytest.raises(RuntimeError, match="gave up"):
        tracked(kit, body)
    assert kit.exits() == {"failed": 1}
    assert span_attributes(kit)["exitguard.filled_size"] == 3.0


# -- item 7: an exception before anything is sent is "not sent" ---------------------------


def test_an_exception_before_the_decorated_call_sends_is_not_sent(kit: Kit) -> None:
    hooks = RecordingHooks()

    @instrumented_exit(guard_name="bot", mode="market", hooks=[kit.hooks, hooks])
    async def close(position: Position, signal_price: float) -> Fill:
        raise ValueError("symbol SOL/XYZ not found")  # the bot's own check, before sending

    async def main() -> None:
        with pytest.raises(ValueError, match="not found"):
            await close(POSITION, 95.0)

    with capture_logs() as logs:
        run_virtual(main())
    (outcome,) = [p for n, p in hooks.events if n == "exit_finished"]
    assert outcome.status is ExitStatus.FAILED
    assert ExitState.SUBMITTED not in states(outcome)
    assert states(outcome)[1:] == [ExitState.SUBMISSION_FAILED, ExitState.EXIT_FAILED]
    assert outcome.history[1].detail == "not sent: unknown"
    (report,) = [p for n, p in hooks.events if n == "attempt_finished"]
    assert report.result is AttemptResult.SEND_FAILED
    assert "submitted" not in [e.get("to_state") for e in logs]
    assert finished_line(logs)["states"] == [
        "exit_signal_received", "submission_failed", "exit_failed"]
    (span,) = kit.exit_spans()
    assert "submitted" not in [(e.attributes or {}).get("exitguard.state.to")
                               for e in span.events]
    assert kit.registry.get_sample_value(
        "exitguard_exit_attempts_total",
        {"guard": "bot", "mode": "market", "result": "send_failed"}) == 1


def test_an_exception_in_a_tracked_attempt_before_submitted_is_not_sent(kit: Kit) -> None:
    async def body(exit_: TrackedExit) -> None:
        async with exit_.attempt("market"):
            raise OrderNotSent("refused before any byte left")

    with pytest.raises(OrderNotSent):
        tracked(kit, body)
    (span,) = kit.exit_spans()
    to_states = [(e.attributes or {}).get("exitguard.state.to") for e in span.events]
    assert "submitted" not in to_states
    assert to_states[-1] == "exit_failed"


def test_an_exception_after_the_function_reported_the_send_may_still_land(kit: Kit) -> None:
    @instrumented_exit(guard_name="bot", mode="market", hooks=kit.hooks)
    async def close(position: Position, signal_price: float) -> Fill:
        exit_ = current_exit()
        assert exit_ is not None
        assert exit_.current_attempt is not None
        exit_.current_attempt.submitted("order-7")
        raise KeyError("fills")  # parsing the venue's answer failed, after it took the order

    async def main() -> None:
        with pytest.raises(KeyError):
            await close(POSITION, 95.0)

    run_virtual(main())
    assert kit.exits() == {"unresolved": 1}
    assert span_attributes(kit)["exitguard.pending_tx_ids"] == ("order-7",)


# -- item 4: a plain def is called synchronously ------------------------------------------


def test_a_plain_def_is_instrumented_synchronously(kit: Kit) -> None:
    calls: list[float] = []

    @instrumented_exit(guard_name="bot", mode="market", hooks=kit.hooks)
    def close(position: Position, signal_price: float) -> Fill:
        calls.append(position.size)  # a synchronous exchange client
        return Fill("tx-9", position.size, 94.0)

    with capture_logs() as logs:
        fill = close(POSITION, signal_price=95.0)  # no event loop anywhere
    assert fill == Fill("tx-9", 10.0, 94.0)
    assert calls == [10.0]
    assert kit.exits() == {"closed": 1}
    assert finished_line(logs)["outcome"] == "closed"
    attributes = span_attributes(kit)
    assert attributes["exitguard.slippage_bps"] == pytest.approx((95 - 94) / 95 * 10_000)
    (attempt,) = [s for s in kit.spans() if s.name == "exitguard.exit.attempt"]
    assert (attempt.attributes or {})["exitguard.tx_id"] == "tx-9"


def test_a_plain_def_that_raises_is_a_failed_exit_and_propagates(kit: Kit) -> None:
    @instrumented_exit(guard_name="bot", hooks=kit.hooks)
    def close(position_id: str, size: float, signal_price: float) -> None:
        raise ValueError("insufficient balance")

    with pytest.raises(ValueError, match="insufficient"):
        close("pos-2", 1.0, 95.0)
    assert kit.exits() == {"failed": 1}


def test_a_plain_def_called_from_a_coroutine_uses_the_loops_clock(kit: Kit) -> None:
    hooks = RecordingHooks()

    @instrumented_exit(guard_name="bot", hooks=[kit.hooks, hooks])
    def close(position: Position, signal_price: float) -> float:
        return 94.0

    async def main() -> tuple[float, float]:
        await asyncio.sleep(5)  # virtual time: the loop's clock is not time.monotonic
        return close(POSITION, 95.0), asyncio.get_running_loop().time()

    price, now = run_virtual(main())
    assert price == 94.0
    (info,) = [p for n, p in hooks.events if n == "exit_started"]
    assert info.started_at == pytest.approx(now)
    assert kit.exits() == {"closed": 1}


def test_a_plain_def_returning_a_coroutine_is_refused_not_skipped(kit: Kit) -> None:
    async def really_async() -> float:
        return 94.0

    @instrumented_exit(guard_name="bot", hooks=kit.hooks)
    def close(position: Position, signal_price: float) -> Awaitable[float]:
        return really_async()

    with pytest.raises(TypeError, match="async def"):
        close(POSITION, 95.0)
    assert kit.exits() == {"failed": 1}


def test_async_def_still_gives_a_coroutine_function(kit: Kit) -> None:
    @instrumented_exit(guard_name="bot", hooks=kit.hooks)
    async def close(position: Position, signal_price: float) -> float:
        await asyncio.sleep(0.01)
        return 94.0

    assert asyncio.iscoroutinefunction(close)
    assert run_virtual(close(POSITION, 95.0)) == 94.0
    assert kit.exits() == {"closed": 1}


def test_track_exit_as_a_plain_with_block(kit: Kit) -> None:
    with track_exit(POSITION, signal_price=95.0, guard_name="bot", hooks=kit.hooks) as exit_, \
            exit_.attempt("market") as attempt:
        attempt.submitted("tx-1")
        attempt.filled(price=94.0)
    assert exit_.outcome is not None
    assert exit_.outcome.status is ExitStatus.CLOSED
    assert kit.exits() == {"closed": 1}


def test_an_attempt_finished_as_send_failed_never_shows_submitted(kit: Kit) -> None:
    async def body(exit_: TrackedExit) -> None:
        attempt = exit_.attempt_started("market")
        exit_.attempt_finished(attempt, "send_failed")

    outcome, line = tracked(kit, body)
    assert ExitState.SUBMITTED not in states(outcome)
    assert outcome.history[1].detail == "not sent: not_sent"
    assert line["outcome"] == "failed"
