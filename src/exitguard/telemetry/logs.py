"""Structured logs for exitguard (structlog), with the current trace and span ids.

``LogHooks`` is a hook (``exitguard.hooks``): one event per state transition
(``exit.transition``), per attempt (``exit.attempt``), per retry (``exit.retry``), per
reconciliation look-up (``exit.reconciled``), per backoff wait (``exit.backoff``), per finished
exit (``exit.finished``, with the whole ``states`` path), per late fill (``exit.late_fill``),
per breaker transition (``breaker.transition``), halt (``trading.halted``) and resume
(``trading.resumed``). What every clean exit does (its routine transitions, a filled attempt)
is logged at ``routine_level`` (debug by default), anything out of the ordinary at info or
above: at info a clean exit is one line. One event, one line, one level: the transition into
a failed end is routine too (``exit.finished`` says it, at error), and the core's own plain
lines for a breaker transition, a halt, a resume, a late fill or an abandoned reconciliation
are not written while this logs them (``exitguard.logline``). Every event carries ``guard``
and, when a span is current, ``trace_id`` and ``span_id`` (lowercase hex, as in OTLP and the
exemplars); exit events carry ``position_id`` and ``symbol``. Error texts are redacted
(``exitguard.redaction``); nothing else from the venue is logged.

``configure_logging`` sets structlog up for production (JSON lines) or humans (console),
natively or through the standard library's ``logging`` (``stdlib=True``) for bots that
already use it::

    from exitguard.telemetry import configure_logging
    configure_logging(json=True, level="INFO")               # JSON lines on stderr
    configure_logging(json=False)                            # colourful console lines
    configure_logging(stdlib=True)                           # through logging's root logger

Why one module of about 570 lines: the events, their levels and the processor chains that
render, redact and escape them decide together what one line says; they are reviewed as one.
"""

from __future__ import annotations

import json as _json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any, Protocol, TextIO, cast

import structlog
from opentelemetry.trace import SpanContext, get_current_span
from structlog.typing import EventDict, Processor, WrappedLogger

from .. import logline
from ..breaker import BreakerState
from ..events import (
    AttemptReport,
    AttemptResult,
    Backoff,
    BreakerTransition,
    ExitEvent,
    ExitInfo,
    Halted,
    HookEvent,
    LateFill,
    PendingResolved,
    Reconciled,
    Resumed,
    Retry,
)
from ..outcome import ExitOutcome, ExitStatus
from ..redaction import escape_controls, redact
from ..state_machine import ExitState, TransitionRecord
from ..venue import TxStatus
from ._context import current_span_ids

if TYPE_CHECKING:
    from contextvars import Token

__all__ = [
    "LOGGER_NAME",
    "LogHooks",
    "add_trace_context",
    "configure_logging",
    "escape_for_terminal",
    "redact_fields",
    "stdlib_formatter",
]

#: The logger name exitguard's events are emitted under.
LOGGER_NAME = "exitguard"

_OK_RESULTS = frozenset({AttemptResult.FILLED, AttemptResult.PARTIAL})


