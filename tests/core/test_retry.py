"""BoundedRetryExecutor: retries, give-ups and the budget bounds.

Timing runs in virtual time (``run_virtual``), so elapsed times are exact; two tests at the
end run on the real clock to prove the real-time path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exitguard import (
    BoundedRetryExecutor,
    CircuitBreaker,
    ErrorClass,
    InsufficientBalance,
    NetworkError,
    RetryExhaustedError,
    RetryPolicy,
    RpcTimeout,
)
from exitguard.breaker import BreakerAction
from exitguard.errors import ExitTimeoutError
from exitguard.vtime import run_virtual

T = TypeVar("T")
RPC_ONLY = frozenset({ErrorClass.RPC_TIMEOUT})


def always(error_class: ErrorClass) -> Callable[[BaseException], ErrorClass]:
    return lambda _exc: error_class


def timeout_in_text(exc: BaseException) -> ErrorClass:
    """'timeout' anywhere in the error's text means RpcTimeout; anything else is unknown."""
    return ErrorClass.RPC_TIMEOUT if "timeout" in str(exc) else ErrorClass.UNKNOWN


async def timed(awaitable: Awaitable[T]) -> tuple[T, float]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    result = await awaitable
    return result, loop.time() - start


async def timed_failure(awaitable: Awaitable[object]) -> tuple[RetryExhaustedError, float]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(RetryExhaustedError) as info:
        await awaitable
    return info.value, loop.time() - start


# -- Retry, give up, exhaust the attempts or the budget -------------------------------------


def test_retry_succeeds_on_second_attempt() -> None:
    policy = RetryPolicy(
        max_attempts=3, initial_backoff=0.1, max_backoff=1.0, backoff_multiplier=2.0,
        total_timeout=5.0, retryable=RPC_ONLY,
    )
    executor = BoundedRetryExecutor(policy)
    attempt_count = 0

    async def operation() -> int:
        nonlocal attempt_count
        attempt_count += 1
        if attempt_count < 2:
            raise RuntimeError("RPC timeout")
        return 42

    result, elapsed = run_virtual(
        timed(executor.execute(operation, always(ErrorClass.RPC_TIMEOUT)))
    )
    assert result == 42
    assert attempt_count == 2  # took 2 attempts
    assert elapsed == pytest.approx(0.1)  # exactly one initial backoff


def test_retry_fails_on_non_retryable_error() -> None:
    policy = RetryPolicy(
        max_attempts=5, initial_backoff=0.1, max_backoff=1.0, backoff_multiplier=2.0,
        total_timeout=5.0, retryable=RPC_ONLY,
    )
    executor = BoundedRetryExecutor(policy)
    attempt_count = 0
    error = RuntimeError("Insufficient balance")

    async def operation() -> int:
        nonlocal attempt_count
        attempt_count += 1
        raise error

    err, elapsed = run_virtual(
        timed_failure(executor.execute(operation, always(ErrorClass.INSUFFICIENT_BALANCE)))
    )
    assert attempt_count == 1  # gave up immediately
    assert err.attempts == 1
    assert elapsed == 0.0  # no backoff before giving up
    assert "non-retryable" in err.reason
    assert "insufficient_balance" in err.reason
    assert err.last_error is error
    assert err.__cause__ is error


def test_max_attempts_exhaustion() -> None:
    policy = RetryPolicy(
        max_attempts=2, initial_backoff=0.1, max_backoff=0.1, backoff_multiplier=1.0,
        total_timeout=5.0, retryable=RPC_ONLY,
    )
    executor = BoundedRetryExecutor(policy)

    async def operation() -> int:
        raise RuntimeError("RPC timeout")

    err, elapsed = run_virtual(
        timed_failure(executor.execute(operation, always(ErrorClass.RPC_TIMEOUT)))
    )
    assert err.attempts == 2
    assert err.reason == "max attempts (2) reached"
    assert elapsed == pytest.approx(0.1)
    assert err.elapsed == pytest.approx(0.1)


