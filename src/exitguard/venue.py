"""The Venue Protocol a user implements for their chain or exchange, and its value types."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

Side = Literal["long", "short"]


class OrderMode(enum.StrEnum):
    """How an order is priced: a limit at the slippage bound, or market within it."""

    LIMIT = "limit"
    MARKET = "market"


class TxStatus(enum.StrEnum):
    """What a look-up says of a sent transaction: whether it can still land."""

    LANDED = "landed"  # it filled (fully or partly): the Lookup carries the fill
    PENDING = "pending"  # it may still land
    EXPIRED = "expired"  # it can no longer land
    FAILED = "failed"  # it landed as a failed transaction: nothing was sold


def _finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


@dataclass(frozen=True, slots=True)
class Position:
    """What to exit. ``size`` is in base units and always positive; ``side`` says which way."""

    id: str
    symbol: str
    size: float
    entry_price: float
    side: Side = "long"

    def __post_init__(self) -> None:
        _finite("size", self.size)
        _finite("entry_price", self.entry_price)
        if self.size <= 0:
            raise ValueError(f"size must be > 0, got {self.size!r}")
        if self.entry_price <= 0:
            raise ValueError(f"entry_price must be > 0, got {self.entry_price!r}")
        if self.side not in ("long", "short"):
            raise ValueError(f"side must be 'long' or 'short', got {self.side!r}")
        if not self.id:
            raise ValueError("id must be a non-empty string")

    def pnl_per_unit(self, price: float) -> float:
        """Profit per unit when closed at ``price`` (negative is a loss)."""
        sign = 1.0 if self.side == "long" else -1.0
        return sign * (price - self.entry_price)


@dataclass(frozen=True, slots=True)
class ExitOrder:
    """One submission's order: the unfilled remainder at one escalation step."""

    position: Position
    size: float
    mode: OrderMode
    reference_price: float
    max_slippage_bps: int
    attempt: int
    priority_fee: int | None = None
    #: The guard asks that this order can no longer land after this many seconds (a
    #: good-till-time, or a recent blockhash): it is what lets a timed-out exit resubmit soon.
    valid_for: float | None = None

    @property
    def client_order_id(self) -> str:
        """A stable id for idempotent venues (exchange clientOrderId)."""
        return f"{self.position.id}:{self.attempt}"

    @property
    def worst_price(self) -> float:
        """The worst acceptable fill price given the slippage limit."""
        factor = self.max_slippage_bps / 10_000
        if self.position.side == "long":
            return self.reference_price * (1 - factor)
        return self.reference_price * (1 + factor)


@dataclass(frozen=True, slots=True)
class Submission:
    """A sent transaction. ``expires_at`` is the loop time after which it can no longer land."""

    tx_id: str
    order: ExitOrder
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class Fill:
    """What a landed transaction sold: ``size`` in base units at average ``price``."""

    tx_id: str
    size: float
    price: float


@dataclass(frozen=True, slots=True)
class Lookup:
    """A look-up's answer: the status, and the fill when it landed."""

    status: TxStatus
    fill: Fill | None = field(default=None)


@runtime_checkable
class Venue(Protocol):
    """What the guard needs from a chain or exchange.

    Raise exitguard.errors types, or any exception the classifier understands.
    ``submit`` must return as soon as the order is sent and raise only when it certainly was
    not sent (a submit cut off by the guard's timeout is treated as not sent): the waiting
    belongs in ``confirm``, which may hang, because the guard bounds it and reconciles the
    unknown outcome with ``lookup``.
    """

    async def price(self, position: Position) -> float: ...

    async def submit(self, order: ExitOrder) -> Submission: ...

    async def confirm(self, submission: Submission) -> Fill: ...

    async def lookup(self, submission: Submission) -> Lookup: ...
