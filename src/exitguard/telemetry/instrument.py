"""One call to instrument a guard, and a drop-in for bots that keep their own exit code.

Instrument a guard (metrics, traces, logs, any combination)::

    from exitguard import ExitGuard
    from exitguard import telemetry

    guard = ExitGuard(venue, name="mybot")
    telemetry.instrument(guard)                       # all three, global registry/provider
    # or at construction:
    guard = ExitGuard(venue, name="mybot", hooks=telemetry.hooks(logs=False))

Drop-in, around existing exit code (the same metrics, spans and logs as the guard)::

    import asyncio
    from exitguard import telemetry

    async def sell(size: float) -> float:               # the bot's own code
        await asyncio.sleep(0.01)
        return 94.9

    async def main() -> None:
        async with telemetry.track_exit(position_id="pos-1", symbol="SOL", size=10.0,
                                        signal_price=95.0, guard_name="mybot") as exit_:
            async with exit_.attempt(mode="limit", max_slippage_bps=100) as attempt:
                attempt.submitted("tx-1")
                price = await sell(10.0)
                attempt.filled(price=price)
        print(exit_.outcome.status if exit_.outcome else None)   # closed

    asyncio.run(main())

or, as a decorator (each call is one exit with one ``mode`` attempt; the function's
parameters ``position`` (or ``position_id``/``symbol``/``size``) and ``signal_price`` say
what is exited; a returned fill (``.price``/``.size``) or price gives the figures; an
exception is a failed exit and propagates)::

    @telemetry.instrumented_exit(guard_name="mybot", mode="market")
    async def close_position(position: Position, signal_price: float) -> Fill:
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import math
import warnings
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from .._validate import is_real, positive
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
from ..outcome import ExitOutcome, ExitStatus, exit_figures
from ..state_machine import ALLOWED, ExitState, ExitStateMachine
from ..venue import ExitOrder, Fill, OrderMode, Position, Side, TxStatus

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider
    from prometheus_client import CollectorRegistry

    from ..guard import ExitGuard
    from .logs import LogHooks
    from .otel import TracingHooks
    from .prometheus import PrometheusHooks

__all__ = [
    "Instrumentation",
    "TrackedAttempt",
    "TrackedExit",
    "current_exit",
    "default_hooks",
    "instrument",
    "instrumented_exit",
    "make_hooks",
    "set_default_hooks",
    "track_exit",
]


# -- instrumenting a guard ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Instrumentation:
    """What ``instrument`` attached: the chosen hooks as one ``SafeHooks``, in call order
    (traces, metrics, logs), and each of them (None when not chosen)."""

    hooks: SafeHooks
    prometheus: PrometheusHooks | None
    tracing: TracingHooks | None
    logs: LogHooks | None


def _build(
    metrics: bool, traces: bool, logs: bool, registry: CollectorRegistry | None,
    tracer_provider: TracerProvider | None, logger: Any,
) -> Instrumentation:
    tracing_hooks = prometheus_hooks = log_hooks = None
    if traces:
        from .otel import TracingHooks

        tracing_hooks = TracingHooks(tracer_provider)
    if metrics:
        from .prometheus import PrometheusHooks

        prometheus_hooks = PrometheusHooks(registry)
    if logs:
        from .logs import LogHooks

        log_hooks = LogHooks(logger)
    # Traces first: SafeHooks delivers events in order (the span is current when the others
    # observe) and ending events in reverse order (the span is still current while metrics
    # read its trace id for the exemplar and logs their ids).
    chosen = [h for h in (tracing_hooks, prometheus_hooks, log_hooks) if h is not None]
    return Instrumentation(SafeHooks(*chosen), prometheus_hooks, tracing_hooks, log_hooks)


def make_hooks(
    *,
    metrics: bool = True,
    traces: bool = True,
    logs: bool = True,
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
    logger: Any = None,
) -> SafeHooks:
    """The telemetry hooks, as one ``SafeHooks``, for ``ExitGuard(venue, hooks=...)``.

    Exported as ``exitguard.telemetry.hooks``. ``registry``: Prometheus registry (default
    the global one); ``tracer_provider``: OpenTelemetry provider (default the global one);
    ``logger``: structlog logger (default ``structlog.get_logger("exitguard")``).
    """
    return _build(metrics, traces, logs, registry, tracer_provider, logger).hooks


def instrument(
    guard: ExitGuard,
    *,
    metrics: bool = True,
    traces: bool = True,
    logs: bool = True,
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
    logger: Any = None,
) -> Instrumentation:
    """Attach metrics, traces and logs (any combination) to ``guard``.

    The guard's series start at once (breaker states, halt, zeroed counters), so a
    dashboard or an alert sees them before the first exit.
    """
    built = _build(metrics, traces, logs, registry, tracer_provider, logger)
    if built.hooks.hooks:
        guard.add_hooks(built.hooks)
    if built.prometheus is not None:
        built.prometheus.watch(guard)
    return built


_default: SafeHooks | None = None


def set_default_hooks(*hooks: Hooks) -> None:
    """The hooks ``track_exit``/``instrumented_exit`` use when not given any.

    Without a call, they are ``make_hooks()`` (metrics, traces and logs, on the global
    registry, tracer provider and structlog configuration), built on first use.
    """
    global _default
    _default = SafeHooks(*hooks)


def default_hooks() -> SafeHooks:
    global _default
    if _default is None:
        _default = SafeHooks(make_hooks())
    return _default


# -- the drop-in ---------------------------------------------------------------------------

_current: contextvars.ContextVar[TrackedExit | None] = contextvars.ContextVar(
    "exitguard_tracked_exit", default=None
)


def current_exit() -> TrackedExit | None:
    """The exit tracked by the innermost ``track_exit``/``instrumented_exit`` of this task."""
    return _current.get()


_OK = frozenset({AttemptResult.FILLED, AttemptResult.PARTIAL})
#: The error class a failed attempt stands for when the bot gave none.
_RESULT_CLASS = {
    AttemptResult.SEND_FAILED: ErrorClass.NETWORK,
    AttemptResult.TIMEOUT: ErrorClass.RPC_TIMEOUT,
    AttemptResult.EXPIRED: ErrorClass.TX_EXPIRED,
    AttemptResult.REJECTED: ErrorClass.UNKNOWN,
}
#: States a reported fact may pass through to be reachable from where the exit is.
_VIA = (ExitState.SUBMITTED, ExitState.SUBMISSION_FAILED, ExitState.RECONCILING)


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


def _number(name: str, value: object) -> float:
    """A size or price given to the tracker: a finite number > 0 (ConfigError otherwise)."""
    return positive("track_exit", name, value)


def _describe(error: BaseException | str) -> str:
    if isinstance(error, str):
        return error
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class TrackedAttempt:
    """One submission of a tracked exit. Use it as an async context manager, or call
    ``start()`` and ``finish()``; in between, report what happened: ``submitted(tx_id)``,
    ``filled(price=..., size=...)``, ``timed_out()``, ``failed(error)``.

    An attempt that ends without a reported result is FILLED; one left by an exception is
    SEND_FAILED (nothing submitted yet), TIMEOUT (a TimeoutError/RPC timeout: it may still
    land), EXPIRED or REJECTED, by the error's class; the exception propagates.
    """

    __slots__ = (
        "_assume_sent", "_error", "_error_class", "_exit", "_fill", "_result", "_started_at",
        "_submitted", "info", "report", "tx_id",
    )

    def __init__(self, exit_: TrackedExit, info: AttemptInfo) -> None:
        self._exit = exit_
        self.info = info
        self.tx_id: str | None = None
        self.report: AttemptReport | None = None
        self._result: AttemptResult | None = None
        self._fill: Fill | None = None
        self._error: str | None = None
        self._error_class: ErrorClass | None = None
        self._started_at: float | None = None
        self._submitted = False
        self._assume_sent = False  # the decorator: the call itself is the submission

    @property
    def number(self) -> int:
        return self.info.number

    def start(self) -> TrackedAttempt:
        if self._started_at is None:
            self._exit._start_attempt(self)
            self._started_at = self._exit._now()
        return self

    def submitted(self, tx_id: str | None = None) -> None:
        """The order was sent (``tx_id``: the venue's id for it, if any)."""
        if tx_id is not None:
            self.tx_id = tx_id
        if not self._submitted:
            self._submitted = True
            self._exit._reach(ExitState.SUBMITTED, detail=self.info.order.mode.value,
                              tx_id=self.tx_id)

    def filled(
        self, *, price: float | None = None, size: float | None = None, tx_id: str | None = None
    ) -> None:
        """It filled: ``size`` (default: the whole order) at ``price`` (if known)."""
        if tx_id is not None:
            self.tx_id = tx_id
        order_size = self.info.order.size
        filled = order_size if size is None else min(_number("size", size), order_size)
        if price is not None:
            self._fill = Fill(self.tx_id or "unknown", filled, _number("price", price))
        self._result = (AttemptResult.FILLED if filled >= order_size * (1 - 1e-9)
                        else AttemptResult.PARTIAL)
        self._exit._filled_without_price += 0.0 if price is not None else filled

    def timed_out(self, tx_id: str | None = None) -> None:
        """No confirmation came in time: it may still land."""
        if tx_id is not None:
            self.tx_id = tx_id
        self._result = AttemptResult.TIMEOUT
        self._error_class = ErrorClass.RPC_TIMEOUT

    def failed(
        self,
        error: BaseException | str | ErrorClass,
        *,
        result: AttemptResult | str | None = None,
        classify: Classifier | None = None,
    ) -> None:
        """It failed; ``error`` is the exception, a text or an ErrorClass. The result
        defaults from the error class (and whether ``submitted`` was called)."""
        if isinstance(error, ErrorClass):
            error_class, text = error, None
        else:
            if isinstance(error, BaseException):
                if isinstance(error, TimeoutError):
                    error_class = ErrorClass.RPC_TIMEOUT
                else:
                    error_class = (classify or self._exit._classify)(error)
            else:
                error_class = (classify or self._exit._classify)(Exception(error))
            text = _describe(error)
        self._error_class, self._error = error_class, text
        if result is not None:
            self._result = AttemptResult(result)
        elif not self._submitted and (
            not self._assume_sent or error_class is ErrorClass.NETWORK
        ):
            self._result = AttemptResult.SEND_FAILED
        elif error_class is ErrorClass.RPC_TIMEOUT:
            self._result = AttemptResult.TIMEOUT
        elif error_class is ErrorClass.TX_EXPIRED:
            self._result = AttemptResult.EXPIRED
        else:
            self._result = AttemptResult.REJECTED

    def finish(self, result: AttemptResult | str | None = None) -> AttemptReport:
        """Report the attempt (once; later calls return the same report)."""
        if self.report is not None:
            return self.report
        self.start()
        if result is not None:
            self._result = AttemptResult(result)
        final = self._result if self._result is not None else AttemptResult.FILLED
        if final not in _OK and self._error_class is None:
            self._error_class = _RESULT_CLASS[final]
        self.report = self._exit._finish_attempt(self, final)
        return self.report

    async def __aenter__(self) -> TrackedAttempt:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and self._result is None:
            self.failed(exc if isinstance(exc, Exception) else "cancelled")
        self.finish()


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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sm: ExitStateMachine | None = None
        self._attempts = 0
        self._open: TrackedAttempt | None = None
        self._fills: list[Fill] = []
        self._filled_without_price = 0.0
        self._remaining = position.size
        self._last_error_class: ErrorClass | None = None
        self._unknown: dict[str, None] = {}  # timed-out submissions that may still land
        self._token: contextvars.Token[TrackedExit | None] | None = None

    # -- plumbing ---------------------------------------------------------------------

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

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
        """Start the exit (``async with`` does it): the span opens, in-flight goes up."""
        if self.info is not None:
            return self
        self._loop = asyncio.get_running_loop()
        started = self._loop.time()
        self._sm = ExitStateMachine(clock=self._loop.time)
        self.info = ExitInfo(self.guard, self.position, self.signal_price, self.reason,
                             self.deadline_s, started, wall_time())
        self._observer = self._hooks.exit_started(self.info)
        self._reach(ExitState.EXIT_SIGNAL_RECEIVED, detail=self.reason)
        self._token = _current.set(self)
        return self

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
        tx_id = attempt.tx_id
        fill = attempt._fill
        if result is AttemptResult.SEND_FAILED:
            self._reach(ExitState.SUBMISSION_FAILED, detail="send failed")
        else:
            attempt.submitted()
            if result in _OK:
                filled = fill.size if fill is not None else (
                    attempt.info.order.size if result is AttemptResult.FILLED else 0.0
                )
                if fill is not None:
                    self._fills.append(fill)
                self._remaining = max(0.0, self._remaining - filled)
                if self._remaining <= 1e-9 * self.position.size:
                    self._remaining = 0.0
                    self._reach(ExitState.POSITION_CLOSED, tx_id=tx_id)
                else:
                    self._reach(ExitState.PARTIALLY_FILLED, detail=f"{self._remaining:g} left",
                                tx_id=tx_id)
            elif result is AttemptResult.TIMEOUT:
                if tx_id is not None:
                    self._unknown[tx_id] = None
                self._reach(ExitState.CONFIRMATION_TIMEOUT, tx_id=tx_id,
                            detail=str(attempt._error_class or ErrorClass.RPC_TIMEOUT))
            else:
                self._reach(ExitState.SUBMISSION_FAILED, tx_id=tx_id,
                            detail=str(attempt._error_class or result.value))
        if result not in _OK:
            self._last_error_class = attempt._error_class
        started = attempt._started_at if attempt._started_at is not None else self._now()
        report = AttemptReport(attempt.info, result, tx_id, fill, attempt._error_class,
                               attempt._error, self._now() - started)
        if self._observer is not None:
            self._observer.attempt_finished(report)
        if self._open is attempt:
            self._open = None
        return report

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
        """A new attempt (started by ``async with`` or ``.start()``). ``mode`` is
        ``"limit"`` or ``"market"``; ``size`` defaults to what is left to sell."""
        if self.info is None:
            raise RuntimeError("start the exit first (async with track_exit(...))")
        order_size = self._remaining if size is None else _number("size", size)
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
        """The position is closed. ``fill_price``/``filled_size`` (the average price and
        what was sold, default the whole position) replace the attempts' fills if given."""
        if self._open is not None:
            self._open.finish()
        fills = list(self._fills)
        if fill_price is not None:
            size = self.position.size if filled_size is None else _number(
                "filled_size", filled_size)
            fills = [Fill(tx_id or "unknown", size, _number("fill_price", fill_price))]
        if not fills or (fill_price is None and self._filled_without_price > 0):
            # No price known for (some of) what was sold: report the size, no figures.
            size = filled_size if filled_size is not None else self.position.size
            return self._finish_with(ExitStatus.CLOSED, "closed", fills=tuple(fills),
                                     filled_override=_number("filled_size", size))
        return self._finish_with(ExitStatus.CLOSED, "closed", fills=tuple(fills))

    def failed(
        self,
        reason: BaseException | str,
        *,
        error_class: ErrorClass | None = None,
        pending_tx_ids: Sequence[str] | None = None,
        deadline_exceeded: bool | None = None,
    ) -> ExitOutcome:
        """The exit gave up. Submissions that may still land (``pending_tx_ids``, default
        the timed-out ones) make it UNRESOLVED rather than FAILED."""
        if self._open is not None:
            if isinstance(reason, BaseException) and self._open._result is None:
                self._open.failed(reason if isinstance(reason, Exception) else "cancelled")
            self._open.finish()
        if error_class is None:
            if isinstance(reason, Exception):
                error_class = (ErrorClass.RPC_TIMEOUT if isinstance(reason, TimeoutError)
                               else self._classify(reason))
            else:
                error_class = self._last_error_class
        pending = tuple(self._unknown if pending_tx_ids is None else pending_tx_ids)
        why = _describe(reason)
        if self.outcome is not None:
            return self.outcome
        if pending:
            self._reach(ExitState.EXIT_UNRESOLVED, detail=why, via=False)
            status = ExitStatus.UNRESOLVED
        else:
            status = ExitStatus.FAILED
        if self._sm is not None and not self._sm.is_complete():
            self._reach(ExitState.EXIT_FAILED, detail=why, via=False)
        return self._finish_with(status, why, fills=tuple(self._fills), error_class=error_class,
                                 pending=pending, deadline_exceeded=deadline_exceeded)

    def refused(self, reason: str = "circuit breaker open") -> ExitOutcome:
        """The bot's own breaker refused the exit; nothing was sent."""
        if self._attempts:
            raise RuntimeError("an exit that made attempts cannot be refused; use failed()")
        self._reach(ExitState.EXIT_REFUSED, detail=reason, via=False)
        return self._finish_with(ExitStatus.REFUSED, reason, fills=())

    def resolved(
        self,
        tx_id: str,
        status: TxStatus | str,
        *,
        fill_price: float | None = None,
        fill_size: float | None = None,
    ) -> None:
        """After an UNRESOLVED exit: what became of one of its pending submissions.

        LANDED with ``fill_price`` is a late fill (``fill_size`` defaults to the whole
        position); PENDING means the bot stopped watching it. Either way it is no longer
        counted as unresolved.
        """
        if self.info is None or self.outcome is None:
            raise RuntimeError("resolved() reports on a finished exit")
        final = TxStatus(status)
        if final is TxStatus.LANDED and fill_price is not None:
            size = self.position.size if fill_size is None else _number("fill_size", fill_size)
            self._hooks.late_fill(self.info, Fill(tx_id, size, _number("fill_price", fill_price)))
        self._hooks.pending_resolved(self.info, tx_id, final)

    def _finish_with(
        self,
        status: ExitStatus,
        why: str,
        *,
        fills: tuple[Fill, ...],
        filled_override: float | None = None,
        error_class: ErrorClass | None = None,
        pending: tuple[str, ...] = (),
        deadline_exceeded: bool | None = None,
    ) -> ExitOutcome:
        if self.outcome is not None:
            return self.outcome
        if self.info is None or self._sm is None:
            raise RuntimeError("start the exit first (async with track_exit(...))")
        if status is ExitStatus.CLOSED:
            self._reach(ExitState.POSITION_CLOSED)
        filled, avg, slippage, amplification = exit_figures(
            self.position, fills, self.signal_price
        )
        if filled_override is not None:
            filled = filled_override
        elapsed = self._now() - self.info.started_at
        outcome = ExitOutcome(
            status=status,
            position=self.position,
            guard=self.guard,
            venue=self.venue,
            fills=fills,
            filled_size=filled,
            avg_price=avg,
            attempts=self._attempts,
            elapsed_s=elapsed,
            signal_price=self.signal_price,
            slippage_bps=slippage,
            loss_amplification=amplification,
            error_class=None if status is ExitStatus.CLOSED else error_class,
            reason=why,
            pending_tx_ids=pending,
            history=self._sm.history,
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

    async def __aenter__(self) -> TrackedExit:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.outcome is None:
            if exc is None:
                self.closed()
            elif isinstance(exc, asyncio.CancelledError):
                self.failed("cancelled")
            else:
                self.failed(exc)
        self._release()


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

    A block that ends normally without a verdict is a closed exit; one left by an
    exception is a failed exit (UNRESOLVED if an attempt timed out), and the exception
    propagates. Pass ``position`` (an exitguard Position) or ``position_id``, ``symbol``
    and ``size``. ``entry_price`` (default: the signal price) is what the loss
    amplification is measured against. ``hooks`` default to ``default_hooks()``.
    ``guard_name`` is the name the exit is reported under (an ``ExitGuard``'s ``name``);
    ``deadline`` the exit's time bound in seconds. ``guard=`` and ``deadline_s=`` are their
    former names, deprecated.
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


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _position_from(arguments: dict[str, Any], signal_price: float) -> Position:
    position = arguments.get("position")
    if isinstance(position, Position):
        return position
    if position is not None:
        ident, symbol, size = position.id, getattr(position, "symbol", ""), position.size
        entry = getattr(position, "entry_price", None)
        side = getattr(position, "side", "long")
    else:
        ident, symbol, size = arguments["position_id"], arguments.get("symbol", ""), \
            arguments["size"]
        entry, side = arguments.get("entry_price"), arguments.get("side", "long")
    return Position(str(ident), str(symbol or ""), _number("size", size),
                    signal_price if entry is None else _number("entry_price", entry),
                    "short" if side == "short" else "long")


def _finite_positive(value: object) -> float | None:
    """``value`` as a float if it is a finite number > 0 (never a bool), else None."""
    return float(value) if is_real(value) and 0 < value < math.inf else None


def _fill_of(result: object) -> tuple[float | None, float | None, str | None]:
    """(price, size, tx_id) from what an exit function returned, when it says."""
    if is_real(result) or result is None or isinstance(result, bool):
        return _finite_positive(result), None, None
    price, size = getattr(result, "price", None), getattr(result, "size", None)
    tx_id = getattr(result, "tx_id", None)
    return (_finite_positive(price), _finite_positive(size),
            tx_id if isinstance(tx_id, str) else None)


def instrumented_exit(
    guard_name: str = "default",
    *,
    mode: OrderMode | str | None = OrderMode.MARKET,
    reason: str = "exit",
    deadline: float = 30.0,
    hooks: Hooks | Sequence[Hooks] | None = None,
    deadline_s: float | None = None,
) -> Callable[[Callable[_P, Awaitable[_R]]], Callable[_P, Coroutine[Any, Any, _R]]]:
    """Decorate an async exit function so each call is recorded as one exit.

    The function's parameters name what is exited: ``position`` (an exitguard Position or
    any object with ``id``, ``size`` and optionally ``symbol``, ``entry_price``, ``side``)
    or ``position_id``, ``size`` (and ``symbol``); and ``signal_price``. A ``reason``
    parameter, if any, overrides ``reason``. Each call is one attempt of ``mode``; with
    ``mode=None`` the function reports its own attempts through ``current_exit()``. A
    returned fill (``.price``, ``.size``, ``.tx_id``) or a price gives the exit's figures;
    an exception makes it a failed exit and propagates. ``guard_name`` and ``deadline``
    (seconds) as in ``track_exit``; ``deadline_s=`` is deprecated.
    """
    guard_name, deadline = _renamed(guard_name, None, deadline, deadline_s)
    order_mode = None if mode is None else OrderMode(mode)

    def decorate(fn: Callable[_P, Awaitable[_R]]) -> Callable[_P, Coroutine[Any, Any, _R]]:
        signature = inspect.signature(fn)
        names = signature.parameters.keys()
        if "signal_price" not in names or not (
            "position" in names or {"position_id", "size"} <= names
        ):
            raise TypeError(
                f"@instrumented_exit needs {fn.__qualname__} to take `signal_price` and"
                " `position` (or `position_id` and `size`)"
            )

        @functools.wraps(fn)
        async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = bound.arguments
            signal = _number("signal_price", arguments["signal_price"])
            position = _position_from(arguments, signal)
            why = arguments.get("reason", reason)
            async with track_exit(position, signal_price=signal, guard_name=guard_name,
                                  reason=str(why) if why is not None else reason,
                                  deadline=deadline, hooks=hooks) as exit_:
                if order_mode is None:
                    result = await fn(*args, **kwargs)
                    price, size, tx_id = _fill_of(result)
                else:
                    async with exit_.attempt(order_mode) as attempt:
                        attempt._assume_sent = True
                        result = await fn(*args, **kwargs)
                        price, size, tx_id = _fill_of(result)
                        if tx_id is not None:
                            attempt.submitted(tx_id)
                        if attempt._result is None:
                            attempt.filled(price=price, size=size)
                    price = None if exit_._fills else price
                if exit_.outcome is None:
                    exit_.closed(fill_price=price, filled_size=size, tx_id=tx_id)
            return result

        return wrapper

    return decorate
