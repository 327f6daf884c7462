"""A generic bounded retry: attempts, backoff and a total deadline no wait ever passes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .book import TIME_EPSILON
from .clock import loop_time
from .errors import (
    Classifier,
    ErrorClass,
    ExitTimeoutError,
    RetryExhaustedError,
    default_classifier,
)
from .policy import RetryPolicy
from .redaction import get_logger

_T = TypeVar("_T")
_log = get_logger("exitguard.retry")

RetryCallback = Callable[[int, ErrorClass, BaseException, float], None]


class BoundedRetryExecutor:
    """Retries an async operation under a RetryPolicy.

    Each attempt is bounded by ``min(attempt_timeout, time left)``; a backoff longer than the
    time left is cut to it; no attempt starts with less than ``min_attempt_time`` left. A
    non-retryable error class ends the retry at once. Failures raise RetryExhaustedError with
    the attempts, elapsed time, reason and last error.
    """

    __slots__ = ("classify", "on_retry", "policy")

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        *,
        classify: Classifier = default_classifier,
        on_retry: RetryCallback | None = None,
    ) -> None:
        self.policy = policy or RetryPolicy.general()
        self.classify = classify
        self.on_retry = on_retry

    async def execute(
        self,
        operation: Callable[[], Awaitable[_T]],
        classify: Classifier | None = None,
    ) -> _T:
        policy = self.policy
        classifier = classify or self.classify
        start = loop_time()
        expires_at = start + policy.total_timeout
        attempt = 0
        while True:
            attempt += 1
            attempt_started = loop_time()
            limit = min(policy.attempt_timeout, expires_at - attempt_started)
            bound = asyncio.timeout(limit)
            error: BaseException
            try:
                async with bound:
                    return await operation()
            except TimeoutError as exc:
                if bound.expired():
                    # Our own bound cut the attempt: its outcome is unknown.
                    error = ExitTimeoutError(
                        f"attempt {attempt}", loop_time() - attempt_started, limit
                    )
                    error_class = ErrorClass.RPC_TIMEOUT
                else:
                    # The operation raised a TimeoutError (e.g. RpcTimeout) itself: it is
                    # classified like any other error, and kept as the last error.
                    error = exc
                    error_class = classifier(exc)
            except Exception as exc:
                error = exc
                error_class = classifier(exc)
            elapsed = loop_time() - start
            if not policy.is_retryable(error_class):
                raise RetryExhaustedError(
                    attempt, error, elapsed, f"non-retryable error ({error_class})"
                ) from error
            if attempt >= policy.max_attempts:
                raise RetryExhaustedError(
                    attempt, error, elapsed, f"max attempts ({policy.max_attempts}) reached"
                ) from error
            left = expires_at - loop_time()
            if left <= policy.min_attempt_time:
                raise RetryExhaustedError(
                    attempt, error, elapsed, f"total timeout ({policy.total_timeout}s) exceeded"
                ) from error
            delay = min(policy.backoff(attempt), left)
            _log.warning(
                "attempt %d failed (%s), retrying in %.3fs", attempt, error_class, delay
            )
            if self.on_retry is not None:
                try:
                    self.on_retry(attempt, error_class, error, delay)
                except Exception:
                    _log.exception("on_retry callback raised; retrying anyway")
            if delay > TIME_EPSILON:
                await asyncio.sleep(delay)
            else:  # below the clock's resolution the timer would fire at once: only yield
                await asyncio.sleep(0)
            if expires_at - loop_time() <= policy.min_attempt_time:
                raise RetryExhaustedError(
                    attempt, error, loop_time() - start,
                    f"total timeout ({policy.total_timeout}s) exceeded",
                ) from error
