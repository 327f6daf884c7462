"""The exit's total time budget, and timeout detection bounded by what is left of it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from ._validate import is_real, number, positive
from .clock import Clock, loop_time
from .errors import ConfigError, ExitDeadlineExceeded, ExitTimeoutError

_T = TypeVar("_T")


class ExitDeadline:
    """A hard time budget of ``seconds`` (default 30) opened at construction, in loop time.

    Every wait goes through ``remaining()``, so nothing sleeps past it (the original design's
    manager, ``exitguard.compat.ExitDeadlineManager``, could).
    """

    __slots__ = ("_clock", "seconds", "started_at")

    def __init__(
        self, seconds: float = 30.0, *, started_at: float | None = None, clock: Clock = loop_time
    ) -> None:
        self.seconds = positive("ExitDeadline", "seconds", seconds)
        if started_at is not None:
            number("ExitDeadline", "started_at", started_at)
        self._clock = clock
        self.started_at = clock() if started_at is None else started_at

    @property
    def window(self) -> float:
        """``seconds``, by the original design's name (``is_within_window`` keeps it too)."""
        return self.seconds

    @property
    def expires_at(self) -> float:
        return self.started_at + self.seconds

    def elapsed(self) -> float:
        return self._clock() - self.started_at

    def remaining(self) -> float:
        return max(0.0, self.expires_at - self._clock())

    def is_within_window(self) -> bool:
        return self._clock() < self.expires_at

    def assert_within_window(self) -> None:
        """Raise ExitDeadlineExceeded once the window has passed."""
        if not self.is_within_window():
            raise ExitDeadlineExceeded(self.elapsed(), self.seconds)

    def bound(self, limit: float | None = None) -> float:
        """A wait of at most ``limit`` seconds, cut to the time left."""
        left = self.remaining()
        return left if limit is None else max(0.0, min(limit, left))

    async def run(self, awaitable: Awaitable[_T], *, name: str = "exit") -> _T:
        """Await within the window; on expiry cancel it and raise ExitTimeoutError."""
        return await TimeoutDetector(name, self.remaining(), clock=self._clock).run(awaitable)



class TimeoutDetector:
    """Times one operation (e.g. a confirmation), never beyond an enclosing deadline."""

    __slots__ = ("_clock", "deadline", "name", "started_at", "timeout")

    def __init__(
        self,
        name: str,
        timeout: float,
        *,
        deadline: ExitDeadline | None = None,
        clock: Clock = loop_time,
    ) -> None:
        if not (is_real(timeout) and timeout >= 0):  # infinity: no own limit, the deadline's
            raise ConfigError("TimeoutDetector", "timeout", "must be a number >= 0", timeout)
        self.name = name
        self.timeout = float(timeout)
        self.deadline = deadline
        self._clock = clock
        self.started_at = clock()

    @property
    def limit(self) -> float:
        """The effective limit: the own timeout, cut to the enclosing deadline."""
        if self.deadline is None:
            return self.timeout
        return min(self.timeout, self.deadline.expires_at - self.started_at)

    def elapsed(self) -> float:
        return self._clock() - self.started_at

    def remaining(self) -> float:
        return max(0.0, self.limit - self.elapsed())

    def has_timed_out(self) -> bool:
        return self.elapsed() >= self.limit

    async def run(self, awaitable: Awaitable[_T]) -> _T:
        """Await with the remaining limit; cancel the operation and raise on expiry."""
        bound = asyncio.timeout(self.remaining())
        try:
            async with bound:
                return await awaitable
        except TimeoutError:
            if not bound.expired():
                raise  # the operation's own TimeoutError (e.g. RpcTimeout): not ours to rename
            raise ExitTimeoutError(self.name, self.elapsed(), self.limit) from None
