"""One exit, from ``guard.exit`` to its outcome: the submission loop and its bounds.

The loop, top to bottom (``ExitRun._run``):

1. anything of the position that may still land (this exit's or an earlier one's) is
   reconciled first, within the deadline; if it is still unknown at the deadline the exit
   ends UNRESOLVED (it stays tracked and is polled in the background);
2. closed when nothing is left; FAILED when a permanent error, the attempt bound, the
   partial-fill bound or the submission deadline says stop;
3. otherwise wait the backoff and make one attempt: quote, build the order for the
   remainder at the ladder's step, track it *before* sending, send, and wait for the
   confirmation while asking ``lookup`` if it hangs.

Counting: a sent order that fails or may have landed spends one of ``max_attempts``; a
definite "not sent" (``OrderNotSent``) spends none (bounded by the deadline and backoff);
partial fills are bounded by ``max_partial_fills`` and escalate the ladder.

Why one module of about 650 lines: it is one state machine (the loop, one attempt, its
send / broadcast / confirm, and the reconciliation that settles each attempt); split, each
part would reach into the others' run state. Bookkeeping lives elsewhere: ``ledger.py``
(fills, outcome), ``book.py`` (what may still land), ``calls.py`` (bounded venue calls).
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol

from ._validate import is_finite
from .book import TIME_EPSILON, Pending, PositionBook, PositionEntry
from .breaker import CircuitBreaker, Permit
from .calls import VenueCalls
from .clock import wall_time
from .deadline import ExitDeadline
from .errors import Classifier, ErrorClass, ExitError, InvalidVenueResponse
from .faults import FaultCounts, FaultSource
from .hooks import AttemptInfo, AttemptReport, AttemptResult, ExitInfo, SafeHooks, SafeObserver
from .ledger import ExitLedger, describe_error
from .outcome import ExitOutcome, ExitStatus
from .policy import EscalationLadder, RetryPolicy
from .redaction import get_logger
from .state_machine import ExitState, ExitStateMachine
from .venue import ExitOrder, Fill, Lookup, Position, Submission, TwoPhaseVenue, TxStatus, Venue

__all__ = ["ExitRun", "GuardSettings", "Route"]


@dataclass(slots=True)
class Route:
    """A venue and the breaker that guards it."""

    venue: Venue
    breaker: CircuitBreaker
    name: str


class GuardSettings(Protocol):
    """What an exit reads of its guard (``ExitGuard`` implements it): a Protocol, so this
    module does not import guard.py, which imports it."""

    name: str
    policy: RetryPolicy
    deadline: float
    ladder: EscalationLadder
    classify: Classifier
    faults: FaultCounts
    calls: VenueCalls
    book: PositionBook
    reconcile_interval: float
    max_reconcile_interval: float
    in_flight: int

    @property
    def hooks(self) -> SafeHooks | None: ...

    def pick_route(self) -> tuple[Route, Permit] | None: ...


_log = get_logger("exitguard.guard")

#: Errors after which a *sent* transaction certainly did not land.
DID_NOT_LAND = frozenset(
    {ErrorClass.TX_EXPIRED, ErrorClass.SLIPPAGE_EXCEEDED, ErrorClass.INSUFFICIENT_BALANCE,
     ErrorClass.INVALID_ACCOUNT}
)
#: Submit errors that prove the order never left: a definite rejection.
NOT_SENT = DID_NOT_LAND | {ErrorClass.NOT_SENT}


class ExitRun:
    """The state of one exit. Lives only as long as the exit."""

    # Slots: thousands may be in flight at once.
    __slots__ = (
        "attempt_limit", "attempts", "deadline", "deadline_hit", "entry", "failed_attempts",
        "guard", "info", "ladder_failures", "last_attempt_at", "last_error",
        "last_error_class", "last_price", "ledger", "loop", "observer", "outcome",
        "partial_fills", "permit", "policy", "position", "quote_failed", "reason", "resend",
        "reserve",
        "route", "send_failures", "settled", "signal_price", "sm", "step_index", "stop_reason",
        "submission_deadline", "tries_at_step",
    )

    def __init__(self, guard: GuardSettings, entry: PositionEntry, position: Position,
                 signal_price: float, reason: str) -> None:
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.guard = guard
        self.entry = entry
        policy = self.policy = guard.policy
        self.position = position
        self.signal_price = signal_price
        self.reason = reason
        started = loop.time()
        self.deadline = ExitDeadline(guard.deadline, started_at=started, clock=loop.time)
        budget = min(policy.total_timeout, guard.deadline)
        self.submission_deadline = started + budget
        # Every attempt gets its share of the budget: one hung attempt must not eat it all.
        self.attempt_limit = min(policy.attempt_timeout,
                                 max(policy.min_attempt_time, budget / policy.max_attempts))
        # Keep a little of the deadline for one reconciliation look-up after a timeout.
        self.reserve = min(1.0, 0.1 * guard.deadline)
        self.sm = ExitStateMachine(self.deadline, clock=loop.time)
        self.info = ExitInfo(
            guard.name, position, signal_price, reason, guard.deadline, started, wall_time()
        )
        self.observer: SafeObserver | None = None
        entry.size = position.size
        self.ledger = ExitLedger(position, entry.sold)
        self.attempts = 0
        self.failed_attempts = 0
        self.send_failures = 0
        self.partial_fills = 0
        self.ladder_failures = 0  # failures that say the order itself was inadequate
        self.step_index = 0
        self.tries_at_step: dict[int, int] = {}
        self.last_error_class: ErrorClass | None = None
        self.last_error: str | None = None
        self.stop_reason: str | None = None
        self.deadline_hit = False
        self.last_attempt_at: float | None = None
        self.last_price: float | None = None
        self.route: Route | None = None
        self.permit: Permit | None = None
        self.settled = False  # the breaker was told the verdict (or the permit released)
        self.quote_failed = False
        self.outcome: ExitOutcome | None = None
        self.resend: ExitOrder | None = None  # an order the venue proved it never sent

    # -- helpers --------------------------------------------------------------------------

    def _to(self, state: ExitState, detail: str = "", tx_id: str | None = None) -> None:
        if self.sm.current is state and state is ExitState.RECONCILING:
            return
        record = self.sm.transition(state, detail=detail, tx_id=tx_id)
        if self.observer is not None:
            self.observer.transition(record)

    def _report(self, attempt: AttemptInfo, result: AttemptResult, started: float, *,
                tx_id: str | None = None, fill: Fill | None = None,
                error_class: ErrorClass | None = None, error: BaseException | None = None
                ) -> None:
        if self.observer is not None:
            self.observer.attempt_finished(AttemptReport(
                attempt, result, tx_id, fill, error_class,
                None if error is None else describe_error(error), self.loop.time() - started,
            ))

    def _fail_attempt(self, error_class: ErrorClass, error: BaseException | str | None, *,
                      sent: bool = True) -> None:
        if sent:
            self.failed_attempts += 1
            self.ladder_failures += 1
        else:  # an order that never left is resent as it was: no attempt, same ladder step
            self.send_failures += 1
        self.last_error_class = error_class
        self.last_error = None if error is None else describe_error(error)
        if not self.policy.is_retryable(error_class):
            self.stop_reason = f"non-retryable error ({error_class})"
        if error_class is ErrorClass.SLIPPAGE_EXCEEDED:
            # Slippage wants the next rung now, not after the step's remaining tries.
            self.step_index = min(self.step_index + 1, len(self.guard.ladder.steps) - 1)

    def _classify(self, exc: BaseException) -> ErrorClass:
        """Classification never fails: a classifier that raises means UNKNOWN."""
        if isinstance(exc, TimeoutError) and not isinstance(exc, ExitError):
            return ErrorClass.RPC_TIMEOUT
        try:
            error_class = self.guard.classify(exc)
        except Exception:
            faults = self.guard.faults
            if not faults.snapshot()[FaultSource.CLASSIFIER]:
                _log.exception("the error classifier raised; the error counts as unknown"
                               " (logged once per guard, counted in every case)")
            faults.add(FaultSource.CLASSIFIER)
            return ErrorClass.UNKNOWN
        return error_class if isinstance(error_class, ErrorClass) else ErrorClass.UNKNOWN

    def _count(self, pending: Pending, fill: Fill) -> None:
        self.guard.book.count(self.entry, pending, fill)
        self.ledger.add(fill)
        self.sm.resolve_pending(pending.submission.tx_id)

    def _gone(self, pending: Pending) -> None:
        self.guard.book.untrack(self.entry, pending.submission.tx_id)
        self.sm.resolve_pending(pending.submission.tx_id)

    # -- lifecycle ------------------------------------------------------------------------

    async def execute(self) -> ExitOutcome:
        guard = self.guard
        hooks = guard.hooks
        if hooks is not None:
            self.observer = hooks.exit_started(self.info)
        guard.in_flight += 1
        try:
            try:
                self._to(ExitState.EXIT_SIGNAL_RECEIVED, detail=self.reason)
                picked = guard.pick_route()
                if picked is None:
                    self._to(ExitState.EXIT_REFUSED,
                             detail="every venue's circuit breaker is open")
                    return self._finish(ExitStatus.REFUSED, "circuit breaker open")
                self.route, self.permit = picked
                if self.permit.forced:
                    _log.warning("every circuit breaker is open: the exit of %s goes to %s"
                                 " anyway as its probe", self.position.id, self.route.name)
                self._take_over()
                status, why = await self._run(self.route.venue)
            except asyncio.CancelledError:
                self._finish_cancelled()
                raise
            except Exception as exc:  # a bug of ours or an unexpected venue object
                _log.exception("exitguard: unexpected error during exit of %s", self.position.id)
                status, why = self._give_up(f"internal error: {type(exc).__name__}")
            return self._finish(status, why)
        finally:
            guard.in_flight -= 1
            if not self.settled and self.route is not None:  # any way out releases the slot
                self.route.breaker.release(self.permit)

    def _take_over(self) -> None:
        """Stop background polling of this position: this exit reconciles its submissions
        (an earlier exit's, or an earlier process's) before sending anything."""
        entry, book = self.entry, self.guard.book
        book.stop_background(entry)
        if not entry.pending:
            return
        book.hand_over(entry)
        for tx_id in entry.pending:
            self.sm.add_pending(tx_id)
        _log.warning("exit of %s takes over %s, which may still land", self.position.id,
                     ", ".join(entry.pending))

    def _give_up(self, why: str) -> tuple[ExitStatus, str]:
        """End the exit from wherever it is: UNRESOLVED if something may still land."""
        complete = self.sm.is_complete()
        if self.entry.pending:
            if not complete:
                self._to(ExitState.EXIT_UNRESOLVED, detail=why)
            return ExitStatus.UNRESOLVED, why
        if not complete:
            self._to(ExitState.EXIT_FAILED, detail=why)
        return ExitStatus.FAILED, why

    def _finish_cancelled(self) -> None:
        if not self.sm.is_complete():
            status, why = self._give_up("cancelled")
        else:
            status, why = ExitStatus.FAILED, "cancelled"
        self._finish(status, why)

    def _finish(self, status: ExitStatus, why: str) -> ExitOutcome:
        entry = self.entry
        if status is ExitStatus.FAILED and entry.pending:
            status = ExitStatus.UNRESOLVED  # FAILED means nothing may still land
        pending = tuple(entry.pending)
        outcome = self.ledger.outcome(
            status, guard=self.guard.name,
            venue=None if self.route is None else self.route.name,
            attempts=self.attempts, elapsed_s=self.loop.time() - self.info.started_at,
            signal_price=self.signal_price, error_class=self.last_error_class, reason=why,
            pending_tx_ids=pending, history=self.sm.history,
            deadline_exceeded=self.deadline_hit,
        )
        self.outcome = outcome
        if self.route is not None and not self.settled:
            self.settled = True
            breaker = self.route.breaker
            if status is ExitStatus.CLOSED:
                breaker.record_success(self.permit)
            elif why == "cancelled":
                breaker.release(self.permit)
            else:
                breaker.record_failure(self.permit)
        if pending:
            for item in entry.pending.values():
                item.reported = True
                item.info = self.info
            self.guard.book.reconcile_in_background(entry)
        if self.observer is not None:
            self.observer.exit_finished(outcome)
        return outcome

    # -- the submission loop --------------------------------------------------------------

    async def _run(self, venue: Venue) -> tuple[ExitStatus, str]:
        policy, entry, ledger = self.policy, self.entry, self.ledger
        if ledger.remaining <= 0 and not entry.pending:
            self._to(ExitState.POSITION_CLOSED, detail="earlier exits already sold it")
            return ExitStatus.CLOSED, "already sold by earlier exits"
        while True:
            if entry.pending:
                await self._reconcile()
                if entry.pending:
                    self.deadline_hit = True
                    self._to(ExitState.EXIT_UNRESOLVED,
                             detail="deadline passed while a submission may still land")
                    return ExitStatus.UNRESOLVED, "deadline passed while a submission may land"
            if ledger.remaining <= 0:
                if not self.sm.is_complete():
                    self._to(ExitState.POSITION_CLOSED)
                return ExitStatus.CLOSED, "closed"
            if self.stop_reason is not None:
                self._to(ExitState.EXIT_FAILED, detail=self.stop_reason)
                return ExitStatus.FAILED, self.stop_reason
            if self.failed_attempts >= policy.max_attempts:
                why = f"max attempts ({policy.max_attempts}) reached"
                self._to(ExitState.EXIT_FAILED, detail=why)
                return ExitStatus.FAILED, why
            if self.partial_fills >= policy.max_partial_fills:
                why = f"max partial fills ({policy.max_partial_fills}) reached"
                self._to(ExitState.EXIT_FAILED, detail=why)
                return ExitStatus.FAILED, why
            now = self.loop.time()
            room = self.submission_deadline - now - policy.min_attempt_time
            setbacks = self.failed_attempts + self.send_failures + self.partial_fills
            if self.last_attempt_at is not None and setbacks:
                wait = policy.backoff(setbacks) - (now - self.last_attempt_at)
                if wait > 0:
                    if wait >= room:  # sleeping would only lead to giving up: give up now
                        room = 0.0
                    else:
                        if self.observer is not None:
                            self.observer.backoff(wait)
                        await asyncio.sleep(wait)
                        room -= wait
            if room <= 0:
                self.deadline_hit = True
                why = "exit deadline reached before the position closed"
                self._to(ExitState.EXIT_FAILED, detail=why)
                return ExitStatus.FAILED, why
            await self._attempt(venue)

    async def _quote(self, venue: Venue) -> float:
        """A fresh reference price; a failed quote never blocks the exit."""
        limit = max(0.0, min(self.attempt_limit, self.submission_deadline
                             - self.loop.time()) / 2)
        try:
            price = await self.guard.calls.call(lambda: venue.price(self.position), limit,
                                                "price")
            if is_finite(price) and price > 0:
                self.last_price = float(price)
                return self.last_price
            self._quote_failed(f"invalid price of type {type(price).__name__}")
        except Exception as exc:
            self._quote_failed(describe_error(exc))
        return self.last_price if self.last_price is not None else self.signal_price

    def _quote_failed(self, why: str) -> None:
        """Counted every time, logged once per exit (a dead price feed would otherwise log
        at every attempt of every exit)."""
        self.guard.faults.add(FaultSource.QUOTE)
        if not self.quote_failed:
            self.quote_failed = True
            _log.warning("price quote failed for the exit of %s (%s); using the last known"
                         " price", self.position.id, why)

    def _next_order(self, reference: float) -> ExitOrder:
        ladder = self.guard.ladder
        self.attempts += 1
        self.entry.attempts += 1
        tries = self.tries_at_step.get(self.step_index, 0)
        self.tries_at_step[self.step_index] = tries + 1
        order = ladder.order(
            self.position, size=self.ledger.remaining, reference_price=reference,
            attempt=self.entry.attempts, step_index=self.step_index, tries_at_step=tries,
        )
        return dataclasses.replace(order, valid_for=self.attempt_limit)

    async def _attempt(self, venue: Venue) -> None:
        ladder = self.guard.ladder
        self.step_index = max(self.step_index, ladder.step_index(self.ladder_failures))
        if self.attempts and self.step_index not in self.tries_at_step:
            self._to(ExitState.ESCALATED, detail=f"ladder step {self.step_index}")
        if self.attempts and self.last_error_class is not None and self.observer is not None:
            self.observer.retry(self.last_error_class, self.attempts + 1)
        resend, self.resend = self.resend, None
        if resend is not None and resend.size == self.ledger.remaining:
            # The venue proved the last order never left: send that same order again (same
            # client order id, so an idempotent venue cannot fill it twice).
            self.attempts += 1
            order = resend
        else:
            order = self._next_order(await self._quote(venue))
        assert self.route is not None
        attempt = AttemptInfo(self.attempts, order, self.step_index, self.route.name)
        if self.observer is not None:
            self.observer.attempt_started(attempt)
        started = self.loop.time()
        self.last_attempt_at = started
        limit = max(0.0, min(self.attempt_limit, self.deadline.expires_at - started))
        if isinstance(venue, TwoPhaseVenue):
            pending = await self._send_two_phase(venue, order, attempt, started, limit)
        else:
            pending = await self._send(venue, order, attempt, started, limit)
        if pending is not None:
            await self._confirm(venue, pending, attempt, started)

    def _not_sent(self, attempt: AttemptInfo, started: float, exc: BaseException,
                  error_class: ErrorClass) -> None:
        self._fail_attempt(error_class, exc, sent=error_class is not ErrorClass.NOT_SENT)
        if error_class is ErrorClass.NOT_SENT:
            self.resend = attempt.order
        self._to(ExitState.SUBMISSION_FAILED, detail=f"not sent: {error_class}")
        result = (AttemptResult.SEND_FAILED if error_class is ErrorClass.NOT_SENT
                  else AttemptResult.REJECTED)
        self._report(attempt, result, started, error_class=error_class, error=exc)

    def _unknown(self, pending: Pending, attempt: AttemptInfo, started: float,
                 error_class: ErrorClass, error: BaseException, detail: str) -> None:
        """The order may be out and its outcome is unknown: it stays tracked."""
        pending.cause = error_class
        self.last_error_class = error_class
        self.last_error = describe_error(error)
        tx_id = pending.submission.tx_id
        self._to(ExitState.CONFIRMATION_TIMEOUT, detail=detail, tx_id=tx_id)
        self._report(attempt, AttemptResult.TIMEOUT, started, tx_id=tx_id,
                     error_class=error_class, error=error)

    def _pending(self, submission: Submission, order: ExitOrder) -> Pending:
        assert self.route is not None
        # Track the order the guard sent, whatever order the venue echoes back.
        if submission.order is not order:
            submission = Submission(submission.tx_id, order, submission.expires_at,
                                    submission.venue_data)
        return Pending(submission, ErrorClass.RPC_TIMEOUT, self.route.name, self.info)

    async def _send(self, venue: Venue, order: ExitOrder, attempt: AttemptInfo,
                    started: float, limit: float) -> Pending | None:
        """``submit`` with the order tracked by its client order id before it leaves."""
        book, entry = self.guard.book, self.entry
        placeholder = self._pending(Submission(order.client_order_id, order), order)
        book.track(entry, placeholder)
        self.sm.add_pending(order.client_order_id)
        try:
            raw: Any = await self.guard.calls.call(lambda: venue.submit(order), limit, "submit")
        except Exception as exc:
            error_class = self._classify(exc)
            if error_class in NOT_SENT:
                self._gone(placeholder)
                self._not_sent(attempt, started, exc, error_class)
                return None
            self._to(ExitState.SUBMITTED, detail="submit did not answer",
                     tx_id=order.client_order_id)
            self._unknown(placeholder, attempt, started, error_class, exc,
                          f"submit failed ({error_class}): the order may be out")
            return None
        if isinstance(raw, str) and raw:
            _log.warning("venue.submit returned a bare id, not a Submission; using it")
            raw = Submission(raw, order)
        if not isinstance(raw, Submission) or not isinstance(raw.tx_id, str) or not raw.tx_id:
            # submit returned, so the order may be out: keep it by its client order id.
            error = InvalidVenueResponse(f"submit returned {type(raw).__name__} without a"
                                         " transaction id")
            self._to(ExitState.SUBMITTED, detail="invalid submit response",
                     tx_id=order.client_order_id)
            self._unknown(placeholder, attempt, started, ErrorClass.INVALID_RESPONSE, error,
                          "submit answered garbage: the order may be out")
            return None
        pending = self._pending(raw, order)
        book.replace(entry, order.client_order_id, pending)
        self.sm.resolve_pending(order.client_order_id)
        self.sm.add_pending(raw.tx_id)
        self._to(ExitState.SUBMITTED, detail=f"{order.mode} {order.max_slippage_bps}bps",
                 tx_id=raw.tx_id)
        return pending

    async def _send_two_phase(self, venue: TwoPhaseVenue, order: ExitOrder,
                              attempt: AttemptInfo, started: float, limit: float
                              ) -> Pending | None:
        """``prepare`` (nothing sent), track by the real id, then ``broadcast``."""
        calls, book, entry = self.guard.calls, self.guard.book, self.entry
        try:
            prepared: Any = await calls.call(lambda: venue.prepare(order), limit, "prepare")
            if not isinstance(prepared, Submission):
                raise InvalidVenueResponse(f"prepare returned {type(prepared).__name__}")
        except Exception as exc:  # prepare sends nothing: whatever it raised, nothing left
            error_class = self._classify(exc)
            self._not_sent(attempt, started, exc,
                           error_class if error_class in NOT_SENT else ErrorClass.NOT_SENT)
            return None
        pending = self._pending(prepared, order)
        book.track(entry, pending)
        tx_id = pending.submission.tx_id
        self.sm.add_pending(tx_id)
        self._to(ExitState.SUBMITTED, detail=f"{order.mode} {order.max_slippage_bps}bps",
                 tx_id=tx_id)
        left = max(0.0, limit - (self.loop.time() - started))
        try:
            await calls.call(lambda: venue.broadcast(pending.submission), left, "broadcast")
        except Exception as exc:
            error_class = self._classify(exc)
            if error_class in NOT_SENT:
                self._gone(pending)
                self._fail_attempt(error_class, exc,
                                   sent=error_class is not ErrorClass.NOT_SENT)
                self._to(ExitState.SUBMISSION_FAILED, detail=f"not sent: {error_class}",
                         tx_id=tx_id)
                self._report(attempt, AttemptResult.SEND_FAILED, started, tx_id=tx_id,
                             error_class=error_class, error=exc)
                return None
            self._unknown(pending, attempt, started, error_class, exc,
                          f"broadcast failed ({error_class}): it may be out")
            return None
        return pending

    async def _confirm(self, venue: Venue, pending: Pending, attempt: AttemptInfo,
                       started: float) -> None:
        """Wait for the confirmation; while it hangs, ask ``lookup`` now and then."""
        calls, book, entry = self.guard.calls, self.guard.book, self.entry
        submission = pending.submission
        tx_id = submission.tx_id
        end = min(started + self.attempt_limit, self.deadline.expires_at - self.reserve)
        task = calls.start(lambda: venue.confirm(submission))
        interval = self.guard.reconcile_interval
        while True:
            if not isinstance(task, asyncio.Future):
                break  # a sync venue answered at once
            left = end - self.loop.time()
            if left > TIME_EPSILON and await calls.wait(task, min(interval, left), "confirm"):
                break
            if task.done():
                break
            if self.loop.time() >= end - TIME_EPSILON:
                calls.abandon(task, "confirm")
                self._unknown(pending, attempt, started, ErrorClass.RPC_TIMEOUT,
                              TimeoutError(f"no confirmation within {self.attempt_limit:g}s"),
                              str(ErrorClass.RPC_TIMEOUT))
                return
            lookup = await book.lookup(entry, pending,
                                       min(self.attempt_limit, max(0.0, end - self.loop.time())))
            interval = min(interval * 2, self.guard.max_reconcile_interval)
            if lookup is None:
                continue
            if self.observer is not None:
                self.observer.reconciled(tx_id, lookup.status)
            if lookup.status is TxStatus.PENDING:
                continue
            calls.abandon(task, "confirm")
            self._settle(pending, lookup, attempt, started, pending.cause,
                         f"{tx_id} {lookup.status}")
            return
        try:
            raw = calls.result(task, "confirm") if isinstance(task, asyncio.Future) else task
            fill = book.checked_fill(entry, pending, raw)
        except Exception as exc:
            error_class = self._classify(exc)
            if error_class in DID_NOT_LAND and tx_id in entry.pending:
                # The venue says it cannot land. One look-up checks it before anything is
                # resent: a venue whose confirm and chain disagree sells twice otherwise.
                left = self.deadline.expires_at - self.loop.time()
                check = await book.lookup(entry, pending, min(self.attempt_limit, left))
                if check is not None and check.status is TxStatus.PENDING:
                    self._unknown(pending, attempt, started, ErrorClass.RPC_TIMEOUT, exc,
                                  f"{error_class}, but the venue's look-up says pending")
                else:  # no answer: the venue's own word stands
                    self._settle(pending, check, attempt, started, error_class, exc)
                return
            # Outcome unknown: it may still land. Reconcile before sending anything else.
            self._unknown(pending, attempt, started, error_class, exc, str(error_class))
            return
        self._filled(pending, fill, attempt, started)

    def _settle(self, pending: Pending, lookup: Lookup | None, attempt: AttemptInfo,
                started: float, error_class: ErrorClass, error: BaseException | str) -> None:
        """End the attempt on a look-up that is not PENDING: filled if it landed with a
        fill, otherwise (or with no answer) did not land, for ``error_class``."""
        if lookup is not None and lookup.status is TxStatus.LANDED and lookup.fill is not None:
            self._filled(pending, lookup.fill, attempt, started)
        else:
            self._did_not_land(pending, attempt, started, error_class, error)

    def _filled(self, pending: Pending, fill: Fill, attempt: AttemptInfo,
                started: float) -> None:
        tx_id = pending.submission.tx_id
        self._count(pending, fill)
        if self.ledger.remaining <= 0:
            self._to(ExitState.POSITION_CLOSED, tx_id=tx_id)
            self._report(attempt, AttemptResult.FILLED, started, tx_id=tx_id, fill=fill)
            return
        self.partial_fills += 1
        self.ladder_failures += 1  # what the order offered did not clear: escalate
        self._to(ExitState.PARTIALLY_FILLED, detail=f"{self.ledger.remaining:g} left",
                 tx_id=tx_id)
        self._report(attempt, AttemptResult.PARTIAL, started, tx_id=tx_id, fill=fill)

    def _did_not_land(self, pending: Pending, attempt: AttemptInfo, started: float,
                      error_class: ErrorClass, error: BaseException | str) -> None:
        tx_id = pending.submission.tx_id
        self._gone(pending)
        self._fail_attempt(error_class, error)
        self._to(ExitState.SUBMISSION_FAILED, detail=str(error_class), tx_id=tx_id)
        result = (AttemptResult.EXPIRED if error_class is ErrorClass.TX_EXPIRED
                  else AttemptResult.REJECTED)
        self._report(attempt, result, started, tx_id=tx_id, error_class=error_class,
                     error=error if isinstance(error, BaseException) else ExitError(error))

    # -- reconciliation -------------------------------------------------------------------

    async def _reconcile(self) -> None:
        """Resolve every submission of the position that may still land, within the
        deadline."""
        self._to(ExitState.RECONCILING)
        await self.guard.book.poll(self.entry, self.deadline.expires_at, self._resolved)

    def _resolved(self, pending: Pending, lookup: Lookup) -> None:
        tx_id = pending.submission.tx_id
        if self.observer is not None:
            self.observer.reconciled(tx_id, lookup.status)
        if lookup.status is TxStatus.PENDING or self.entry.pending.get(tx_id) is not pending:
            return
        self._to(ExitState.RECONCILING)
        if lookup.status is TxStatus.LANDED and lookup.fill is not None:
            self._count(pending, lookup.fill)
            state = (ExitState.POSITION_CLOSED if self.ledger.remaining <= 0
                     else ExitState.PARTIALLY_FILLED)
            if state is ExitState.POSITION_CLOSED and self.entry.pending:
                return  # stay reconciling: the others must resolve before anything ends
            self._to(state, detail="landed", tx_id=tx_id)
            return
        self._gone(pending)
        if pending.info is self.info:  # an earlier exit's order is not this exit's attempt
            # An order known only by its client id that the venue never saw was not sent:
            # resend it as it was (same ladder step, no attempt spent).
            never_seen = (pending.submission.known_only_by_client_id
                          and lookup.status is TxStatus.EXPIRED)
            self._fail_attempt(pending.cause, f"{tx_id} {lookup.status}", sent=not never_seen)
        self._to(ExitState.SUBMISSION_FAILED, detail=str(lookup.status), tx_id=tx_id)
