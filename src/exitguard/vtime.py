"""A virtual-time event loop: sleeps and timeouts complete instantly, in order.

When the loop has nothing ready and its next timer is ``t`` seconds away, the clock jumps
``t`` forward instead of waiting. Everything in the core reads time from the loop, so a
30 s exit deadline is tested in milliseconds and a minute of simulated market replays in a
blink. Real I/O still works (the selector is polled without blocking before each jump), but
while real I/O is in flight virtual time keeps running: use the real clock for tests that
talk to servers.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

_T = TypeVar("_T")


class _VirtualSelector(selectors.BaseSelector):
    """Delegates to a real selector but turns a would-block wait into a clock jump."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._real = selectors.DefaultSelector()
        self._loop = loop

    def register(
        self, fileobj: Any, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(
        self, timeout: float | None = None
    ) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:  # no timer pending: only real I/O (e.g. a thread) can wake us
            return self._real.select(None)
        ready = self._real.select(0)
        if not ready and timeout > 0:
            self._loop.advance(timeout)
        return ready

    def close(self) -> None:
        self._real.close()

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._real.get_map()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose ``time()`` only moves when every task is waiting on a timer."""

    def __init__(self, start: float = 0.0) -> None:
        self._virtual_now = float(start)
        super().__init__(selector=_VirtualSelector(self))

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        """Move the clock forward (never backward)."""
        if seconds > 0:
            self._virtual_now += seconds


def run_virtual(main: Coroutine[Any, Any, _T], *, start: float = 0.0) -> _T:
    """``asyncio.run`` in virtual time: returns ``main``'s result, cleaning up like asyncio.run."""
    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(start)) as runner:
        return runner.run(main)
