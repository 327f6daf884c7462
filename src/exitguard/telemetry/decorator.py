"""``@instrumented_exit``: each call of a bot's exit function recorded as one tracked exit.

Sync in, sync out: an ``async def`` gets a coroutine function, a plain ``def`` a plain
function that runs the call synchronously, instrumented the same way, and returns its value
(so bots on synchronous exchange clients are covered; nothing is ever turned into a coroutine
that nobody awaits). A plain ``def`` that returns an awaitable is refused at the call with a
TypeError (and recorded as a failed exit): it would otherwise never run.

With a ``mode``, the call is the exit's one attempt. Whether it reached the venue is not
reported by the call, so:

- it returned: it was sent; the returned value says the rest (``_returned``: a fill, a
  price, a ccxt order dict; anything else counts as filled in full with no figures, and a
  warning, once per decorated function, says what shape was expected);
- it raised: "not sent" unless the function said it sent (``current_exit().current_attempt
  .submitted(order_id)``) or the error leaves the order possibly out (a timeout, a dropped
  connection, a garbled answer: then the exit may still land and is UNRESOLVED).
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ParamSpec, Protocol, TypeVar, cast, overload

from ..errors import ErrorClass
from ..hooks import AttemptResult, Hooks
from ..venue import OrderMode, Position
from ._returned import EXPECTED, ExitResultWarning, Returned, read_returned
from .attempt import TrackedAttempt, _number
from .tracker import TrackedExit, _renamed, track_exit

__all__ = ["instrumented_exit"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


class ExitDecorator(Protocol):
    """What ``instrumented_exit(...)`` returns: sync in, sync out; async in, async out."""

    @overload
    def __call__(
        self, fn: Callable[_P, Coroutine[Any, Any, _R]]
    ) -> Callable[_P, Coroutine[Any, Any, _R]]: ...

    @overload
    def __call__(self, fn: Callable[_P, _R]) -> Callable[_P, _R]: ...


def _is_async(fn: Callable[..., Any]) -> bool:
    """``fn`` is a coroutine function (a partial of one, or an object whose ``__call__`` is)."""
    call = type(fn).__call__ if not inspect.isroutine(fn) else None
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


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


@dataclass(slots=True)
class _Spec:
    """One decorated function and its options."""

    name: str
    signature: inspect.Signature
    guard_name: str
    mode: OrderMode | None
    reason: str
    deadline: float
    hooks: Hooks | Sequence[Hooks] | None
    warned: bool = False

    def warn(self, text: str) -> None:
        """Once per decorated function: a bot that calls it every minute is told once."""
        if not self.warned:
            self.warned = True
            warnings.warn(f"@instrumented_exit {self.name}: {text}", ExitResultWarning,
                          stacklevel=4)


def _apply(attempt: TrackedAttempt, got: Returned) -> None:
    """The attempt's result, as the returned value states it."""
    if got.tx_id is not None:
        attempt.tx_id = got.tx_id
    if got.state == "filled":
        attempt.filled(price=got.price, size=got.size)
    elif got.state == "open":
        if got.size:
            attempt.filled(price=got.price, size=got.size)
            attempt._may_land = True  # the rest of the order may still fill
        else:
            attempt._ended(AttemptResult.TIMEOUT, ErrorClass.UNKNOWN,
                           f"{got.detail}: it may still fill")
    elif got.state == "ended":
        if got.size:
            attempt.filled(price=got.price, size=got.size)
        else:
            attempt._ended(AttemptResult.EXPIRED, ErrorClass.TX_EXPIRED,
                           f"{got.detail}: it ended with nothing filled")
    elif got.state == "rejected":
        attempt._ended(AttemptResult.REJECTED, ErrorClass.UNKNOWN, got.detail)
    else:  # unrecognised: the call returned, which is its own word that the order filled
        attempt.filled()


