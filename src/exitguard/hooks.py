"""The hook protocol the core calls, and its one fan-out.

A hook is one callable taking one event (``exitguard.events``), as a stamina hook takes one
``RetryDetails`` and a structlog processor is a plain callable. ``ExitInfo`` (an exit
starts) is the one event whose answer counts: the hook may return the exit's observer, a
callable that then receives that exit's events (``ExitEvent``) in order, ending with its
``ExitOutcome``; so per-exit state such as a span lives in the observer, not in a shared
dict. A hook tells events apart by type and ignores those it does not care about::

    def audit(event: HookEvent) -> ExitObserver | None:
        if isinstance(event, LateFill):
            print("late fill", event.fill)
        return None

``SafeHooks`` is the one fan-out: it calls every hook (and every observer) in order, ending
events (``events.closes``) in reverse order, and isolates each: a hook that raises is logged
once per (hook, event), counted every time (``failure_total``, which the guard reports as
``exitguard_faults_total{component="hook"}``), and never breaks or delays the exit. With no
hooks the guard holds None: one ``is None`` check per event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from types import BuiltinFunctionType, BuiltinMethodType, FunctionType, MethodType
from typing import TYPE_CHECKING, Any, Protocol

from .events import (
    AttemptInfo,
    AttemptReport,
    AttemptResult,
    Backoff,
    BreakerTransition,
    ExitEvent,
    ExitInfo,
    GuardEvent,
    Halted,
    HookEvent,
    LateFill,
    PendingResolved,
    Reconciled,
    Resumed,
    Retry,
    closes,
    event_name,
)

if TYPE_CHECKING:
    from .breaker import BreakerState
    from .errors import ErrorClass
    from .halt import HaltRecord
    from .venue import Fill, TxStatus

__all__ = [
    # The guard imports these records from here.
    "AttemptInfo",
    "AttemptReport",
    "AttemptResult",
    "ExitInfo",
    "ExitObserver",
    "FailureLog",
    "Hooks",
    "SafeHooks",
    "SafeObserver",
    "as_safe_hooks",
]

_log = logging.getLogger("exitguard.hooks")


class ExitObserver(Protocol):
    """Receives the events of one exit, in order, ending with its ``ExitOutcome``."""

    def __call__(self, event: ExitEvent, /) -> None: ...


class Hooks(Protocol):
    """A hook: receives every event; for ``ExitInfo`` it may return the exit's observer."""

    def __call__(self, event: HookEvent, /) -> ExitObserver | None: ...


#: Callables that are called directly (anything else through its bound ``__call__``).
_PLAIN_CALLABLES = frozenset({FunctionType, MethodType, BuiltinFunctionType, BuiltinMethodType})


def _direct(sink: Callable[..., Any]) -> Callable[..., Any]:
    """``sink`` as the cheapest thing to call: an object's ``__call__`` bound once (calling
    an object goes through a slower slot lookup on every call, and this runs per event;
    this runs per exit, so a set lookup, not an ``isinstance`` of a union)."""
    if type(sink) in _PLAIN_CALLABLES:
        return sink
    call: Callable[..., Any] = sink.__call__  # type: ignore[operator]
    return call


def _sink_name(sink: object) -> str:
    """The class of the object behind ``sink`` (a bound method's object), or its name."""
    owner = getattr(sink, "__self__", None)
    if owner is not None and isinstance(sink, MethodType | BuiltinMethodType):
        return type(owner).__qualname__
    if isinstance(sink, FunctionType | BuiltinFunctionType):
        return sink.__name__
    return type(sink).__qualname__


