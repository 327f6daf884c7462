"""A circuit breaker for exits: closed, open, and a half-open that really probes.

Opens on the Nth consecutive failed exit (the threshold means "opens on the Nth", which
is what the original design's contradictory test wanted) or when the failure rate over a sliding
window passes a limit. While open it refuses exits fast so the bot can route elsewhere.
After ``cooldown`` it lets ``half_open_probes`` exits through; a success closes it, a failure
re-opens it. Every transition is reported to listeners, so even an open that lasts less than
a scrape interval is counted. Thread-safe; listeners run outside the lock.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from . import logline
from ._validate import fraction, positive, whole
from .clock import Clock, loop_time
from .redaction import get_logger

_log = get_logger("exitguard.breaker")


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"

    @property
    def gauge_value(self) -> int:
        return _GAUGE[self]


_GAUGE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
#: The level of a transition's log line (the structured one of exitguard.telemetry too).
_LEVEL = {BreakerState.CLOSED: logging.INFO, BreakerState.HALF_OPEN: logging.WARNING,
          BreakerState.OPEN: logging.ERROR}


class BreakerAction(enum.Enum):
    """What a recorded failure means for the caller: go on, or halt new entries."""

    CONTINUE = "continue"
    HALT_TRADING = "halt_trading"


TransitionListener = Callable[[str, BreakerState, BreakerState, str], None]


@dataclass(frozen=True, slots=True)
class Permit:
    """Proof that an exit was let through; half-open probes hold one of the few slots.

    ``forced``: the breaker was open and the exit went anyway as its probe (an exit is
    never refused by default): it holds no slot, and its result still counts.
    """

    probe: bool
    forced: bool = False


class CircuitBreaker:
    """Stops sending exits to a venue that keeps failing, and lets a few through to test it.

    Opens on the ``failure_threshold``-th consecutive failed exit, or when the share of
    failures over the last ``window`` seconds reaches ``failure_rate`` (after ``min_calls``
    exits); refuses exits while open; after ``cooldown`` seconds lets ``half_open_probes``
    exits through, and closes on a success or re-opens on a failure. ``name`` labels it in
    metrics and logs (one breaker per venue route).
    """

    def __init__(
        self,
        failure_threshold: int = 3,
        *,
        name: str = "exit",
        cooldown: float = 30.0,
        half_open_probes: int = 1,
        failure_rate: float | None = None,
        window: float = 60.0,
        min_calls: int = 10,
        clock: Clock = loop_time,
    ) -> None:
        owner = "CircuitBreaker"
        self.name = name
        self.failure_threshold = whole(owner, "failure_threshold", failure_threshold, 1)
        self.cooldown = positive(owner, "cooldown", cooldown)
        self.half_open_probes = whole(owner, "half_open_probes", half_open_probes, 1)
        if failure_rate is not None:
            fraction(owner, "failure_rate", failure_rate, zero=False)
        self.failure_rate = failure_rate
        self.window = positive(owner, "window", window)
        self.min_calls = whole(owner, "min_calls", min_calls, 1)
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._consecutive_failures = 0
        self._opened_at = 0.0
        self._probes_in_flight = 0
        self._calls: deque[tuple[float, bool]] = deque()
        self._listeners: list[TransitionListener] = []
        self.trips = 0
        self.transitions = 0

    def clone(self, name: str) -> CircuitBreaker:
        """A fresh breaker with the same settings (one per fallback venue)."""
        return CircuitBreaker(
            self.failure_threshold, name=name, cooldown=self.cooldown,
            half_open_probes=self.half_open_probes, failure_rate=self.failure_rate,
            window=self.window, min_calls=self.min_calls, clock=self._clock,
        )

    def add_listener(self, listener: TransitionListener) -> None:
        """``listener(name, old, new, reason)`` on every transition."""
        self._listeners.append(listener)

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive_failures

    @property
    def state(self) -> BreakerState:
        """The state now; an open breaker whose cool-down has passed reads as half-open."""
        with self._lock:
            event = self._refresh()
        self._notify(event)
        return self._state

    def _refresh(self) -> tuple[BreakerState, BreakerState, str] | None:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.cooldown:
            return self._set(BreakerState.HALF_OPEN, "cool-down elapsed")
        return None

    def _set(self, new: BreakerState, reason: str) -> tuple[BreakerState, BreakerState, str]:
        old = self._state
        self._state = new
        self.transitions += 1
        if new is BreakerState.OPEN:
            self.trips += 1
            self._opened_at = self._clock()
        if new is not BreakerState.HALF_OPEN:
            self._probes_in_flight = 0
        if new is BreakerState.CLOSED:
            # A recovered breaker starts a fresh failure-rate window: the failures that
            # opened it must not re-open it on the next single failure.
            self._calls.clear()
        return old, new, reason

    def _notify(self, event: tuple[BreakerState, BreakerState, str] | None) -> None:
        if event is None:
            return
        old, new, reason = event
        # Listeners first: a guard's structured log of this transition (exitguard.logline)
        # replaces the plain line, written at the same level otherwise.
        with logline.hearing() as heard:
            for listener in tuple(self._listeners):
                try:
                    listener(self.name, old, new, reason)
                except Exception:
                    _log.exception("circuit breaker listener raised; ignored")
        if not heard.reported:
            _log.log(_LEVEL[new], "circuit breaker %s: %s -> %s (%s)", self.name, old, new,
                     reason)

    def allow(self) -> Permit | None:
        """Let an exit through (returning a permit) or refuse it (None) without waiting."""
        with self._lock:
            event = self._refresh()
            permit: Permit | None
            if self._state is BreakerState.CLOSED:
                permit = Permit(probe=False)
            elif self._state is BreakerState.HALF_OPEN and (
                self._probes_in_flight < self.half_open_probes
            ):
                self._probes_in_flight += 1
                permit = Permit(probe=True)
            else:
                permit = None
        self._notify(event)
        return permit

    def probe_anyway(self) -> Permit:
        """Let an exit through although the breaker refuses: it is the breaker's probe
        (success closes it, failure keeps it open) without taking a half-open slot."""
        return Permit(probe=True, forced=True)

    def should_accept_exit(self) -> bool:
        """The original design's check: would an exit be let through now? Takes no probe slot."""
        state = self.state
        if state is BreakerState.HALF_OPEN:
            with self._lock:
                return self._probes_in_flight < self.half_open_probes
        return state is BreakerState.CLOSED

    def release(self, permit: Permit | None) -> None:
        """Give a probe slot back without a verdict (the exit was cancelled)."""
        if permit is not None and permit.probe and not permit.forced:
            with self._lock:
                self._probes_in_flight = max(0, self._probes_in_flight - 1)

    def record_success(self, permit: Permit | None = None) -> None:
        with self._lock:
            self._consecutive_failures = 0
            self._record_call(ok=True)
            event = None
            forced = permit is not None and permit.forced
            if self._state is BreakerState.HALF_OPEN or (
                forced and self._state is BreakerState.OPEN
            ):
                event = self._set(BreakerState.CLOSED, "probe exit succeeded")
            elif permit is not None and permit.probe and not forced:
                self._probes_in_flight = max(0, self._probes_in_flight - 1)
        self._notify(event)

    def record_failure(self, permit: Permit | None = None) -> BreakerAction:
        """Count a failed exit; HALT_TRADING when the breaker is (or becomes) open."""
        with self._lock:
            self._consecutive_failures += 1
            self._record_call(ok=False)
            event = self._refresh()
            reason = None
            if self._state is BreakerState.HALF_OPEN:
                reason = "probe exit failed"
            elif self._state is BreakerState.CLOSED:
                if self._consecutive_failures >= self.failure_threshold:
                    reason = f"{self._consecutive_failures} consecutive failed exits"
                elif self._rate_exceeded():
                    reason = f"failure rate over {self.window:g}s above {self.failure_rate:.0%}"
            second = self._set(BreakerState.OPEN, reason) if reason else None
            is_open = self._state is BreakerState.OPEN
        self._notify(event)
        self._notify(second)
        return BreakerAction.HALT_TRADING if is_open else BreakerAction.CONTINUE

    def _record_call(self, *, ok: bool) -> None:
        if self.failure_rate is None:
            return
        now = self._clock()
        self._calls.append((now, ok))
        while self._calls and now - self._calls[0][0] > self.window:
            self._calls.popleft()

    def _rate_exceeded(self) -> bool:
        if self.failure_rate is None or len(self._calls) < self.min_calls:
            return False
        failures = sum(1 for _, ok in self._calls if not ok)
        return failures / len(self._calls) >= self.failure_rate

    def reset(self) -> None:
        """Close by hand (an operator decision)."""
        with self._lock:
            self._consecutive_failures = 0
            self._calls.clear()
            event = self._set(BreakerState.CLOSED, "reset") if (
                self._state is not BreakerState.CLOSED
            ) else None
        self._notify(event)
