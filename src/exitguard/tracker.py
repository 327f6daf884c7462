"""The original design's exit attempt tracker (exitguard.compat).

Idle -> First -> Second -> ... -> EmergencyHalt.

Generalised to ``max_attempts`` (the design hard-codes two) and bounded in time: an attempt
more than ``emergency_threshold`` seconds after the first halts instead of proceeding.
"""

from __future__ import annotations

import enum

from ._validate import positive, whole
from .clock import Clock, loop_time
from .errors import EmergencyHaltError


class TrackerState(enum.StrEnum):
    IDLE = "idle"
    ATTEMPTING = "attempting"
    EMERGENCY_HALT = "emergency_halt"


class ExitAttemptTracker:
    __slots__ = (
        "_clock", "attempts", "emergency_threshold", "first_at", "halt_reason", "max_attempts",
        "state",
    )

    def __init__(
        self, max_attempts: int = 2, *, emergency_threshold: float = 30.0, clock: Clock = loop_time
    ) -> None:
        owner = "ExitAttemptTracker"
        self.max_attempts = whole(owner, "max_attempts", max_attempts, 1)
        # inf means "no time bound"
        self.emergency_threshold = positive(
            owner, "emergency_threshold", emergency_threshold, allow_inf=True
        )
        self._clock = clock
        self.state = TrackerState.IDLE
        self.attempts = 0
        self.first_at: float | None = None
        self.halt_reason: str | None = None

    def record_attempt(self) -> int:
        """Allow one more attempt and return its number, or halt and raise EmergencyHaltError."""
        if self.state is TrackerState.EMERGENCY_HALT:
            raise EmergencyHaltError(self.halt_reason or "halted")
        now = self._clock()
        if self.first_at is not None and now - self.first_at >= self.emergency_threshold:
            return self._halt(
                f"attempt {self.attempts + 1} came {now - self.first_at:.3f}s after the first,"
                f" past the {self.emergency_threshold:g}s emergency threshold"
            )
        if self.attempts >= self.max_attempts:
            return self._halt(f"max exit attempts ({self.max_attempts}) exceeded")
        if self.first_at is None:
            self.first_at = now
        self.attempts += 1
        self.state = TrackerState.ATTEMPTING
        return self.attempts

    def _halt(self, reason: str) -> int:
        self.state = TrackerState.EMERGENCY_HALT
        self.halt_reason = reason
        raise EmergencyHaltError(reason)

    def is_halted(self) -> bool:
        return self.state is TrackerState.EMERGENCY_HALT

    def reset(self) -> None:
        """Ready for the next position."""
        self.state = TrackerState.IDLE
        self.attempts = 0
        self.first_at = None
        self.halt_reason = None
