"""Error classes, the exception hierarchy and the default classifier."""

from __future__ import annotations

import pytest

from exitguard import (
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
from exitguard.errors import (
    EXIT_RETRYABLE,
    TRANSIENT,
    EmergencyHaltError,
    ExitDeadlineExceeded,
    ExitTimeoutError,
    HaltResumeError,
    HaltStoreError,
    InvalidVenueResponse,
    StateTransitionError,
    classify_text,
    default_classifier,
)

E = ErrorClass


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (NetworkError("refused"), E.NETWORK),
        (RpcTimeout("no answer"), E.RPC_TIMEOUT),
        (TxExpired("gone"), E.TX_EXPIRED),
        (SlippageExceeded("moved"), E.SLIPPAGE_EXCEEDED),
        (InsufficientBalance("broke"), E.INSUFFICIENT_BALANCE),
        (InvalidAccount("who"), E.INVALID_ACCOUNT),
        (InvalidVenueResponse("NaN price"), E.INVALID_RESPONSE),
        (ExitTimeoutError("confirm", 8.0, 8.0), E.RPC_TIMEOUT),
        (ExitDeadlineExceeded(31.0, 30.0), E.RPC_TIMEOUT),
        (ExitError("something"), E.UNKNOWN),
    ],
)
def test_exitguard_exception_types(exc: BaseException, expected: ErrorClass) -> None:
    assert default_classifier(exc) is expected


def test_exitguard_type_wins_over_its_text() -> None:
    # An InsufficientBalance whose message mentions a timeout is still permanent.
    assert default_classifier(InsufficientBalance("timeout while checking")) is (
        E.INSUFFICIENT_BALANCE
    )
    assert default_classifier(NetworkError("Blockhash not found")) is E.NETWORK


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (TimeoutError(), E.RPC_TIMEOUT),
        (ConnectionError(), E.NETWORK),
        (ConnectionResetError(104, "reset by peer"), E.NETWORK),
        (ConnectionRefusedError(), E.NETWORK),
        (OSError(), E.NETWORK),
        (OSError(101, "unreachable"), E.NETWORK),
        (ValueError("bad"), E.UNKNOWN),
        (RuntimeError(), E.UNKNOWN),
        (KeyError("x"), E.UNKNOWN),
    ],
)
def test_plain_python_exceptions(exc: BaseException, expected: ErrorClass) -> None:
    assert default_classifier(exc) is expected


SOLANA_TEXTS = [
    ("Blockhash not found", E.TX_EXPIRED),
    ("Transaction simulation failed: Blockhash not found", E.TX_EXPIRED),
    ("BLOCKHASH NOT FOUND", E.TX_EXPIRED),
    ("block height exceeded", E.TX_EXPIRED),
    ("0x1771", E.SLIPPAGE_EXCEEDED),
    ("Error processing Instruction 2: custom program error: 0x1771", E.SLIPPAGE_EXCEEDED),
    ("custom program error: 6001", E.SLIPPAGE_EXCEEDED),
    ("insufficient funds", E.INSUFFICIENT_BALANCE),
    ("Transfer: insufficient lamports 5000, need 10000", E.INSUFFICIENT_BALANCE),
    ("AccountNotFound", E.INVALID_ACCOUNT),
    ("could not find account", E.INVALID_ACCOUNT),
    ("This transaction has already been processed", E.ALREADY_PROCESSED),
    ("request timed out", E.RPC_TIMEOUT),
    ("ETIMEDOUT", E.RPC_TIMEOUT),
    ("ECONNRESET", E.NETWORK),
    ("connection refused", E.NETWORK),
    ("something nobody has seen before", E.UNKNOWN),
    ("", E.UNKNOWN),
]


@pytest.mark.parametrize(("text", "expected"), SOLANA_TEXTS)
def test_known_error_texts(text: str, expected: ErrorClass) -> None:
    assert classify_text(text) is expected
    # The same text inside an exception the classifier knows nothing else about.
    assert default_classifier(RuntimeError(text)) is expected
    assert default_classifier(ExitError(text)) is expected


