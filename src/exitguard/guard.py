"""ExitGuard: one call that exits a position within a hard deadline and never double-sells.

The guard composes the primitives: a circuit breaker per venue (refusing fast, with
fallback venues), the escalation ladder, the retry policy's bounds, the exit deadline,
the state machine, and the trading halt. A confirmation timeout is an unknown outcome:
the transaction is reconciled with ``venue.lookup`` before anything else is sent, and only
the unfilled remainder is ever resubmitted. If the deadline passes while a submission may
still land, the exit returns UNRESOLVED and reconciliation goes on in the background,
reporting any late landing through the hooks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from .breaker import BreakerState, CircuitBreaker, Permit
from .clock import wall_time
from .deadline import ExitDeadline
from .errors import (
    Classifier,
    ErrorClass,
    ExitError,
    InvalidVenueResponse,
    default_classifier,
)
from .faults import FaultCounts, FaultSource
from .halt import HaltRecord, TradingHalt
from .hooks import (
    AttemptInfo,
    AttemptReport,
    AttemptResult,
    ExitInfo,
    Hooks,
    SafeHooks,
    SafeObserver,
    as_safe_hooks,
)
from .outcome import ExitOutcome, ExitStatus, exit_figures
from .pending import PendingRecord, PendingStore
from .policy import ConfigError, EscalationLadder, RetryPolicy
from .state_machine import ExitState, ExitStateMachine, TransitionRecord
from .venue import ExitOrder, Fill, Lookup, Position, Submission, TxStatus, Venue

_log = logging.getLogger("exitguard.guard")
_T = TypeVar("_T")

#: Sizes below this are dust: the position counts as closed.
_DUST = 1e-9


def venue_name(venue: object) -> str:
    name = getattr(venue, "name", None)
    return name if isinstance(name, str) and name else type(venue).__name__


@dataclasses.dataclass(slots=True)
class _Route:
    venue: Venue
    breaker: CircuitBreaker
    name: str


class ExitGuard:
    """Bounded, escalating, observable exits against a Venue.

    ``deadline`` (seconds) bounds the whole exit, reconciliation included; the policy's
    ``total_timeout`` bounds the submission phase. Halts block entries (``check_entry``),
    never exits. Pass ``halt=TradingHalt(...)`` to halt entries when a breaker trips.
    """

    def __init__(
        self,
        venue: Venue,
        *,
        policy: RetryPolicy | None = None,
        deadline: float = 30.0,
        ladder: EscalationLadder | None = None,
        breaker: CircuitBreaker | None = None,
        halt: TradingHalt | None = None,
        classify: Classifier = default_classifier,
        hooks: Hooks | Sequence[Hooks] | None = None,
        name: str = "default",
        fallback_venues: Sequence[Venue | tuple[Venue, CircuitBreaker]] = (),
        reconcile_interval: float = 0.25,
        max_reconcile_interval: float = 2.0,
        background_reconcile_for: float = 600.0,
        pending_store: PendingStore | None = None,
    ) -> None:
        for field, value in (
            ("deadline", deadline),
            ("reconcile_interval", reconcile_interval),
            ("max_reconcile_interval", max_reconcile_interval),
            ("background_reconcile_for", background_reconcile_for),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                math.isfinite(value) and value > 0
            ):
                raise ConfigError("ExitGuard", field, "must be a finite number > 0", value)
        if not name or not isinstance(name, str):
            raise ConfigError("ExitGuard", "name", "must be a non-empty string", name)
        self.name = name
        self.policy = policy or RetryPolicy.exit_policy()
        self.deadline = float(deadline)
        self.ladder = ladder or EscalationLadder.default()
        self.classify = classify
        self.halt = halt
        self.reconcile_interval = float(reconcile_interval)
        self.max_reconcile_interval = max(float(max_reconcile_interval), self.reconcile_interval)
        self.background_reconcile_for = float(background_reconcile_for)
        self._hooks: SafeHooks | None = as_safe_hooks(hooks)
        primary_breaker = breaker or CircuitBreaker(name=venue_name(venue))
        self.breaker = primary_breaker
        self._routes = [_Route(venue, primary_breaker, venue_name(venue))]
        for item in fallback_venues:
            if isinstance(item, tuple):
                fallback, fallback_breaker = item
            else:
                fallback = item
                fallback_breaker = primary_breaker.clone(venue_name(item))
            self._routes.append(_Route(fallback, fallback_breaker, venue_name(fallback)))
        seen: set[int] = set()
        for route in self._routes:
            if id(route.breaker) not in seen:
                seen.add(id(route.breaker))
                route.breaker.add_listener(self._on_breaker_transition)
        if halt is not None:
            halt.on_halt(self._on_halt)
            halt.on_resume(self._on_resume)
        self._background: set[asyncio.Task[None]] = set()
        # Exits whose submissions are still reconciled in the background, by position id: a
        # new exit of that position takes them over instead of sending a second order.
        self._unresolved: dict[str, _ExitRun] = {}
        self.late_fills: deque[tuple[ExitInfo, Fill]] = deque(maxlen=1000)
        self.pending_store = pending_store
        self.pending_store_error: str | None = None
        self.in_flight = 0
        self.faults = FaultCounts()

    # -- wiring -------------------------------------------------------------------------

    @property
    def hooks(self) -> SafeHooks | None:
        return self._hooks

    def add_hooks(self, *hooks: Hooks) -> None:
        """Attach more hooks (what ``exitguard.telemetry.instrument`` calls)."""
        self._hooks = self._hooks.extended(*hooks) if self._hooks is not None else SafeHooks(*hooks)

    @property
    def fault_counts(self) -> dict[FaultSource, int]:
        """Failures absorbed so exits went on, by source (every source, zeros included):
        the guard's own, its hooks' and its halt store's. Each was logged where it happened
        (once per kind); ``exitguard_faults_total`` exposes these counts."""
        counts = self.faults.snapshot()
        if self._hooks is not None:
            counts[FaultSource.HOOK] += self._hooks.failure_total
        if self.halt is not None:
            counts[FaultSource.HALT_STORE] += self.halt.store_failures
        return counts

    @property
    def routes(self) -> tuple[tuple[str, CircuitBreaker], ...]:
        return tuple((route.name, route.breaker) for route in self._routes)

    def _on_breaker_transition(
        self, breaker: str, old: BreakerState, new: BreakerState, reason: str
    ) -> None:
        if self._hooks is not None:
            self._hooks.breaker_transition(self.name, breaker, old, new)
        if new is BreakerState.OPEN and self.halt is not None:
            self.halt.halt(f"circuit breaker {breaker} opened: {reason}")

    def _on_halt(self, record: HaltRecord) -> None:
        if self._hooks is not None:
            self._hooks.halted(self.name, record)

    def _on_resume(self, record: HaltRecord) -> None:
        if self._hooks is not None:
            self._hooks.resumed(self.name, record)

    def check_entry(self) -> None:
        """Raise TradingHalted while halted. Call before entries; exits are never halted."""
        if self.halt is not None:
            self.halt.check_entry()

    # -- background reconciliation --------------------------------------------------------

    @property
    def reconciling(self) -> int:
        """Background reconciliations still running."""
        return len(self._background)

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait for background reconciliation; True if all finished in time."""
        if not self._background:
            return True
        _, pending = await asyncio.wait(set(self._background), timeout=timeout)
        return not pending

    async def aclose(self) -> None:
        """Stop background reconciliation (it is logged as abandoned)."""
        tasks = set(self._background)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn_background(self, run: _ExitRun) -> None:
        run.background_pending = dict(run.pending)
        task = asyncio.get_running_loop().create_task(
            run.reconcile_in_background(), name=f"exitguard-reconcile-{run.position.id}"
        )
        self._background.add(task)
        self._unresolved[run.position.id] = run

        def done(task: asyncio.Task[None]) -> None:
            self._background.discard(task)
            if self._unresolved.get(run.position.id) is run:
                del self._unresolved[run.position.id]
            run.report_unresolved()  # also when cancelled before it ever ran

        task.add_done_callback(done)

    # -- submissions that may still land, across restarts ---------------------------------

    def _remember(self, run: _ExitRun, submission: Submission, cause: ErrorClass) -> None:
        if self.pending_store is None:
            return
        record = PendingRecord.of(
            submission.tx_id, submission.order, guard=self.name,
            venue=run.route.name if run.route else "", cause=cause, sent_at=wall_time(),
        )
        self._store_call("add", record)

    def _forget(self, tx_id: str) -> None:
        if self.pending_store is not None:
            self._store_call("remove", tx_id)

    def _store_call(self, method: str, argument: object) -> None:
        """A store that fails never breaks an exit; the failure is logged once and kept
        (``pending_store_error`` stays set: a record it lost is not restored by later writes)."""
        try:
            getattr(self.pending_store, method)(argument)
        except Exception as exc:
            self.faults.add(FaultSource.PENDING_STORE)
            if self.pending_store_error is None:
                _log.error("pending store %s failed: %s; pending ids are kept in memory only",
                           method, exc)
            self.pending_store_error = f"{method}: {exc}"

    @property
    def pending_tx_ids(self) -> tuple[str, ...]:
        """Submissions that may still land: reconciled in the background or, with a pending
        store, recorded by this or an earlier process."""
        ids = list(self._pending_in_memory())
        if self.pending_store is not None:
            try:
                ids.extend(r.tx_id for r in self.pending_store.load() if r.guard == self.name)
            except Exception as exc:
                self.faults.add(FaultSource.PENDING_STORE)
                _log.error("cannot read the pending store: %s", exc)
        return tuple(dict.fromkeys(ids))

    async def resume_pending(self) -> int:
        """After a restart: reconcile in the background what the pending store holds for this
        guard (a landing is a late fill). Returns how many submissions it took up. An
        unreadable store halts entries (if a halt is configured) and raises."""
        if self.pending_store is None:
            return 0
        try:
            records = self.pending_store.load()
        except Exception as exc:
            self.faults.add(FaultSource.PENDING_STORE)
            if self.halt is not None:
                self.halt.halt(f"pending store unreadable: {exc}", actor="pending_store")
            raise
        tracked = set(self._pending_in_memory())
        by_position: dict[str, list[PendingRecord]] = {}
        for record in records:
            if record.guard == self.name and record.tx_id not in tracked:
                by_position.setdefault(record.position_id, []).append(record)
        taken = 0
        routes = {route.name: route for route in self._routes}
        for position_id, group in by_position.items():
            if position_id in self._unresolved:
                continue
            first = group[0]
            run = _ExitRun(self, first.position(), first.reference_price, "resumed after restart")
            run.resumed = True
            run.route = routes.get(first.venue, self._routes[0])
            for record in group:
                submission = Submission(record.tx_id, record.order(), None)
                run.pending[record.tx_id] = (submission, record.error_class())
                if record.venue in routes:
                    run.venue_of[record.tx_id] = routes[record.venue].venue
            self._spawn_background(run)
            taken += len(group)
        if taken:
            _log.warning("resumed reconciliation of %d submission(s) left by an earlier process",
                         taken)
        return taken

    def _pending_in_memory(self) -> tuple[str, ...]:
        return tuple(tx for run in self._unresolved.values() for tx in run.background_pending)

    # -- the exit -------------------------------------------------------------------------

    def _pick_route(self) -> tuple[_Route, Permit] | None:
        for route in self._routes:
            permit = route.breaker.allow()
            if permit is not None:
                return route, permit
        return None

    async def exit(
        self, position: Position, *, signal_price: float, reason: str = "exit"
    ) -> ExitOutcome:
        """Exit ``position``; always returns an outcome for venue errors, within the deadline.

        Bad input (not a Position, a non-finite or non-positive signal price) raises
        ValueError before any venue call.
        """
        if not isinstance(position, Position):
            raise TypeError(f"position must be an exitguard.Position, got {type(position)!r}")
        if isinstance(signal_price, bool) or not isinstance(signal_price, int | float) or not (
            math.isfinite(signal_price) and signal_price > 0
        ):
            raise ValueError(f"signal_price must be a finite number > 0, got {signal_price!r}")
        if not (math.isfinite(position.size) and position.size > 0):
            raise ValueError(f"position.size must be a finite number > 0, got {position.size!r}")
        run = _ExitRun(self, position, float(signal_price), str(reason))
        return await run.execute()


