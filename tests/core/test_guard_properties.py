"""Property tests: random fault sequences never break the guard's promises."""

from __future__ import annotations

import asyncio
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exitguard import (
    ExitGuard,
    ExitOutcome,
    ExitStatus,
    InsufficientBalance,
    InvalidAccount,
    NetworkError,
    Position,
    RetryPolicy,
    RpcTimeout,
    SlippageExceeded,
    TxExpired,
)
from exitguard.state_machine import ExitState, is_valid_path
from exitguard.testing import ScriptedVenue, TxPlan, run_virtual

POSITION = Position("prop", "SOL", 10.0, 100.0)
#: Virtual-time slack allowed past the deadline (timer resolution, not real work).
MARGIN = 1e-6

send_errors = st.sampled_from(
    [None, None, None, NetworkError("ECONNRESET"), InsufficientBalance("insufficient funds"),
     ConnectionError("reset by peer")]
)
# Errors after which the transaction cannot have landed (a consistent venue says so only then).
definitive_errors = st.sampled_from(
    [TxExpired("Blockhash not found"), SlippageExceeded("custom program error: 6001"),
     InvalidAccount("AccountNotFound")]
)
# Errors that say nothing about whether it landed.
ambiguous_errors = st.sampled_from(
    [RpcTimeout("timed out"), TimeoutError(), KeyError("result"), ValueError("garbage"),
     OSError("EPIPE")]
)


@st.composite
def tx_plans(draw: st.DrawFn) -> TxPlan:
    expires_after = draw(st.floats(0.5, 60.0))
    lands = draw(st.booleans())
    lands_after = draw(st.floats(0.0, 70.0)) if lands else None
    will_land = lands_after is not None and lands_after < expires_after
    hang = draw(st.booleans())
    confirm_after = draw(st.floats(0.0, 15.0))
    if will_land:
        confirm_error = draw(st.one_of(st.none(), ambiguous_errors))
    else:
        confirm_error = draw(st.one_of(st.none(), ambiguous_errors, definitive_errors))
    return TxPlan(
        send_error=draw(send_errors),
        confirm_after=confirm_after,
        confirm_error=confirm_error,
        hang=hang,
        lands_after=lands_after,
        expires_after=expires_after,
        fill_fraction=draw(st.sampled_from([1.0, 1.0, 0.5, 0.25, 0.9])),
        price=draw(st.sampled_from([None, None, 94.0, math.nan])),
        lookup_error=draw(st.sampled_from([None, None, None, RpcTimeout("lookup timed out")])),
    )


policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 6),
    initial_backoff=st.just(0.5),
    max_backoff=st.floats(0.5, 5.0),
    backoff_multiplier=st.floats(1.0, 3.0),
    total_timeout=st.floats(2.0, 30.0),
    attempt_timeout=st.floats(0.5, 12.0),
    min_attempt_time=st.just(0.1),
)


def run_exit(plans: list[TxPlan], policy: RetryPolicy, deadline: float) -> tuple[
    ExitOutcome, ScriptedVenue, float
]:
    venue = ScriptedVenue(plans, default=TxPlan(), price=lambda t: 95.0 - 0.05 * t)

    async def main() -> tuple[ExitOutcome, float]:
        guard = ExitGuard(venue, policy=policy, deadline=deadline, background_reconcile_for=200.0)
        outcome = await guard.exit(POSITION, signal_price=95.0)
        returned_at = asyncio.get_running_loop().time()
        await guard.drain()
        return outcome, returned_at

    outcome, returned_at = run_virtual(main())
    return outcome, venue, returned_at


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans=st.lists(tx_plans(), min_size=1, max_size=8), policy=policies,
       deadline=st.floats(3.0, 40.0))
def test_random_fault_sequences_keep_every_promise(
    plans: list[TxPlan], policy: RetryPolicy, deadline: float
) -> None:
    outcome, venue, returned_at = run_exit(plans, policy, deadline)
    size = POSITION.size
    # An outcome, never an exception, within the deadline.
    assert isinstance(outcome, ExitOutcome)
    assert returned_at <= deadline + MARGIN
    assert outcome.elapsed_s <= deadline + MARGIN
    # Never sold more than the position, counting late landings (ground truth).
    assert venue.sold_eventually() <= size * (1 + 1e-9)
    assert outcome.filled_size <= size * (1 + 1e-9)
    # Never a submission while an earlier one could still land.
    assert venue.violations == []
    # The history is a valid path from the signal to a terminal state matching the status.
    history = outcome.history
    assert is_valid_path(history)
    assert history[0].from_state is ExitState.POSITION_OPEN
    final = history[-1].to_state
    expected: dict[ExitStatus, ExitState] = {
        ExitStatus.CLOSED: ExitState.POSITION_CLOSED,
        ExitStatus.FAILED: ExitState.EXIT_FAILED,
        ExitStatus.UNRESOLVED: ExitState.EXIT_UNRESOLVED,
        ExitStatus.REFUSED: ExitState.EXIT_REFUSED,
    }
    assert final is expected[outcome.status]
    # What the guard reports agrees with what really happened.
    if outcome.status is ExitStatus.CLOSED:
        assert outcome.filled_size == size or math.isclose(outcome.filled_size, size)
        assert outcome.pending_tx_ids == ()
    if outcome.status in (ExitStatus.CLOSED, ExitStatus.FAILED):
        assert math.isclose(venue.sold_eventually(), outcome.filled_size, abs_tol=1e-9)
    if outcome.status is ExitStatus.UNRESOLVED:
        assert outcome.pending_tx_ids
        assert venue.sold_eventually() >= outcome.filled_size - 1e-9
    attempts_sent = sum(1 for _ in venue.sent)
    assert outcome.attempts >= attempts_sent

