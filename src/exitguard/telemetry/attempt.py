"""One submission of a tracked exit (``TrackedAttempt``), and what its end means.

The rules are the guard's (``exitguard.exit_run``): a submission is a fill only when a fill
is reported; one sent whose outcome nobody reported may still land (TIMEOUT, kept pending
under its tx id or its order's client order id); an error before a reported send means
nothing was sent, unless it is one that can come after the venue took the order (a timeout, a
dropped connection, a garbled answer) and nobody could report the send (the decorator).
``TrackedExit`` (``tracker``) keeps the books; an attempt only says how it ended.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

from .._validate import positive
from ..errors import Classifier, ErrorClass
from ..exit_run import DID_NOT_LAND
from ..hooks import AttemptInfo, AttemptReport, AttemptResult
from ..ledger import DUST, describe_error
from ..state_machine import ExitState

if TYPE_CHECKING:
    from .tracker import TrackedExit

__all__ = ["OK", "TrackedAttempt"]

#: The results that sold something.
OK = frozenset({AttemptResult.FILLED, AttemptResult.PARTIAL})
#: The error class a failed attempt stands for when the bot gave none.
_RESULT_CLASS = {
    AttemptResult.SEND_FAILED: ErrorClass.NOT_SENT,
    AttemptResult.TIMEOUT: ErrorClass.RPC_TIMEOUT,
    AttemptResult.EXPIRED: ErrorClass.TX_EXPIRED,
    AttemptResult.REJECTED: ErrorClass.UNKNOWN,
}
#: Errors that leave an order whose sending nobody reported possibly out (the core's rule
#: at submit: a timeout, a dropped connection or a garbled answer may come after the venue
#: took it). Anything else raised before a reported send means nothing was sent.
_MAY_BE_OUT = frozenset({ErrorClass.RPC_TIMEOUT, ErrorClass.NETWORK,
                         ErrorClass.INVALID_RESPONSE, ErrorClass.ALREADY_PROCESSED})


def _number(name: str, value: object) -> float:
    """A size or price given to the tracker: a finite number > 0 (ConfigError otherwise)."""
    return positive("track_exit", name, value)


def _result_of(error_class: ErrorClass) -> AttemptResult:
    """What a submission that certainly did not land ended as."""
    return AttemptResult.EXPIRED if error_class is ErrorClass.TX_EXPIRED else (
        AttemptResult.REJECTED)


class TrackedAttempt:
    """One submission of a tracked exit. Use it as a context manager (``with`` or ``async
    with``), or call ``start()`` and ``finish()``; in between, report what happened:
    ``submitted(tx_id)``, ``filled(price=..., size=...)``, ``timed_out()``, ``failed(error)``.

    An attempt that ends without a reported result is not a fill: if it was ``submitted`` it
    may still land (TIMEOUT: its tx id, or its order's ``client_order_id`` when it has none,
    stays pending and makes the exit UNRESOLVED); if not, nothing was sent (SEND_FAILED). One
    left by an exception is "not sent" unless ``submitted`` was called (then TIMEOUT, or
    REJECTED / EXPIRED when the error says it cannot land); the exception propagates.
    """

    __slots__ = (
        "_error", "_error_class", "_exit", "_fill_price", "_fill_size", "_may_land",
        "_not_sent", "_result", "_send_unknown", "_sent_detail", "_started_at", "_submitted",
        "info", "report", "tx_id",
    )

    def __init__(self, exit_: TrackedExit, info: AttemptInfo) -> None:
        self._exit = exit_
        self.info = info
        self.tx_id: str | None = None
        self.report: AttemptReport | None = None
        self._result: AttemptResult | None = None
        self._fill_size: float | None = None
        self._fill_price: float | None = None
        self._error: str | None = None
        self._error_class: ErrorClass | None = None
        self._started_at: float | None = None
        self._submitted = False
        self._not_sent = False  # certainly never left: no SUBMITTED state
        self._may_land = False  # a partial fill whose order is still open
        self._sent_detail: str | None = None
        # The decorator: whether the wrapped call reached the venue is not reported, so an
        # exception's class says whether the order may be out.
        self._send_unknown = False

    @property
    def number(self) -> int:
        return self.info.number

    @property
    def pending_id(self) -> str:
        """The id this submission may still land under: its tx id, else its order's
        client order id (what the guard knows an unanswered order by)."""
        return self.tx_id or self.info.order.client_order_id

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
            self._exit._reach(ExitState.SUBMITTED,
                              detail=self._sent_detail or self.info.order.mode.value,
                              tx_id=self.tx_id)

    def filled(
        self, *, price: float | None = None, size: float | None = None, tx_id: str | None = None
    ) -> None:
        """It filled: ``size`` (default: the whole order) at ``price`` (if known)."""
        if tx_id is not None:
            self.tx_id = tx_id
        order_size = self.info.order.size
        filled = order_size if size is None else min(_number("size", size), order_size)
        self._fill_price = None if price is None else _number("price", price)
        self._fill_size = filled
        self._result = (AttemptResult.FILLED if filled >= order_size * (1 - DUST)
                        else AttemptResult.PARTIAL)

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
        defaults from the error class (and whether ``submitted`` was called: if not, it was
        not sent)."""
        if isinstance(error, ErrorClass):
            error_class, text = error, None
        else:
            source = error if isinstance(error, BaseException) else Exception(error)
            error_class, text = self._exit._class_of(source, classify), describe_error(error)
        self._error_class, self._error = error_class, text
        if result is not None:
            self._result = AttemptResult(result)
        elif not self._submitted:
            self._result = AttemptResult.SEND_FAILED
        elif error_class is ErrorClass.RPC_TIMEOUT:
            self._result = AttemptResult.TIMEOUT
        else:
            self._result = _result_of(error_class)
        if self._result is AttemptResult.SEND_FAILED:
            self._not_sent = True

    def _raised(self, exc: BaseException) -> None:
        """An exception left the attempt before any result was reported."""
        cancelled = not isinstance(exc, Exception)
        error_class = ErrorClass.UNKNOWN if cancelled else self._exit._class_of(exc, None)
        self._error_class = error_class
        self._error = "cancelled" if cancelled else describe_error(exc)
        cannot_land = error_class in DID_NOT_LAND or error_class is ErrorClass.NOT_SENT
        if self._submitted:
            self._result = _result_of(error_class) if cannot_land else AttemptResult.TIMEOUT
            return
        may_be_out = self._send_unknown and (cancelled or (
            error_class in _MAY_BE_OUT and not isinstance(exc, ConnectionRefusedError)))
        if may_be_out:
            # The call may have reached the venue: the order may be out, outcome unknown.
            self._result = AttemptResult.TIMEOUT
            self._sent_detail = f"may be out: {self._error}"
            return
        self._not_sent = True
        self._result = _result_of(error_class) if error_class in DID_NOT_LAND else (
            AttemptResult.SEND_FAILED)

    def _ended(self, result: AttemptResult, error_class: ErrorClass, text: str) -> None:
        """A result the bot's returned value states (the decorator)."""
        self._result, self._error_class, self._error = result, error_class, text

    def finish(self, result: AttemptResult | str | None = None) -> AttemptReport:
        """Report the attempt (once; later calls return the same report)."""
        if self.report is not None:
            return self.report
        self.start()
        if result is not None:
            self._result = AttemptResult(result)
        if self._result is None:
            if self._submitted or self.tx_id is not None:
                self._ended(AttemptResult.TIMEOUT, ErrorClass.UNKNOWN,
                            "sent, and no fill or failure was reported: it may still land")
            else:
                self._ended(AttemptResult.SEND_FAILED, ErrorClass.NOT_SENT,
                            "nothing was reported sent or filled")
                self._not_sent = True
        final = self._result
        assert final is not None
        if final is AttemptResult.SEND_FAILED:  # however it was said: it never left
            self._not_sent = True
        if final in OK and self._fill_size is None:  # finish("filled") without filled()
            self._fill_size = self.info.order.size if final is AttemptResult.FILLED else 0.0
        if final not in OK and self._error_class is None:
            self._error_class = _RESULT_CLASS[final]
        self.report = self._exit._finish_attempt(self, final)
        return self.report

    def __enter__(self) -> TrackedAttempt:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and self._result is None:
            self._raised(exc)
        self.finish()

    async def __aenter__(self) -> TrackedAttempt:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)
