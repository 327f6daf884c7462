"""CircuitBreaker: opens on the Nth consecutive failure or a failure rate, a real half-open,
listeners, clocks and threads."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any

import pytest

from exitguard import CircuitBreaker, ConfigError
from exitguard.breaker import BreakerAction, BreakerState, Permit
from exitguard.compat import CircuitBreakerAction, ExitCircuitBreaker
from exitguard.testing import FakeClock
from exitguard.vtime import run_virtual

CLOSED, HALF_OPEN, OPEN = BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN
Event = tuple[str, BreakerState, BreakerState, str]


def listening(breaker: CircuitBreaker) -> list[Event]:
    events: list[Event] = []
    breaker.add_listener(lambda *event: events.append(event))
    return events


def tripped(threshold: int = 2, **options: Any) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold, clock=clock, **options)
    for _ in range(threshold):
        breaker.record_failure()
    assert breaker.state is OPEN
    return breaker, clock


# -- Consecutive failures: closed below the threshold, open at it ---------------------------


def test_circuit_stays_closed_under_threshold() -> None:
    breaker = ExitCircuitBreaker(3)
    assert breaker.record_failure() is CircuitBreakerAction.CONTINUE
    assert breaker.record_failure() is CircuitBreakerAction.CONTINUE
    assert breaker.should_accept_exit()
    assert breaker.consecutive_failures == 2
    assert breaker.state is CLOSED


def test_circuit_opens_at_threshold() -> None:
    breaker = ExitCircuitBreaker(2)
    breaker.record_failure()
    action = breaker.record_failure()
    assert not breaker.should_accept_exit()
    assert action is CircuitBreakerAction.HALT_TRADING


def test_circuit_resets_on_success() -> None:
    breaker = ExitCircuitBreaker(2)
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    # Still closed: only 1 failure after the reset.
    assert breaker.should_accept_exit()
    assert breaker.consecutive_failures == 1
    assert breaker.trips == 0


def test_exit_emergency_halt_after_repeated_failures() -> None:
    breaker = ExitCircuitBreaker(2)
    action1 = breaker.record_failure()
    assert action1 is CircuitBreakerAction.CONTINUE
    action2 = breaker.record_failure()
    assert action2 is CircuitBreakerAction.HALT_TRADING
    # After the halt, further exits are rejected.
    assert not breaker.should_accept_exit()
    assert breaker.allow() is None


# -- Closed -> open ------------------------------------------------------------------------


def test_compatibility_names_are_aliases() -> None:
    assert ExitCircuitBreaker is CircuitBreaker
    assert CircuitBreakerAction is BreakerAction
    assert [s.gauge_value for s in (CLOSED, HALF_OPEN, OPEN)] == [0, 1, 2]


@pytest.mark.parametrize("threshold", [1, 2, 3, 5])
def test_opens_on_the_nth_consecutive_failure(threshold: int) -> None:
    breaker = CircuitBreaker(threshold, clock=FakeClock())
    events = listening(breaker)
    for _ in range(threshold - 1):
        assert breaker.record_failure() is BreakerAction.CONTINUE
        assert breaker.state is CLOSED
    assert breaker.record_failure() is BreakerAction.HALT_TRADING
    assert breaker.state is OPEN
    assert breaker.trips == 1
    assert breaker.transitions == 1
    assert events == [("exit", CLOSED, OPEN, f"{threshold} consecutive failed exits")]


def test_refuses_fast_while_open() -> None:
    breaker, clock = tripped(2, cooldown=30.0)
    clock.advance(29.9)
    assert breaker.allow() is None
    assert not breaker.should_accept_exit()
    # More failures while open: still halting, but no new trip or transition.
    assert breaker.record_failure() is BreakerAction.HALT_TRADING
    assert breaker.trips == 1
    assert breaker.transitions == 1
    # A late success (an exit let through before it opened) does not close it.
    breaker.record_success()
    assert breaker.state is OPEN


def test_closed_breaker_gives_non_probe_permits() -> None:
    breaker = CircuitBreaker(2)
    permits = [breaker.allow() for _ in range(50)]
    assert all(p == Permit(probe=False) for p in permits)


# -- Half-open -------------------------------------------------------------------------------


def test_cooldown_moves_to_half_open() -> None:
    breaker, clock = tripped(2, cooldown=30.0)
    events = listening(breaker)
    clock.advance(29.999)
    assert breaker.state is OPEN
    clock.advance(0.001)
    assert breaker.state is HALF_OPEN
    assert events == [("exit", OPEN, HALF_OPEN, "cool-down elapsed")]
    assert breaker.transitions == 2
    assert breaker.trips == 1


@pytest.mark.parametrize("probes", [1, 2, 3])
def test_half_open_lets_exactly_the_probes_through(probes: int) -> None:
    breaker, clock = tripped(2, cooldown=10.0, half_open_probes=probes)
    clock.advance(10.0)
    assert breaker.should_accept_exit()
    permits = [breaker.allow() for _ in range(probes)]
    assert permits == [Permit(probe=True)] * probes
    assert breaker.allow() is None  # every probe slot is taken
    assert not breaker.should_accept_exit()
    assert breaker.state is HALF_OPEN


def test_probe_success_closes() -> None:
    breaker, clock = tripped(3, cooldown=5.0)
    events = listening(breaker)
    clock.advance(5.0)
    permit = breaker.allow()
    assert permit == Permit(probe=True)
    breaker.record_success(permit)
    assert breaker.state is CLOSED
    assert breaker.consecutive_failures == 0
    assert breaker.allow() == Permit(probe=False)
    assert events == [
        ("exit", OPEN, HALF_OPEN, "cool-down elapsed"),
        ("exit", HALF_OPEN, CLOSED, "probe exit succeeded"),
    ]
    # Closed again: it takes the full threshold to re-open.
    assert breaker.record_failure() is BreakerAction.CONTINUE
    assert breaker.record_failure() is BreakerAction.CONTINUE
    assert breaker.record_failure() is BreakerAction.HALT_TRADING


def test_probe_failure_reopens_and_counts_a_trip() -> None:
    breaker, clock = tripped(2, cooldown=5.0)
    events = listening(breaker)
    clock.advance(5.0)
    permit = breaker.allow()
    assert permit is not None
    clock.advance(1.0)
    assert breaker.record_failure(permit) is BreakerAction.HALT_TRADING
    assert breaker.state is OPEN
    assert breaker.trips == 2
    assert events[-1] == ("exit", HALF_OPEN, OPEN, "probe exit failed")
    # The cool-down restarts from the re-open, not from the first trip.
    clock.advance(4.9)
    assert breaker.state is OPEN
    clock.advance(0.1)
    assert breaker.state is HALF_OPEN
    assert breaker.allow() == Permit(probe=True)  # the probe slots were reset


def test_failure_after_cooldown_without_probe_reopens() -> None:
    # Nobody asked for a permit; a failure after the cool-down is the half-open verdict.
    breaker, clock = tripped(2, cooldown=5.0)
    clock.advance(6.0)
    assert breaker.record_failure() is BreakerAction.HALT_TRADING
    assert breaker.trips == 2
    assert breaker.transitions == 3  # open, half-open, open


def test_release_frees_a_probe_slot() -> None:
    breaker, clock = tripped(2, cooldown=5.0, half_open_probes=1)
    clock.advance(5.0)
    permit = breaker.allow()
    assert permit is not None
    assert breaker.allow() is None
    breaker.release(permit)  # the probe exit was cancelled: no verdict
    assert breaker.state is HALF_OPEN
    second = breaker.allow()
    assert second == Permit(probe=True)
    assert breaker.allow() is None
    breaker.release(None)  # harmless
    breaker.release(Permit(probe=False))  # a closed-era permit holds no slot
    assert breaker.allow() is None
    breaker.release(second)
    breaker.release(second)  # releasing twice never makes more slots than configured
    assert breaker.allow() is not None
    assert breaker.allow() is None


# -- Failure rate ------------------------------------------------------------------------------


def test_failure_rate_over_the_window_opens() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        100, failure_rate=0.5, window=10.0, min_calls=4, cooldown=5.0, clock=clock
    )
    events = listening(breaker)
    breaker.record_success()
    assert breaker.record_failure() is BreakerAction.CONTINUE
    breaker.record_success()
    assert breaker.state is CLOSED  # 3 calls: fewer than min_calls
    assert breaker.record_failure() is BreakerAction.HALT_TRADING  # 2 of 4 = 50 %
    assert breaker.state is OPEN
    assert events[0][1:3] == (CLOSED, OPEN)
    assert "failure rate" in events[0][3]


def test_failures_leave_the_window() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(100, failure_rate=0.5, window=10.0, min_calls=4, clock=clock)
    for _ in range(3):
        breaker.record_failure()
    clock.advance(10.5)  # those three are now outside the window
    for _ in range(3):
        breaker.record_success()
    assert breaker.record_failure() is BreakerAction.CONTINUE  # 1 of 4 in the window
    assert breaker.state is CLOSED


def test_rate_window_starts_fresh_after_recovery() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        100, failure_rate=0.5, window=60.0, min_calls=4, cooldown=5.0, clock=clock
    )
    for _ in range(4):
        breaker.record_failure()
    assert breaker.state is OPEN
    clock.advance(5.0)
    permit = breaker.allow()
    breaker.record_success(permit)
    assert breaker.state is CLOSED
    # The four failures that opened it are still inside the 60 s window, but a recovered
    # breaker must not re-open on the next single failure.
    assert breaker.record_failure() is BreakerAction.CONTINUE
    assert breaker.state is CLOSED


# -- Listeners, counters, reset, clone ---------------------------------------------------------


def test_raising_listener_does_not_break_the_breaker() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, cooldown=1.0, clock=clock, name="jupiter")

    def broken(*_args: object) -> None:
        raise RuntimeError("listener bug")

    breaker.add_listener(broken)
    events = listening(breaker)
    assert breaker.record_failure() is BreakerAction.HALT_TRADING
    clock.advance(1.0)
    permit = breaker.allow()
    breaker.record_success(permit)
    assert breaker.state is CLOSED
    assert [(name, old, new) for name, old, new, _ in events] == [
        ("jupiter", CLOSED, OPEN),
        ("jupiter", OPEN, HALF_OPEN),
        ("jupiter", HALF_OPEN, CLOSED),
    ]
    assert breaker.transitions == 3
    assert breaker.trips == 1


def test_reset_closes_by_hand() -> None:
    breaker, _ = tripped(2)
    events = listening(breaker)
    breaker.reset()
    assert breaker.state is CLOSED
    assert breaker.consecutive_failures == 0
    assert events == [("exit", OPEN, CLOSED, "reset")]
    transitions = breaker.transitions
    breaker.reset()  # already closed: no transition
    assert breaker.transitions == transitions
    assert len(events) == 1


def test_clone_has_the_settings_but_its_own_state() -> None:
    clock = FakeClock()
    original = CircuitBreaker(
        2, name="primary", cooldown=7.0, half_open_probes=3, failure_rate=0.4, window=20.0,
        min_calls=6, clock=clock,
    )
    original.record_failure()
    original.record_failure()
    copy = original.clone("fallback")
    assert copy.name == "fallback"
    assert (copy.failure_threshold, copy.cooldown, copy.half_open_probes) == (2, 7.0, 3)
    assert (copy.failure_rate, copy.window, copy.min_calls) == (0.4, 20.0, 6)
    assert copy.state is CLOSED
    assert original.state is OPEN
    assert copy.trips == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("failure_threshold", 0),
        ("failure_threshold", -1),
        ("failure_threshold", 1.5),
        ("failure_threshold", True),
        ("cooldown", 0),
        ("cooldown", -1.0),
        ("cooldown", math.nan),
        ("cooldown", math.inf),
        ("cooldown", True),
        ("cooldown", "30"),
        ("half_open_probes", 0),
        ("half_open_probes", 1.5),
        ("half_open_probes", True),
        ("failure_rate", 0),
        ("failure_rate", 1.5),
        ("failure_rate", -0.5),
        ("failure_rate", math.nan),
        ("failure_rate", True),
        ("failure_rate", "0.5"),
        ("window", 0),
        ("window", math.nan),
        ("window", math.inf),
        ("window", True),
        ("min_calls", 0),
        ("min_calls", 1.5),
        ("min_calls", True),
    ],
)
def test_breaker_rejects_impossible_values(field: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        CircuitBreaker(**{field: value})
    assert isinstance(info.value, ValueError)
    assert info.value.field == field
    assert f"CircuitBreaker.{field}" in str(info.value)


# -- Clocks ----------------------------------------------------------------------------------


def test_cooldown_in_virtual_time() -> None:
    async def main() -> list[BreakerState]:
        breaker = CircuitBreaker(1, cooldown=5.0)  # default clock: the running loop
        breaker.record_failure()
        seen = [breaker.state]
        await asyncio.sleep(4.9)
        seen.append(breaker.state)
        await asyncio.sleep(0.1)
        seen.append(breaker.state)
        return seen

    assert run_virtual(main()) == [OPEN, OPEN, HALF_OPEN]


def test_cooldown_on_the_real_clock() -> None:
    async def main() -> tuple[Permit | None, Permit | None, float]:
        start = time.monotonic()
        breaker = CircuitBreaker(1, cooldown=0.2)
        breaker.record_failure()
        refused = breaker.allow()
        await asyncio.sleep(0.25)
        probe = breaker.allow()
        return refused, probe, time.monotonic() - start

    refused, probe, elapsed = asyncio.run(main())
    assert refused is None
    assert probe == Permit(probe=True)
    assert 0.2 <= elapsed < 2.0  # generous upper bound for a loaded machine


# -- Threads ---------------------------------------------------------------------------------


def test_threads_hammering_do_not_corrupt_counts() -> None:
    threads, per_thread = 8, 2_000
    breaker = CircuitBreaker(10**9)
    barrier = threading.Barrier(threads)

    def fail() -> None:
        barrier.wait()
        for _ in range(per_thread):
            breaker.record_failure()

    workers = [threading.Thread(target=fail) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert breaker.consecutive_failures == threads * per_thread  # no lost update
    assert breaker.state is CLOSED


def test_threads_mixing_verdicts_keep_transitions_consistent() -> None:
    threads, per_thread = 8, 1_500
    # A cool-down of a microsecond on the real clock: it flips open / half-open / closed
    # all the time while eight threads record verdicts.
    breaker = CircuitBreaker(3, cooldown=1e-6, failure_rate=0.6, window=1.0, min_calls=5)
    lock = threading.Lock()
    events: list[Event] = []

    def record(*event: Any) -> None:
        with lock:
            events.append(event)

    breaker.add_listener(record)
    barrier = threading.Barrier(threads)

    def work(index: int) -> None:
        barrier.wait()
        for n in range(per_thread):
            if (n + index) % 3:
                breaker.record_failure(breaker.allow())
            else:
                breaker.record_success(breaker.allow())

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert breaker.transitions == len(events) > 0
    assert breaker.trips == sum(1 for _, _, new, _ in events if new is OPEN)
    assert all(old is not new for _, old, new, _ in events)
    assert breaker.state in (CLOSED, HALF_OPEN, OPEN)


class _BrokenBackend:
    """A SharedBreakerBackend whose store is gone (or answers nonsense)."""

    def __init__(self, answer: object = None) -> None:
        self.answer = answer
        self.calls = 0

    def attach(self, breaker: CircuitBreaker) -> None:
        pass

    def fresh(self, breaker: CircuitBreaker) -> bool:
        return False

    def _call(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        if self.answer is None:
            raise ConnectionError("store unreachable")
        return self.answer

    allow = record = release = read = reset = trip = _call


@pytest.mark.parametrize("answer", [None, "closed", 42])
def test_a_shared_backend_that_fails_or_answers_garbage_leaves_the_breaker_deciding_alone(
    answer: object,
) -> None:
    clock = FakeClock(0.0)
    backend = _BrokenBackend(answer)
    breaker = CircuitBreaker(2, name="v", clock=clock, shared=backend,  # type: ignore[arg-type]
                             shared_retry=5.0)
    assert breaker.allow() is not None
    breaker.record_failure()
    assert breaker.record_failure() is BreakerAction.HALT_TRADING
    assert breaker.state is BreakerState.OPEN
    assert (backend.calls, breaker.shared_failures) == (1, 1)  # retried only after 5 s
    clock.advance(5.0)
    breaker.allow()
    assert (backend.calls, breaker.shared_failures) == (2, 2)
    assert breaker.shared_error
