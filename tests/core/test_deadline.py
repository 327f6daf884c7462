"""ExitDeadline (also known as ExitDeadlineManager) and TimeoutDetector."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import pytest

from exitguard import ConfigError, RpcTimeout
from exitguard.compat import ExitDeadlineManager, ExitTimeoutDetector
from exitguard.deadline import ExitDeadline, TimeoutDetector
from exitguard.errors import ExitDeadlineExceeded, ExitTimeoutError
from exitguard.testing import FakeClock
from exitguard.vtime import run_virtual


def test_compatibility_names_are_aliases() -> None:
    assert ExitDeadlineManager is ExitDeadline
    assert ExitTimeoutDetector is TimeoutDetector


def test_window_arithmetic_with_an_injected_clock() -> None:
    clock = FakeClock(1000.0)
    deadline = ExitDeadline(30.0, clock=clock)
    assert deadline.started_at == 1000.0
    assert deadline.expires_at == 1030.0
    assert deadline.seconds == 30.0
    assert deadline.window == 30.0  # the original design's name
    assert deadline.is_within_window()
    assert deadline.remaining() == 30.0
    deadline.assert_within_window()

    clock.advance(12.5)
    assert deadline.elapsed() == 12.5
    assert deadline.remaining() == 17.5
    assert deadline.bound(8.0) == 8.0  # a wait shorter than what is left
    assert deadline.bound(20.0) == 17.5  # cut to the time left
    assert deadline.bound() == 17.5
    assert deadline.bound(-1.0) == 0.0

    clock.advance(17.5)  # exactly at the deadline: no longer within
    assert not deadline.is_within_window()
    assert deadline.remaining() == 0.0
    clock.advance(5.0)
    assert deadline.remaining() == 0.0  # never negative
    assert deadline.bound(3.0) == 0.0
    with pytest.raises(ExitDeadlineExceeded) as info:
        deadline.assert_within_window()
    assert info.value.elapsed == 35.0
    assert info.value.deadline == 30.0
    assert isinstance(info.value, TimeoutError)


def test_started_at_may_be_given() -> None:
    clock = FakeClock(50.0)
    deadline = ExitDeadline(10.0, started_at=45.0, clock=clock)
    assert deadline.elapsed() == 5.0
    assert deadline.remaining() == 5.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seconds", 0),
        ("seconds", -1.0),
        ("seconds", math.nan),
        ("seconds", math.inf),
        ("seconds", True),
        ("seconds", "30"),
        ("seconds", None),
        ("started_at", math.nan),
        ("started_at", math.inf),
        ("started_at", "now"),
        ("started_at", True),
    ],
)
def test_exit_deadline_rejects_impossible_values(field: str, value: Any) -> None:
    kwargs: dict[str, Any] = {"seconds": 30.0, field: value}
    with pytest.raises(ConfigError) as info:
        ExitDeadline(**kwargs)
    assert isinstance(info.value, ValueError)
    assert info.value.field == field
    assert f"ExitDeadline.{field}" in str(info.value)


@pytest.mark.parametrize("value", [-0.1, math.nan, True, "8", None])
def test_timeout_detector_rejects_impossible_timeouts(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"TimeoutDetector\.timeout"):
        TimeoutDetector("confirm", value)


def test_past_its_deadline_an_exit_deadline_is_out_of_window_and_asserting_raises() -> None:
    # A 500 ms deadline and a 600 ms wait, in virtual time.
    async def main() -> None:
        deadline = ExitDeadline(0.5)  # 500 ms deadline
        assert deadline.is_within_window()  # immediately within window
        await asyncio.sleep(0.6)  # wait beyond the deadline
        assert not deadline.is_within_window()
        with pytest.raises(ExitDeadlineExceeded):  # should fail to assert
            deadline.assert_within_window()
        assert deadline.elapsed() == pytest.approx(0.6)

    run_virtual(main())


def test_deadline_reads_the_loop_clock() -> None:
    async def main() -> tuple[float, float]:
        deadline = ExitDeadline(30.0)
        await asyncio.sleep(12.0)
        return deadline.started_at, deadline.remaining()

    started, remaining = run_virtual(main(), start=500.0)
    assert started == 500.0
    assert remaining == pytest.approx(18.0)


def test_run_returns_in_time_and_cuts_off_at_the_window() -> None:
    cancelled = False

    async def answer(after: float) -> str:
        await asyncio.sleep(after)
        return "filled"

    async def hang() -> None:
        nonlocal cancelled
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled = True
            raise

    async def main() -> tuple[str, float, ExitTimeoutError]:
        loop = asyncio.get_running_loop()
        deadline = ExitDeadline(30.0)
        result = await deadline.run(answer(4.0))
        with pytest.raises(ExitTimeoutError) as info:
            await deadline.run(hang(), name="confirm tx1")
        return result, loop.time(), info.value

    result, now, error = run_virtual(main())
    assert result == "filled"
    assert now == pytest.approx(30.0)  # the hanging wait ended exactly at the deadline
    assert cancelled
    assert error.name == "confirm tx1"
    assert error.limit == pytest.approx(26.0)  # what was left when it started


def test_timeout_detector_arithmetic() -> None:
    clock = FakeClock(0.0)
    detector = TimeoutDetector("confirm", 8.0, clock=clock)
    assert detector.limit == 8.0
    assert not detector.has_timed_out()
    clock.advance(3.0)
    assert detector.elapsed() == 3.0
    assert detector.remaining() == 5.0
    clock.advance(5.0)
    assert detector.has_timed_out()
    assert detector.remaining() == 0.0


def test_timeout_detector_is_cut_to_the_enclosing_deadline() -> None:
    clock = FakeClock(0.0)
    deadline = ExitDeadline(30.0, clock=clock)
    clock.advance(28.0)
    detector = TimeoutDetector("confirm", 8.0, deadline=deadline, clock=clock)
    assert detector.limit == pytest.approx(2.0)
    clock.advance(2.0)
    assert detector.has_timed_out()
    # Started after the deadline: timed out at once, nothing to wait for.
    clock.advance(1.0)
    late = TimeoutDetector("confirm", 8.0, deadline=deadline, clock=clock)
    assert late.has_timed_out()
    assert late.remaining() == 0.0


def test_timeout_detector_run_in_virtual_time() -> None:
    async def hang() -> None:
        await asyncio.Event().wait()

    async def main() -> tuple[float, ExitTimeoutError]:
        loop = asyncio.get_running_loop()
        deadline = ExitDeadline(30.0)
        await asyncio.sleep(27.0)
        detector = TimeoutDetector("confirm tx2", 8.0, deadline=deadline)
        with pytest.raises(ExitTimeoutError) as info:
            await detector.run(hang())
        return loop.time(), info.value

    now, error = run_virtual(main())
    assert now == pytest.approx(30.0)  # 3 s left of the deadline, not the 8 s timeout
    assert error.name == "confirm tx2"
    assert error.limit == pytest.approx(3.0)
    assert error.elapsed == pytest.approx(3.0)


def test_timeout_detector_passes_the_operation_s_own_timeout_through() -> None:
    # The venue's RpcTimeout is not the detector's timeout: it must not be renamed.
    original = RpcTimeout("node timeout")

    async def venue_confirm() -> None:
        await asyncio.sleep(1.0)
        raise original

    async def main() -> BaseException:
        with pytest.raises(RpcTimeout) as info:
            await TimeoutDetector("confirm", 8.0).run(venue_confirm())
        return info.value

    assert run_virtual(main()) is original


def test_timeout_detector_on_the_real_clock() -> None:
    async def main() -> tuple[float, ExitTimeoutError]:
        start = time.monotonic()
        with pytest.raises(ExitTimeoutError) as info:
            await TimeoutDetector("confirm", 0.2).run(asyncio.sleep(5.0))
        return time.monotonic() - start, info.value

    elapsed, error = asyncio.run(main())
    assert 0.19 <= elapsed < 1.5  # generous upper bound for a loaded machine
    assert error.limit == 0.2
    assert error.elapsed >= 0.19
