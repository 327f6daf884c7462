"""The drop-in tracker: a bot's own exit code, reported the way ``ExitGuard`` reports an exit.

``track_exit`` gives a ``TrackedExit`` (a context manager, sync or async) and
``TrackedExit.attempt`` a ``TrackedAttempt`` per submission. They keep the exit's books in
the core's ``ExitLedger`` (fills, what is left, dust, the outcome's figures, error texts) and
its path in the core's ``ExitStateMachine``, and report through the same hooks, so a dashboard
cannot tell a tracked exit from a guarded one, and neither can claim more than happened:

- an exit is CLOSED only when its fills (or the bot's explicit ``closed()``) cover the
  position; otherwise it is UNRESOLVED when a submission may still land, else FAILED, with
  what was filled (a partial exit is a FAILED exit with ``filled_size`` and
  ``remaining_size``);
- an attempt that ends with nothing reported is not a fill: sent (``submitted``) it may still
  land (TIMEOUT, reconciled as UNRESOLVED); never sent, it is SEND_FAILED;
- an exception before anything was sent is recorded as "not sent", never as ``submitted``.

Why one module of about 520 lines: it is the exit half of the drop-in (its attempts are in
``attempt.py``, the decorator in ``decorator.py``); the outcome rules above are one decision
read in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from ..clock import wall_time
from ..errors import Classifier, ErrorClass, default_classifier
from ..hooks import (
    AttemptInfo,
    AttemptReport,
    AttemptResult,
    ExitInfo,
    Hooks,
    SafeHooks,
    SafeObserver,
    as_safe_hooks,
)
from ..ledger import ExitLedger, describe_error
from ..outcome import ExitOutcome, ExitStatus
from ..state_machine import ALLOWED, ExitState, ExitStateMachine
from ..venue import ExitOrder, Fill, OrderMode, Position, Side, TxStatus
from .attempt import OK, TrackedAttempt, _number
from .hookset import default_hooks

__all__ = ["TrackedAttempt", "TrackedExit", "current_exit", "track_exit"]

_current: contextvars.ContextVar[TrackedExit | None] = contextvars.ContextVar(
    "exitguard_tracked_exit", default=None
)


def current_exit() -> TrackedExit | None:
    """The exit tracked by the innermost ``track_exit``/``instrumented_exit`` of this task."""
    return _current.get()


#: States a reported fact may pass through to be reachable from where the exit is. Never
#: SUBMITTED: only a reported (or certain) send records it.
_VIA = (ExitState.SUBMISSION_FAILED, ExitState.RECONCILING)


def _path(current: ExitState, target: ExitState) -> list[ExitState]:
    """The shortest allowed path to ``target`` through neutral states (empty if none)."""
    if current is target:
        return []
    queue: deque[tuple[ExitState, list[ExitState]]] = deque([(current, [])])
    seen = {current}
    while queue:
        state, path = queue.popleft()
        if target in ALLOWED[state]:
            return [*path, target]
        for step in _VIA:
            if step in ALLOWED[state] and step not in seen:
                seen.add(step)
                queue.append((step, [*path, step]))
    return []


class TrackedExit:
    """One exit of the bot's own code, reported like a guarded exit (see ``track_exit``)."""

    def __init__(
        self,
        position: Position,
        *,
        signal_price: float,
        guard: str,
        reason: str,
        deadline_s: float,
        venue: str,
        hooks: SafeHooks,
        classify: Classifier,
    ) -> None:
        self.position = position
        self.signal_price = signal_price
        self.guard = guard
        self.reason = reason
        self.deadline_s = deadline_s
        self.venue = venue
        self.outcome: ExitOutcome | None = None
        self.info: ExitInfo | None = None
        self._hooks = hooks
        self._classify = classify
        self._observer: SafeObserver | None = None
        self._clock: Callable[[], float] = time.monotonic
        self._sm: ExitStateMachine | None = None
        self._attempts = 0
        self._open: TrackedAttempt | None = None
        self._ledger = ExitLedger(position)
        self._last_error_class: ErrorClass | None = None
        self._unknown: dict[str, None] = {}  # submissions that may still land
        self._token: contextvars.Token[TrackedExit | None] | None = None

    # -- plumbing ---------------------------------------------------------------------

    def _now(self) -> float:
        return self._clock()

    def _class_of(self, error: BaseException, classify: Classifier | None) -> ErrorClass:
        if isinstance(error, TimeoutError):
            return ErrorClass.RPC_TIMEOUT
        try:
            return (classify or self._classify)(error)
        except Exception:  # a broken classifier never breaks the bot's exit
            return ErrorClass.UNKNOWN

    def _reach(
        self, state: ExitState, *, detail: str = "", tx_id: str | None = None, via: bool = True
    ) -> None:
        sm = self._sm
        assert sm is not None
        direct = [state] if state in ALLOWED[sm.current] else []
        path = _path(sm.current, state) if via else direct
        for step in path:
            record = sm.transition(step, detail=detail if step is state else "",
                                   tx_id=tx_id if step is state else None)
            if self._observer is not None:
                self._observer.transition(record)

    def start(self) -> TrackedExit:
        """Start the exit (``with``/``async with`` does it): the span opens, in-flight goes
        up. Times are the running event loop's, or ``time.monotonic`` outside one."""
        if self.info is not None:
            return self
        with contextlib.suppress(RuntimeError):
            self._clock = asyncio.get_running_loop().time
        started = self._clock()
        self._sm = ExitStateMachine(clock=self._clock)
        self.info = ExitInfo(self.guard, self.position, self.signal_price, self.reason,
                             self.deadline_s, started, wall_time())
        self._observer = self._hooks.exit_started(self.info)
        self._reach(ExitState.EXIT_SIGNAL_RECEIVED, detail=self.reason)
        self._token = _current.set(self)
        return self

    @property
    def current_attempt(self) -> TrackedAttempt | None:
        """The attempt started and not yet finished (with ``@instrumented_exit(mode=...)``,
        the call's own: ``current_exit().current_attempt.submitted(order_id)`` says it left)."""
        return self._open

    def _start_attempt(self, attempt: TrackedAttempt) -> None:
        if self.outcome is not None:
            raise RuntimeError("this exit has already finished")
        if self._open is not None and self._open is not attempt:
            self._open.finish()
        self._open = attempt
        observer = self._observer
        if observer is not None:
            if attempt.info.number > 1 and self._last_error_class is not None:
                observer.retry(self._last_error_class, attempt.info.number)
            observer.attempt_started(attempt.info)

    def _finish_attempt(self, attempt: TrackedAttempt, result: AttemptResult) -> AttemptReport:
        tx_id, fill, ledger = attempt.tx_id, None, self._ledger
        error_class = attempt._error_class
        if attempt._not_sent:
            self._reach(ExitState.SUBMISSION_FAILED, detail=f"not sent: {error_class}",
                        tx_id=tx_id)
        else:
            attempt.submitted()  # every other result means it left
            if result in OK:
                size = attempt._fill_size or 0.0
                if size > 0 and attempt._fill_price is not None:
                    fill = Fill(attempt.pending_id, size, attempt._fill_price)
                    ledger.add(fill)
                elif size > 0:
                    ledger.add_unpriced(size)
                if attempt._may_land:
                    self._unknown[attempt.pending_id] = None
                if ledger.remaining <= 0:
                    self._reach(ExitState.POSITION_CLOSED, tx_id=tx_id)
                else:
                    self._reach(ExitState.PARTIALLY_FILLED, detail=f"{ledger.remaining:g} left",
                                tx_id=tx_id)
            elif result is AttemptResult.TIMEOUT:
                tx_id = attempt.pending_id
                self._unknown[tx_id] = None
                self._reach(ExitState.CONFIRMATION_TIMEOUT, tx_id=tx_id,
                            detail=str(error_class or ErrorClass.RPC_TIMEOUT))
            else:
                self._reach(ExitState.SUBMISSION_FAILED, tx_id=tx_id,
                            detail=str(error_class or result.value))
        if result not in OK:
            self._last_error_class = error_class
        started = attempt._started_at if attempt._started_at is not None else self._now()
        report = AttemptReport(attempt.info, result, tx_id, fill, error_class,
                               attempt._error, self._now() - started)
        if self._observer is not None:
            self._observer.attempt_finished(report)
        if self._open is attempt:
            self._open = None
        return report

    def _finish_open(self, reason: BaseException | str | None = None) -> None:
        attempt = self._open
        if attempt is not None:
            if isinstance(reason, BaseException) and attempt._result is None:
                attempt._raised(reason)
            attempt.finish()

    # -- the bot's calls ------------------------------------------------------------------

    def attempt(
        self,
        mode: OrderMode | str = OrderMode.MARKET,
        *,
        max_slippage_bps: int = 0,
        priority_fee: int | None = None,
        size: float | None = None,
        reference_price: float | None = None,
        venue: str | None = None,
        step: int = 0,
    ) -> TrackedAttempt:
        """A new attempt (started by ``with``/``async with`` or ``.start()``). ``mode`` is
        ``"limit"`` or ``"market"``; ``size`` defaults to what is left to sell."""
        if self.info is None:
            raise RuntimeError("start the exit first (with/async with track_exit(...))")
        order_size = self._ledger.remaining if size is None else _number("size", size)
        if order_size <= 0:
            order_size = self.position.size
        self._attempts += 1
        order = ExitOrder(
            self.position, order_size, OrderMode(mode),
            self.signal_price if reference_price is None else _number(
                "reference_price", reference_price),
            int(max_slippage_bps), self._attempts, priority_fee,
        )
        return TrackedAttempt(self, AttemptInfo(self._attempts, order, step, venue or self.venue))

    def attempt_started(self, mode: OrderMode | str = OrderMode.MARKET,
                        **options: Any) -> TrackedAttempt:
        """``attempt(...)`` started now; finish it with ``attempt_finished`` or ``finish``."""
        return self.attempt(mode, **options).start()

    def attempt_finished(
        self,
        attempt: TrackedAttempt,
        result: AttemptResult | str | None = None,
        *,
        tx_id: str | None = None,
        fill_price: float | None = None,
        fill_size: float | None = None,
        error: BaseException | str | ErrorClass | None = None,
    ) -> AttemptReport:
        """Finish ``attempt`` in one call (the method form of the context manager)."""
        if tx_id is not None:
            attempt.submitted(tx_id)
        if error is not None:
            attempt.failed(error, result=result)
        elif fill_price is not None or fill_size is not None:
            attempt.filled(price=fill_price, size=fill_size)
        return attempt.finish(result)

    def closed(
        self, *, fill_price: float | None = None, filled_size: float | None = None,
        tx_id: str | None = None,
    ) -> ExitOutcome:
        """The bot says the position is closed.

        ``fill_price``/``filled_size`` (the average price and what was sold in all) replace
        the attempts' fills if given; a ``filled_size`` short of the position is reported as
        what it is, a partial exit (FAILED, or UNRESOLVED if something may still land).
        Without them, whatever the attempts did not report is counted as sold at an unknown
        price (so the exit has no average price or slippage unless the attempts priced all).
        """
        self._finish_open()
        if self.outcome is not None:
            return self.outcome
        if fill_price is not None or filled_size is not None:
            ledger = ExitLedger(self.position)
            size = self.position.size if filled_size is None else _number(
                "filled_size", filled_size)
            if fill_price is not None:
                ledger.add(Fill(tx_id or "unknown", size, _number("fill_price", fill_price)))
            else:
                ledger.add_unpriced(size)
            self._ledger = ledger
        elif self._ledger.remaining > 0:
            self._ledger.add_unpriced(self._ledger.remaining)
        return self._settle(None, None, None, None)

    def failed(
        self,
        reason: BaseException | str,
        *,
        error_class: ErrorClass | None = None,
        pending_tx_ids: Sequence[str] | None = None,
        deadline_exceeded: bool | None = None,
    ) -> ExitOutcome:
        """The exit gave up. Submissions that may still land (``pending_tx_ids``, default
        the timed-out or unanswered ones) make it UNRESOLVED rather than FAILED; fills that
        sold the whole position make it CLOSED whatever the reason."""
        self._finish_open(reason)
        if error_class is None and isinstance(reason, Exception):
            error_class = self._class_of(reason, None)
        pending = None if pending_tx_ids is None else tuple(pending_tx_ids)
        return self._settle(describe_error(reason), error_class, pending, deadline_exceeded)

    def refused(self, reason: str = "circuit breaker open") -> ExitOutcome:
        """The bot's own breaker refused the exit; nothing was sent."""
        if self._attempts:
            raise RuntimeError("an exit that made attempts cannot be refused; use failed()")
        self._reach(ExitState.EXIT_REFUSED, detail=reason, via=False)
        return self._finish_with(ExitStatus.REFUSED, reason, None, (), None)

    def resolved(
        self,
        tx_id: str,
        status: TxStatus | str,
        *,
        fill_price: float | None = None,
        fill_size: float | None = None,
    ) -> None:
        """After an UNRESOLVED exit: what became of one of its pending submissions.

        LANDED with ``fill_price`` is a late fill (``fill_size`` defaults to what the exit
        left unsold); PENDING means the bot stopped watching it. Either way it is no longer
        counted as unresolved.
        """
        if self.info is None or self.outcome is None:
            raise RuntimeError("resolved() reports on a finished exit")
        final = TxStatus(status)
        if final is TxStatus.LANDED and fill_price is not None:
            size = (self.outcome.remaining_size or self.position.size) if fill_size is None \
                else _number("fill_size", fill_size)
            self._hooks.late_fill(self.info, Fill(tx_id, size, _number("fill_price", fill_price)))
        self._hooks.pending_resolved(self.info, tx_id, final)

    # -- the verdict ------------------------------------------------------------------------

    def _settle(
        self, why: str | None, error_class: ErrorClass | None,
        pending: tuple[str, ...] | None, deadline_exceeded: bool | None,
    ) -> ExitOutcome:
        """End the exit as its books say: CLOSED when the fills cover the position,
        UNRESOLVED when a submission may still land, FAILED otherwise."""
        if self.outcome is not None:
            return self.outcome
        if self._sm is None:
            raise RuntimeError("start the exit first (with/async with track_exit(...))")
        ledger = self._ledger
        if error_class is None:
            error_class = self._last_error_class
        if ledger.remaining <= 0:
            self._reach(ExitState.POSITION_CLOSED)
            return self._finish_with(ExitStatus.CLOSED, "closed", None, (), deadline_exceeded)
        pending = tuple(self._unknown) if pending is None else pending
        sold = ledger.filled
        what = (f"partially filled: {sold:g} of {self.position.size:g} sold,"
                f" {ledger.remaining:g} left" if sold > 0 else
                "no attempt was reported" if not self._attempts else "nothing was filled")
        if pending:
            status, state = ExitStatus.UNRESOLVED, ExitState.EXIT_UNRESOLVED
            default = f"{what}; {len(pending)} submission(s) may still land"
        else:
            status, state, default = ExitStatus.FAILED, ExitState.EXIT_FAILED, what
        why = why or default
        if not self._sm.is_complete():
            self._reach(state, detail=why, via=False)
        return self._finish_with(status, why, error_class, pending, deadline_exceeded)

    def _finish_with(
        self, status: ExitStatus, why: str, error_class: ErrorClass | None,
        pending: tuple[str, ...], deadline_exceeded: bool | None,
    ) -> ExitOutcome:
        if self.outcome is not None:
            return self.outcome
        if self.info is None or self._sm is None:
            raise RuntimeError("start the exit first (with/async with track_exit(...))")
        elapsed = self._now() - self.info.started_at
        outcome = self._ledger.outcome(
            status, guard=self.guard, venue=self.venue, attempts=self._attempts,
            elapsed_s=elapsed, signal_price=self.signal_price, error_class=error_class,
            reason=why, pending_tx_ids=pending, history=self._sm.history,
            deadline_exceeded=(elapsed > self.deadline_s if deadline_exceeded is None
                               else deadline_exceeded),
        )
        self.outcome = outcome
        if self._observer is not None:
            self._observer.exit_finished(outcome)
        self._release()
        return outcome

    def _release(self) -> None:
        token, self._token = self._token, None
        if token is not None:
            # Finished from another task/context: leave that one alone.
            with contextlib.suppress(ValueError):
                _current.reset(token)

    def __enter__(self) -> TrackedExit:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.outcome is None:
            if exc is None:
                self._finish_open()
                self._settle(None, None, None, None)
            elif not isinstance(exc, Exception):  # cancelled, interrupted
                self._finish_open(exc)
                self.failed("cancelled")
            else:
                self.failed(exc)
        self._release()

    async def __aenter__(self) -> TrackedExit:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def track_exit(
    position: Position | None = None,
    *,
    position_id: str | None = None,
    symbol: str | None = None,
    size: float | None = None,
    signal_price: float,
    guard_name: str = "default",
    reason: str = "exit",
    deadline: float = 30.0,
    entry_price: float | None = None,
    side: Side = "long",
    venue: str = "custom",
    hooks: Hooks | Sequence[Hooks] | None = None,
    classify: Classifier = default_classifier,
    guard: str | None = None,
    deadline_s: float | None = None,
) -> TrackedExit:
    """Record an exit run by the bot's own code, as ``ExitGuard`` would report it::

        async with track_exit(position_id="pos-1", symbol="SOL", size=10.0,
                              signal_price=95.0, guard_name="mybot") as exit_:
            async with exit_.attempt(mode="limit", max_slippage_bps=100) as attempt:
                attempt.submitted(tx_id)
                attempt.filled(price=fill_price)
            # exit_.closed(...) / exit_.failed(reason) for an explicit verdict

    ``with`` works the same for synchronous code. A block that ends without a verdict ends
    as its attempts say: CLOSED only if their fills cover the position; UNRESOLVED if a
    submission may still land (timed out, or sent with no outcome reported); FAILED
    otherwise (nothing or only part filled: ``outcome.filled_size`` says how much). One left
    by an exception likewise, with the exception as the reason; it propagates. Pass
    ``position`` (an exitguard Position) or ``position_id``, ``symbol`` and ``size``.
    ``entry_price`` (default: the signal price) is what the loss amplification is measured
    against. ``hooks`` default to ``default_hooks()``. ``guard_name`` is the name the exit
    is reported under (an ``ExitGuard``'s ``name``); ``deadline`` the exit's time bound in
    seconds. ``guard=`` and ``deadline_s=`` are their former names, deprecated.
    """
    guard_name, deadline = _renamed(guard_name, guard, deadline, deadline_s)
    signal = _number("signal_price", signal_price)
    if position is None:
        if position_id is None or size is None:
            raise TypeError("track_exit needs position=... or position_id=... and size=...")
        position = Position(
            str(position_id), str(symbol or ""), _number("size", size),
            signal if entry_price is None else _number("entry_price", entry_price), side,
        )
    elif not isinstance(position, Position):
        raise TypeError(f"position must be an exitguard.Position, got {type(position)!r}")
    if hooks is None:
        safe: SafeHooks | None = default_hooks()
    elif isinstance(hooks, SafeHooks):  # kept: its failures are logged once across exits
        safe = hooks
    else:
        safe = as_safe_hooks(hooks)
    return TrackedExit(
        position, signal_price=signal, guard=guard_name, reason=str(reason),
        deadline_s=_number("deadline", deadline), venue=venue,
        hooks=safe if safe is not None else SafeHooks(), classify=classify,
    )


def _renamed(
    guard_name: str, guard: str | None, deadline: float, deadline_s: float | None
) -> tuple[str, float]:
    """``guard_name`` and ``deadline``, or their deprecated former names if given."""
    if guard is not None:
        warnings.warn("track_exit(guard=...) is now guard_name=...", DeprecationWarning,
                      stacklevel=3)
        guard_name = guard
    if deadline_s is not None:
        warnings.warn("deadline_s=... is now deadline=... (seconds)", DeprecationWarning,
                      stacklevel=3)
        deadline = deadline_s
    return guard_name, deadline