class FailureLog:
    """Logs the first failure of each (hook, event) and counts every one."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def record(self, sink: object, event: object, exc: BaseException) -> None:
        key = (_sink_name(sink), event_name(type(event)))
        seen = self.counts.get(key, 0)
        self.counts[key] = seen + 1
        if seen == 0:
            _log.error(
                "exitguard hook %s.%s raised %s; the exit goes on (further failures of this"
                " hook are counted, not logged)", key[0], key[1], type(exc).__name__,
                exc_info=exc,
            )


class SafeObserver:
    """One exit's observers behind one callable-per-event surface (the guard holds it).

    ``emit(event)`` delivers any ``ExitEvent``. The named methods are the guard's call
    sites, one event each; a new event needs none (the guard calls ``emit``).
    """

    __slots__ = ("_calls", "_failures", "_reversed")

    def __init__(self, observers: Sequence[ExitObserver], failures: FailureLog) -> None:
        calls: list[Callable[[ExitEvent], None]] = []
        for observer in observers:  # _direct, inlined: this runs once per exit
            calls.append(observer if type(observer) in _PLAIN_CALLABLES
                         else observer.__call__)
        self._calls = tuple(calls)
        self._reversed = self._calls[::-1]
        self._failures = failures

    def emit(self, event: ExitEvent) -> None:
        if closes(type(event)):
            self._backward(event)
        else:
            self._forward(event)

    def _forward(self, event: ExitEvent) -> None:
        for call in self._calls:
            try:
                call(event)
            except Exception as exc:  # a hook must never break an exit
                self._failures.record(call, event, exc)

    def _backward(self, event: ExitEvent) -> None:
        for call in self._reversed:
            try:
                call(event)
            except Exception as exc:
                self._failures.record(call, event, exc)

    __call__ = emit  # an observer too, so observers compose

    # The guard's call sites. The core's records are the events themselves, so these are
    # the loops (no call in between: they run per event of every instrumented exit).
    attempt_started = _forward
    transition = _forward
    attempt_finished = _backward
    exit_finished = _backward

    def retry(self, error_class: ErrorClass, next_attempt: int) -> None:
        self._forward(Retry(error_class, next_attempt))

    def backoff(self, delay_s: float) -> None:
        self._forward(Backoff(delay_s))

    def reconciled(self, tx_id: str, status: TxStatus) -> None:
        self._forward(Reconciled(tx_id, status))


class SafeHooks:
    """The one fan-out: several hooks as one, each isolated from the exit and the others.

    Hooks are called in order (traces first, so the exit span is current for the others);
    ending events in reverse. A ``SafeHooks`` among ``hooks`` is flattened into this one,
    so an event crosses one fan-out however the hooks were combined.
    """

    __slots__ = ("_calls", "_failures", "hooks")

    def __init__(self, *hooks: Hooks, failures: FailureLog | None = None) -> None:
        flat: list[Hooks] = []
        for hook in hooks:
            if isinstance(hook, SafeHooks):
                flat.extend(hook.hooks)
            elif callable(hook):
                flat.append(hook)
            else:
                raise TypeError(
                    f"hooks: {type(hook).__name__} is not callable. A hook is a callable"
                    " taking one event (exitguard.events); see docs/instrumentation.md"
                )
        self.hooks: tuple[Hooks, ...] = tuple(flat)
        self._calls: tuple[Callable[[HookEvent], ExitObserver | None], ...] = tuple(
            _direct(hook) for hook in flat
        )
        # Shared when the guard adds hooks, so the counts survive ``add_hooks``.
        self._failures = failures if failures is not None else FailureLog()

    def extended(self, *hooks: Hooks) -> SafeHooks:
        """These hooks plus ``hooks``, keeping the failure counts."""
        return SafeHooks(*self.hooks, *hooks, failures=self._failures)

    @property
    def failure_counts(self) -> dict[tuple[str, str], int]:
        """How often each (hook class, event name) raised: for tests and diagnostics."""
        return dict(self._failures.counts)

    @property
    def failure_total(self) -> int:
        """Every failure absorbed (the guard's ``fault_counts[FaultSource.HOOK]``)."""
        return sum(self._failures.counts.values())

    def exit_started(self, exit: ExitInfo) -> SafeObserver | None:
        """Report ``exit`` starting; the observers the hooks answered with, as one."""
        observers: list[ExitObserver] = []
        for call in self._calls:
            try:
                observer = call(exit)
            except Exception as exc:  # a hook must never break an exit
                self._failures.record(call, exit, exc)
                continue
            if observer is None:
                continue
            if not callable(observer):
                self._failures.record(call, exit, TypeError(
                    f"the observer returned for an exit ({type(observer).__qualname__}) is"
                    " not callable"))
                continue
            observers.append(observer)
        return SafeObserver(observers, self._failures) if observers else None

    def emit(self, event: GuardEvent) -> None:
        """Report an event that is not an exit's own (``ExitInfo`` goes to
        ``exit_started``, which keeps the observers)."""
        for call in self._calls:
            try:
                call(event)
            except Exception as exc:
                self._failures.record(call, event, exc)

    def __call__(self, event: HookEvent) -> SafeObserver | None:
        """A hook too, so hooks compose (``SafeHooks`` among hooks is flattened anyway)."""
        if isinstance(event, ExitInfo):
            return self.exit_started(event)
        self.emit(event)
        return None

    # The guard's call sites, one event each; a new event needs none (the guard calls emit).
    def pending_resolved(self, exit: ExitInfo, tx_id: str, status: TxStatus) -> None:
        self.emit(PendingResolved(exit, tx_id, status))

    def late_fill(self, exit: ExitInfo, fill: Fill) -> None:
        self.emit(LateFill(exit, fill))

    def breaker_transition(
        self, guard: str, breaker: str, old: BreakerState, new: BreakerState
    ) -> None:
        self.emit(BreakerTransition(guard, breaker, old, new))

    def halted(self, guard: str, record: HaltRecord,
               resume_command: str | None = None) -> None:
        self.emit(Halted(guard, record, resume_command))

    def resumed(self, guard: str, record: HaltRecord) -> None:
        self.emit(Resumed(guard, record))

    def __repr__(self) -> str:
        return f"SafeHooks({', '.join(_sink_name(hook) for hook in self.hooks)})"


def as_safe_hooks(hooks: Hooks | Sequence[Hooks] | None) -> SafeHooks | None:
    """Normalise the ``hooks=`` argument: None stays None (the zero-cost path). Always a new
    ``SafeHooks`` (flattened), so each guard counts its own hook failures even when guards
    share one hooks object such as ``telemetry.hooks()``."""
    if hooks is None:
        return None
    if isinstance(hooks, Sequence):
        return SafeHooks(*hooks) if hooks else None
    return SafeHooks(hooks)