def add_trace_context(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """A structlog processor: add ``trace_id``/``span_id`` of the current span, if any.

    ``configure_logging`` puts it in the chain, so the bot's own events get them too.
    """
    if "trace_id" not in event_dict:
        ids = current_span_ids()
        if ids is not None:
            event_dict["trace_id"], event_dict["span_id"] = ids
    return event_dict


def _with_ids(fields: dict[str, Any]) -> dict[str, Any]:
    ids = current_span_ids()
    if ids is not None:
        fields["trace_id"], fields["span_id"] = ids
    return fields


_DEBUG, _INFO, _WARNING, _ERROR = logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR
_METHOD = {_DEBUG: "debug", _INFO: "info", _WARNING: "warning", _ERROR: "error",
           logging.CRITICAL: "critical"}

#: Transitions logged at ``routine_level`` (debug by default): those every clean exit
#: makes, and those into an end, which ``exit.finished`` reports right after (one event,
#: one line).
ROUTINE_STATES = frozenset({
    ExitState.EXIT_SIGNAL_RECEIVED, ExitState.SUBMITTED, ExitState.POSITION_CLOSED,
    ExitState.EXIT_FAILED, ExitState.EXIT_UNRESOLVED, ExitState.EXIT_REFUSED,
})
#: The reason of an exit cancelled by the bot (a shutdown): warning, not error.
CANCELLED = "cancelled"


def _level_number(level: str | int) -> int:
    if isinstance(level, int) and not isinstance(level, bool):
        return level
    number = logging.getLevelName(str(level).upper())
    if not isinstance(number, int):
        raise ValueError(
            f"level must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {level!r}"
        )
    return number


def _effective_level(log: Any) -> int:
    """The lowest level ``log`` emits (structlog's filtering and stdlib loggers say; for
    any other logger, everything is assumed enabled)."""
    get = getattr(log, "get_effective_level", None)
    if get is not None:
        try:
            level = get()
        except Exception:  # e.g. a stdlib BoundLogger without a stdlib logger behind it
            return 0
        if isinstance(level, int):
            return level
    return 0


class _LogObserver:
    """One exit's events. Each event first compares its level with the logger's (read at
    the exit's start), so an event below it costs one comparison: no fields are built."""

    __slots__ = ("_base", "_ids", "_level", "_log", "_routine", "_span_context", "_token")

    def __init__(self, log: Any, level: int, routine: int, exit: ExitInfo) -> None:
        # The guard's plain lines of this exit's late fills are not written: logged here.
        self._token: Token[bool] | None = logline.exit_lines_reported()
        self._log = log
        self._level = level
        self._routine = routine
        position = exit.position
        self._base = {"guard": exit.guard, "position_id": position.id,
                      "symbol": position.symbol}
        self._span_context: SpanContext | None = None
        self._ids: tuple[str, str] | None = None

    def _emit(self, level: int, event: str, fields: dict[str, Any]) -> None:
        """Log ``event`` with the exit's fields, ``fields`` and the current span's ids
        (formatted once per span, not once per event)."""
        out = self._base.copy()
        out.update(fields)
        context = get_current_span().get_span_context()
        if context is not self._span_context:
            self._span_context = context
            self._ids = (
                (format(context.trace_id, "032x"), format(context.span_id, "016x"))
                if context.is_valid else None
            )
        ids = self._ids
        if ids is not None:
            out["trace_id"], out["span_id"] = ids
        getattr(self._log, _METHOD.get(level, "info"))(event, **out)

    def __call__(self, event: ExitEvent) -> None:
        # One event per attempt, when its result is known (exit.attempt): AttemptInfo is
        # not logged.
        if isinstance(event, TransitionRecord):  # the most frequent, mostly below the level
            level = self._routine if event.to_state in ROUTINE_STATES else _INFO
            if level >= self._level:
                self._transition(event, level)
        elif isinstance(event, AttemptReport):
            self._attempt_finished(event)
        elif isinstance(event, ExitOutcome):
            self._exit_finished(event)
        elif isinstance(event, Retry):
            if self._level <= _WARNING:
                self._emit(_WARNING, "exit.retry", {"error_class": event.error_class.value,
                                                    "next_attempt": event.next_attempt})
        elif isinstance(event, Backoff):
            if self._level <= _DEBUG:
                self._emit(_DEBUG, "exit.backoff", {"delay_s": round(event.delay_s, 6)})
        elif isinstance(event, Reconciled) and self._level <= _INFO:
            self._emit(_INFO, "exit.reconciled",
                       {"tx_id": event.tx_id, "status": event.status.value})

    def _attempt_finished(self, report: AttemptReport) -> None:
        result = report.result
        level = (self._routine if result is AttemptResult.FILLED
                 else _INFO if result is AttemptResult.PARTIAL else _WARNING)
        if level < self._level:
            return
        attempt = report.attempt
        order = attempt.order
        fields: dict[str, Any] = {
            "attempt": attempt.number,
            "mode": order.mode.value,
            "max_slippage_bps": order.max_slippage_bps,
            "priority_fee": order.priority_fee,
            "venue": attempt.venue,
            "result": result.value,
            "tx_id": report.tx_id,
            "duration_s": round(report.duration_s, 6),
        }
        if report.fill is not None:
            fields["fill_size"] = report.fill.size
            fields["fill_price"] = report.fill.price
        if report.error_class is not None:
            fields["error_class"] = report.error_class.value
        if report.error is not None:
            fields["error"] = redact(report.error)
        self._emit(level, "exit.attempt", fields)

    def _transition(self, record: TransitionRecord, level: int) -> None:
        fields: dict[str, Any] = {
            "from_state": record.from_state.value, "to_state": record.to_state.value,
        }
        if record.detail:  # the core's own words (an error class, a ladder step): no secrets
            fields["detail"] = record.detail
        if record.tx_id is not None:
            fields["tx_id"] = record.tx_id
        if record.late:
            fields["late"] = True
        self._emit(level, "exit.transition", fields)

    def _exit_finished(self, outcome: ExitOutcome) -> None:
        token, self._token = self._token, None
        if token is not None:
            logline.reset(token)
        level = (_INFO if outcome.status is ExitStatus.CLOSED
                 else _WARNING if outcome.reason == CANCELLED else _ERROR)
        if level < self._level:
            return
        fields: dict[str, Any] = {
            "outcome": outcome.status.value,
            "attempts": outcome.attempts,
            "elapsed_s": round(outcome.elapsed_s, 6),
            "size": outcome.position.size,
            "filled_size": outcome.filled_size,
            "signal_price": outcome.signal_price,
            "avg_price": outcome.avg_price,
            "slippage_bps": outcome.slippage_bps,
            "loss_amplification": outcome.loss_amplification,
            "venue": outcome.venue,
            "reason": redact(outcome.reason),
            "deadline_exceeded": outcome.deadline_exceeded,
            "states": [record.to_state.value for record in outcome.history],
        }
        if outcome.error_class is not None:
            fields["error_class"] = outcome.error_class.value
        if outcome.pending_tx_ids:
            fields["pending_tx_ids"] = list(outcome.pending_tx_ids)
        self._emit(level, "exit.finished", fields)


class LogHooks:
    """Hooks that log every exit event with structlog (see the module docstring).

    ``logger``: a structlog logger (anything with ``bind`` and the level methods); default
    ``structlog.get_logger("exitguard")``, which follows ``structlog.configure`` (and so
    ``configure_logging``) even when that is called later.

    ``routine_level``: the level of what every clean exit does (the transitions into
    exit_signal_received, submitted and position_closed, and a filled attempt); default
    debug, so at info a clean exit is one ``exit.finished`` line (with its ``states``),
    while everything out of the ordinary (a timeout, a reconciliation, a partial fill, a
    failed attempt, an escalation, a retry, a failed exit) is logged at info or above.
    Pass ``routine_level="info"`` to see every transition and attempt at info.

    The logger's level is read once per exit; events below it cost a comparison, and a
    logger set above error costs nothing at all.
    """

    def __init__(self, logger: Any = None, *, routine_level: str | int = _DEBUG) -> None:
        self._own_logger = logger is None
        self.logger: Any = logger if logger is not None else structlog.get_logger(LOGGER_NAME)
        self.routine_level = _level_number(routine_level)
        self._bound: tuple[tuple[object, ...], Any] | None = None  # (configuration, logger)

    def _exit_log(self) -> Any:
        """The logger for an exit, as structlog is configured now: rebuilt when the
        configuration changed (structlog's first-use cache would pin the first one forever),
        reused otherwise (a new proxy and bind per exit cost a few microseconds)."""
        if not self._own_logger:
            return self.logger.bind()
        config = structlog.get_config()
        key = (config["processors"], config["wrapper_class"], config["logger_factory"],
               config["context_class"])
        bound = self._bound
        if bound is not None and all(a is b for a, b in zip(bound[0], key, strict=True)):
            return bound[1]
        log = structlog.get_logger(LOGGER_NAME).bind()
        self._bound = (key, log)
        return log

    def __call__(self, event: HookEvent) -> _LogObserver | None:
        if isinstance(event, ExitInfo):
            log = self._exit_log()
            level = _effective_level(log)
            if level > _ERROR:
                return None
            return _LogObserver(log, level, self.routine_level, event)
        if isinstance(event, PendingResolved):
            self._pending_resolved(event)
        elif isinstance(event, LateFill):
            self._late_fill(event)
        elif isinstance(event, BreakerTransition):
            self._breaker_transition(event)
        elif isinstance(event, Halted):
            self.logger.critical(
                "trading.halted",
                **_with_ids({"guard": event.guard, "reason": redact(event.record.reason),
                             "actor": redact(event.record.actor), "at": event.record.at}),
            )
            logline.reported()
        elif isinstance(event, Resumed):
            self.logger.warning(
                "trading.resumed",
                **_with_ids({"guard": event.guard, "reason": redact(event.record.reason),
                             "approver": redact(event.record.actor), "at": event.record.at}),
            )
            logline.reported()
        return None

    def _exit_logger(self, exit: ExitInfo) -> Any:
        return self.logger.bind(
            guard=exit.guard, position_id=exit.position.id, symbol=exit.position.symbol
        )

    def _pending_resolved(self, event: PendingResolved) -> None:
        log = self._exit_logger(event.exit)
        fields = _with_ids({"tx_id": event.tx_id, "status": event.status.value})
        if event.status is TxStatus.PENDING:
            # No longer watched; its exit was reported unresolved with this id already.
            log.warning("exit.reconciliation_abandoned", **fields)
        else:
            log.info("exit.pending_resolved", **fields)

    def _late_fill(self, event: LateFill) -> None:
        fill = event.fill
        self._exit_logger(event.exit).error(
            "exit.late_fill",
            **_with_ids({"tx_id": fill.tx_id, "fill_size": fill.size, "fill_price": fill.price,
                         "signal_price": event.exit.signal_price}),
        )
        logline.reported()

    def _breaker_transition(self, event: BreakerTransition) -> None:
        fields = _with_ids({"guard": event.guard, "breaker": event.breaker,
                            "from_state": event.old.value, "to_state": event.new.value})
        new = event.new
        if new is BreakerState.OPEN:
            self.logger.error("breaker.transition", **fields)
        elif new is BreakerState.HALF_OPEN:
            self.logger.warning("breaker.transition", **fields)
        else:
            self.logger.info("breaker.transition", **fields)
        logline.reported()


# -- set-up ------------------------------------------------------------------------------

_HANDLER_FLAG = "_exitguard_handler"


class Writable(Protocol):
    """Where log lines go: anything with ``write`` and ``flush`` (a file, a stream)."""

    def write(self, text: str, /) -> object: ...
    def flush(self) -> object: ...


class _UtcTimestamp:
    """``timestamp`` as ISO 8601 UTC with microseconds (``2026-01-31T12:00:00.123456Z``),
    what ``TimeStamper(fmt="iso")`` writes, at a fraction of its cost (the seconds part is
    formatted once per second)."""

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: tuple[int, str] = (-1, "")

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        now = time.time()
        second = int(now)
        cached_second, prefix = self._cache
        if second != cached_second:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._cache = (second, prefix)
        event_dict["timestamp"] = f"{prefix}.{int((now - second) * 1_000_000):06d}Z"
        return event_dict


def _json_default(value: object) -> object:
    return repr(value)


_JSON = _json.JSONEncoder(default=_json_default, check_circular=False).encode


def render_json(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
    """The JSON renderer of ``configure_logging`` (one object per line; anything JSON
    cannot encode is written as its ``repr``)."""
    return _JSON(event_dict)


def _renderer(json: bool, stream: object = None) -> Processor:
    if json:
        return render_json
    isatty = getattr(stream, "isatty", None)
    return structlog.dev.ConsoleRenderer(colors=bool(isatty and isatty()))


#: Fields whose text is several lines by nature (a traceback, a stack).
_MULTI_LINE = frozenset({"exception", "stack"})


def escape_for_terminal(logger: WrappedLogger, method_name: str,
                        event_dict: EventDict) -> EventDict:
    """A structlog processor for console lines: control characters in every text field are
    escaped (``\\n``, ``\\x1b``), so a venue's error holding a newline cannot forge a
    log line and escape sequences cannot rewrite the terminal. (JSON escapes them itself.)
    Tracebacks keep their line breaks."""
    for key, value in event_dict.items():
        if isinstance(value, str) and not value.isprintable():
            event_dict[key] = escape_controls(value, keep_lines=key in _MULTI_LINE)
    return event_dict


def redact_fields(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """A structlog processor: every text field redacted (``exitguard.redaction``). On the
    records of other libraries (urllib3, the OpenTelemetry SDK, apprise) that exitguard's
    handler renders: their messages quote URLs, whose keys must not reach the log.
    (exitguard's own events are redacted where they are built.)"""
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = redact(value, None)
    return event_dict


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _UtcTimestamp(),
        add_trace_context,
        structlog.processors.StackInfoRenderer(),
    ]


def stdlib_formatter(json: bool = True, *, colors: bool = False) -> logging.Formatter:
    """A ``logging.Formatter`` rendering structlog events and plain log records alike.

    Put it on your own handlers when you configure ``logging`` yourself and call
    ``configure_logging(stdlib=True, install_handler=False)``.
    """
    # A traceback is rendered to text before redaction, so the secret its message may quote
    # is masked; in console mode, control characters are escaped (one record, one line).
    pre_chain: list[Processor] = [
        structlog.stdlib.add_logger_name, *_shared_processors(),
        structlog.processors.format_exc_info, redact_fields,
    ]
    processors: list[Processor] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                                   structlog.processors.format_exc_info]
    if json:
        processors.append(render_json)
    else:
        processors += [escape_for_terminal, structlog.dev.ConsoleRenderer(colors=colors)]
    return structlog.stdlib.ProcessorFormatter(processors=processors, foreign_pre_chain=pre_chain)


def _install_handler(
    logger: logging.Logger, stream: Writable, json: bool, level: int | None
) -> None:
    for handler in list(logger.handlers):
        if getattr(handler, _HANDLER_FLAG, False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(cast(TextIO, stream))
    setattr(handler, _HANDLER_FLAG, True)
    isatty = getattr(stream, "isatty", None)
    handler.setFormatter(stdlib_formatter(json, colors=bool(isatty and isatty())))
    logger.addHandler(handler)
    if level is not None:
        logger.setLevel(level)


def configure_logging(
    *,
    json: bool = True,
    level: str | int = "INFO",
    stdlib: bool = False,
    stream: Writable | None = None,
    install_handler: bool = True,
) -> None:
    """Configure structlog for exitguard's events (and the bot's own structlog events).

    ``json``: one JSON object per line (production) or the console renderer (humans).
    ``level``: the lowest level emitted. ``stream``: where lines go (default stderr).

    Native mode (default): structlog writes straight to ``stream``; events below ``level``
    cost one no-op call. The core's own ``logging`` records (logger ``exitguard``) are
    rendered the same way on the same stream, and so are other libraries' records (the
    OpenTelemetry SDK's) when nothing else set ``logging`` up (the root logger has no
    handler): a JSON stream holds nothing but JSON lines.

    ``stdlib=True``: structlog hands its events to the standard library's ``logging``
    (logger ``exitguard``), so they go wherever the bot's logging goes and honour its
    levels; unless ``install_handler=False``, a handler rendering every record (the bot's
    too) as JSON or console lines is added to the root logger. With your own handlers, use
    ``stdlib_formatter()`` on them.
    """
    number = _level_number(level)
    out: Writable = stream if stream is not None else sys.stderr
    if stdlib:
        structlog.configure(
            processors=[
                structlog.stdlib.filter_by_level,
                structlog.stdlib.add_logger_name,
                *_shared_processors(),
                structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
            ],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
            context_class=dict,
            cache_logger_on_first_use=True,
        )
        core = logging.getLogger(LOGGER_NAME)
        for handler in list(core.handlers):  # undo an earlier native-mode set-up
            if getattr(handler, _HANDLER_FLAG, False):
                core.removeHandler(handler)
                core.propagate = True
        root = logging.getLogger()
        for handler in list(root.handlers):  # the root handler of a native-mode set-up
            if getattr(handler, _HANDLER_FLAG, False):
                root.removeHandler(handler)
        if install_handler:
            _install_handler(root, out, json, number)
        return
    processors = _shared_processors()
    processors.append(structlog.processors.format_exc_info)
    if not json:
        processors.append(escape_for_terminal)
    processors.append(_renderer(json, out))
    structlog.configure(
        processors=processors,
        logger_factory=structlog.WriteLoggerFactory(cast(TextIO, out)),
        wrapper_class=structlog.make_filtering_bound_logger(number),
        context_class=dict,
        cache_logger_on_first_use=True,
    )
    if install_handler:
        core = logging.getLogger(LOGGER_NAME)
        _install_handler(core, out, json, number)
        core.propagate = False
        root = logging.getLogger()
        if all(getattr(handler, _HANDLER_FLAG, False) for handler in root.handlers):
            # Nobody else set logging up: other libraries' records (the OpenTelemetry
            # SDK's, urllib3's) would be printed as plain text on stderr by logging's last
            # resort. Rendered like exitguard's instead, at the root's own level.
            _install_handler(root, out, json, None)
