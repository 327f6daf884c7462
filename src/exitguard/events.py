"""What the core reports to its hooks: one frozen object per event.

A hook is one callable that takes one event (``exitguard.hooks``) and tells events apart by
their type, the way a stamina hook takes one ``RetryDetails``. Five events are records the
core builds anyway, so reporting them allocates nothing on an exit's hot path:

- ``ExitInfo``: an exit starts (a hook may answer with the exit's observer);
- ``AttemptInfo``: an attempt starts; ``AttemptReport``: it ended;
- ``TransitionRecord`` (``exitguard.state_machine``): the exit's state changed;
- ``ExitOutcome`` (``exitguard.outcome``): the exit ended, always its last event.

Every other event is a small frozen ``Event`` subclass defined here: ``Retry``, ``Backoff``
and ``Reconciled`` go to the exit's observer (``ExitEvent``); ``PendingResolved``,
``LateFill``, ``BreakerTransition``, ``Halted`` and ``Resumed`` go to the hooks
(``GuardEvent``).

To add an event: define it here as a frozen ``Event`` subclass and add it to ``ExitEvent`` or
``GuardEvent``; emit it where it happens (``observer.emit(...)`` or ``hooks.emit(...)``);
handle it in the sinks that care. The fan-out, the failure accounting and
``exitguard.testing.RecordingHooks`` work from the type alone.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import ClassVar, TypeAlias

from .breaker import BreakerState
from .errors import ErrorClass
from .halt import HaltRecord
from .outcome import ExitOutcome
from .state_machine import TransitionRecord
from .venue import ExitOrder, Fill, Position, TxStatus

__all__ = [
    "AttemptInfo",
    "AttemptReport",
    "AttemptResult",
    "Backoff",
    "BreakerTransition",
    "Event",
    "ExitEvent",
    "ExitInfo",
    "GuardEvent",
    "HaltNotSaved",
    "Halted",
    "HookEvent",
    "LateFill",
    "PendingResolved",
    "Reconciled",
    "Resumed",
    "Retry",
    "closes",
    "event_name",
]


# -- the records the core builds anyway --------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExitInfo:
    """An exit starts; every later event of that exit refers to it. ``started_at`` is loop
    time, ``started_wall`` wall-clock time."""

    guard: str
    position: Position
    signal_price: float
    reason: str
    deadline_s: float
    started_at: float
    started_wall: float


class AttemptResult(enum.StrEnum):
    """How one submission ended (the ``result`` label of the attempts counter)."""

    FILLED = "filled"  # the whole order filled
    PARTIAL = "partial"  # part of it filled; the remainder is resubmitted
    TIMEOUT = "timeout"  # confirmation did not come in time: outcome unknown, reconciled
    EXPIRED = "expired"  # it can no longer land
    REJECTED = "rejected"  # the venue refused it or it failed on chain
    SEND_FAILED = "send_failed"  # it was never sent


@dataclass(frozen=True, slots=True)
class AttemptInfo:
    """An attempt (one submission) starts."""

    number: int  # 1-based, across the whole exit
    order: ExitOrder
    step: int  # index of the escalation ladder step
    venue: str


@dataclass(frozen=True, slots=True)
class AttemptReport:
    """An attempt ended: how, with which transaction, fill and error."""

    attempt: AttemptInfo
    result: AttemptResult
    tx_id: str | None
    fill: Fill | None
    error_class: ErrorClass | None
    error: str | None
    duration_s: float


# -- the events defined for reporting ------------------------------------------------------


class Event:
    """Base of the events defined in this module (the records above are events too).

    ``closes``: the event ends what an earlier one opened (a span, a context), so the
    fan-out delivers it to the sinks in reverse order: the sink that opened first (traces)
    closes last, after the others have read its context.
    """

    __slots__ = ()
    closes: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class Retry(Event):
    """Another attempt follows one that failed with ``error_class``."""

    error_class: ErrorClass
    next_attempt: int


@dataclass(frozen=True, slots=True)
class Backoff(Event):
    """The exit waits ``delay_s`` seconds before its next attempt."""

    delay_s: float


@dataclass(frozen=True, slots=True)
class Reconciled(Event):
    """A look-up told what became of a submission whose outcome was unknown."""

    tx_id: str
    status: TxStatus


@dataclass(frozen=True, slots=True)
class PendingResolved(Event):
    """A submission of a finished exit, reconciled in the background, is no longer tracked:
    it resolved (``status``), or reconciliation gave up or was stopped (PENDING)."""

    exit: ExitInfo
    tx_id: str
    status: TxStatus


@dataclass(frozen=True, slots=True)
class LateFill(Event):
    """A submission landed after its exit had ended."""

    exit: ExitInfo
    fill: Fill


@dataclass(frozen=True, slots=True)
class BreakerTransition(Event):
    """A circuit breaker of guard ``guard`` moved from ``old`` to ``new``."""

    guard: str
    breaker: str
    old: BreakerState
    new: BreakerState


@dataclass(frozen=True, slots=True)
class Halted(Event):
    """New entries were halted (exits go on). ``resume_command`` is the shell command that
    lifts it (with the halt file's path), when the CLI can reach the halt's store."""

    guard: str
    record: HaltRecord
    resume_command: str | None = None


@dataclass(frozen=True, slots=True)
class HaltNotSaved(Event):
    """The halt state could not be written: it lives in memory only until a write succeeds
    (a restart now would lose it). Paged, like the halt itself."""

    guard: str
    error: str


@dataclass(frozen=True, slots=True)
class Resumed(Event):
    """An approver resumed trading."""

    guard: str
    record: HaltRecord


#: What an exit's observer receives, in order, ending with ``ExitOutcome``.
ExitEvent: TypeAlias = (
    AttemptInfo | AttemptReport | Retry | Backoff | TransitionRecord | Reconciled | ExitOutcome
)
#: What the hooks receive besides ``ExitInfo``.
GuardEvent: TypeAlias = (
    PendingResolved | LateFill | BreakerTransition | Halted | HaltNotSaved | Resumed
)
#: Everything a hook receives.
HookEvent: TypeAlias = ExitInfo | GuardEvent

#: Event names: the records' by what they report; an ``Event``'s, once asked, from its class.
_NAMES: dict[type, str] = {
    ExitInfo: "exit_started",
    AttemptInfo: "attempt_started",
    AttemptReport: "attempt_finished",
    TransitionRecord: "transition",
    ExitOutcome: "exit_finished",
}
#: Whether events of a type end something (see ``Event``); the records' here, once asked.
_CLOSES: dict[type, bool] = {AttemptReport: True, ExitOutcome: True}
_WORD = re.compile(r"(?<!^)(?=[A-Z])")


def event_name(kind: type) -> str:
    """The event's name in logs of hook failures and in ``RecordingHooks``:
    ``LateFill`` -> ``late_fill``; the records by what they report (``ExitOutcome`` ->
    ``exit_finished``)."""
    name = _NAMES.get(kind)
    if name is None:
        name = _NAMES[kind] = _WORD.sub("_", kind.__name__).lower()
    return name


def closes(kind: type) -> bool:
    """Whether events of this type are delivered in reverse order (see ``Event``)."""
    answer = _CLOSES.get(kind)
    if answer is None:
        answer = _CLOSES[kind] = issubclass(kind, Event) and kind.closes
    return answer
