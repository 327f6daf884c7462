"""The Venue Protocol a user implements for their chain or exchange, and its value types."""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Mapping
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
        """The id this order is known by before the venue answers (exchange clientOrderId).

        Deterministic in (position id, attempt, size): resending the same order after a
        definite "not sent" reuses it, so an idempotent venue cannot fill it twice; a new
        attempt or remainder gets a new one. 26 characters of ``[a-z0-9]``, which every
        exchange's client-id field accepts (Binance <= 36, OKX alphanumeric <= 32).
        """
        key = f"{self.position.id}\x1f{self.attempt}\x1f{self.size!r}".encode()
        return "eg" + hashlib.blake2b(key, digest_size=12).hexdigest()

    @property
    def worst_price(self) -> float:
        """The worst acceptable fill price given the slippage limit."""
        factor = self.max_slippage_bps / 10_000
        if self.position.side == "long":
            return self.reference_price * (1 - factor)
        return self.reference_price * (1 + factor)


def _tx_id(owner: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{owner}.tx_id must be a non-empty string, got {value!r}")


@dataclass(frozen=True, slots=True)
class Submission:
    """A transaction that may land.

    ``expires_at`` is the loop time after which it can no longer land (None: unknown).
    ``venue_data`` is what the venue needs to reconcile or rebroadcast it after a restart
    (a Solana blockhash, its last valid block height, the signed bytes): the guard stores
    it in the pending store with the submission, as strings.

    A submission whose ``tx_id`` equals ``order.client_order_id`` is one whose submit did
    not answer: the guard knows only the id it gave the order, and ``lookup`` must find the
    order by that id (see ``Venue``).
    """

    tx_id: str
    order: ExitOrder
    expires_at: float | None = None
    venue_data: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _tx_id("Submission", self.tx_id)

    @property
    def known_only_by_client_id(self) -> bool:
        return self.tx_id == self.order.client_order_id


@dataclass(frozen=True, slots=True)
class Fill:
    """What one submission sold: ``tx_id`` names the submission it answers (its ``tx_id``
    or its order's ``client_order_id``); ``size`` > 0 in base units, ``price`` > 0."""

    tx_id: str
    size: float
    price: float

    def __post_init__(self) -> None:
        _tx_id("Fill", self.tx_id)
        for name in ("size", "price"):
            value = getattr(self, name)
            _finite(f"Fill.{name}", value)
            if value <= 0:
                raise ValueError(f"Fill.{name} must be > 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class Lookup:
    """A look-up's answer: the status, and the fill when it landed."""

    status: TxStatus
    fill: Fill | None = field(default=None)


@runtime_checkable
class Venue(Protocol):
    """What the guard needs from a chain or exchange: the submit contract.

    - ``submit(order)`` sends the order and returns as soon as it is sent. Give the order
      ``order.client_order_id`` where the venue takes one (it is what makes a resend
      idempotent and what ``lookup`` finds an unanswered order by).
    - **Unless ``submit`` proves nothing was sent, the order may have gone out.** A submit
      that raises a timeout, a network error, anything unclassified, returns garbage, or
      is cut off by the guard's own timeout is an *unknown outcome*: the guard tracks it as
      ``Submission(order.client_order_id, order)`` and reconciles it with ``lookup`` before
      anything else is sent. Only a *definite rejection* means "not sent": raise
      ``exitguard.errors.OrderNotSent`` (retried as the same order), or a rejection of the
      order itself (``SlippageExceeded``, ``TxExpired``, ``InsufficientBalance``,
      ``InvalidAccount``).
    - ``confirm(submission)`` waits for the outcome and may hang: the guard bounds it and
      meanwhile asks ``lookup``. Its ``Fill`` must name that submission.
    - ``lookup(submission)`` says LANDED (with the fill), PENDING (may still land), EXPIRED
      or FAILED (can never land). For a submission known only by its client order id, it
      looks the order up by that id; EXPIRED/FAILED only when the venue is sure no order
      with that id exists or can appear (a venue that cannot be sure says PENDING, and the
      exit ends UNRESOLVED rather than risk selling twice).
    - ``price(position)`` quotes; a failing quote never blocks an exit.

    Raise exitguard.errors types, or exceptions the classifier understands. A venue whose
    transaction id exists before sending (a Solana signature) implements ``TwoPhaseVenue``.
    """

    async def price(self, position: Position) -> float: ...

    async def submit(self, order: ExitOrder) -> Submission: ...

    async def confirm(self, submission: Submission) -> Fill: ...

    async def lookup(self, submission: Submission) -> Lookup: ...


@runtime_checkable
class TwoPhaseVenue(Venue, Protocol):
    """A venue that can build and sign an order before sending it (Solana, any chain).

    The guard calls ``prepare`` (nothing is sent; raising means nothing was sent), records
    the returned submission (memory and pending store, ``venue_data`` included) as "may
    land", and only then calls ``broadcast``. Anything but a definite rejection from
    ``broadcast`` leaves the submission tracked by its real id. ``broadcast`` may be called
    again with the same submission (a rebroadcast of the same signed bytes, never a new
    signature). ``submit`` stays for callers outside the guard.
    """

    async def prepare(self, order: ExitOrder) -> Submission: ...

    async def broadcast(self, submission: Submission) -> None: ...
