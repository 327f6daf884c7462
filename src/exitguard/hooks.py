"""The instrumentation Protocol the core calls, and its no-op default.

The guard calls one ``Hooks`` object: ``exit_started`` returns a per-exit ``ExitObserver``
that receives that exit's events (so per-exit state such as a span lives in the observer, not
in a shared dict). With no hooks the cost is one ``is None`` check per event. Every call is
made through ``SafeHooks``: a hook that raises is logged once and never changes an exit.

Telemetry (``exitguard.telemetry``) and paging (``exitguard.alerting``) implement these.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .errors import ErrorClass
from .venue import ExitOrder, Fill, Position, TxStatus

if TYPE_CHECKING:
    from .breaker import BreakerState
    from .halt import HaltRecord
    from .outcome import ExitOutcome
    from .state_machine import TransitionRecord

_log = logging.getLogger("exitguard.hooks")


@dataclass(frozen=True, slots=True)
class ExitInfo:
    """What every per-exit event refers to. ``started_at`` is loop time."""

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
    number: int  # 1-based, across the whole exit
    order: ExitOrder
    step: int  # index of the escalation ladder step
    venue: str


@dataclass(frozen=True, slots=True)
class AttemptReport:
    attempt: AttemptInfo
    result: AttemptResult
    tx_id: str | None
    fill: Fill | None
    error_class: ErrorClass | None
    error: str | None
    duration_s: float


class ExitObserver(Protocol):
    """Receives the events of one exit, in order, ending with ``exit_finished``."""

    def attempt_started(self, attempt: AttemptInfo) -> None: ...
    def attempt_finished(self, report: AttemptReport) -> None: ...
    def retry(self, error_class: ErrorClass, next_attempt: int) -> None: ...
    def backoff(self, delay_s: float) -> None: ...
    def transition(self, record: TransitionRecord) -> None: ...
    def reconciled(self, tx_id: str, status: TxStatus) -> None: ...
    def exit_finished(self, outcome: ExitOutcome) -> None: ...


class Hooks(Protocol):
    """Everything the core reports. Implement the methods you need on top of ``NoopHooks``."""

    def exit_started(self, exit: ExitInfo) -> ExitObserver | None: ...
    def pending_resolved(self, exit: ExitInfo, tx_id: str, status: TxStatus) -> None: ...
    def late_fill(self, exit: ExitInfo, fill: Fill) -> None: ...
    def breaker_transition(
        self, guard: str, breaker: str, old: BreakerState, new: BreakerState
    ) -> None: ...
    def halted(self, guard: str, record: HaltRecord) -> None: ...
    def resumed(self, guard: str, record: HaltRecord) -> None: ...


class NoopExitObserver:
    """An observer that ignores everything; subclass it and override what you need."""

    def attempt_started(self, attempt: AttemptInfo) -> None:
        pass

    def attempt_finished(self, report: AttemptReport) -> None:
        pass

    def retry(self, error_class: ErrorClass, next_attempt: int) -> None:
        pass

    def backoff(self, delay_s: float) -> None:
        pass

    def transition(self, record: TransitionRecord) -> None:
        pass

    def reconciled(self, tx_id: str, status: TxStatus) -> None:
        pass

    def exit_finished(self, outcome: ExitOutcome) -> None:
        pass


class NoopHooks:
    """Hooks that do nothing; subclass it and override what you need."""

    def exit_started(self, exit: ExitInfo) -> ExitObserver | None:
        return None

    def pending_resolved(self, exit: ExitInfo, tx_id: str, status: TxStatus) -> None:
        pass

    def late_fill(self, exit: ExitInfo, fill: Fill) -> None:
        pass

    def breaker_transition(
        self, guard: str, breaker: str, old: BreakerState, new: BreakerState
    ) -> None:
        pass

    def halted(self, guard: str, record: HaltRecord) -> None:
        pass

    def resumed(self, guard: str, record: HaltRecord) -> None:
        pass


class FailureLog:
    """Logs the first failure of each (hook class, method) and counts every one (shared by
    ``SafeHooks`` and composites such as ``exitguard.telemetry.TelemetryHooks``)."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def record(self, target: object, method: str, exc: BaseException) -> None:
        key = (type(target).__qualname__, method)
        seen = self.counts.get(key, 0)
        self.counts[key] = seen + 1
        if seen == 0:
            _log.error(
                "exitguard hook %s.%s raised %s; the exit goes on (further failures of this"
                " hook are counted, not logged)", key[0], method, type(exc).__name__,
                exc_info=exc,
            )


def _call(failures: FailureLog, target: object, method: str, *args: Any) -> Any:
    try:
        return getattr(target, method)(*args)
    except Exception as exc:  # a hook must never break an exit
        failures.record(target, method, exc)
        return None