def test_total_timeout_exceeded() -> None:
    # 100 attempts allowed, 1 s between attempts, 2.5 s in all. The original design asserts
    # 2500 ms <= elapsed < 4000 ms on a real clock. In virtual time the bound is exact: the
    # third backoff is cut from 1 s to the 0.5 s left, so the executor gives up at exactly
    # 2.5 s instead of sleeping past its own budget (the original design's executor gives up
    # at ~3 s).
    policy = RetryPolicy(
        max_attempts=100, initial_backoff=1.0, max_backoff=1.0, backoff_multiplier=1.0,
        total_timeout=2.5, retryable=RPC_ONLY,
    )
    delays: list[float] = []
    starts: list[float] = []
    executor = BoundedRetryExecutor(
        policy, on_retry=lambda _n, _cls, _exc, delay: delays.append(delay)
    )

    async def operation() -> int:
        starts.append(asyncio.get_running_loop().time())
        raise RuntimeError("RPC timeout")

    err, elapsed = run_virtual(
        timed_failure(executor.execute(operation, always(ErrorClass.RPC_TIMEOUT)))
    )
    assert 2.5 <= elapsed < 4.0  # the original design's own bounds
    assert elapsed == pytest.approx(2.5, abs=1e-9)  # and in virtual time, exactly the budget
    assert err.elapsed == pytest.approx(2.5, abs=1e-9)
    assert err.attempts == 3
    assert starts == pytest.approx([0.0, 1.0, 2.0])
    assert delays == pytest.approx([1.0, 1.0, 0.5])  # the last sleep is cut to the time left
    assert "total timeout (2.5s) exceeded" in err.reason


# -- RPC timeouts during an exit ------------------------------------------------------------


def test_exit_retry_after_rpc_timeout() -> None:
    # Position at -5 %, exit signal, RPC timeout on the first attempt, success on the second.
    executor = BoundedRetryExecutor(RetryPolicy.exit_policy())
    attempt_count = 0

    async def operation() -> None:
        nonlocal attempt_count
        attempt_count += 1
        if attempt_count == 1:
            raise RuntimeError("RPC timeout: connection reset")

    result, elapsed = run_virtual(timed(executor.execute(operation, timeout_in_text)))
    assert result is None
    assert attempt_count == 2  # required 2 attempts
    assert elapsed == pytest.approx(0.5)  # the exit policy's first backoff


def test_rpc_timeouts_give_up_after_two_attempts_and_halt_on_two_failures_is_threshold_2(
) -> None:
    executor = BoundedRetryExecutor(RetryPolicy.exit_policy())
    attempts = 0

    async def operation() -> None:
        nonlocal attempts
        attempts += 1
        if attempts <= 2:
            raise RuntimeError("RPC timeout")

    err, elapsed = run_virtual(timed_failure(executor.execute(operation, timeout_in_text)))
    # With the fix: fails after 2 attempts, well within the 20 s budget.
    assert attempts == 2
    assert err.attempts == 2
    assert elapsed <= 20.0
    assert elapsed == pytest.approx(0.5)

    # The original design builds `ExitCircuitBreaker::new(1)` with the comment "Halt on 2
    # failures", then asserts HaltTrading on the second failure. A threshold means "opens on
    # the Nth consecutive failure" (breaker.py's docstring), so "halt on 2 failures" is
    # threshold 2: the first failure continues, the second halts.
    breaker = CircuitBreaker(2)
    assert breaker.record_failure() is BreakerAction.CONTINUE
    assert breaker.record_failure() is BreakerAction.HALT_TRADING
    assert not breaker.should_accept_exit()
    # With the literal threshold 1 the very first failure already halts, which is what the
    # comment contradicts.
    assert CircuitBreaker(1).record_failure() is BreakerAction.HALT_TRADING


# -- Backoff and budget ----------------------------------------------------------------------


