"""Helpers for testing code that uses exitguard (and for exitguard's own tests).

``run_virtual`` runs a coroutine in virtual time; ``ScriptedVenue`` is an in-memory venue
whose every submission follows a ``TxPlan`` (send failure, slow or hanging confirmation,
late landing, expiry, partial fill) and which keeps the ground truth, so a test can assert
what was really sold and that nothing was sent while an earlier order could still land.
``RecordingHooks`` captures every hook event in order. ``FaultyVenue`` is a ScriptedVenue whose
answers can be replaced by an exception or garbage, to check what your code does when a venue
misbehaves in ways no plan describes. ``FakeClock`` is a clock you move by hand, for the parts
that take a ``clock=`` (CircuitBreaker, ExitDeadline, ExitAttemptTracker, ...).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import InsufficientBalance, InvalidAccount, SlippageExceeded, TxExpired
from .events import Event, ExitEvent, HookEvent, event_name
from .venue import ExitOrder, Fill, Lookup, Position, Submission, TxStatus
from .vtime import VirtualTimeLoop, run_virtual

__all__ = [
    "FakeClock",
    "FaultyVenue",
    "RecordingHooks",
    "ScriptedVenue",
    "SentTx",
    "TxPlan",
    "VirtualTimeLoop",
    "run_virtual",
    "unchecked_fill",
]


#: What a consistent venue's look-up says of a transaction whose confirm raised one of these.
_DID_NOT_LAND_STATUS: dict[type[BaseException], TxStatus] = {
    TxExpired: TxStatus.EXPIRED, SlippageExceeded: TxStatus.FAILED,
    InsufficientBalance: TxStatus.FAILED, InvalidAccount: TxStatus.FAILED,
}


@dataclass(frozen=True, slots=True)
class TxPlan:
    """What happens to one submission. Times are seconds after it was sent.

    ``lands_after`` None means it never lands; a landing at or after ``expires_after`` cannot
    happen (the transaction expired first). ``confirm`` raises ``confirm_error`` at
    ``confirm_after`` if one is planned, else answers when the transaction lands (the fill)
    or expires (TxExpired), like a venue that watches it. ``hang`` makes ``confirm`` never
    answer.
    """

    send_error: BaseException | None = None
    confirm_after: float = 0.05
    confirm_error: BaseException | None = None
    hang: bool = False
    lands_after: float | None = 0.05
    expires_after: float = 10.0
    fill_fraction: float = 1.0
    price: float | None = None
    lookup_error: BaseException | None = None
    #: ``send_error`` is raised *after* the order went out (an RPC that broadcast and then
    #: timed out, an exchange that accepted and dropped the connection).
    sent_anyway: bool = False


def unchecked_fill(tx_id: str, size: float, price: float) -> Fill:
    """A Fill built without its own validation: a plan may script a lying venue (NaN
    price, zero size) to test that the guard does not believe it."""
    try:
        return Fill(tx_id, size, price)
    except ValueError:
        fill = object.__new__(Fill)
        for name, value in (("tx_id", tx_id), ("size", size), ("price", price)):
            object.__setattr__(fill, name, value)
        return fill


@dataclass(slots=True)
class SentTx:
    tx_id: str
    order: ExitOrder
    plan: TxPlan
    sent_at: float

    @property
    def lands_at(self) -> float | None:
        if self.plan.lands_after is None or self.plan.lands_after >= self.plan.expires_after:
            return None
        return self.sent_at + self.plan.lands_after

    @property
    def expires_at(self) -> float:
        return self.sent_at + self.plan.expires_after

    def landed_by(self, now: float) -> bool:
        lands_at = self.lands_at
        return lands_at is not None and now >= lands_at

    def live_at(self, now: float) -> bool:
        """It has not landed yet but will: sending more now risks selling twice."""
        lands_at = self.lands_at
        return lands_at is not None and now < lands_at


class ScriptedVenue:
    """An in-memory venue that follows a plan per submission and keeps the ground truth."""

    def __init__(
        self,
        plans: Sequence[TxPlan] | Callable[[int], TxPlan] = (),
        *,
        price: float | Callable[[float], float] = 100.0,
        default: TxPlan | None = None,
        name: str = "scripted",
        price_error: BaseException | None = None,
    ) -> None:
        self._plans = plans
        self._price = price
        self._default = default or TxPlan()
        self.name = name
        self.price_error = price_error
        self.sent: list[SentTx] = []
        # Indexes over ``sent`` (thousands of concurrent exits look orders up constantly):
        # by venue id, by the first order sent under a client order id, by position. Kept up
        # to date lazily, so a subclass may append to ``sent`` itself.
        self._indexed = 0
        self._by_tx_id: dict[str, SentTx] = {}
        self._by_client_id: dict[str, SentTx] = {}
        self._by_position: dict[str, list[SentTx]] = {}
        self.submit_calls = 0
        self.violations: list[str] = []
        self._ids = itertools.count(1)

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def market_price(self, at: float | None = None) -> float:
        when = self._now() if at is None else at
        return self._price(when) if callable(self._price) else float(self._price)

    def _plan(self, index: int) -> TxPlan:
        if callable(self._plans):
            return self._plans(index)
        return self._plans[index] if index < len(self._plans) else self._default

    async def price(self, position: Position) -> float:
        if self.price_error is not None:
            raise self.price_error
        return self.market_price()

    async def submit(self, order: ExitOrder) -> Submission:
        index = self.submit_calls
        self.submit_calls += 1
        plan = self._plan(index)
        now = self._now()
        live = [tx.tx_id for tx in self._of(order.position.id) if tx.live_at(now)]
        if plan.send_error is not None and not plan.sent_anyway:
            raise plan.send_error
        if live:
            self.violations.append(
                f"{order.position.id} attempt {order.attempt}: sent while {live} could still land"
            )
        tx = SentTx(f"tx{next(self._ids)}", order, plan, now)
        self.sent.append(tx)
        if plan.send_error is not None:
            raise plan.send_error
        return Submission(tx.tx_id, order, tx.expires_at)

    def _find(self, submission: Submission) -> SentTx | None:
        """By the venue's id, or (for an order whose submit did not answer) by the client
        order id the guard gave it."""
        self._index()
        return (self._by_tx_id.get(submission.tx_id)
                or self._by_client_id.get(submission.tx_id))

    def _index(self) -> None:
        for tx in self.sent[self._indexed:]:
            self._by_tx_id.setdefault(tx.tx_id, tx)
            self._by_client_id.setdefault(tx.order.client_order_id, tx)
            self._by_position.setdefault(tx.order.position.id, []).append(tx)
        self._indexed = len(self.sent)

    def _tx(self, submission: Submission) -> SentTx:
        tx = self._find(submission)
        if tx is None:
            raise LookupError(f"no order {submission.tx_id!r}")
        return tx

    def _fill(self, tx: SentTx, named: str | None = None) -> Fill:
        lands_at = tx.lands_at
        assert lands_at is not None
        price = tx.plan.price if tx.plan.price is not None else self.market_price(lands_at)
        return unchecked_fill(named or tx.tx_id, tx.order.size * tx.plan.fill_fraction, price)

    async def confirm(self, submission: Submission) -> Fill:
        """Answers at ``confirm_after`` with the planned error, else when the transaction
        lands (with the fill) or expires (TxExpired), whichever the truth says."""
        tx = self._tx(submission)
        if tx.plan.hang:
            await asyncio.Event().wait()
        await asyncio.sleep(max(0.0, tx.sent_at + tx.plan.confirm_after - self._now()))
        if tx.plan.confirm_error is not None:
            raise tx.plan.confirm_error
        lands_at = tx.lands_at
        await asyncio.sleep(max(0.0, (lands_at if lands_at is not None else tx.expires_at)
                                - self._now()))
        if lands_at is not None:
            return self._fill(tx)
        raise TxExpired(f"{tx.tx_id} expired")

    async def lookup(self, submission: Submission) -> Lookup:
        tx = self._find(submission)
        if tx is None:  # this venue knows every order it accepted: it never got this one
            return Lookup(TxStatus.EXPIRED)
        if tx.plan.lookup_error is not None:
            raise tx.plan.lookup_error
        now = self._now()
        if tx.landed_by(now):
            return Lookup(TxStatus.LANDED, self._fill(tx, submission.tx_id))
        error = tx.plan.confirm_error
        failed = None if error is None else _DID_NOT_LAND_STATUS.get(type(error))
        if failed is not None and tx.lands_at is None and now >= tx.sent_at + tx.plan.confirm_after:
            return Lookup(failed)  # what confirm said (it expired, or it failed on chain)
        if now >= tx.expires_at:
            return Lookup(TxStatus.EXPIRED)
        return Lookup(TxStatus.PENDING)

    # -- ground truth -----------------------------------------------------------------

    def sold_size(self, at: float | None = None, position_id: str | None = None) -> float:
        """What has really been sold by ``at`` (default: now)."""
        now = self._now() if at is None else at
        return sum(
            self._fill(tx).size for tx in self._of(position_id) if tx.landed_by(now)
        )

    def sold_eventually(self, position_id: str | None = None) -> float:
        """What will have been sold once every submission has resolved."""
        return sum(self._fill(tx).size for tx in self._of(position_id) if tx.lands_at is not None)

    def _of(self, position_id: str | None) -> list[SentTx]:
        if position_id is None:
            return self.sent
        self._index()
        return self._by_position.get(position_id, [])


def event_payload(event: object) -> Any:
    """What ``RecordingHooks`` keeps of an event: the core's records as they are; of an
    ``Event``, its fields but the guard and the exit (one field: itself; several: a tuple)."""
    if not isinstance(event, Event):
        return event
    values = tuple(getattr(event, f.name) for f in dataclasses.fields(event)  # type: ignore[arg-type]
                   if f.name not in ("exit", "guard"))
    return values[0] if len(values) == 1 else values


@dataclass
class RecordingHooks:
    """A hook recording every event, in order, as (``events.event_name``, payload) pairs:
    ``("exit_started", ExitInfo)``, ``("late_fill", Fill)``, ``("retry", (error_class,
    next_attempt))``, ``("exit_finished", ExitOutcome)``, ... (see ``event_payload``)."""

    events: list[tuple[str, Any]] = field(default_factory=list)

    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    def record(self, event: ExitEvent | HookEvent) -> None:
        self.events.append((event_name(type(event)), event_payload(event)))

    def __call__(self, event: HookEvent) -> Callable[[ExitEvent], None]:
        self.record(event)
        return self.record  # also each exit's observer

    def payloads(self, name: str) -> list[Any]:
        """The payloads of the ``name`` events (e.g. ``"late_fill"``), in order."""
        return [payload for event, payload in self.events if event == name]


class FakeClock:
    """A clock that stands still until told to move: pass it as ``clock=`` and call
    :meth:`advance` (or set :attr:`now`) to make time pass, without sleeping or an event loop."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self.now += seconds


