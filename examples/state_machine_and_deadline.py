"""The exit state machine, deadline, timeout detector and attempt tracker on their own.

Run: python examples/state_machine_and_deadline.py
"""

from __future__ import annotations

import asyncio

from exitguard.compat import ExitAttemptTracker, ExitStateMachine
from exitguard.deadline import ExitDeadline, TimeoutDetector
from exitguard.errors import EmergencyHaltError, ExitTimeoutError, StateTransitionError
from exitguard.state_machine import ExitState
from exitguard.testing import run_virtual


async def main() -> None:
    deadline = ExitDeadline(30.0)
    machine = ExitStateMachine(deadline)
    machine.transition(ExitState.EXIT_SIGNAL_RECEIVED, detail="stop_loss")
    machine.transition(ExitState.SUBMITTED, tx_id="tx-1")
    machine.add_pending("tx-1")

    detector = TimeoutDetector("confirm tx-1", 8.0, deadline=deadline)
    try:
        await detector.run(asyncio.Event().wait())  # a confirmation that never comes
    except ExitTimeoutError as exc:
        print("timed out:", exc)
        machine.transition(ExitState.CONFIRMATION_TIMEOUT)
    print("pending:", machine.pending_transactions(), "time left:", round(deadline.remaining(), 1))
    try:
        machine.transition(ExitState.SUBMITTED, tx_id="tx-2")  # would double-sell
    except StateTransitionError as exc:
        print("refused:", exc, "| state still", machine.current)

    tracker = ExitAttemptTracker(max_attempts=2)
    tracker.record_attempt()
    tracker.record_attempt()
    try:
        tracker.record_attempt()
    except EmergencyHaltError as exc:
        print(exc)


if __name__ == "__main__":
    run_virtual(main())
