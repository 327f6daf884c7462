"""The exit state machine: validated transitions, an audit history, pending transactions.

Stricter than the seed: a terminal state accepts nothing; PositionOpen -> ExitSignalReceived
is allowed; a failure may be recorded after the deadline, but nothing may be submitted after
it; an invalid transition raises StateTransitionError and changes nothing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .clock import Clock, loop_time, wall_time
from .deadline import ExitDeadline
from .errors import StateTransitionError


class ExitState(enum.StrEnum):
    POSITION_OPEN = "position_open"
    EXIT_SIGNAL_RECEIVED = "exit_signal_received"
    SUBMITTED = "submitted"  # a transaction is out, waiting for confirmation
    CONFIRMATION_TIMEOUT = "confirmation_timeout"  # outcome unknown: it may still land
    RECONCILING = "reconciling"  # asking the venue what became of it
    PARTIALLY_FILLED = "partially_filled"
    SUBMISSION_FAILED = "submission_failed"  # certainly did not land (or was never sent)
    ESCALATED = "escalated"  # moved up the ladder (wider slippage, market, higher fee)
    POSITION_CLOSED = "position_closed"
    EXIT_FAILED = "exit_failed"
    EXIT_REFUSED = "exit_refused"  # the breaker refused it; nothing was sent
    EXIT_UNRESOLVED = "exit_unresolved"  # deadline passed while a submission may still land

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


S = ExitState
TERMINAL_STATES = frozenset({S.POSITION_CLOSED, S.EXIT_FAILED, S.EXIT_REFUSED, S.EXIT_UNRESOLVED})
_SEND_FROM = {S.EXIT_SIGNAL_RECEIVED, S.SUBMISSION_FAILED, S.PARTIALLY_FILLED, S.ESCALATED}

#: Every allowed transition. Failure is allowed from every non-terminal state.
ALLOWED: dict[ExitState, frozenset[ExitState]] = {
    S.POSITION_OPEN: frozenset({S.EXIT_SIGNAL_RECEIVED}),
    # RECONCILING first when the exit takes over an earlier exit's submissions.
    # POSITION_CLOSED at once when earlier exits of the position already sold all of it.
    S.EXIT_SIGNAL_RECEIVED: frozenset({S.SUBMITTED, S.SUBMISSION_FAILED, S.ESCALATED,
                                       S.EXIT_REFUSED, S.RECONCILING, S.POSITION_CLOSED}),
    S.SUBMITTED: frozenset({S.POSITION_CLOSED, S.PARTIALLY_FILLED, S.CONFIRMATION_TIMEOUT,
                            S.SUBMISSION_FAILED, S.EXIT_UNRESOLVED}),
    S.CONFIRMATION_TIMEOUT: frozenset({S.RECONCILING, S.EXIT_UNRESOLVED}),
    S.RECONCILING: frozenset({S.POSITION_CLOSED, S.PARTIALLY_FILLED, S.SUBMISSION_FAILED,
                              S.EXIT_UNRESOLVED}),
    S.PARTIALLY_FILLED: frozenset({S.SUBMITTED, S.SUBMISSION_FAILED, S.ESCALATED,
                                   S.RECONCILING}),
    S.SUBMISSION_FAILED: frozenset({S.SUBMITTED, S.SUBMISSION_FAILED, S.ESCALATED,
                                    S.RECONCILING}),
    S.ESCALATED: frozenset({S.SUBMITTED, S.SUBMISSION_FAILED}),
}
for _state in list(ALLOWED):
    if _state is not S.POSITION_OPEN:
        # Giving up is allowed from anywhere; so is ending unresolved, since a submission
        # taken over from an earlier exit may still land whatever this exit did.
        ALLOWED[_state] = ALLOWED[_state] | {S.EXIT_FAILED, S.EXIT_UNRESOLVED}
ALLOWED[S.POSITION_OPEN] = ALLOWED[S.POSITION_OPEN] | {S.EXIT_FAILED}
for _terminal in TERMINAL_STATES:
    ALLOWED[_terminal] = frozenset()


@dataclass(frozen=True, slots=True)
class TransitionRecord:
    """One audited transition: loop time for arithmetic, wall time for humans."""

    from_state: ExitState
    to_state: ExitState
    at: float
    at_wall: float
    detail: str = ""
    tx_id: str | None = None
    late: bool = False  # made after the deadline (anything but a new submission is allowed)


def is_valid_path(history: list[TransitionRecord] | tuple[TransitionRecord, ...]) -> bool:
    """True when each record follows the previous one and is an allowed transition."""
    previous: ExitState | None = None
    for record in history:
        if previous is not None and record.from_state is not previous:
            return False
        if record.to_state not in ALLOWED[record.from_state]:
            return False
        previous = record.to_state
    return True


class ExitStateMachine:
    __slots__ = ("_clock", "_history", "_pending", "current", "deadline")

    def __init__(
        self,
        deadline: ExitDeadline | None = None,
        *,
        initial: ExitState = ExitState.POSITION_OPEN,
        clock: Clock = loop_time,
    ) -> None:
        self.deadline = deadline
        self._clock = clock
        self.current = initial
        self._history: list[TransitionRecord] = []
        self._pending: dict[str, None] = {}

    def can_transition(self, to_state: ExitState) -> bool:
        return to_state in ALLOWED[self.current]

    def transition(
        self, to_state: ExitState, *, detail: str = "", tx_id: str | None = None
    ) -> TransitionRecord:
        """Move to ``to_state`` and return the record, or raise and change nothing."""
        if not isinstance(to_state, ExitState):
            raise StateTransitionError(str(self.current), repr(to_state), "not an ExitState")
        if to_state not in ALLOWED[self.current]:
            why = "terminal state" if self.current.is_terminal else "not allowed"
            raise StateTransitionError(self.current.value, to_state.value, why)
        late = self.deadline is not None and not self.deadline.is_within_window()
        if late and to_state is ExitState.SUBMITTED:
            raise StateTransitionError(
                self.current.value, to_state.value, "the exit deadline has passed"
            )
        record = TransitionRecord(
            self.current, to_state, self._clock(), wall_time(), detail, tx_id, late
        )
        self._history.append(record)
        self.current = to_state
        return record

    @property
    def history(self) -> tuple[TransitionRecord, ...]:
        return tuple(self._history)

    def is_complete(self) -> bool:
        return self.current.is_terminal

    def add_pending(self, tx_id: str) -> None:
        """A submission whose outcome is not known yet."""
        self._pending[tx_id] = None

    def resolve_pending(self, tx_id: str) -> None:
        self._pending.pop(tx_id, None)

    def pending_transactions(self) -> tuple[str, ...]:
        """Submissions that may still land, oldest first."""
        return tuple(self._pending)
