"""exitguard: bounded, escalating, observable position exits for trading bots.

The public API; everything here imports only the standard library.
"""

from .breaker import (
    BreakerAction,
    BreakerState,
    CircuitBreaker,
    CircuitBreakerAction,
    ExitCircuitBreaker,
)
from .deadline import ExitDeadline, ExitDeadlineManager, ExitTimeoutDetector, TimeoutDetector
from .errors import (
    EmergencyHaltError,
    ErrorClass,
    ExitDeadlineExceeded,
    ExitError,
    ExitTimeoutError,
    HaltResumeError,
    HaltStoreError,
    InsufficientBalance,
    InvalidAccount,
    InvalidVenueResponse,
    NetworkError,
    RetryExhaustedError,
    RpcTimeout,
    SlippageExceeded,
    StateTransitionError,
    TradingHalted,
    TxExpired,
    classify_text,
    default_classifier,
)
from .guard import ExitGuard
from .halt import FileHaltStore, HaltRecord, MemoryHaltStore, TradingHalt, TradingHaltCoordinator
from .hooks import (
    AttemptInfo,
    AttemptReport,
    AttemptResult,
    ExitInfo,
    ExitObserver,
    Hooks,
)
from .outcome import ExitOutcome, ExitStatus
from .pending import (
    FilePendingStore,
    MemoryPendingStore,
    PendingRecord,
    PendingStore,
    PendingStoreError,
)
from .policy import (
    AdaptiveExitExecutor,
    ConfigError,
    EscalationLadder,
    EscalationStep,
    RetryPolicy,
)
from .retry import BoundedRetryExecutor
from .state_machine import ExitState, ExitStateMachine, TransitionRecord
from .tracker import ExitAttemptTracker
from .venue import ExitOrder, Fill, Lookup, OrderMode, Position, Submission, TxStatus, Venue

__version__ = "0.1.0"

__all__ = [
    "AdaptiveExitExecutor",
    "AttemptInfo",
    "AttemptReport",
    "AttemptResult",
    "BoundedRetryExecutor",
    "BreakerAction",
    "BreakerState",
    "CircuitBreaker",
    "CircuitBreakerAction",
    "ConfigError",
    "EmergencyHaltError",
    "ErrorClass",
    "EscalationLadder",
    "EscalationStep",
    "ExitAttemptTracker",
    "ExitCircuitBreaker",
    "ExitDeadline",
    "ExitDeadlineExceeded",
    "ExitDeadlineManager",
    "ExitError",
    "ExitGuard",
    "ExitInfo",
    "ExitObserver",
    "ExitOrder",
    "ExitOutcome",
    "ExitState",
    "ExitStateMachine",
    "ExitStatus",
    "ExitTimeoutDetector",
    "ExitTimeoutError",
    "FileHaltStore",
    "FilePendingStore",
    "Fill",
    "HaltRecord",
    "HaltResumeError",
    "HaltStoreError",
    "Hooks",
    "InsufficientBalance",
    "InvalidAccount",
    "InvalidVenueResponse",
    "Lookup",
    "MemoryHaltStore",
    "MemoryPendingStore",
    "NetworkError",
    "OrderMode",
    "PendingRecord",
    "PendingStore",
    "PendingStoreError",
    "Position",
    "RetryExhaustedError",
    "RetryPolicy",
    "RpcTimeout",
    "SlippageExceeded",
    "StateTransitionError",
    "Submission",
    "TimeoutDetector",
    "TradingHalt",
    "TradingHaltCoordinator",
    "TradingHalted",
    "TransitionRecord",
    "TxExpired",
    "TxStatus",
    "Venue",
    "classify_text",
    "default_classifier",
]
