"""ExitAttemptTracker: attempts counted, the emergency halt, the time bound and bad input."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from exitguard import ConfigError
from exitguard.compat import ExitAttemptTracker
from exitguard.errors import EmergencyHaltError
from exitguard.testing import FakeClock
from exitguard.tracker import TrackerState
from exitguard.vtime import run_virtual

# -- Attempts up to the limit, then the emergency halt ------------------------------------


def test_first_attempt_recorded() -> None:
    tracker = ExitAttemptTracker(2)
    assert tracker.record_attempt() == 1
    assert not tracker.is_halted()
    assert tracker.state is TrackerState.ATTEMPTING


def test_second_attempt_allowed_within_threshold() -> None:
    clock = FakeClock()
    tracker = ExitAttemptTracker(2, clock=clock)
    tracker.record_attempt()
    clock.advance(0.1)  # 100 ms between attempts, exact with an injected clock
    assert tracker.record_attempt() == 2
    assert not tracker.is_halted()


def test_emergency_halt_after_max_attempts() -> None:
    tracker = ExitAttemptTracker(2)
    tracker.record_attempt()
    tracker.record_attempt()

    # The third attempt triggers the halt.
    with pytest.raises(EmergencyHaltError) as info:
        tracker.record_attempt()
    assert tracker.is_halted()
    assert tracker.state is TrackerState.EMERGENCY_HALT
    assert info.value.reason == "max exit attempts (2) exceeded"
    assert tracker.halt_reason == info.value.reason
    assert tracker.attempts == 2


def test_with_one_attempt_allowed_the_second_halts_and_every_later_one_fails() -> None:
    # The original design uses `new(1)` and then *unwraps* the second attempt with the comment "This
    # halts", which would panic: with one attempt allowed, the second attempt is the one
    # that halts, so it must fail. Corrected: the second attempt raises and halts, and
    # every further attempt fails too.
    tracker = ExitAttemptTracker(1)
    assert tracker.record_attempt() == 1
    with pytest.raises(EmergencyHaltError):
        tracker.record_attempt()  # this halts
    assert tracker.is_halted()

    for _ in range(3):  # further attempts fail
        with pytest.raises(EmergencyHaltError, match="max exit attempts"):
            tracker.record_attempt()
    assert tracker.attempts == 1


# -- The time bound, more attempts, reset, bad input -----------------------------------------


def test_attempt_past_the_emergency_threshold_halts() -> None:
    clock = FakeClock()
    tracker = ExitAttemptTracker(3, emergency_threshold=30.0, clock=clock)
    tracker.record_attempt()
    clock.advance(29.9)
    assert tracker.record_attempt() == 2  # still within 30 s of the first
    clock.advance(0.1)  # 30 s after the first attempt
    with pytest.raises(EmergencyHaltError, match="emergency threshold") as info:
        tracker.record_attempt()
    assert "30s" in info.value.reason
    assert tracker.is_halted()
    assert tracker.attempts == 2


def test_threshold_is_measured_in_loop_time() -> None:
    async def main() -> bool:
        tracker = ExitAttemptTracker(2)  # default clock: the running loop's
        tracker.record_attempt()
        await asyncio.sleep(31.0)
        with pytest.raises(EmergencyHaltError):
            tracker.record_attempt()
        return tracker.is_halted()

    assert run_virtual(main())


def test_generalised_to_more_attempts() -> None:
    tracker = ExitAttemptTracker(4)
    assert [tracker.record_attempt() for _ in range(4)] == [1, 2, 3, 4]
    with pytest.raises(EmergencyHaltError):
        tracker.record_attempt()


def test_reset_readies_the_next_position() -> None:
    clock = FakeClock()
    tracker = ExitAttemptTracker(1, clock=clock)
    tracker.record_attempt()
    with pytest.raises(EmergencyHaltError):
        tracker.record_attempt()
    tracker.reset()
    assert tracker.state is TrackerState.IDLE
    assert not tracker.is_halted()
    assert tracker.halt_reason is None
    assert tracker.first_at is None
    clock.advance(100.0)  # the threshold counts from the new first attempt
    assert tracker.record_attempt() == 1
    assert tracker.first_at == 100.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_attempts", 0),
        ("max_attempts", -1),
        ("max_attempts", 1.5),
        ("max_attempts", True),
        ("max_attempts", "2"),
        ("emergency_threshold", 0),
        ("emergency_threshold", -30.0),
        ("emergency_threshold", math.nan),
        ("emergency_threshold", True),
        ("emergency_threshold", "30"),
        ("emergency_threshold", None),
    ],
)
def test_tracker_rejects_impossible_values(field: str, value: Any) -> None:
    kwargs: dict[str, Any] = {"max_attempts": 2, field: value}
    with pytest.raises(ConfigError) as info:
        ExitAttemptTracker(**kwargs)
    assert isinstance(info.value, ValueError)
    assert info.value.field == field
    assert f"ExitAttemptTracker.{field}" in str(info.value)


def test_infinite_threshold_means_no_time_bound() -> None:
    clock = FakeClock()
    tracker = ExitAttemptTracker(2, emergency_threshold=math.inf, clock=clock)
    tracker.record_attempt()
    clock.advance(1e9)
    assert tracker.record_attempt() == 2