class _ExitRun:
    """The state of one exit. Lives only as long as the exit (and its reconciliation)."""

    # Slots: thousands may be in flight at once, and a dict of 34 attributes is 1.5 KiB.
    __slots__ = (
        "attempts", "background_pending", "deadline", "deadline_hit", "failed_attempts",
        "fills", "guard", "in_flight_submission", "info", "ladder_failures",
        "last_attempt_at", "last_error", "last_error_class", "last_price", "lookup_failures",
        "loop", "observer", "pending", "permit", "policy", "position", "quote_failed",
        "reason", "remaining", "reserve", "resumed", "route", "signal_price", "sm",
        "step_index", "stop_reason", "submission_deadline", "tries_at_step", "venue_of",
    )

    def __init__(self, guard: ExitGuard, position: Position, signal_price: float, reason: str):
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.guard = guard
        self.policy = guard.policy
        self.position = position
        self.signal_price = signal_price
        self.reason = reason
        started = loop.time()
        self.deadline = ExitDeadline(guard.deadline, started_at=started, clock=loop.time)
        self.submission_deadline = started + min(self.policy.total_timeout, guard.deadline)
        # Keep a little of the deadline for one reconciliation look-up after a timeout.
        self.reserve = min(1.0, 0.1 * guard.deadline)
        self.sm = ExitStateMachine(self.deadline, clock=loop.time)
        self.info = ExitInfo(
            guard.name, position, signal_price, reason, guard.deadline, started, wall_time()
        )
        self.observer: SafeObserver | None = None
        self.fills: list[Fill] = []
        self.remaining = position.size
        self.attempts = 0
        self.failed_attempts = 0
        self.ladder_failures = 0  # failures that say the order itself was inadequate
        self.step_index = 0
        self.tries_at_step: dict[int, int] = {}
        self.pending: dict[str, tuple[Submission, ErrorClass]] = {}
        self.last_error_class: ErrorClass | None = None
        self.last_error: str | None = None
        self.stop_reason: str | None = None
        self.deadline_hit = False
        self.last_attempt_at: float | None = None
        self.last_price: float | None = None
        self.route: _Route | None = None
        self.permit: Permit | None = None
        self.in_flight_submission: tuple[Submission, ErrorClass] | None = None
        self.background_pending: dict[str, tuple[Submission, ErrorClass]] = {}
        self.lookup_failures: dict[str, int] = {}
        self.quote_failed = False
        self.resumed = False  # reconciles what an earlier process left (no exit of ours)
        self.venue_of: dict[str, Venue] = {}  # submissions adopted from an earlier exit

    # -- helpers --------------------------------------------------------------------------

    def _to(self, state: ExitState, detail: str = "", tx_id: str | None = None) -> None:
        record = self.sm.transition(state, detail=detail, tx_id=tx_id)
        if self.observer is not None:
            self.observer.transition(record)

    def _report(
        self,
        attempt: AttemptInfo,
        result: AttemptResult,
        started: float,
        *,
        tx_id: str | None = None,
        fill: Fill | None = None,
        error_class: ErrorClass | None = None,
        error: BaseException | None = None,
    ) -> None:
        if self.observer is not None:
            self.observer.attempt_finished(
                AttemptReport(
                    attempt, result, tx_id, fill, error_class,
                    None if error is None else _describe(error),
                    self.loop.time() - started,
                )
            )

    def _fail_attempt(
        self, error_class: ErrorClass, error: BaseException | str | None, *, sent: bool = True
    ) -> None:
        self.failed_attempts += 1
        if sent:  # an order that never left is retried as it was: the ladder stays put
            self.ladder_failures += 1
        self.last_error_class = error_class
        self.last_error = None if error is None else _describe(error)
        if not self.policy.is_retryable(error_class):
            self.stop_reason = f"non-retryable error ({error_class})"
        if error_class is ErrorClass.SLIPPAGE_EXCEEDED:
            # Slippage wants the next rung now, not after the step's remaining tries.
            self.step_index = min(self.step_index + 1, len(self.guard.ladder.steps) - 1)

    async def _venue_call(self, awaitable: Awaitable[_T], limit: float) -> _T:
        """Await a venue call within ``limit``. A CancelledError the venue raises on its own
        (the exit was not cancelled) is a venue error, not a cancellation of the bot's task."""
        try:
            async with asyncio.timeout(max(0.0, limit)):
                return await awaitable
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            raise InvalidVenueResponse("the venue raised CancelledError unasked") from None

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

    def _add_fill(self, fill: Fill) -> None:
        self.fills.append(fill)
        self.remaining = max(0.0, self.remaining - fill.size)
        if self.remaining <= _DUST * self.position.size:
            self.remaining = 0.0

    def _valid_fill(self, fill: object, order: ExitOrder) -> Fill:
        if not isinstance(fill, Fill):
            raise InvalidVenueResponse(f"expected a Fill, got {type(fill).__name__}")
        size, price = fill.size, fill.price
        if not (isinstance(size, int | float) and math.isfinite(size) and size > 0):
            raise InvalidVenueResponse(f"fill size {size!r} is not a positive number")
        if not (isinstance(price, int | float) and math.isfinite(price) and price > 0):
            raise InvalidVenueResponse(f"fill price {price!r} is not a positive number")
        if size > order.size * (1 + 1e-9):
            raise InvalidVenueResponse(f"fill size {size} exceeds the order size {order.size}")
        return fill

    # -- lifecycle ------------------------------------------------------------------------

    async def execute(self) -> ExitOutcome:
        guard = self.guard
        hooks = guard._hooks
        if hooks is not None:
            self.observer = hooks.exit_started(self.info)
        guard.in_flight += 1
        try:
            try:
                self._to(ExitState.EXIT_SIGNAL_RECEIVED, detail=self.reason)
                picked = guard._pick_route()
                if picked is None:
                    self._to(ExitState.EXIT_REFUSED,
                             detail="every venue's circuit breaker is open")
                    return self._finish(ExitStatus.REFUSED, "circuit breaker open")
                self.route, self.permit = picked
                self._adopt_earlier_submissions()
                status, why = await self._run(self.route.venue)
            except asyncio.CancelledError:
                self._finish_cancelled()
                raise
            except Exception as exc:  # a bug of ours or an unexpected venue object
                _log.exception("exitguard: unexpected error during exit of %s", self.position.id)
                self._keep_in_flight()
                status, why = self._give_up(f"internal error: {type(exc).__name__}")
            return self._finish(status, why)
        finally:
            guard.in_flight -= 1

    def _give_up(self, why: str) -> tuple[ExitStatus, str]:
        """End the exit from wherever it is: UNRESOLVED if something may still land."""
        complete = self.sm.is_complete()
        if self.pending:
            if not complete:
                unresolved = self.sm.can_transition(ExitState.EXIT_UNRESOLVED)
                self._to(ExitState.EXIT_UNRESOLVED if unresolved else ExitState.EXIT_FAILED,
                         detail=why)
            return ExitStatus.UNRESOLVED, why
        if not complete:
            self._to(ExitState.EXIT_FAILED, detail=why)
        return ExitStatus.FAILED, why

    def _adopt_earlier_submissions(self) -> None:
        """Take over what an earlier exit of this position left to background reconciliation:
        it may still land, so it is reconciled before anything new is sent."""
        earlier = self.guard._unresolved.get(self.position.id)
        if earlier is None or not earlier.background_pending:
            return
        adopted = list(earlier.background_pending.items())
        earlier.background_pending.clear()
        hooks = self.guard._hooks
        for tx_id, entry in adopted:
            self.pending[tx_id] = entry
            self.sm.add_pending(tx_id)
            if earlier.route is not None:
                self.venue_of[tx_id] = earlier.route.venue
            if hooks is not None and not earlier.resumed:  # handed over: no longer tracked
                hooks.pending_resolved(earlier.info, tx_id, TxStatus.PENDING)
        _log.warning("exit of %s takes over %s, which may still land", self.position.id,
                     ", ".join(tx_id for tx_id, _ in adopted))

    def _keep_in_flight(self) -> None:
        """A submission whose confirmation was interrupted may still land: keep it pending."""
        if self.in_flight_submission is not None:
            submission, cause = self.in_flight_submission
            self.pending.setdefault(submission.tx_id, (submission, cause))

    def _finish_cancelled(self) -> None:
        self._keep_in_flight()
        if not self.sm.is_complete():
            status, why = self._give_up("cancelled")
        else:
            status, why = ExitStatus.FAILED, "cancelled"
        self._finish(status, why)

    def _finish(self, status: ExitStatus, why: str) -> ExitOutcome:
        fills = tuple(self.fills)
        filled, avg, slippage, amplification = exit_figures(
            self.position, fills, self.signal_price
        )
        error_class = None if status is ExitStatus.CLOSED else self.last_error_class
        outcome = ExitOutcome(
            status=status,
            position=self.position,
            guard=self.guard.name,
            venue=None if self.route is None else self.route.name,
            fills=fills,
            filled_size=filled,
            avg_price=avg,
            attempts=self.attempts,
            elapsed_s=self.loop.time() - self.info.started_at,
            signal_price=self.signal_price,
            slippage_bps=slippage,
            loss_amplification=amplification,
            error_class=error_class,
            reason=why,
            pending_tx_ids=tuple(self.pending),
            history=self.sm.history,
            deadline_exceeded=self.deadline_hit,
        )
        if self.route is not None:
            breaker = self.route.breaker
            if status is ExitStatus.CLOSED:
                breaker.record_success(self.permit)
            elif why == "cancelled":
                breaker.release(self.permit)
            else:
                breaker.record_failure(self.permit)
        if self.pending:
            self.guard._spawn_background(self)
        if self.observer is not None:
            self.observer.exit_finished(outcome)
        return outcome

    # -- the submission loop --------------------------------------------------------------

    async def _run(self, venue: Venue) -> tuple[ExitStatus, str]:
        policy = self.policy
        while True:
            if self.pending:
                await self._reconcile(venue)
                if self.pending:
                    self.deadline_hit = True
                    self._to(
                        ExitState.EXIT_UNRESOLVED,
                        detail="deadline passed while a submission may still land",
                    )
                    return ExitStatus.UNRESOLVED, "deadline passed while a submission may land"
            if self.remaining <= 0:
                return ExitStatus.CLOSED, "closed"
            if self.stop_reason is not None:
                self._to(ExitState.EXIT_FAILED, detail=self.stop_reason)
                return ExitStatus.FAILED, self.stop_reason
            if self.failed_attempts >= policy.max_attempts:
                why = f"max attempts ({policy.max_attempts}) reached"
                self._to(ExitState.EXIT_FAILED, detail=why)
                return ExitStatus.FAILED, why
            now = self.loop.time()
            room = self.submission_deadline - now - policy.min_attempt_time
            if self.last_attempt_at is not None and self.failed_attempts:
                wait = policy.backoff(self.failed_attempts) - (now - self.last_attempt_at)
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
        limit = max(0.0, min(self.policy.attempt_timeout, self.submission_deadline
                             - self.loop.time()) / 2)
        try:
            price = await self._venue_call(venue.price(self.position), limit)
            if isinstance(price, int | float) and math.isfinite(price) and price > 0:
                self.last_price = float(price)
                return self.last_price
            self._quote_failed(f"invalid price {price!r}")
        except Exception as exc:
            self._quote_failed(_describe(exc))
        return self.last_price if self.last_price is not None else self.signal_price

    def _quote_failed(self, why: str) -> None:
        """Counted every time, logged once per exit (a dead price feed would otherwise log
        at every attempt of every exit)."""
        self.guard.faults.add(FaultSource.QUOTE)
        if not self.quote_failed:
            self.quote_failed = True
            _log.warning("price quote failed for the exit of %s (%s); using the last known"
                         " price", self.position.id, why)

    async def _attempt(self, venue: Venue) -> None:
        guard, policy, loop = self.guard, self.policy, self.loop
        ladder = guard.ladder
        self.step_index = max(self.step_index, ladder.step_index(self.ladder_failures))
        if self.attempts and self.step_index not in self.tries_at_step:
            self._to(ExitState.ESCALATED, detail=f"ladder step {self.step_index}")
        if self.attempts and self.last_error_class is not None and self.observer is not None:
            self.observer.retry(self.last_error_class, self.attempts + 1)
        reference = await self._quote(venue)
        self.attempts += 1
        tries = self.tries_at_step.get(self.step_index, 0)
        self.tries_at_step[self.step_index] = tries + 1
        order = ladder.order(
            self.position, size=self.remaining, reference_price=reference,
            attempt=self.attempts, step_index=self.step_index, tries_at_step=tries,
        )
        order = dataclasses.replace(order, valid_for=policy.attempt_timeout)
        attempt = AttemptInfo(self.attempts, order, self.step_index, self.route.name
                              if self.route else venue_name(venue))
        if self.observer is not None:
            self.observer.attempt_started(attempt)
        started = loop.time()
        self.last_attempt_at = started

        submit_limit = max(0.0, min(policy.attempt_timeout, self.deadline.expires_at - started))
        try:
            submission = await self._venue_call(venue.submit(order), submit_limit)
        except Exception as exc:
            error_class = self._classify(exc)
            self._fail_attempt(error_class, exc, sent=False)
            self._to(ExitState.SUBMISSION_FAILED, detail=f"send failed: {error_class}")
            self._report(attempt, AttemptResult.SEND_FAILED, started,
                         error_class=error_class, error=exc)
            return
        if isinstance(submission, str) and submission:
            _log.warning("venue.submit returned a bare id %r, not a Submission; using it",
                         submission)
            submission = Submission(submission, order, None)
        if not isinstance(submission, Submission) or not submission.tx_id:
            # submit returned, so the order may be out, but without an id it cannot be
            # reconciled: another order could sell twice. Stop here.
            error = InvalidVenueResponse(f"submit returned {type(submission).__name__}"
                                         " without a transaction id")
            self._fail_attempt(ErrorClass.INVALID_RESPONSE, error)
            self.stop_reason = ("submit returned no transaction id: the order may have been"
                                " sent and cannot be reconciled")
            self._to(ExitState.SUBMISSION_FAILED, detail="invalid submit response")
            self._report(attempt, AttemptResult.REJECTED, started,
                         error_class=ErrorClass.INVALID_RESPONSE, error=error)
            return

        tx_id = submission.tx_id
        guard._remember(self, submission, ErrorClass.RPC_TIMEOUT)
        self.sm.add_pending(tx_id)
        self.in_flight_submission = (submission, ErrorClass.RPC_TIMEOUT)
        self._to(ExitState.SUBMITTED, detail=f"{order.mode} {order.max_slippage_bps}bps",
                 tx_id=tx_id)
        left = self.deadline.expires_at - loop.time()
        confirm_limit = max(0.0, min(policy.attempt_timeout, left - self.reserve))
        try:
            raw = await self._venue_call(venue.confirm(submission), confirm_limit)
            fill = self._valid_fill(raw, order)
        except Exception as exc:
            error_class = self._classify(exc)
            if error_class in _DID_NOT_LAND:
                self.in_flight_submission = None
                self.sm.resolve_pending(tx_id)
                guard._forget(tx_id)
                self._fail_attempt(error_class, exc)
                self._to(ExitState.SUBMISSION_FAILED, detail=str(error_class), tx_id=tx_id)
                result = (AttemptResult.EXPIRED if error_class is ErrorClass.TX_EXPIRED
                          else AttemptResult.REJECTED)
                self._report(attempt, result, started, tx_id=tx_id,
                             error_class=error_class, error=exc)
                return
            # Outcome unknown: it may still land. Reconcile before sending anything else.
            self.pending[tx_id] = (submission, error_class)
            self.in_flight_submission = None
            self.last_error_class = error_class
            self._to(ExitState.CONFIRMATION_TIMEOUT, detail=str(error_class), tx_id=tx_id)
            self._report(attempt, AttemptResult.TIMEOUT, started, tx_id=tx_id,
                         error_class=error_class, error=exc)
            return
        self.in_flight_submission = None
        self.sm.resolve_pending(tx_id)
        guard._forget(tx_id)
        self._add_fill(fill)
        if self.remaining <= 0:
            self._to(ExitState.POSITION_CLOSED, tx_id=tx_id)
            self._report(attempt, AttemptResult.FILLED, started, tx_id=tx_id, fill=fill)
        else:
            self._to(ExitState.PARTIALLY_FILLED, detail=f"{self.remaining:g} left", tx_id=tx_id)
            self._report(attempt, AttemptResult.PARTIAL, started, tx_id=tx_id, fill=fill)

    # -- reconciliation -------------------------------------------------------------------

    async def _lookup(self, venue: Venue, submission: Submission, limit: float) -> Lookup | None:
        try:
            lookup = await self._venue_call(venue.lookup(submission), limit)
        except Exception as exc:
            self._bad_lookup(submission.tx_id, f"failed: {_describe(exc)}")
            return None
        if not isinstance(lookup, Lookup) or not isinstance(lookup.status, TxStatus):
            self._bad_lookup(submission.tx_id, f"returned garbage ({lookup!r})")
            return None
        if lookup.status is TxStatus.LANDED:
            try:
                self._valid_fill(lookup.fill, submission.order)
            except InvalidVenueResponse as exc:
                self._bad_lookup(submission.tx_id, f"{exc}; still unknown")
                return None
        return lookup

    def _bad_lookup(self, tx_id: str, why: str) -> None:
        """Counted every time; logged at WARNING once per transaction (a look-up that keeps
        failing is polled for minutes), then at DEBUG."""
        self.guard.faults.add(FaultSource.LOOKUP)
        failures = self.lookup_failures.get(tx_id, 0) + 1
        self.lookup_failures[tx_id] = failures
        (_log.warning if failures == 1 else _log.debug)("lookup of %s %s", tx_id, why)

    async def _poll(
        self,
        pending: dict[str, tuple[Submission, ErrorClass]],
        venue: Venue,
        until: float,
        answer: Callable[[str, ErrorClass, Lookup], None],
    ) -> None:
        """Look up every submission in ``pending`` until none is left or loop time ``until``
        passes, backing off between rounds; ``answer`` handles each look-up (and removes what
        resolved)."""
        interval = self.guard.reconcile_interval
        while pending:
            for tx_id, (submission, cause) in list(pending.items()):
                left = until - self.loop.time()
                if left <= 0:
                    return
                lookup = await self._lookup(self.venue_of.get(tx_id, venue), submission,
                                            min(self.policy.attempt_timeout, left))
                if lookup is not None:
                    answer(tx_id, cause, lookup)
            left = until - self.loop.time()
            if not pending or left <= 0:
                return
            await asyncio.sleep(min(interval, left))
            interval = min(interval * 2, self.guard.max_reconcile_interval)

    async def _reconcile(self, venue: Venue) -> None:
        """Resolve pending submissions within the exit deadline."""
        if self.sm.current in (ExitState.CONFIRMATION_TIMEOUT, ExitState.EXIT_SIGNAL_RECEIVED):
            self._to(ExitState.RECONCILING)
        await self._poll(self.pending, venue, self.deadline.expires_at, self._resolved)

    def _resolved(self, tx_id: str, cause: ErrorClass, lookup: Lookup) -> None:
        if self.observer is not None:
            self.observer.reconciled(tx_id, lookup.status)
        if lookup.status is TxStatus.PENDING:
            return
        del self.pending[tx_id]
        self.sm.resolve_pending(tx_id)
        self.guard._forget(tx_id)
        if lookup.status is TxStatus.LANDED and lookup.fill is not None:
            self._add_fill(lookup.fill)
            state = ExitState.POSITION_CLOSED if self.remaining <= 0 else (
                ExitState.PARTIALLY_FILLED
            )
            self._to(state, detail="landed", tx_id=tx_id)
        else:
            self._fail_attempt(cause, f"{tx_id} {lookup.status}")
            self._to(ExitState.SUBMISSION_FAILED, detail=str(lookup.status), tx_id=tx_id)

    async def reconcile_in_background(self) -> None:
        """After an UNRESOLVED exit: keep asking until every submission resolves."""
        route = self.route
        if route is None:
            return
        pending = self.background_pending
        try:
            # The exit has just looked these up: give the venue a moment before asking again.
            await asyncio.sleep(self.guard.reconcile_interval)
            until = self.loop.time() + self.guard.background_reconcile_for
            await self._poll(pending, route.venue, until, self._resolved_late)
            if pending:
                _log.error(
                    "gave up reconciling %s of exit %s after %gs: check them by hand",
                    ", ".join(pending), self.position.id, self.guard.background_reconcile_for,
                )
        finally:
            self.report_unresolved()

    def _resolved_late(self, tx_id: str, cause: ErrorClass, lookup: Lookup) -> None:
        if lookup.status is TxStatus.PENDING:
            return
        if self.background_pending.pop(tx_id, None) is None:
            return  # a new exit of the position took it over meanwhile
        self.guard._forget(tx_id)
        hooks = self.guard._hooks
        if lookup.status is TxStatus.LANDED and lookup.fill is not None:
            _log.error(
                "late fill: %s of exit %s landed after the exit ended (%g @ %g)",
                tx_id, self.position.id, lookup.fill.size, lookup.fill.price,
            )
            self.guard.late_fills.append((self.info, lookup.fill))
            if hooks is not None:
                hooks.late_fill(self.info, lookup.fill)
        if hooks is not None and not self.resumed:
            hooks.pending_resolved(self.info, tx_id, lookup.status)

    def report_unresolved(self) -> None:
        """Report what background reconciliation could not resolve (once): it stops being
        tracked, as PENDING, so gauges of unresolved transactions come back down."""
        pending, self.background_pending = self.background_pending, {}
        if not pending:
            return
        _log.error("reconciliation of %s stopped before they resolved", ", ".join(pending))
        hooks = self.guard._hooks
        if hooks is not None and not self.resumed:
            for tx_id in pending:
                hooks.pending_resolved(self.info, tx_id, TxStatus.PENDING)


#: Errors after which the transaction certainly did not land.
_DID_NOT_LAND = frozenset(
    {ErrorClass.TX_EXPIRED, ErrorClass.SLIPPAGE_EXCEEDED, ErrorClass.INSUFFICIENT_BALANCE,
     ErrorClass.INVALID_ACCOUNT}
)


def _describe(error: BaseException | str) -> str:
    if isinstance(error, str):
        return error
    try:
        text = str(error)
    except Exception:
        text = "<unprintable>"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


__all__ = ["ExitGuard", "ExitOutcome", "ExitStatus", "TransitionRecord", "venue_name"]