class SafeObserver:
    """Fans one exit's events out to observers; a raising observer is isolated (its failure
    recorded in ``failures``). Direct calls, not a dispatch by name: it runs on every event
    of every instrumented exit.

    ``exit_finished`` and ``attempt_finished`` run in reverse order, so an observer that
    opened a context (a span) first closes it last, after the others have read it.
    """

    __slots__ = ("_failures", "_observers", "_reversed")

    def __init__(self, observers: Sequence[ExitObserver], failures: FailureLog) -> None:
        self._observers = tuple(observers)
        self._reversed = self._observers[::-1]
        self._failures = failures

    def attempt_started(self, attempt: AttemptInfo) -> None:
        for observer in self._observers:
            try:
                observer.attempt_started(attempt)
            except Exception as exc:  # a hook must never break an exit
                self._failures.record(observer, "attempt_started", exc)

    def attempt_finished(self, report: AttemptReport) -> None:
        for observer in self._reversed:
            try:
                observer.attempt_finished(report)
            except Exception as exc:
                self._failures.record(observer, "attempt_finished", exc)

    def retry(self, error_class: ErrorClass, next_attempt: int) -> None:
        for observer in self._observers:
            try:
                observer.retry(error_class, next_attempt)
            except Exception as exc:
                self._failures.record(observer, "retry", exc)

    def backoff(self, delay_s: float) -> None:
        for observer in self._observers:
            try:
                observer.backoff(delay_s)
            except Exception as exc:
                self._failures.record(observer, "backoff", exc)

    def transition(self, record: TransitionRecord) -> None:
        for observer in self._observers:
            try:
                observer.transition(record)
            except Exception as exc:
                self._failures.record(observer, "transition", exc)

    def reconciled(self, tx_id: str, status: TxStatus) -> None:
        for observer in self._observers:
            try:
                observer.reconciled(tx_id, status)
            except Exception as exc:
                self._failures.record(observer, "reconciled", exc)

    def exit_finished(self, outcome: ExitOutcome) -> None:
        for observer in self._reversed:
            try:
                observer.exit_finished(outcome)
            except Exception as exc:
                self._failures.record(observer, "exit_finished", exc)


class SafeHooks:
    """Combines several hooks into one and isolates each from the exit and from the others."""

    __slots__ = ("_failures", "hooks")

    def __init__(self, *hooks: Hooks, failures: FailureLog | None = None) -> None:
        self.hooks: tuple[Hooks, ...] = hooks
        # Shared when the guard adds hooks, so the counts survive ``add_hooks``.
        self._failures = failures if failures is not None else FailureLog()

    def extended(self, *hooks: Hooks) -> SafeHooks:
        """These hooks plus ``hooks``, keeping the failure counts."""
        return SafeHooks(*self.hooks, *hooks, failures=self._failures)

    @property
    def failure_counts(self) -> dict[tuple[str, str], int]:
        """How often each (hook class, method) raised: for tests and diagnostics."""
        return dict(self._failures.counts)

    @property
    def failure_total(self) -> int:
        """Every failure absorbed: these hooks' own, plus those a composite hook (such as
        ``exitguard.telemetry``'s) absorbed inside itself and reports as ``failure_total``."""
        total = sum(self._failures.counts.values())
        for hook in self.hooks:
            inner = getattr(hook, "failure_total", 0)
            if isinstance(inner, int):
                total += inner
        return total

    def exit_started(self, exit: ExitInfo) -> SafeObserver | None:
        observers = []
        for hook in self.hooks:
            observer = _call(self._failures, hook, "exit_started", exit)
            if observer is not None:
                observers.append(observer)
        return SafeObserver(observers, self._failures) if observers else None

    def _each(self, method: str, *args: Any) -> None:
        for hook in self.hooks:
            _call(self._failures, hook, method, *args)

    def pending_resolved(self, exit: ExitInfo, tx_id: str, status: TxStatus) -> None:
        self._each("pending_resolved", exit, tx_id, status)

    def late_fill(self, exit: ExitInfo, fill: Fill) -> None:
        self._each("late_fill", exit, fill)

    def breaker_transition(
        self, guard: str, breaker: str, old: BreakerState, new: BreakerState
    ) -> None:
        self._each("breaker_transition", guard, breaker, old, new)

    def halted(self, guard: str, record: HaltRecord) -> None:
        self._each("halted", guard, record)

    def resumed(self, guard: str, record: HaltRecord) -> None:
        self._each("resumed", guard, record)


def as_safe_hooks(hooks: Hooks | Sequence[Hooks] | None) -> SafeHooks | None:
    """Normalise the ``hooks=`` argument: None stays None (the zero-cost path)."""
    if hooks is None:
        return None
    if isinstance(hooks, SafeHooks):
        return hooks
    if isinstance(hooks, Sequence):
        return SafeHooks(*hooks) if hooks else None
    return SafeHooks(hooks)

