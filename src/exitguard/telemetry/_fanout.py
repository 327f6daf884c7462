"""One hook object for several telemetry hooks: one dispatch per event instead of one each.

``SafeHooks`` (the core) already isolates every hook; this composite keeps that promise
inside itself (each part runs in its own ``try``; a failure is logged once per part and
method, and counted in ``failure_total``, which the guard adds to its hook faults) while the
guard pays its per-hook dispatch once. Order as in ``SafeHooks``: starts
in order (traces first, so the span is current for the others), finishes in reverse
(traces last, so the span is still current while metrics and logs read its ids).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..hooks import ExitInfo, ExitObserver, FailureLog, Hooks, SafeObserver
from ..venue import Fill, TxStatus

if TYPE_CHECKING:
    from ..breaker import BreakerState
    from ..halt import HaltRecord


class TelemetryHooks:
    """Several hooks as one (see the module docstring); ``parts`` in call order."""

    __slots__ = ("_failures", "parts")

    def __init__(self, *parts: Hooks) -> None:
        self.parts: tuple[Hooks, ...] = parts
        self._failures = FailureLog()

    @property
    def failure_total(self) -> int:
        """How often a part raised (each time, though each part and method is logged once)."""
        return sum(self._failures.counts.values())

    def exit_started(self, exit: ExitInfo) -> ExitObserver | None:
        observers: list[ExitObserver] = []
        for part in self.parts:
            try:
                observer = part.exit_started(exit)
            except Exception as exc:
                self._failures.record(part, "exit_started", exc)
                continue
            if observer is not None:
                observers.append(observer)
        if not observers:
            return None
        return observers[0] if len(observers) == 1 else SafeObserver(observers, self._failures)

    def pending_resolved(self, exit: ExitInfo, tx_id: str, status: TxStatus) -> None:
        for part in self.parts:
            try:
                part.pending_resolved(exit, tx_id, status)
            except Exception as exc:
                self._failures.record(part, "pending_resolved", exc)

    def late_fill(self, exit: ExitInfo, fill: Fill) -> None:
        for part in self.parts:
            try:
                part.late_fill(exit, fill)
            except Exception as exc:
                self._failures.record(part, "late_fill", exc)

    def breaker_transition(
        self, guard: str, breaker: str, old: BreakerState, new: BreakerState
    ) -> None:
        for part in self.parts:
            try:
                part.breaker_transition(guard, breaker, old, new)
            except Exception as exc:
                self._failures.record(part, "breaker_transition", exc)

    def halted(self, guard: str, record: HaltRecord) -> None:
        for part in self.parts:
            try:
                part.halted(guard, record)
            except Exception as exc:
                self._failures.record(part, "halted", exc)

    def resumed(self, guard: str, record: HaltRecord) -> None:
        for part in self.parts:
            try:
                part.resumed(guard, record)
            except Exception as exc:
                self._failures.record(part, "resumed", exc)

    def __repr__(self) -> str:
        return f"TelemetryHooks({', '.join(type(p).__name__ for p in self.parts)})"
