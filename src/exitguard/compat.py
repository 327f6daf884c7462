"""Names and primitives from exitguard's original design document, kept for code written
against it.

That design (not part of this repository) described an exit as separate parts: a deadline
manager, a timeout detector, an attempt tracker, a state machine, an adaptive executor, a
circuit breaker and a halt coordinator. ``ExitGuard`` now does all of it in one call, so new
code needs none of these; they stay, tested, for bots built from the parts. Five of them are
only other names for the classes exitguard uses today:

=========================  ==========================================
original name              today's name
=========================  ==========================================
``ExitDeadlineManager``    ``exitguard.deadline.ExitDeadline``
``ExitTimeoutDetector``    ``exitguard.deadline.TimeoutDetector``
``ExitCircuitBreaker``     ``exitguard.CircuitBreaker``
``CircuitBreakerAction``   ``exitguard.breaker.BreakerAction``
``TradingHaltCoordinator`` ``exitguard.TradingHalt``
=========================  ==========================================

The others are the design's own primitives, used by nothing else in exitguard's API:
``ExitAttemptTracker`` (a bounded count of attempts that halts past it),
``ExitStateMachine`` with ``ExitState`` and ``TransitionRecord`` (the exit's states and the
allowed moves; ``ExitGuard`` reports its transitions as ``TransitionRecord`` values), and
``AdaptiveExitExecutor`` (picks the escalation ladder's step from a count of failures).
"""

from __future__ import annotations

from .breaker import BreakerAction, CircuitBreaker
from .deadline import ExitDeadline, TimeoutDetector
from .halt import TradingHalt
from .policy import AdaptiveExitExecutor
from .state_machine import ExitState, ExitStateMachine, TransitionRecord
from .tracker import ExitAttemptTracker

__all__ = [
    "AdaptiveExitExecutor",
    "CircuitBreakerAction",
    "ExitAttemptTracker",
    "ExitCircuitBreaker",
    "ExitDeadlineManager",
    "ExitState",
    "ExitStateMachine",
    "ExitTimeoutDetector",
    "TradingHaltCoordinator",
    "TransitionRecord",
]

#: The original name of :class:`exitguard.deadline.ExitDeadline`.
ExitDeadlineManager = ExitDeadline
#: The original name of :class:`exitguard.deadline.TimeoutDetector`.
ExitTimeoutDetector = TimeoutDetector
#: The original name of :class:`exitguard.CircuitBreaker`.
ExitCircuitBreaker = CircuitBreaker
#: The original name of :class:`exitguard.breaker.BreakerAction`.
CircuitBreakerAction = BreakerAction
#: The original name of :class:`exitguard.TradingHalt`.
TradingHaltCoordinator = TradingHalt
