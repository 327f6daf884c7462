"""exitguard: bounded, escalating, observable position exits for trading bots.

The public API: what a bot needs to guard its exits (``ExitGuard`` and its configuration),
to implement a venue (the ``Venue`` Protocol, its value types and the errors it raises), and
to read what an exit did (``ExitOutcome``). Everything here imports only the standard library.

Less common names live in their modules and are imported from there: the hook event types
(``exitguard.hooks``: ``AttemptInfo``, ``AttemptReport``, ``ExitInfo``, ``NoopHooks`` ...),
the rarer errors and the classifier (``exitguard.errors``), the in-memory stores and halt
records (``exitguard.halt``, ``exitguard.pending``), ``BreakerState`` (``exitguard.breaker``),
``ExitDeadline`` (``exitguard.deadline``), ``ExitState`` (``exitguard.state_machine``), the
redaction of secrets (``exitguard.redaction``). Names from the original design document
(``ExitDeadlineManager``, ``TradingHaltCoordinator``, ``ExitStateMachine`` ...) are in
``exitguard.compat``.
"""

from .breaker import CircuitBreaker
from .errors import (
    ConfigError,
    ErrorClass,
    ExitError,
    InsufficientBalance,
    InvalidAccount,
    NetworkError,
    RetryExhaustedError,
    RpcTimeout,
    SlippageExceeded,
    TradingHalted,
    TxExpired,
)
from .guard import ExitGuard
from .halt import FileHaltStore, TradingHalt
from .hooks import Hooks
from .outcome import ExitOutcome, ExitStatus
from .pending import FilePendingStore
from .policy import EscalationLadder, EscalationStep, RetryPolicy
from .redaction import protect_loggers
from .retry import BoundedRetryExecutor
from .venue import ExitOrder, Fill, Lookup, OrderMode, Position, Submission, TxStatus, Venue

__version__ = "0.1.0"

__all__ = [  # noqa: RUF022 (grouped by what a user does with them, not sorted)
    # guarding exits
    "ExitGuard",
    "RetryPolicy",
    "EscalationLadder",
    "EscalationStep",
    "CircuitBreaker",
    "TradingHalt",
    "FileHaltStore",
    "FilePendingStore",
    "Hooks",
    # what an exit returns
    "ExitOutcome",
    "ExitStatus",
    # implementing a venue
    "Venue",
    "Position",
    "ExitOrder",
    "OrderMode",
    "Submission",
    "Fill",
    "Lookup",
    "TxStatus",
    # errors
    "ExitError",
    "ErrorClass",
    "ConfigError",
    "TradingHalted",
    "NetworkError",
    "RpcTimeout",
    "TxExpired",
    "SlippageExceeded",
    "InsufficientBalance",
    "InvalidAccount",
    # the retry primitive on its own
    "BoundedRetryExecutor",
    "RetryExhaustedError",
]

# Every logger of the core exists now (each module makes its own at import): redact them all.
protect_loggers()