class _Call:
    """One call of a decorated function: its exit and, with a mode, its attempt."""

    __slots__ = ("attempt", "exit", "spec")

    def __init__(self, spec: _Spec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        bound = spec.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = bound.arguments
        signal = _number("signal_price", arguments["signal_price"])
        why = arguments.get("reason", spec.reason)
        self.spec = spec
        self.exit: TrackedExit = track_exit(
            _position_from(arguments, signal), signal_price=signal,
            guard_name=spec.guard_name, reason=str(why) if why is not None else spec.reason,
            deadline=spec.deadline, hooks=spec.hooks)
        self.attempt: TrackedAttempt | None = None

    def __enter__(self) -> _Call:
        self.exit.start()
        if self.spec.mode is not None:
            attempt = self.exit.attempt(self.spec.mode)
            attempt._send_unknown = True
            self.attempt = attempt.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.attempt is not None:
            self.attempt.__exit__(exc_type, exc, tb)
        self.exit.__exit__(exc_type, exc, tb)

    def returned(self, result: object) -> None:
        got = read_returned(result)
        if got.note:
            self.spec.warn(got.note)
        attempt = self.attempt
        if attempt is None:  # mode=None: the function's own attempts are the record
            if self.exit._attempts or self.exit.outcome is not None:
                return
            if got.state == "unrecognised":
                self.spec.warn(
                    f"returned {got.detail} and reported no attempt, so the exit is recorded"
                    f" as failed (nothing known to be sold). Return {EXPECTED}, or report"
                    " attempts through current_exit()")
                return
            kind = result.get("type") if isinstance(result, dict) else None
            attempt = self.exit.attempt(kind if kind in ("limit", "market") else "market")
            attempt.start()
        elif got.state == "unrecognised":
            self.spec.warn(
                f"returned {got.detail}, which says no price or size: the exit is recorded as"
                f" filled in full (the call returned) without price or slippage. Return"
                f" {EXPECTED}")
        _apply(attempt, got)
        attempt.finish()


def instrumented_exit(
    guard_name: str = "default",
    *,
    mode: OrderMode | str | None = OrderMode.MARKET,
    reason: str = "exit",
    deadline: float = 30.0,
    hooks: Hooks | Sequence[Hooks] | None = None,
    deadline_s: float | None = None,
) -> ExitDecorator:
    """Decorate an exit function (``async def`` or plain ``def``) so each call is recorded as
    one exit; the wrapper is of the same kind as the function (sync in, sync out).

    The function's parameters name what is exited: ``position`` (an exitguard Position or
    any object with ``id``, ``size`` and optionally ``symbol``, ``entry_price``, ``side``)
    or ``position_id``, ``size`` (and ``symbol``); and ``signal_price``. A ``reason``
    parameter, if any, overrides ``reason``. Each call is one attempt of ``mode``; with
    ``mode=None`` the function reports its own attempts through ``current_exit()`` (if it
    reports none, its returned value is read as one attempt). The returned value gives the
    figures: a fill (``.price``, ``.size``, ``.tx_id``), a price, or a ccxt order dict
    (``status``, ``filled``, ``average``/``price``: closed, partial, open, canceled); the
    exit is CLOSED only if what it filled covers the position. An exception makes it a
    failed exit ("not sent" unless the function reported the send, or the error may have
    come after it) and propagates. ``guard_name`` and ``deadline`` (seconds) as in
    ``track_exit``; ``deadline_s=`` is deprecated.
    """
    guard_name, deadline = _renamed(guard_name, None, deadline, deadline_s)
    order_mode = None if mode is None else OrderMode(mode)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn)
        names = signature.parameters.keys()
        name = getattr(fn, "__qualname__", type(fn).__name__)
        if "signal_price" not in names or not (
            "position" in names or {"position_id", "size"} <= names
        ):
            raise TypeError(
                f"@instrumented_exit needs {name} to take `signal_price` and"
                " `position` (or `position_id` and `size`)"
            )
        spec = _Spec(name, signature, guard_name, order_mode, reason, deadline, hooks)

        if _is_async(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with _Call(spec, args, kwargs) as call:
                    result = await fn(*args, **kwargs)
                    call.returned(result)
                return result

            return async_wrapper

        @functools.wraps(fn)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            with _Call(spec, args, kwargs) as call:
                result = fn(*args, **kwargs)
                if inspect.isawaitable(result):
                    if inspect.iscoroutine(result):
                        result.close()  # never run: no "was never awaited" noise
                    raise TypeError(
                        f"{name} is a plain def that returned an awaitable; declare it"
                        " `async def` so @instrumented_exit awaits it")
                call.returned(result)
            return result

        return sync_wrapper

    return cast(ExitDecorator, decorate)