def test_the_exception_type_wins_over_free_text() -> None:
    # Text that merely contains a venue's word must not change what the type says: a wrong
    # "expired" would send a second order while the first may land.
    assert default_classifier(ConnectionError("SSL certificate has expired")) is E.NETWORK
    assert default_classifier(OSError("session expired")) is E.NETWORK
    assert default_classifier(TimeoutError("custom program error: 0x1771")) is E.RPC_TIMEOUT
    assert default_classifier(ConnectionError("connection timed out")) is E.NETWORK
    assert default_classifier(OSError("insufficient funds")) is E.NETWORK
    # Untyped errors are classified by the venue's specific phrases only.
    assert default_classifier(RuntimeError("API key expired")) is E.UNKNOWN
    assert default_classifier(RuntimeError("insufficient permissions")) is E.UNKNOWN
    assert default_classifier(RuntimeError("Transaction simulation failed: Blockhash not found")
                              ) is E.TX_EXPIRED


def test_only_order_not_sent_is_a_definite_not_sent() -> None:
    from exitguard.errors import NetworkError, OrderNotSent

    assert default_classifier(OrderNotSent("rejected before sending")) is E.NOT_SENT
    assert default_classifier(NetworkError("reset")) is E.NETWORK


def test_permanence_and_retryable_sets() -> None:
    assert {c for c in ErrorClass if c.is_permanent} == {
        E.INSUFFICIENT_BALANCE, E.INVALID_ACCOUNT,
    }
    assert {E.RPC_TIMEOUT, E.NETWORK} == TRANSIENT
    assert TRANSIENT <= EXIT_RETRYABLE
    assert not any(c.is_permanent for c in EXIT_RETRYABLE)
    assert E.UNKNOWN not in EXIT_RETRYABLE
    assert E.ALREADY_PROCESSED not in EXIT_RETRYABLE  # it landed: nothing to retry


def test_hierarchy() -> None:
    for cls in (
        NetworkError, RpcTimeout, TxExpired, SlippageExceeded, InsufficientBalance,
        InvalidAccount, InvalidVenueResponse, RetryExhaustedError, EmergencyHaltError,
        StateTransitionError, ExitTimeoutError, ExitDeadlineExceeded, TradingHalted,
        HaltResumeError, HaltStoreError, ConfigError,
    ):
        assert issubclass(cls, ExitError), cls
    assert issubclass(NetworkError, ConnectionError)
    assert issubclass(RpcTimeout, TimeoutError)
    assert issubclass(ExitTimeoutError, TimeoutError)  # a bounded wait that ran out
    assert issubclass(ExitDeadlineExceeded, TimeoutError)
    assert issubclass(ConfigError, ValueError)


def test_exception_attributes_and_messages() -> None:
    cause = RpcTimeout("slow")
    exhausted = RetryExhaustedError(2, cause, 1.5, "max attempts (2) reached")
    assert (exhausted.attempts, exhausted.last_error, exhausted.elapsed) == (2, cause, 1.5)
    assert exhausted.reason == "max attempts (2) reached"
    assert "2 attempt(s)" in str(exhausted)
    assert "1.500s" in str(exhausted)
    assert "slow" in str(exhausted)

    halt = EmergencyHaltError("max exit attempts (2) exceeded")
    assert halt.reason == "max exit attempts (2) exceeded"
    assert str(halt) == "emergency halt: max exit attempts (2) exceeded"

    bad = StateTransitionError("position_closed", "submitted", "terminal state")
    assert (bad.from_state, bad.to_state) == ("position_closed", "submitted")
    assert "position_closed -> submitted" in str(bad)
    assert "terminal state" in str(bad)

    timeout = ExitTimeoutError("confirm tx1", 8.0, 8.0)
    assert (timeout.name, timeout.elapsed, timeout.limit) == ("confirm tx1", 8.0, 8.0)
    assert str(timeout).startswith("confirm tx1:")

    late = ExitDeadlineExceeded(30.5, 30.0)
    assert (late.elapsed, late.deadline) == (30.5, 30.0)
    assert "30.500s > 30.000s" in str(late)

    halted = TradingHalted("breaker open")
    assert halted.reason == "breaker open"
    assert "breaker open" in str(halted)

    config = ConfigError("RetryPolicy", "max_attempts", "must be >= 1", 0)
    assert config.field == "max_attempts"
    assert str(config) == "RetryPolicy.max_attempts must be >= 1, got 0"
