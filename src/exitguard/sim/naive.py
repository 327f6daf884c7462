"""The seed's exit: a passive retry with the same parameters every time.

What the seed's orchestrator does (DESIGN.md, seed Part 1): send the exit, wait up to 60 s
for a confirmation, and on any failure log "will retry on next tick", sleep the 10 s poll
interval and send it again, without limit, with the same order (limit, 1 % slippage, no
priority fee) against a fresh quote. A confirmation timeout is taken as "not sold", so a
transaction that lands after the 60 s sells the position a second time when a later retry
lands too: the simulator counts that from the venue's ground truth.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from dataclasses import dataclass, field

from ..redaction import get_logger
from ..venue import ExitOrder, Fill, OrderMode, Position, Venue

__all__ = ["NaiveConfig", "NaiveResult", "naive_exit"]

_log = get_logger("exitguard.sim.naive")

_DUST = 1e-9


@dataclass(frozen=True, slots=True)
class NaiveConfig:
    """The seed's parameters. ``max_attempts`` None is the seed: no limit."""

    confirm_timeout: float = 60.0
    poll_interval: float = 10.0
    mode: OrderMode = OrderMode.LIMIT
    max_slippage_bps: int = 100
    priority_fee: int | None = None
    max_attempts: int | None = None


@dataclass(slots=True)
class NaiveResult:
    """What the naive executor believes happened (the ledger knows better)."""

    closed: bool
    attempts: int
    fills: list[Fill] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def filled_size(self) -> float:
        return sum(fill.size for fill in self.fills)


async def naive_exit(
    venue: Venue,
    position: Position,
    *,
    config: NaiveConfig | None = None,
    until: float | None = None,
) -> NaiveResult:
    """Exit like the seed does; gives up only at loop time ``until`` (a simulation horizon).

    Never raises for venue errors: like the seed, it swallows them and retries on the next
    tick.
    """
    cfg = config or NaiveConfig()
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = NaiveResult(closed=False, attempts=0)
    remaining = position.size
    last_price: float | None = None
    while True:
        if until is not None and loop.time() >= until:
            break
        if cfg.max_attempts is not None and result.attempts >= cfg.max_attempts:
            break
        result.attempts += 1
        try:
            price = await venue.price(position)
            last_price = price
        except Exception:
            price = last_price if last_price is not None else position.entry_price
        order = ExitOrder(
            position=dataclasses.replace(position, size=remaining),
            size=remaining,
            mode=cfg.mode,
            reference_price=price,
            max_slippage_bps=cfg.max_slippage_bps,
            attempt=result.attempts,
            priority_fee=cfg.priority_fee,
        )
        try:
            submission = await venue.submit(order)
            fill = await asyncio.wait_for(venue.confirm(submission), cfg.confirm_timeout)
        except Exception as exc:  # the seed: every failure is "retry on next tick"
            result.errors.append(f"{type(exc).__name__}: {exc}")
            _log.debug("exit trade failed - will retry on next tick (%s)", exc)
        else:
            result.fills.append(fill)
            remaining -= fill.size
            if remaining <= _DUST * position.size or not math.isfinite(remaining):
                result.closed = True
                break
        await asyncio.sleep(cfg.poll_interval)
    result.elapsed_s = loop.time() - started
    return result
