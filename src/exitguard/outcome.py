"""What an exit returns: status, fills, and the figures that say how well it went."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .errors import ErrorClass
from .state_machine import TransitionRecord
from .venue import Fill, Position


class ExitStatus(enum.StrEnum):
    """How an exit ended: only CLOSED means the whole position is sold."""

    CLOSED = "closed"  # the whole position was sold
    FAILED = "failed"  # gave up; nothing may still land (the position may be partly sold)
    UNRESOLVED = "unresolved"  # the deadline passed while a submission may still land
    REFUSED = "refused"  # an open breaker refused it (only with refuse_when_open); nothing sent


@dataclass(frozen=True, slots=True)
class ExitOutcome:
    """What ``ExitGuard.exit`` returns: how the exit ended, what it sold and how well.

    ``fills`` are this exit's (including landings of earlier submissions it took over);
    ``pending_tx_ids`` are what may still land (UNRESOLVED only: FAILED and CLOSED mean
    nothing may). ``history`` is the state machine's audit trail.
    """

    status: ExitStatus
    position: Position
    guard: str
    venue: str | None
    fills: tuple[Fill, ...]
    filled_size: float
    avg_price: float | None
    attempts: int
    elapsed_s: float
    signal_price: float
    slippage_bps: float | None
    loss_amplification: float | None
    error_class: ErrorClass | None
    reason: str
    pending_tx_ids: tuple[str, ...]
    history: tuple[TransitionRecord, ...]
    deadline_exceeded: bool
    #: What earlier exits of the same position id had already sold when this one started.
    sold_before: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status is ExitStatus.CLOSED

    @property
    def remaining_size(self) -> float:
        """What is still held: the position less everything sold by this and earlier exits."""
        return max(0.0, self.position.size - self.sold_before - self.filled_size)

    @property
    def realized_pnl(self) -> float | None:
        """Profit of the filled part against the entry price (negative is a loss)."""
        if self.avg_price is None:
            return None
        return self.position.pnl_per_unit(self.avg_price) * self.filled_size

    @property
    def realized_loss_pct(self) -> float | None:
        """Loss of the filled part, in percent of its entry value (positive is a loss)."""
        if self.avg_price is None:
            return None
        return -100.0 * self.position.pnl_per_unit(self.avg_price) / self.position.entry_price


def exit_figures(
    position: Position, fills: tuple[Fill, ...], signal_price: float
) -> tuple[float, float | None, float | None, float | None]:
    """(filled size, average price, slippage bps, loss amplification) of a set of fills."""
    filled = sum(fill.size for fill in fills)
    if filled <= 0:
        return 0.0, None, None, None
    avg = sum(fill.size * fill.price for fill in fills) / filled
    direction = 1.0 if position.side == "long" else -1.0
    slippage = direction * (signal_price - avg) / signal_price * 10_000
    loss_at_signal = -position.pnl_per_unit(signal_price)
    amplification = (
        -position.pnl_per_unit(avg) / loss_at_signal if loss_at_signal > 0 else None
    )
    return filled, avg, slippage, amplification
