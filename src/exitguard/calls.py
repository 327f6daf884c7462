"""Venue calls bounded in time, even when the venue ignores cancellation.

``asyncio.timeout`` around a venue coroutine only *asks* it to stop: a venue that catches
``CancelledError`` and keeps waiting holds the exit past its deadline (or forever, for a
confirmation that never comes). So each call runs as its own task: the guard waits at most
``limit`` for it, then cancels it and walks away. A call that then keeps running is left to
finish on its own, tracked here (``in_flight``), counted as a ``venue_call`` fault and
logged once; its result is consumed so nothing is lost silently.

A venue method written as a plain ``def`` (a synchronous exchange client) is accepted: its
return value is used as is. Awaiting it would raise TypeError *after* the order was sent.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import InvalidVenueResponse
from .faults import FaultCounts, FaultSource
from .redaction import get_logger

__all__ = ["CallTimeout", "VenueCalls"]

_log = get_logger("exitguard.guard")
_T = TypeVar("_T")


class CallTimeout(TimeoutError):
    """The guard's own bound on a venue call ran out (the call may still have acted)."""


class VenueCalls:
    """Runs venue calls within a time limit; keeps the ones that outlived it."""

    __slots__ = ("_faults", "_warned", "in_flight")

    def __init__(self, faults: FaultCounts) -> None:
        self._faults = faults
        self._warned = False
        #: Calls the guard stopped waiting for that have not finished yet.
        self.in_flight: set[asyncio.Future[Any]] = set()

    async def call(self, start: Callable[[], Any], limit: float, what: str) -> Any:
        """Start the call (``start()`` returns an awaitable or, for a sync venue, the result)
        and return its result within ``limit`` seconds, else raise CallTimeout."""
        task = self.start(start)
        if not isinstance(task, asyncio.Future):
            return task
        if not await self.wait(task, limit, what):
            self.abandon(task, what)
            raise CallTimeout(f"{what} did not answer within {limit:.3f}s")
        return self.result(task, what)

    @staticmethod
    def start(start: Callable[[], Any]) -> Any:
        """The running call as a future, or the result itself when the venue is sync."""
        result = start()
        return asyncio.ensure_future(result) if inspect.isawaitable(result) else result

    async def wait(self, task: asyncio.Future[Any], limit: float, what: str) -> bool:
        """Wait up to ``limit`` for ``task``; True if it finished. If the exit itself is
        cancelled meanwhile, the call is abandoned and the cancellation goes on."""
        if task.done():
            return True
        try:
            done, _ = await asyncio.wait((task,), timeout=max(0.0, limit))
        except asyncio.CancelledError:
            self.abandon(task, what)
            raise
        return bool(done)

    @staticmethod
    def result(task: asyncio.Future[Any], what: str) -> Any:
        if task.cancelled():  # nobody asked: the venue raised CancelledError on its own
            raise InvalidVenueResponse(f"{what} raised CancelledError unasked")
        return task.result()

    def abandon(self, task: asyncio.Future[Any], what: str) -> None:
        """Stop waiting for ``task``: cancel it, and keep it tracked until it ends."""
        if task.done():
            if not task.cancelled():
                task.exception()
            return
        task.cancel()
        self.in_flight.add(task)

        def finished(task: asyncio.Future[Any]) -> None:
            self.in_flight.discard(task)
            if task.cancelled():
                return  # it obeyed the cancellation
            task.exception()  # consumed: never "exception was never retrieved"
            self._faults.add(FaultSource.VENUE_CALL)
            if not self._warned:
                self._warned = True
                _log.warning(
                    "venue %s ignored cancellation and finished late; the exit did not wait"
                    " for it (logged once, counted as exitguard_faults_total"
                    '{component="venue_call"})', what,
                )

        task.add_done_callback(finished)
