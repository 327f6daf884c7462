"""One event, one line: the core's plain log line for an event that structured logging reports.

The breaker, the halt and the guard write a plain ``logging`` line for each breaker
transition, halt, resume, late fill and abandoned reconciliation, so a bot without
``exitguard.telemetry`` still sees them. ``exitguard.telemetry.LogHooks`` reports the same
events as structured events (with the guard's name and trace ids, at the same level), so
with it attached the plain line would say everything twice. It is not written then:

- the breaker and the halt tell their listeners first (the guard, hence its hooks) and write
  their line afterwards unless a hook that logged the event called ``reported()``
  meanwhile (``hearing``; all on one thread, in one call);
- the guard writes its lines inside an exit, or inside the exit's background
  reconciliation, which inherits the exit's context. A hook that logs an exit's events
  calls ``exit_lines_reported()`` when the exit starts (and ``reset`` when it ends); while
  that holds, a filter on the guard's logger drops those lines.

Everything here is synchronous and per context, so two guards in one process, one with
structured logs and one without, each get exactly one line per event.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging

__all__ = ["exit_lines_reported", "hearing", "reported", "reset"]

#: Set (to a fresh list) while listeners hear of an event; ``reported()`` appends to it.
_hearing: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar(
    "exitguard_event_hearing", default=None
)
#: True inside an exit (and its background reconciliation) whose events a hook logs.
_exit_logged: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "exitguard_exit_logged", default=False
)

#: The guard's lines (exitguard.guard) that report an event a structured sink logs too,
#: matched by their format string: a bridge until guard.py tells its hooks first and writes
#: them with ``hearing`` as the breaker and the halt do (then this filter goes).
_GUARD_EVENT_LINES: frozenset[str] = frozenset()  # the guard now uses ``hearing`` itself


class hearing:
    """While listeners hear of one event: afterwards, ``reported`` says whether a hook
    logged it (then the core does not write its plain line)::

        with logline.hearing() as heard:
            for listener in listeners:
                listener(event)
        if not heard.reported:
            _log.warning("...")
    """

    __slots__ = ("_flag", "_token")

    def __init__(self) -> None:
        self._flag: list[bool] = []
        self._token: contextvars.Token[list[bool] | None] | None = None

    def __enter__(self) -> hearing:
        self._token = _hearing.set(self._flag)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _hearing.reset(self._token)
            self._token = None

    @property
    def reported(self) -> bool:
        return bool(self._flag)


def reported() -> None:
    """Called by a hook that has just logged the event its listeners are hearing: the
    core's plain line for it is not written."""
    flag = _hearing.get()
    if flag is not None:
        flag.append(True)


def exit_lines_reported() -> contextvars.Token[bool]:
    """Called by a hook that logs an exit's events, when the exit starts: the guard's plain
    lines for this exit's late fills and abandoned reconciliations are not written. Pass
    the token to ``reset`` when the exit ends (its background reconciliation, started
    before, keeps the mark)."""
    return _exit_logged.set(True)


def reset(token: contextvars.Token[bool]) -> None:
    """End what ``exit_lines_reported`` started (a token of another context is ignored)."""
    with contextlib.suppress(ValueError):
        _exit_logged.reset(token)


class _GuardLines(logging.Filter):
    """Drops the guard's event lines inside an exit whose events a hook logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_exit_logged.get() and isinstance(record.msg, str)
                    and record.msg in _GUARD_EVENT_LINES)


_GUARD_FILTER = _GuardLines()
logging.getLogger("exitguard.guard").addFilter(_GUARD_FILTER)
