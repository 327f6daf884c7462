"""The one owner of everything a guard knows about its positions' submissions.

Selling a position twice needs only one forgotten submission, so one object keeps, per
position id: what the guard's exits of it have sold, every submission that may still land
(in memory and in the pending store, which it keeps in step), the exit now running (at most
one per position), background reconciliation after an exit ended UNRESOLVED, and the
look-up failures of each transaction. Nothing else in the guard holds a copy.

Rules it enforces:
- a submission is tracked *before* it is sent and stays tracked until a look-up or a
  confirmation proves it landed (its fill is counted once) or can never land;
- giving up polling, ``aclose()`` or a restart never make a submission forgettable: the
  next exit of the position reconciles it before sending anything;
- a fill is counted only if it names the submission, fits the order the guard sent and what
  is left of the position (``ledger.check_fill``).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from . import logline
from .calls import VenueCalls
from .errors import ErrorClass
from .faults import FaultCounts, FaultSource
from .hooks import ExitInfo, SafeHooks
from .ledger import DUST, check_fill, describe_error
from .pending import PendingRecord, PendingStore, SoldRecord
from .redaction import get_logger
from .venue import Fill, Lookup, Submission, TxStatus, Venue

__all__ = ["TIME_EPSILON", "Pending", "PositionBook", "PositionEntry"]

#: Time left below this is none: asyncio runs a timer due within its clock resolution at
#: once, so waiting for less would spin without time passing (under a virtual clock, forever).
TIME_EPSILON = 1e-6

_log = get_logger("exitguard.guard")


@dataclass(slots=True)
class Pending:
    """One submission that may still land, with the order the guard itself sent."""

    submission: Submission
    cause: ErrorClass
    route: str
    info: ExitInfo
    lookup_failures: int = 0
    #: Listed in an UNRESOLVED outcome (the unresolved gauge counts it until it resolves).
    reported: bool = False

    @property
    def tx_ids(self) -> tuple[str, ...]:
        """The ids a fill may name: the venue's, and the client order id the guard gave."""
        client_id = self.submission.order.client_order_id
        tx_id = self.submission.tx_id
        return (tx_id,) if tx_id == client_id else (tx_id, client_id)


class PositionEntry:
    """What the guard knows of one position id."""

    __slots__ = ("active", "attempts", "background", "counted", "pending", "position_id",
                 "resumed", "size", "sold")

    def __init__(self, position_id: str) -> None:
        self.position_id = position_id
        self.size: float | None = None  # the position's size, once an exit or record told it
        self.sold = 0.0
        self.counted: set[str] = set()  # ids of the submissions whose fills are in ``sold``
        self.attempts = 0  # numbering continues across exits: client order ids never repeat
        self.pending: dict[str, Pending] = {}
        self.active: asyncio.Future[object] | None = None
        self.background: asyncio.Task[None] | None = None
        self.resumed = False  # its pending records came from an earlier process

    def remaining(self, size: float) -> float:
        left = size - self.sold
        return 0.0 if left <= DUST * size else left


