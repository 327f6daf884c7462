"""A circuit breaker for exits: closed, open, and a half-open that really probes.

Opens on the Nth consecutive failed exit (the threshold means "opens on the Nth", which
is what the original design's contradictory test wanted) or when the failure rate over a sliding
window passes a limit. While open it refuses exits fast so the bot can route elsewhere.
After ``cooldown`` it lets ``half_open_probes`` exits through; a success closes it, a failure
re-opens it. Every transition is reported to listeners, so even an open that lasts less than
a scrape interval is counted. Thread-safe; listeners run outside the lock.

Breakers of the same venue in several processes can share one state through a
``SharedBreakerBackend`` (``exitguard.fleet.RedisBreakerBackend``): failures then count into
one fleet-wide window, a transition made by one process is mirrored by all, and the half-open
probe is a lease held by one process of the fleet. A backend that cannot be reached never
blocks an exit: the breaker then decides alone from its local counters (retrying the backend
every ``shared_retry`` seconds) until the backend answers again, whose state then wins.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

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
    #: The fleet-wide half-open probe lease this permit holds (shared breakers only).
    lease: str | None = None


@dataclass(frozen=True, slots=True)
class SharedState:
    """A shared backend's answer: the fleet's state of one breaker after the call.

    ``reason`` is why the fleet is in that state (the reason of its last transition);
    ``consecutive_failures`` counts failed exits across the fleet since the last success;
    ``lease`` is set when ``allow`` granted this process the half-open probe.
    """

    state: BreakerState
    reason: str
    consecutive_failures: int = 0
    lease: str | None = None


class SharedBreakerBackend(Protocol):
    """Where breakers of the same name keep one state across processes and hosts.

    Every method may raise (the store is unreachable or answers garbage): the breaker then
    decides alone and counts the failure (``exitguard_faults_total{component="breaker_store"}``).
    The backend reads the breaker's settings (``failure_threshold``, ``cooldown``,
    ``half_open_probes``, ``failure_rate``, ``window``, ``min_calls``) from the breaker and keeps
    time by its own clock (one clock for the fleet), not the breaker's.
    """

    def attach(self, breaker: CircuitBreaker) -> None:
        """Call ``breaker.sync()`` whenever another process moves this breaker's state or
        its count of consecutive failures between zero and non-zero."""

    def fresh(self, breaker: CircuitBreaker) -> bool:
        """True while every change of the fleet's state reaches this process (a live push):
        a closed breaker then lets exits through without asking the store, and takes their
        successes without it while no failure is counted."""

    def allow(self, breaker: CircuitBreaker) -> SharedState:
        """The fleet's state; in half-open, a probe lease if one is free (at most
        ``half_open_probes`` leases fleet-wide)."""

    def record(self, breaker: CircuitBreaker, *, ok: bool, lease: str | None,
               forced: bool) -> SharedState:
        """Count an exit's verdict into the fleet's window and move the state by the same
        rules as the local breaker."""

    def release(self, breaker: CircuitBreaker, lease: str) -> None:
        """Give a probe lease back without a verdict."""

    def trip(self, breaker: CircuitBreaker, reason: str) -> SharedState:
        """Open the fleet's breaker if it is closed: a trip this process decided alone while
        the store was unreachable, handed to the fleet when it answers again."""

    def read(self, breaker: CircuitBreaker) -> SharedState:
        """The fleet's state now (an open breaker past its cool-down reads half-open)."""

    def reset(self, breaker: CircuitBreaker) -> SharedState:
        """Close the fleet's breaker by hand."""


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
        shared: SharedBreakerBackend | None = None,
        shared_retry: float = 1.0,
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
        self.shared = shared
        self.shared_retry = positive(owner, "shared_retry", shared_retry)
        #: Calls to the shared backend that failed (the breaker decided alone each time).
        self.shared_failures = 0
        #: The last backend failure while it lasts (None while the backend answers).
        self.shared_error: str | None = None
        self._shared_retry_at = 0.0
        self._mirrored = False  # the fleet's state was read at least once
        self._local_trip: str | None = None  # opened alone while the store was unreachable
        if shared is not None:
            shared.attach(self)

    def clone(self, name: str) -> CircuitBreaker:
        """A fresh breaker with the same settings (one per fallback venue)."""
        return CircuitBreaker(
            self.failure_threshold, name=name, cooldown=self.cooldown,
            half_open_probes=self.half_open_probes, failure_rate=self.failure_rate,
            window=self.window, min_calls=self.min_calls, clock=self._clock,
            shared=self.shared, shared_retry=self.shared_retry,
        )

    # -- the shared view ------------------------------------------------------------------

    def _ask(self, call: Callable[[SharedBreakerBackend], SharedState]) -> SharedState | None:
        """The backend's answer, or None when there is none or it failed (decide alone)."""
        shared = self.shared
        if shared is None or self._clock() < self._shared_retry_at:
            return None
        try:
            view = call(shared)
            if not isinstance(view, SharedState) or not isinstance(view.state, BreakerState):
                raise TypeError(f"the backend answered {view!r}")
        except Exception as exc:
            self._shared_failed(exc)
            return None
        if self.shared_error is not None:
            self.shared_error = None
            tripped, self._local_trip = self._local_trip, None
            if tripped is not None and view.state is BreakerState.CLOSED:
                # Opened alone during the outage: the fleet hears of it, not the reverse.
                why = f"{tripped} (in {self.name}'s own count while the shared state was down)"
                try:
                    view = shared.trip(self, why)
                except Exception as exc:
                    self._local_trip = tripped
                    self._shared_failed(exc)
                    return None
            _log.warning("circuit breaker %s: shared state reachable again; the fleet's"
                         " state (%s) replaces the local one", self.name, view.state)
        return view

    def _shared_failed(self, exc: BaseException) -> None:
        with self._lock:
            self.shared_failures += 1
            first = self.shared_error is None
            self.shared_error = f"{type(exc).__name__}: {exc}"
            self._shared_retry_at = self._clock() + self.shared_retry
        if first:
            _log.error("circuit breaker %s: shared state unreachable (%s); deciding from this"
                       " process's own exits until it answers (retried every %gs)", self.name,
                       self.shared_error, self.shared_retry)

    def _current(self) -> bool:
        """The mirror is the fleet's state (pushes arrive, the store answers) and closed:
        what an ``allow`` would get from the store anyway (a transition is pushed). Saves a
        round trip per exit; open and half-open (time-based, and the probe lease) ask."""
        shared = self.shared
        return (shared is not None and self._mirrored and self.shared_error is None
                and self._state is BreakerState.CLOSED and shared.fresh(self))

    def _mirror(self, view: SharedState) -> tuple[BreakerState, BreakerState, str] | None:
        """Take the fleet's state (under the lock); the transition to report, if any."""
        self._consecutive_failures = view.consecutive_failures
        if view.state is self._state:
            return None
        return self._set(view.state, view.reason)

    def _apply(self, view: SharedState) -> BreakerState:
        with self._lock:
            self._mirrored = True
            event = self._mirror(view)
        self._notify(event)
        return view.state

    def sync(self) -> BreakerState:
        """Read the fleet's state now and report a transition made elsewhere (the backend
        calls this when another process moves the state)."""
        view = self._ask(lambda shared: shared.read(self))
        return self._state if view is None else self._apply(view)

    def add_listener(self, listener: TransitionListener) -> None:
        """``listener(name, old, new, reason)`` on every transition."""
        self._listeners.append(listener)

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive_failures

    @property
    def state(self) -> BreakerState:
        """The state now; an open breaker whose cool-down has passed reads as half-open."""
        view = self._ask(lambda shared: shared.read(self))
        if view is not None:
            return self._apply(view)
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
            self._local_trip = None
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
        if self._current():
            return Permit(probe=False)
        view = self._ask(lambda shared: shared.allow(self))
        if view is not None:
            state = self._apply(view)
            if state is BreakerState.CLOSED:
                return Permit(probe=False)
            if state is BreakerState.HALF_OPEN and view.lease is not None:
                return Permit(probe=True, lease=view.lease)
            return None
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
        """The original design's check: would an exit be let through now? Takes no probe slot
        (with a shared backend, a half-open breaker reads as accepting)."""
        state = self.state
        if state is BreakerState.HALF_OPEN and self.shared is not None:
            return True
        if state is BreakerState.HALF_OPEN:
            with self._lock:
                return self._probes_in_flight < self.half_open_probes
        return state is BreakerState.CLOSED

    def release(self, permit: Permit | None) -> None:
        """Give a probe slot back without a verdict (the exit was cancelled)."""
        if permit is not None and permit.lease is not None and self.shared is not None:
            lease = permit.lease
            try:
                self.shared.release(self, lease)
            except Exception as exc:  # the lease expires on its own
                self._shared_failed(exc)
            return
        if permit is not None and permit.probe and not permit.forced:
            with self._lock:
                self._probes_in_flight = max(0, self._probes_in_flight - 1)

    def _verdict(self, permit: Permit | None, *, ok: bool) -> SharedState | None:
        lease = permit.lease if permit is not None else None
        forced = permit is not None and permit.forced
        return self._ask(lambda shared: shared.record(self, ok=ok, lease=lease, forced=forced))

    def record_success(self, permit: Permit | None = None) -> None:
        if self.failure_rate is None and (permit is None or not permit.probe) and (
            self._consecutive_failures == 0 and self._current()
        ):
            return  # nothing for the store to count: no failure to reset, no rate window
        view = self._verdict(permit, ok=True)
        if view is not None:
            self._apply(view)
            return
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
        view = self._verdict(permit, ok=False)
        if view is not None:
            state = self._apply(view)
            return BreakerAction.HALT_TRADING if state is BreakerState.OPEN else (
                BreakerAction.CONTINUE)
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
            if reason and self.shared is not None:
                self._local_trip = reason
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
        """Close by hand (an operator decision); with a shared backend, for the whole fleet."""
        view = self._ask(lambda shared: shared.reset(self))
        if view is not None:
            self._apply(view)
            return
        with self._lock:
            self._consecutive_failures = 0
            self._calls.clear()
            event = self._set(BreakerState.CLOSED, "reset") if (
                self._state is not BreakerState.CLOSED
            ) else None
        self._notify(event)
