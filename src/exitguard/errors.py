"""Error classes, the exceptions a venue may raise, and the default classifier.

The class of an error decides the guard's action (DESIGN.md 5.3), so classification
is the one place where venue-specific error texts (Solana, Jupiter) are known.
"""

from __future__ import annotations

import enum
from collections.abc import Callable


class ErrorClass(enum.StrEnum):
    """What went wrong, in terms of what the guard should do next."""

    NETWORK = "network"  # a connection failed: at submit the order may be out (reconcile)
    NOT_SENT = "not_sent"  # the venue proves the order never left: resend the same order
    RPC_TIMEOUT = "rpc_timeout"  # outcome unknown: reconcile before anything else
    TX_EXPIRED = "tx_expired"  # cannot land any more: fresh order, higher fee
    SLIPPAGE_EXCEEDED = "slippage_exceeded"  # next ladder step
    INSUFFICIENT_BALANCE = "insufficient_balance"  # permanent
    INVALID_ACCOUNT = "invalid_account"  # permanent
    ALREADY_PROCESSED = "already_processed"  # the transaction landed: reconcile, it is a fill
    INVALID_RESPONSE = "invalid_response"  # the venue returned garbage: treat as unknown outcome
    UNKNOWN = "unknown"  # permanent unless the policy says otherwise

    @property
    def is_permanent(self) -> bool:
        return self in _PERMANENT


_PERMANENT = frozenset({ErrorClass.INSUFFICIENT_BALANCE, ErrorClass.INVALID_ACCOUNT})

#: Classes retried by the seed's policies.
TRANSIENT = frozenset({ErrorClass.RPC_TIMEOUT, ErrorClass.NETWORK})
#: What an exit retries by default: everything that is neither permanent nor unknown.
EXIT_RETRYABLE = frozenset(
    {
        ErrorClass.NETWORK,
        ErrorClass.NOT_SENT,
        ErrorClass.RPC_TIMEOUT,
        ErrorClass.TX_EXPIRED,
        ErrorClass.SLIPPAGE_EXCEEDED,
        ErrorClass.INVALID_RESPONSE,
    }
)


class ExitError(Exception):
    """Base of everything exitguard raises or expects a venue to raise."""

    error_class: ErrorClass = ErrorClass.UNKNOWN


class NetworkError(ExitError, ConnectionError):
    """A connection failed (refused, reset, DNS). From ``submit`` this does not prove the
    order stayed home (a reset can come after the exchange accepted it): the guard
    reconciles. Raise ``OrderNotSent`` when the venue knows nothing left."""

    error_class = ErrorClass.NETWORK


class OrderNotSent(ExitError):
    """A definite rejection: the venue knows the order never left (refused before any byte
    was written, rejected by validation the venue ran locally, an exchange error code that
    means "not accepted"). The only submit error after which the guard resends at once."""

    error_class = ErrorClass.NOT_SENT


class RpcTimeout(ExitError, TimeoutError):
    """The RPC did not answer in time: the transaction may or may not land."""

    error_class = ErrorClass.RPC_TIMEOUT


class TxExpired(ExitError):
    """The transaction can no longer land (e.g. its blockhash expired)."""

    error_class = ErrorClass.TX_EXPIRED


class SlippageExceeded(ExitError):
    """The price moved past the order's slippage limit."""

    error_class = ErrorClass.SLIPPAGE_EXCEEDED


class InsufficientBalance(ExitError):
    """Not enough balance or funds for the order or its fee: permanent."""

    error_class = ErrorClass.INSUFFICIENT_BALANCE


class InvalidAccount(ExitError):
    """The token account does not exist or is wrong: permanent."""

    error_class = ErrorClass.INVALID_ACCOUNT


class InvalidVenueResponse(ExitError):
    """The venue answered with something impossible (negative fill, NaN price, ...)."""

    error_class = ErrorClass.INVALID_RESPONSE


class ConfigError(ExitError, ValueError):
    """A policy, ladder, breaker, deadline or guard was given an impossible value.

    ``field`` names the offending field, and so does the message.
    """

    def __init__(self, owner: str, field_name: str, problem: str, value: object) -> None:
        self.field = field_name
        super().__init__(f"{owner}.{field_name} {problem}, got {value!r}")


class RetryExhaustedError(ExitError):
    """A bounded retry gave up; carries why, after how many attempts and how long."""

    def __init__(
        self, attempts: int, last_error: BaseException | None, elapsed: float, reason: str
    ) -> None:
        self.attempts = attempts
        self.last_error = last_error
        self.elapsed = elapsed
        self.reason = reason
        super().__init__(
            f"retry exhausted after {attempts} attempt(s) in {elapsed:.3f}s: {reason}"
            f" (last error: {last_error!r})"
        )


