"""One call to instrument a guard, and a drop-in for bots that keep their own exit code.

Instrument a guard (metrics, traces, logs, any combination)::

    from exitguard import ExitGuard
    from exitguard import telemetry

    guard = ExitGuard(venue, name="mybot")
    telemetry.instrument(guard)                       # all three, global registry/provider
    # or at construction:
    guard = ExitGuard(venue, name="mybot", hooks=telemetry.hooks(logs=False))

Drop-in, around existing exit code (the same metrics, spans and logs as the guard)::

    import asyncio
    from exitguard import telemetry

    async def sell(size: float) -> float:               # the bot's own code
        await asyncio.sleep(0.01)
        return 94.9

    async def main() -> None:
        async with telemetry.track_exit(position_id="pos-1", symbol="SOL", size=10.0,
                                        signal_price=95.0, guard_name="mybot") as exit_:
            async with exit_.attempt(mode="limit", max_slippage_bps=100) as attempt:
                attempt.submitted("tx-1")
                price = await sell(10.0)
                attempt.filled(price=price)
        print(exit_.outcome.status if exit_.outcome else None)   # closed

    asyncio.run(main())

or, as a decorator on an ``async def`` or a plain ``def`` (each call is one exit with one
``mode`` attempt; the function's parameters ``position`` (or ``position_id``/``symbol``/
``size``) and ``signal_price`` say what is exited; a returned fill (``.price``/``.size``),
price or ccxt order dict gives the figures; an exception is a failed exit and propagates)::

    @telemetry.instrumented_exit(guard_name="mybot", mode="market")
    async def close_position(position: Position, signal_price: float) -> Fill:
        ...

This module is the one import for all of it; each concern lives in its own module:
``hookset`` (building the hooks, ``instrument``, the drop-in's default hooks), ``tracker``
(``track_exit``: the exit's books in the core's ``ExitLedger``), ``attempt`` (one
submission and what its end means), ``decorator``
(``@instrumented_exit``, sync and async) and ``_returned`` (reading what an exit function
returned: fills, prices, ccxt orders).
"""

from __future__ import annotations

from ._returned import ExitResultWarning
from .decorator import ExitDecorator, instrumented_exit
from .hookset import Instrumentation, default_hooks, instrument, make_hooks, set_default_hooks
from .tracker import TrackedAttempt, TrackedExit, current_exit, track_exit

__all__ = [
    "ExitDecorator",
    "ExitResultWarning",
    "Instrumentation",
    "TrackedAttempt",
    "TrackedExit",
    "current_exit",
    "default_hooks",
    "instrument",
    "instrumented_exit",
    "make_hooks",
    "set_default_hooks",
    "track_exit",
]