class PositionBook:
    """Per-guard positions: sold quantities, submissions that may still land, running exits
    and background reconciliation. ``venue_of(route)`` maps a route name to its venue."""

    def __init__(
        self,
        *,
        guard: str,
        store: PendingStore | None,
        faults: FaultCounts,
        calls: VenueCalls,
        venue_of: Callable[[str], Venue],
        hooks: Callable[[], SafeHooks | None],
        lookup_limit: Callable[[], float],
        reconcile_interval: float,
        max_reconcile_interval: float,
        background_for: float,
    ) -> None:
        self.guard = guard
        self.store = store
        self.store_error: str | None = None
        self._faults = faults
        self._calls = calls
        self._venue_of = venue_of
        self._hooks = hooks
        self._lookup_limit = lookup_limit
        self.reconcile_interval = reconcile_interval
        self.max_reconcile_interval = max_reconcile_interval
        self.background_for = background_for
        self._entries: dict[str, PositionEntry] = {}
        self._loaded = store is None
        self.background: set[asyncio.Task[None]] = set()
        self.late_fills: deque[tuple[ExitInfo, Fill]] = deque(maxlen=1000)

    # -- entries --------------------------------------------------------------------------

    def entry(self, position_id: str) -> PositionEntry:
        if not self._loaded:
            self.load()
        entry = self._entries.get(position_id)
        if entry is None:
            entry = self._entries[position_id] = PositionEntry(position_id)
        return entry

    def mark_loaded(self) -> None:
        """Go on without the store's records (it could not be read; that was reported)."""
        self._loaded = True

    def entries(self) -> Iterator[PositionEntry]:
        return iter(tuple(self._entries.values()))

    def pending_tx_ids(self) -> tuple[str, ...]:
        if not self._loaded:
            self.load()
        return tuple(tx for entry in self._entries.values() for tx in entry.pending)

    def load(self) -> int:
        """Take over what the store holds for this guard (an earlier process's submissions
        and sold quantities). Raises what the store raises; returns how many submissions it
        took over."""
        self._loaded = True
        if self.store is None:
            return 0
        records = self.store.load()
        sold = self.store.load_sold()
        for item in sold:
            if item.guard == self.guard:
                entry = self._entries.get(item.position_id) or PositionEntry(item.position_id)
                self._entries[item.position_id] = entry
                entry.sold = max(entry.sold, item.sold)
        mine = [r for r in records if r.guard == self.guard]
        # A submit that answered is recorded under its id before its client-id record is
        # removed: after a kill in between, both exist for one order; keep the real one.
        real = {r.order().client_order_id for r in mine if r.tx_id != r.order().client_order_id}
        taken = 0
        for record in mine:
            order = record.order()
            if record.tx_id == order.client_order_id and record.tx_id in real:
                self._store(functools.partial(self._store_remove, record.tx_id))
                continue
            entry = self._entries.get(record.position_id) or PositionEntry(record.position_id)
            self._entries[record.position_id] = entry
            if record.tx_id in entry.pending:
                continue
            entry.size = record.position_size
            entry.attempts = max(entry.attempts, record.attempt)
            entry.resumed = True
            info = ExitInfo(self.guard, record.position(), record.reference_price,
                            "resumed after restart", 0.0, 0.0, record.sent_at)
            submission = Submission(record.tx_id, order, None, dict(record.venue_data))
            entry.pending[record.tx_id] = Pending(submission, record.error_class(),
                                                  record.venue, info)
            taken += 1
        return taken

    # -- the store, kept in step --------------------------------------------------------------

    def _store(self, write: Callable[[], None]) -> None:
        """A store that fails never breaks an exit; the failure is counted, logged once and
        kept (``store_error`` stays set: a record it lost is not restored by later writes)."""
        try:
            write()
        except Exception as exc:
            self._faults.add(FaultSource.PENDING_STORE)
            if self.store_error is None:
                _log.error("pending store write failed: %s; pending ids are kept in memory"
                           " only", describe_error(exc))
            self.store_error = describe_error(exc)

    def _store_remove(self, tx_id: str) -> None:
        assert self.store is not None
        self.store.remove(tx_id)

    def track(self, entry: PositionEntry, pending: Pending) -> None:
        """Record a submission that may land: memory first, then the store (before sending)."""
        entry.pending[pending.submission.tx_id] = pending
        store = self.store
        if store is not None:
            submission = pending.submission
            record = PendingRecord.of(
                submission.tx_id, submission.order, guard=self.guard, venue=pending.route,
                cause=pending.cause, sent_at=time.time(),
                venue_data=dict(submission.venue_data),
            )
            self._store(lambda: store.add(record))

    def replace(self, entry: PositionEntry, old_tx_id: str, pending: Pending) -> None:
        """The venue answered with its own id: track it, then drop the client-id record."""
        self.track(entry, pending)
        if old_tx_id != pending.submission.tx_id:
            self.untrack(entry, old_tx_id)

    def untrack(self, entry: PositionEntry, tx_id: str) -> Pending | None:
        pending = entry.pending.pop(tx_id, None)
        if pending is not None and self.store is not None:
            self._store(lambda: self._store_remove(tx_id))
        return pending

    def count(self, entry: PositionEntry, pending: Pending, fill: Fill) -> None:
        """A fill of a tracked submission: add it to what the position sold, durably."""
        entry.sold += fill.size
        entry.counted.add(pending.submission.tx_id)
        store = self.store
        if store is not None:
            record = SoldRecord(self.guard, entry.position_id, entry.sold, time.time())
            self._store(lambda: store.set_sold(record))
        self.untrack(entry, pending.submission.tx_id)

    def checked_fill(self, entry: PositionEntry, pending: Pending, fill: object) -> Fill:
        """``fill`` if it may be counted for ``pending`` (else InvalidVenueResponse)."""
        order = pending.submission.order
        return check_fill(fill, tx_ids=pending.tx_ids, order_size=order.size,
                          remaining=entry.remaining(order.position.size))

    # -- look-ups ---------------------------------------------------------------------------

    async def lookup(self, entry: PositionEntry, pending: Pending, limit: float) -> Lookup | None:
        """Ask the venue about ``pending``; None when the answer is unusable (counted, logged
        once per transaction): the submission stays unknown."""
        submission = pending.submission
        venue = self._venue_of(pending.route)
        try:
            lookup = await self._calls.call(lambda: venue.lookup(submission), limit, "lookup")
        except Exception as exc:
            self._bad_lookup(pending, f"failed: {describe_error(exc)}")
            return None
        if not isinstance(lookup, Lookup) or not isinstance(lookup.status, TxStatus):
            self._bad_lookup(pending, f"returned garbage ({type(lookup).__name__})")
            return None
        if lookup.status is TxStatus.LANDED:
            try:
                self.checked_fill(entry, pending, lookup.fill)
            except Exception as exc:
                self._bad_lookup(pending, f"answered an impossible fill: {describe_error(exc)};"
                                 " still unknown")
                return None
        return lookup

    def _bad_lookup(self, pending: Pending, why: str) -> None:
        """Counted every time; logged at WARNING once per transaction (a look-up that keeps
        failing is polled for minutes), then at DEBUG."""
        self._faults.add(FaultSource.LOOKUP)
        pending.lookup_failures += 1
        (_log.warning if pending.lookup_failures == 1 else _log.debug)(
            "lookup of %s %s", pending.submission.tx_id, why)

    async def poll(
        self,
        entry: PositionEntry,
        until: float,
        answer: Callable[[Pending, Lookup], None],
    ) -> None:
        """Look up every pending submission of ``entry`` until none is left or loop time
        ``until`` passes, backing off between rounds; ``answer`` handles each answer."""
        loop = asyncio.get_running_loop()
        interval = self.reconcile_interval
        while entry.pending:
            for pending in tuple(entry.pending.values()):
                left = until - loop.time()
                if left <= TIME_EPSILON:
                    return
                if pending.submission.tx_id not in entry.pending:
                    continue
                lookup = await self.lookup(entry, pending, min(self._lookup_limit(), left))
                if lookup is not None:
                    answer(pending, lookup)
            left = until - loop.time()
            if not entry.pending or left <= TIME_EPSILON:
                return
            await asyncio.sleep(min(interval, left))
            interval = min(interval * 2, self.max_reconcile_interval)

    # -- after an exit: background reconciliation --------------------------------------------

    def reconcile_in_background(self, entry: PositionEntry, *, delay: float | None = None) -> None:
        """Poll ``entry``'s submissions after its exit ended, reporting late landings."""
        if entry.background is not None or not entry.pending:
            return
        task = asyncio.get_running_loop().create_task(
            self._background(entry, self.reconcile_interval if delay is None else delay),
            name=f"exitguard-reconcile-{entry.position_id}",
        )
        entry.background = task
        self.background.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self.background.discard(task)
            if entry.background is task:
                entry.background = None

        task.add_done_callback(done)

    def stop_background(self, entry: PositionEntry) -> None:
        """A new exit of the position reconciles in the foreground from now on."""
        task, entry.background = entry.background, None
        if task is not None:
            task.cancel()

    async def _background(self, entry: PositionEntry, delay: float) -> None:
        loop = asyncio.get_running_loop()
        # The exit has just looked these up: give the venue a moment before asking again.
        await asyncio.sleep(delay)
        await self.poll(entry, loop.time() + self.background_for, self._resolved_late)
        if entry.pending:
            _log.error(
                "stopped polling %s of position %s after %gs; they stay tracked and the next"
                " exit of the position reconciles them before sending anything",
                ", ".join(entry.pending), entry.position_id, self.background_for,
            )

    def _resolved_late(self, pending: Pending, lookup: Lookup) -> None:
        if lookup.status is TxStatus.PENDING:
            return
        entry = self._entries.get(pending.info.position.id)
        if entry is None or entry.pending.get(pending.submission.tx_id) is not pending:
            return
        hooks = self._hooks()
        tx_id = pending.submission.tx_id
        if lookup.status is TxStatus.LANDED and lookup.fill is not None:
            fill = lookup.fill
            self.count(entry, pending, fill)
            self.late_fills.append((pending.info, fill))
            with logline.hearing() as heard:  # one event, one line
                if hooks is not None:
                    hooks.late_fill(pending.info, fill)
            if not heard.reported:
                _log.error("late fill: %s of position %s landed after its exit ended"
                           " (%g @ %g)", tx_id, entry.position_id, fill.size, fill.price)
        else:
            self.untrack(entry, tx_id)
        if hooks is not None and pending.reported:
            hooks.pending_resolved(pending.info, tx_id, lookup.status)

    def hand_over(self, entry: PositionEntry) -> None:
        """A new exit takes the position's submissions over: the exit that reported them
        unresolved no longer owns them (its gauge comes down; the new exit reports them
        again if they are still unknown when it ends)."""
        hooks = self._hooks()
        for pending in entry.pending.values():
            if pending.reported:
                pending.reported = False
                if hooks is not None:
                    hooks.pending_resolved(pending.info, pending.submission.tx_id,
                                           TxStatus.PENDING)