class EmergencyHaltError(ExitError):
    """The exit attempt tracker refuses further attempts."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"emergency halt: {reason}")


class StateTransitionError(ExitError):
    """An invalid exit state transition; the state machine is left unchanged."""

    def __init__(self, from_state: str, to_state: str, why: str = "not allowed") -> None:
        self.from_state = from_state
        self.to_state = to_state
        super().__init__(f"invalid exit state transition {from_state} -> {to_state}: {why}")


class ExitTimeoutError(ExitError, TimeoutError):
    """A bounded wait ran out (the seed's TimeoutError): name, elapsed and limit in seconds."""

    error_class = ErrorClass.RPC_TIMEOUT

    def __init__(self, name: str, elapsed: float, limit: float) -> None:
        self.name = name
        self.elapsed = elapsed
        self.limit = limit
        super().__init__(f"{name}: timed out after {elapsed:.3f}s (limit {limit:.3f}s)")


class ExitDeadlineExceeded(ExitError, TimeoutError):
    """The exit's total time budget is spent."""

    error_class = ErrorClass.RPC_TIMEOUT

    def __init__(self, elapsed: float, deadline: float) -> None:
        self.elapsed = elapsed
        self.deadline = deadline
        super().__init__(f"exit deadline exceeded: {elapsed:.3f}s > {deadline:.3f}s")


class TradingHalted(ExitError):
    """New entries are halted (exits are never blocked by a halt)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"trading halted: {reason}")


class HaltResumeError(ExitError):
    """A resume was refused (approver not on the list, or nothing to resume)."""


class HaltStoreError(ExitError):
    """The halt file is unreadable or corrupt: the halt is treated as on."""


class HaltStoreUnavailable(HaltStoreError):
    """A halt store on the network cannot be reached: its state is unknown, not corrupt
    (halted meanwhile; when it answers again, an empty store is believed if this process
    had seen no record either)."""


Classifier = Callable[[BaseException], ErrorClass]

# Known error texts, lower-cased, checked in order (more specific first). Only a venue's
# own phrases: a bare word ("expired", "insufficient", "network") also appears in texts that
# mean something else ("SSL certificate has expired", "API key expired") and a wrong
# "expired" sends a second order while the first may land.
_TEXT_RULES: tuple[tuple[tuple[str, ...], ErrorClass], ...] = (
    (("already been processed", "alreadyprocessed"), ErrorClass.ALREADY_PROCESSED),
    (("blockhash not found", "block height exceeded", "blockheightexceeded",
      "transaction expired", "transaction has expired", "tx expired"),
     ErrorClass.TX_EXPIRED),
    (("0x1771", "custom program error: 6001", "custom(6001)", "slippage tolerance exceeded",
      "slippage exceeded", "slippageexceeded"),
     ErrorClass.SLIPPAGE_EXCEEDED),
    (("insufficient funds", "insufficient lamports", "insufficient balance"),
     ErrorClass.INSUFFICIENT_BALANCE),
    (("accountnotfound", "account not found", "invalid account", "invalidaccount",
      "could not find account"), ErrorClass.INVALID_ACCOUNT),
    (("timed out", "timeout", "etimedout", "deadline exceeded"), ErrorClass.RPC_TIMEOUT),
    (("connection refused", "connection reset", "econnreset", "econnrefused",
      "broken pipe", "network error", "network is unreachable", "503 service unavailable",
      "429 too many requests"), ErrorClass.NETWORK),
)


def classify_text(text: str) -> ErrorClass:
    """Classify an error message by the known Solana / Jupiter / RPC texts."""
    lowered = text.lower()
    for needles, error_class in _TEXT_RULES:
        if any(needle in lowered for needle in needles):
            return error_class
    return ErrorClass.UNKNOWN


def default_classifier(exc: BaseException) -> ErrorClass:
    """Map an exception to its class: its type first, then known venue texts.

    The type wins over free text: an exitguard type says what it is; a ``TimeoutError`` is
    an unknown outcome, a ``ConnectionError`` / ``OSError`` a network failure, whatever
    their message says ("SSL certificate has expired" is not an expired transaction).
    Texts classify only what the type does not (RPC client exceptions, ``RuntimeError``).
    """
    if isinstance(exc, ExitError) and type(exc).error_class is not ErrorClass.UNKNOWN:
        return type(exc).error_class
    if isinstance(exc, TimeoutError):
        return ErrorClass.RPC_TIMEOUT
    if isinstance(exc, ConnectionError | OSError):
        return ErrorClass.NETWORK
    return classify_text(str(exc))