def test_backoff_sequence_and_attempt_times() -> None:
    policy = RetryPolicy(max_attempts=5, total_timeout=20.0)  # 0.5 s x2.5 up to 5 s
    delays: list[float] = []
    starts: list[float] = []
    executor = BoundedRetryExecutor(
        policy, on_retry=lambda _n, _cls, _exc, delay: delays.append(delay)
    )

    async def operation() -> None:
        starts.append(asyncio.get_running_loop().time())
        raise NetworkError("ECONNRESET")

    err, elapsed = run_virtual(timed_failure(executor.execute(operation)))
    assert delays == pytest.approx([0.5, 1.25, 3.125, 5.0])
    assert starts == pytest.approx([0.0, 0.5, 1.75, 4.875, 9.875])
    assert elapsed == pytest.approx(9.875)
    assert err.attempts == 5
    assert isinstance(err.last_error, NetworkError)


def test_attempt_timeout_bounds_each_attempt_and_cancels_it() -> None:
    policy = RetryPolicy(
        max_attempts=3, initial_backoff=0.5, max_backoff=0.5, backoff_multiplier=1.0,
        total_timeout=20.0, attempt_timeout=2.0,
    )
    cancelled = 0

    async def hang() -> None:
        nonlocal cancelled
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled += 1
            raise

    err, elapsed = run_virtual(timed_failure(BoundedRetryExecutor(policy).execute(hang)))
    assert elapsed == pytest.approx(2.0 + 0.5 + 2.0 + 0.5 + 2.0)
    assert err.attempts == 3
    assert cancelled == 3
    last = err.last_error
    assert isinstance(last, ExitTimeoutError)
    assert last.name == "attempt 3"
    assert last.limit == pytest.approx(2.0)
    assert last.elapsed == pytest.approx(2.0)  # the attempt's own time, not the total


def test_attempt_is_cut_to_the_time_left() -> None:
    policy = RetryPolicy(total_timeout=3.0, attempt_timeout=10.0, max_attempts=5)

    async def hang() -> None:
        await asyncio.Event().wait()

    err, elapsed = run_virtual(timed_failure(BoundedRetryExecutor(policy).execute(hang)))
    assert elapsed == pytest.approx(3.0)
    assert err.attempts == 1
    assert "total timeout" in err.reason
    assert isinstance(err.last_error, ExitTimeoutError)
    assert err.last_error.limit == pytest.approx(3.0)


def test_no_attempt_starts_with_less_than_min_attempt_time_left() -> None:
    policy = RetryPolicy(
        max_attempts=10, total_timeout=10.0, attempt_timeout=10.0, min_attempt_time=1.0
    )
    calls = 0

    async def slow_failure() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(9.2)
        raise NetworkError("reset")

    err, elapsed = run_virtual(
        timed_failure(BoundedRetryExecutor(policy).execute(slow_failure))
    )
    assert calls == 1  # 0.8 s left < 1.0 s minimum: no second attempt
    assert elapsed == pytest.approx(9.2)  # and no pointless sleep before giving up
    assert "total timeout" in err.reason


def test_operation_timeout_error_is_classified_not_renamed() -> None:
    # An RpcTimeout (a TimeoutError) raised by the operation itself is not the executor's
    # own attempt timeout: it goes through the classifier and stays the last error.
    original = RpcTimeout("node said: timeout")

    async def operation() -> None:
        raise original

    executor = BoundedRetryExecutor(RetryPolicy(max_attempts=3))
    err, _ = run_virtual(timed_failure(executor.execute(operation, always(ErrorClass.UNKNOWN))))
    assert err.attempts == 1  # UNKNOWN is not retryable
    assert err.last_error is original

    seen: list[tuple[ErrorClass, BaseException]] = []
    expired = TimeoutError("Blockhash not found")
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise expired
        return "ok"

    classifying = BoundedRetryExecutor(
        RetryPolicy(), on_retry=lambda _n, cls, exc, _d: seen.append((cls, exc))
    )
    assert run_virtual(classifying.execute(flaky)) == "ok"
    # The classifier saw it (a TimeoutError's type wins over its text: an unknown outcome).
    assert seen == [(ErrorClass.RPC_TIMEOUT, expired)]


def test_classifier_argument_overrides_the_constructor_one() -> None:
    executor = BoundedRetryExecutor(
        RetryPolicy(max_attempts=3), classify=always(ErrorClass.NETWORK)
    )
    calls = 0

    async def operation() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("whatever")

    err, _ = run_virtual(timed_failure(executor.execute(operation)))
    assert calls == 3  # NETWORK: retried to the limit
    calls = 0
    err, _ = run_virtual(
        timed_failure(executor.execute(operation, always(ErrorClass.INVALID_ACCOUNT)))
    )
    assert calls == 1
    assert "invalid_account" in err.reason


