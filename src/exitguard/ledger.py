"""What one exit sold: the fills, what is left of the position, and the outcome they make.

One ledger serves both ways of recording an exit: ``ExitGuard`` (which fills it from the
venue's answers) and the drop-in tracker ``exitguard.telemetry.instrument`` (which fills it
from what the bot reports). So the dust threshold, the check of a venue's fill against the
order the guard really sent, the outcome's figures and the text of an error are written once.
"""

from __future__ import annotations

from ._validate import is_finite
from .errors import ErrorClass, InvalidVenueResponse
from .outcome import ExitOutcome, ExitStatus, exit_figures
from .state_machine import TransitionRecord
from .venue import Fill, Position

__all__ = ["DUST", "ExitLedger", "check_fill", "describe_error"]

#: A remainder below this share of the position is dust: the position counts as closed.
DUST = 1e-9


def describe_error(error: BaseException | str) -> str:
    """``Type: message`` of an error (never raises, even for an unprintable exception).

    The text is the venue's and may carry secrets: whoever logs or exports it redacts it.
    """
    if isinstance(error, str):
        return error
    try:
        text = str(error)
    except Exception:
        text = "<unprintable>"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def check_fill(
    fill: object, *, tx_ids: tuple[str, ...], order_size: float, remaining: float
) -> Fill:
    """Return ``fill`` if it can be the answer to the submission it is said to answer.

    A venue's fill is believed only if it names that submission (one of ``tx_ids``: the
    venue's id or the client order id the guard gave the order), is a positive finite
    quantity at a positive finite price, and is no larger than the order *the guard sent*
    (not the one the venue echoes back) nor than what is left of the position. Anything
    else raises InvalidVenueResponse: the outcome stays unknown and is reconciled, because
    counting a wrong fill is how a position gets sold twice.
    """
    if not isinstance(fill, Fill):
        raise InvalidVenueResponse(f"expected a Fill, got {type(fill).__name__}")
    size, price = fill.size, fill.price
    if not (is_finite(size) and size > 0):
        raise InvalidVenueResponse(f"fill size {size!r} is not a positive number")
    if not (is_finite(price) and price > 0):
        raise InvalidVenueResponse(f"fill price {price!r} is not a positive number")
    if fill.tx_id not in tx_ids:
        raise InvalidVenueResponse(
            f"the fill names {fill.tx_id!r}, not the submission it answers ({tx_ids[0]!r})"
        )
    if size > order_size * (1 + DUST):
        raise InvalidVenueResponse(f"fill size {size:g} exceeds the order size {order_size:g}")
    if size > remaining + DUST * order_size:
        raise InvalidVenueResponse(
            f"fill size {size:g} exceeds what is left of the position ({remaining:g})"
        )
    return fill


class ExitLedger:
    """The fills of one exit and what is left of its position.

    ``sold_before`` is what earlier exits of the same position id already sold: the guard
    keeps it across exits, so a re-exit sells only what is really still held.

    ``unpriced`` is what was sold at a price nobody reported (only the drop-in tracker has
    such sales: a bot may say "5 sold" without a price). It counts in the filled size and the
    remainder, and an exit with any of it has no average price, slippage or amplification:
    a figure computed from part of the sales would pass for the whole exit's.
    """

    __slots__ = ("fills", "position", "remaining", "sold_before", "unpriced")

    def __init__(self, position: Position, sold_before: float = 0.0) -> None:
        self.position = position
        self.sold_before = sold_before
        self.fills: list[Fill] = []
        self.unpriced = 0.0
        self.remaining = self._left(position.size - sold_before)

    def _left(self, remaining: float) -> float:
        return 0.0 if remaining <= DUST * self.position.size else remaining

    @property
    def filled(self) -> float:
        return sum(fill.size for fill in self.fills) + self.unpriced

    def add(self, fill: Fill) -> None:
        self.fills.append(fill)
        self.remaining = self._left(self.remaining - fill.size)

    def add_unpriced(self, size: float) -> None:
        """``size`` was sold at a price nobody reported."""
        self.unpriced += size
        self.remaining = self._left(self.remaining - size)

    def outcome(
        self,
        status: ExitStatus,
        *,
        guard: str,
        venue: str | None,
        attempts: int,
        elapsed_s: float,
        signal_price: float,
        error_class: ErrorClass | None,
        reason: str,
        pending_tx_ids: tuple[str, ...],
        history: tuple[TransitionRecord, ...],
        deadline_exceeded: bool,
    ) -> ExitOutcome:
        fills = tuple(self.fills)
        filled, avg, slippage, amplification = exit_figures(self.position, fills, signal_price)
        if self.unpriced > 0:
            filled, avg, slippage, amplification = filled + self.unpriced, None, None, None
        return ExitOutcome(
            status=status,
            position=self.position,
            guard=guard,
            venue=venue,
            fills=fills,
            filled_size=filled,
            avg_price=avg,
            attempts=attempts,
            elapsed_s=elapsed_s,
            signal_price=signal_price,
            slippage_bps=slippage,
            loss_amplification=amplification,
            error_class=None if status is ExitStatus.CLOSED else error_class,
            reason=reason,
            pending_tx_ids=pending_tx_ids,
            history=history,
            deadline_exceeded=deadline_exceeded,
            sold_before=self.sold_before,
        )
