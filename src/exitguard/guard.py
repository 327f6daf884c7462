"""ExitGuard: one call that exits a position within a hard deadline and never sells twice.

This module is the wiring: the routes (a venue and its circuit breaker each, fallbacks after
the primary), the hooks, the halt, and the ``PositionBook`` that owns every submission that
may still land. One exit's steps live in ``exit_run.py``; the rules it keeps:

- **one exit per position at a time**: a second ``exit()`` of a position whose exit is
  running waits for that exit and returns its outcome (nothing more is sent);
- **what landed is subtracted**: the guard keeps each position id's sold quantity across
  exits (and, with a pending store, across restarts), so a re-exit sells only what is held;
- **an unknown outcome is reconciled before anything else is sent**: a submission is tracked
  before it is sent; a submit that does not prove "not sent", a confirmation that times out
  or answers nonsense, all stay tracked until ``venue.lookup`` says landed or dead;
- **an exit is bounded and never refused**: with every breaker open the exit goes to the
  first route as that breaker's probe (``refuse_when_open=True`` restores refusing).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Sequence

from ._validate import is_finite
from .book import PositionBook
from .breaker import BreakerState, CircuitBreaker, Permit
from .calls import VenueCalls
from .errors import Classifier, ConfigError, default_classifier
from .events import HaltNotSaved
from .exit_run import ExitRun, Route
from .faults import FaultCounts, FaultSource
from .halt import HaltRecord, TradingHalt
from .hooks import ExitInfo, Hooks, SafeHooks, as_safe_hooks
from .ledger import describe_error
from .outcome import ExitOutcome, ExitStatus
from .pending import PendingStore
from .policy import EscalationLadder, RetryPolicy
from .redaction import get_logger
from .state_machine import TransitionRecord
from .venue import Fill, Position, Venue

_log = get_logger("exitguard.guard")

#: The shortest reconcile interval accepted: faster only multiplies look-ups.
MIN_RECONCILE_INTERVAL = 0.01


def venue_name(venue: object) -> str:
    name = getattr(venue, "name", None)
    return name if isinstance(name, str) and name else type(venue).__name__


class ExitGuard:
    """Bounded, escalating, observable exits against a Venue.

    ``deadline`` (seconds) bounds the whole exit, reconciliation included; the policy's
    ``total_timeout`` bounds the submission phase. Halts block entries (``check_entry``),
    never exits. Pass ``halt=TradingHalt(...)`` to halt entries when a breaker trips, and
    ``pending_store=FilePendingStore(...)`` so what may still land survives a restart.
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
        refuse_when_open: bool = False,
    ) -> None:
        for field, value in (
            ("deadline", deadline),
            ("reconcile_interval", reconcile_interval),
            ("max_reconcile_interval", max_reconcile_interval),
            ("background_reconcile_for", background_reconcile_for),
        ):
            if not (is_finite(value) and value > 0):
                raise ConfigError("ExitGuard", field, "must be a finite number > 0", value)
        if reconcile_interval < MIN_RECONCILE_INTERVAL:
            raise ConfigError("ExitGuard", "reconcile_interval",
                              f"must be >= {MIN_RECONCILE_INTERVAL}s (each round is a look-up"
                              " per pending transaction)", reconcile_interval)
        if not name or not isinstance(name, str):
            raise ConfigError("ExitGuard", "name", "must be a non-empty string", name)
        if not isinstance(refuse_when_open, bool):
            raise ConfigError("ExitGuard", "refuse_when_open", "must be a bool", refuse_when_open)
        self.name = name
        self.policy = policy or RetryPolicy.exit_policy()
        self.deadline = float(deadline)
        self.ladder = ladder or EscalationLadder.default()
        self.classify = classify
        self.halt = halt
        self.refuse_when_open = refuse_when_open
        self.reconcile_interval = float(reconcile_interval)
        self.max_reconcile_interval = max(float(max_reconcile_interval), self.reconcile_interval)
        self.background_reconcile_for = float(background_reconcile_for)
        self._hooks: SafeHooks | None = as_safe_hooks(hooks)
        primary_breaker = breaker or CircuitBreaker(name=venue_name(venue))
        self.breaker = primary_breaker
        self._routes = [Route(venue, primary_breaker, venue_name(venue))]
        for item in fallback_venues:
            if isinstance(item, tuple):
                fallback, fallback_breaker = item
            else:
                fallback = item
                fallback_breaker = primary_breaker.clone(venue_name(item))
            self._routes.append(Route(fallback, fallback_breaker, venue_name(fallback)))
        self._route_by_name = {route.name: route for route in reversed(self._routes)}
        seen: set[int] = set()
        for route in self._routes:
            if id(route.breaker) not in seen:
                seen.add(id(route.breaker))
                route.breaker.add_listener(self._on_breaker_transition)
        if halt is not None:
            halt.on_halt(self._on_halt)
            halt.on_resume(self._on_resume)
            halt.on_store_failure(self._on_halt_not_saved)
        self.pending_store = pending_store
        self.in_flight = 0
        self.faults = FaultCounts()
        self.calls = VenueCalls(self.faults)
        self.book = PositionBook(
            guard=name, store=pending_store, faults=self.faults, calls=self.calls,
            venue_of=self._venue_of, hooks=lambda: self._hooks,
            lookup_limit=lambda: self.policy.attempt_timeout,
            reconcile_interval=self.reconcile_interval,
            max_reconcile_interval=self.max_reconcile_interval,
            background_for=self.background_reconcile_for,
        )

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
        the guard's own, its hooks', its halt store's and its shared breakers'. Each was logged
        where it happened (once per kind); ``exitguard_faults_total`` exposes these counts."""
        counts = self.faults.snapshot()
        if self._hooks is not None:
            counts[FaultSource.HOOK] += self._hooks.failure_total
        if self.halt is not None:
            counts[FaultSource.HALT_STORE] += self.halt.store_failures
        breakers = {id(route.breaker): route.breaker for route in self._routes}
        counts[FaultSource.BREAKER_STORE] += sum(b.shared_failures for b in breakers.values())
        return counts

    @property
    def routes(self) -> tuple[tuple[str, CircuitBreaker], ...]:
        return tuple((route.name, route.breaker) for route in self._routes)

    def _venue_of(self, route_name: str) -> Venue:
        route = self._route_by_name.get(route_name)
        return (route or self._routes[0]).venue

    def _on_breaker_transition(
        self, breaker: str, old: BreakerState, new: BreakerState, reason: str
    ) -> None:
        if self._hooks is not None:
            self._hooks.breaker_transition(self.name, breaker, old, new)
        if new is BreakerState.OPEN and self.halt is not None:
            self.halt.halt(f"circuit breaker {breaker} opened: {reason}")

    def _on_halt(self, record: HaltRecord) -> None:
        if self._hooks is not None:
            command = self.halt.resume_command() if self.halt is not None else None
            self._hooks.halted(self.name, record, command)

    def _on_halt_not_saved(self, error: str) -> None:
        if self._hooks is not None:
            self._hooks.emit(HaltNotSaved(self.name, error))

    def _on_resume(self, record: HaltRecord) -> None:
        if self._hooks is not None:
            self._hooks.resumed(self.name, record)

    def check_entry(self) -> None:
        """Raise TradingHalted while halted. Call before entries; exits are never halted."""
        if self.halt is not None:
            self.halt.check_entry()

    def pick_route(self) -> tuple[Route, Permit] | None:
        """The first route whose breaker lets an exit through; with every breaker open, the
        first route as its breaker's probe (None only with ``refuse_when_open``)."""
        for route in self._routes:
            permit = route.breaker.allow()
            if permit is not None:
                return route, permit
        if self.refuse_when_open:
            return None
        route = self._routes[0]
        return route, route.breaker.probe_anyway()

    # -- what may still land ----------------------------------------------------------------

    @property
    def reconciling(self) -> int:
        """Background reconciliations still running."""
        return len(self.book.background)

    @property
    def late_fills(self) -> deque[tuple[ExitInfo, Fill]]:
        """Landings found after their exit had ended (the most recent 1,000)."""
        return self.book.late_fills

    @property
    def pending_store_error(self) -> str | None:
        """The first pending-store failure, if any (records written since may be missing)."""
        return self.book.store_error

    @property
    def pending_tx_ids(self) -> tuple[str, ...]:
        """Every submission that may still land, of this process's exits or an earlier
        process's (with a pending store). They stay listed until a look-up resolves them:
        giving up polling or ``aclose()`` never forgets one."""
        try:
            return self.book.pending_tx_ids()
        except Exception as exc:
            self.faults.add(FaultSource.PENDING_STORE)
            _log.error("cannot read the pending store: %s", describe_error(exc))
            return ()

    def sold(self, position_id: str) -> float:
        """What this guard's exits of ``position_id`` have sold so far (all exits)."""
        return self.book.entry(position_id).sold

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait for background reconciliation; True if all finished in time."""
        tasks = set(self.book.background)
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        return not pending

    async def aclose(self) -> None:
        """Stop background reconciliation. What it had not resolved stays tracked (and in
        the pending store): the next exit of the position reconciles it first."""
        tasks = set(self.book.background)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        left = self.book.pending_tx_ids()
        if left:
            _log.warning("closed with %d submission(s) that may still land: %s", len(left),
                         ", ".join(left))

    def _store_unreadable(self, exc: BaseException) -> None:
        """Counted, and entries halted (if a halt is configured): what an earlier process
        left may still land and cannot be known."""
        self.faults.add(FaultSource.PENDING_STORE)
        if self.halt is not None:
            self.halt.halt(f"pending store unreadable: {describe_error(exc)}",
                           actor="pending_store")

    async def resume_pending(self) -> int:
        """After a restart: take over what the pending store holds for this guard and
        reconcile it in the background (a landing is a late fill and is subtracted from the
        position). Returns how many submissions it took over. An unreadable store halts
        entries (if a halt is configured) and raises."""
        if self.pending_store is None:
            return 0
        try:
            taken = self.book.load()
        except Exception as exc:
            self._store_unreadable(exc)
            raise
        for entry in self.book.entries():
            if entry.active is None:
                self.book.reconcile_in_background(entry, delay=0.0)
        if taken:
            _log.warning("resumed reconciliation of %d submission(s) left by an earlier process",
                         taken)
        return taken

    # -- the exit -------------------------------------------------------------------------

    async def exit(
        self, position: Position, *, signal_price: float, reason: str = "exit"
    ) -> ExitOutcome:
        """Exit ``position``; always returns an outcome for venue errors, within the deadline.

        A position id has at most one exit at a time: calling ``exit`` again while one runs
        waits for it and returns the same outcome. Bad input (not a Position, a non-finite
        or non-positive signal price) raises before any venue call.
        """
        if not isinstance(position, Position):
            raise TypeError(f"position must be an exitguard.Position, got {type(position)!r}")
        if not (is_finite(signal_price) and signal_price > 0):
            raise ValueError(f"signal_price must be a finite number > 0, got {signal_price!r}")
        if not (math.isfinite(position.size) and position.size > 0):
            raise ValueError(f"position.size must be a finite number > 0, got {position.size!r}")
        try:
            entry = self.book.entry(position.id)
        except Exception as exc:  # the store cannot be read: exit anyway, say it loudly
            _log.error("pending store unreadable (%s): exiting %s without what an earlier"
                       " process recorded", describe_error(exc), position.id)
            self._store_unreadable(exc)
            self.book.mark_loaded()
            entry = self.book.entry(position.id)
        if entry.active is not None:
            joined = await asyncio.shield(entry.active)
            assert isinstance(joined, ExitOutcome)
            return joined
        done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        entry.active = done
        run = ExitRun(self, entry, position, float(signal_price), str(reason))
        try:
            outcome = await run.execute()
        except BaseException as exc:
            if not done.done():
                if run.outcome is not None:  # cancelled: joiners get the outcome it left
                    done.set_result(run.outcome)
                else:
                    done.set_exception(exc)
                    done.exception()  # a joiner may never come: mark it retrieved
            raise
        else:
            done.set_result(outcome)
            return outcome
        finally:
            entry.active = None


__all__ = ["ExitGuard", "ExitOutcome", "ExitStatus", "Route", "TransitionRecord", "venue_name"]