def test_default_classifier_stops_on_permanent_errors() -> None:
    executor = BoundedRetryExecutor(RetryPolicy(max_attempts=5))
    assert executor.policy == RetryPolicy(max_attempts=5)
    assert BoundedRetryExecutor().policy == RetryPolicy.general()

    async def broke() -> None:
        raise InsufficientBalance("insufficient funds")

    err, elapsed = run_virtual(timed_failure(executor.execute(broke)))
    assert err.attempts == 1
    assert elapsed == 0.0


def test_success_on_first_try_does_not_wait_or_call_back() -> None:
    calls: list[int] = []
    executor = BoundedRetryExecutor(on_retry=lambda n, *_: calls.append(n))

    async def operation() -> str:
        return "done"

    result, elapsed = run_virtual(timed(executor.execute(operation)))
    assert (result, elapsed, calls) == ("done", 0.0, [])


def test_raising_on_retry_callback_does_not_stop_the_retry() -> None:
    def explode(*_args: object) -> None:
        raise RuntimeError("callback bug")

    executor = BoundedRetryExecutor(RetryPolicy(max_attempts=3), on_retry=explode)
    calls = 0

    async def operation() -> int:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise NetworkError("reset")
        return calls

    assert run_virtual(executor.execute(operation)) == 3


def test_cancellation_during_backoff_propagates() -> None:
    policy = RetryPolicy(max_attempts=5, initial_backoff=5.0, max_backoff=5.0)
    calls = 0

    async def operation() -> None:
        nonlocal calls
        calls += 1
        raise NetworkError("reset")

    async def main() -> float:
        task = asyncio.create_task(BoundedRetryExecutor(policy).execute(operation))
        await asyncio.sleep(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return asyncio.get_running_loop().time()

    assert run_virtual(main()) == pytest.approx(1.0)
    assert calls == 1


@settings(max_examples=60, deadline=None)
@given(
    max_attempts=st.integers(1, 8),
    initial=st.floats(0.01, 3.0),
    multiplier=st.floats(1.0, 4.0),
    total=st.floats(0.5, 30.0),
    attempt_timeout=st.floats(0.05, 10.0),
    work=st.floats(0.0, 12.0),
)
def test_never_runs_past_total_timeout(
    max_attempts: int, initial: float, multiplier: float, total: float,
    attempt_timeout: float, work: float,
) -> None:
    policy = RetryPolicy(
        max_attempts=max_attempts, initial_backoff=initial, max_backoff=max(initial, 5.0),
        backoff_multiplier=multiplier, total_timeout=total, attempt_timeout=attempt_timeout,
        min_attempt_time=min(0.25, total / 2),
    )
    calls = 0

    async def operation() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(work)
        raise NetworkError("reset")

    err, elapsed = run_virtual(timed_failure(BoundedRetryExecutor(policy).execute(operation)))
    assert elapsed <= total + 1e-9
    assert calls == err.attempts <= max_attempts


# -- Real clock ----------------------------------------------------------------------------


def test_total_timeout_on_the_real_clock() -> None:
    policy = RetryPolicy(
        max_attempts=100, initial_backoff=0.05, max_backoff=0.05, backoff_multiplier=1.0,
        total_timeout=0.3, attempt_timeout=0.1, min_attempt_time=0.01,
    )

    async def hang() -> None:
        await asyncio.sleep(10)

    async def main() -> tuple[RetryExhaustedError, float]:
        start = time.monotonic()
        with pytest.raises(RetryExhaustedError) as info:
            await BoundedRetryExecutor(policy).execute(hang)
        return info.value, time.monotonic() - start

    err, elapsed = asyncio.run(main())
    assert 0.29 <= elapsed < 1.5  # generous upper bound for a loaded machine
    assert "total timeout" in err.reason
    assert 1 <= err.attempts <= 3
    assert isinstance(err.last_error, ExitTimeoutError)
