"""A stalled event loop (thousands of exits at once, a long GC pause) must not make an exit
send after its deadline or end in an internal error.

Found by profiling 10,000 concurrent exits: when the loop lagged past the deadline between
an exit's price quote and its submit, the exit sent the order anyway, then failed the
SUBMITTED transition ("the exit deadline has passed") and ended as an internal error whose
traceback the redacting log filter formatted (about 5 ms each): a cascade in which every
late exit made the next ones later. The stall is simulated in virtual time by a venue call
that moves the clock forward before it answers, as a blocked loop does.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from exitguard import ExitGuard, ExitOutcome, ExitStatus, Position, RetryPolicy
from exitguard.state_machine import ExitState, is_valid_path
from exitguard.testing import ScriptedVenue, TxPlan, run_virtual
from exitguard.venue import ExitOrder, Submission
from exitguard.vtime import VirtualTimeLoop

POSITION = Position("stall-1", "SOL", 1.0, 100.0)
POLICY = RetryPolicy(total_timeout=2.0, attempt_timeout=1.0, min_attempt_time=0.05)


def _stall(seconds: float) -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualTimeLoop)
    loop.advance(seconds)


class StallingVenue(ScriptedVenue):
    """``stall_in`` ('price' or 'submit') answers only after the loop stalled ``stall``
    seconds (the first call only)."""

    def __init__(self, stall_in: str, stall: float, plan: TxPlan) -> None:
        super().__init__([plan], price=95.0)
        self.stall_in = stall_in
        self.stall = stall

    async def price(self, position: Position) -> float:
        if self.stall_in == "price":
            self.stall_in = ""
            _stall(self.stall)
        return await super().price(position)

    async def submit(self, order: ExitOrder) -> Submission:
        submission = await super().submit(order)
        if self.stall_in == "submit":
            self.stall_in = ""
            _stall(self.stall)
        return submission


def _exit(venue: ScriptedVenue) -> tuple[ExitOutcome, ExitGuard]:
    async def main() -> tuple[ExitOutcome, ExitGuard]:
        guard = ExitGuard(venue, policy=POLICY, deadline=2.0, reconcile_interval=0.05)
        outcome = await guard.exit(POSITION, signal_price=95.0, reason="stop_loss")
        await guard.drain()
        return outcome, guard

    return run_virtual(main())


def test_a_quote_that_ends_past_the_deadline_sends_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    venue = StallingVenue("price", 3.0, TxPlan())
    with caplog.at_level(logging.WARNING, logger="exitguard"):
        outcome, _ = _exit(venue)
    assert venue.submit_calls == 0  # before the fix: the order went out after the deadline
    assert outcome.status is ExitStatus.FAILED
    assert outcome.deadline_exceeded
    assert "internal error" not in outcome.reason
    assert not [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert is_valid_path(outcome.history)


def test_a_submit_that_answers_past_the_deadline_ends_unresolved_and_is_reconciled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    venue = StallingVenue("submit", 3.0, TxPlan(lands_after=0.5))
    with caplog.at_level(logging.WARNING, logger="exitguard"):
        outcome, guard = _exit(venue)
    assert venue.submit_calls == 1
    assert outcome.status is ExitStatus.UNRESOLVED
    assert outcome.deadline_exceeded
    assert outcome.pending_tx_ids == ("tx1",)
    assert "internal error" not in outcome.reason
    assert not [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert outcome.history[-1].to_state is ExitState.EXIT_UNRESOLVED
    assert all(r.to_state is not ExitState.SUBMITTED for r in outcome.history)
    assert is_valid_path(outcome.history)
    # It stayed tracked: the background reconciliation found it landed and counted it once.
    assert guard.sold(POSITION.id) == pytest.approx(1.0)
    assert [fill.tx_id for _, fill in guard.late_fills] == ["tx1"]
    assert not venue.violations