class FaultyVenue(ScriptedVenue):
    """A ScriptedVenue whose answers can be replaced, for faults a ``TxPlan`` cannot describe.

    ``raises[method]`` (``"price"``, ``"submit"``, ``"confirm"`` or ``"lookup"``) is raised
    instead of calling the method, once ``raise_after`` calls to that method went through;
    ``garbage[method]`` turns the truthful answer into whatever it returns. The ground truth
    (``sent``, ``sold_eventually``, ``violations``) stays that of the ScriptedVenue underneath:
    a submission whose answer was spoiled was still sent. ``calls`` counts the calls per method.
    """

    def __init__(
        self,
        plans: Sequence[TxPlan] | Callable[[int], TxPlan] = (),
        *,
        raises: dict[str, BaseException] | None = None,
        garbage: dict[str, Callable[[Any], Any]] | None = None,
        raise_after: int = 0,
        **options: Any,
    ) -> None:
        super().__init__(plans, **options)
        self.raises = raises or {}
        self.garbage = garbage or {}
        self.raise_after = raise_after
        self.calls: dict[str, int] = {}

    def _fault(self, method: str) -> None:
        count = self.calls.get(method, 0)
        self.calls[method] = count + 1
        error = self.raises.get(method)
        if error is not None and count >= self.raise_after:
            raise error

    def _spoil(self, method: str, answer: Any) -> Any:
        spoil = self.garbage.get(method)
        return spoil(answer) if spoil is not None else answer

    async def price(self, position: Position) -> float:
        self._fault("price")
        answer: float = self._spoil("price", await super().price(position))
        return answer

    async def submit(self, order: ExitOrder) -> Submission:
        self._fault("submit")
        answer: Submission = self._spoil("submit", await super().submit(order))
        return answer

    async def confirm(self, submission: Submission) -> Fill:
        self._fault("confirm")
        answer: Fill = self._spoil("confirm", await super().confirm(submission))
        return answer

    async def lookup(self, submission: Submission) -> Lookup:
        self._fault("lookup")
        answer: Lookup = self._spoil("lookup", await super().lookup(submission))
        return answer
