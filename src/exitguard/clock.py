"""Where the core reads time.

Deadline arithmetic uses the running event loop's clock, so a virtual-time loop
(``exitguard.vtime``) runs tests and the simulator in virtual time. Only when no loop is
running (a primitive used from synchronous code) does it fall back to the monotonic clock
that default asyncio loops use anyway. Wall-clock stamps for audit records come from
``wall_time`` and never enter deadline arithmetic.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

Clock = Callable[[], float]


def loop_time() -> float:
    """The running loop's time, or the monotonic clock outside a loop."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


def wall_time() -> float:
    """Seconds since the epoch, for audit history and logs only."""
    return time.time()
