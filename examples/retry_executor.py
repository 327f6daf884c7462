"""The bounded retry executor on its own: attempts, backoff and a total deadline.

Run: python examples/retry_executor.py
"""

from __future__ import annotations

from exitguard import BoundedRetryExecutor, ErrorClass, RetryExhaustedError, RetryPolicy, RpcTimeout
from exitguard.testing import run_virtual


async def main() -> None:
    calls = 0

    async def flaky_rpc() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RpcTimeout("RPC timeout")
        return "signature-abc"

    policy = RetryPolicy(max_attempts=3, initial_backoff=0.5, max_backoff=2.0,
                         backoff_multiplier=2.0, total_timeout=10.0,
                         retryable=frozenset({ErrorClass.RPC_TIMEOUT}))
    result = await BoundedRetryExecutor(policy).execute(flaky_rpc)
    print(f"succeeded with {result!r} after {calls} calls")

    async def always_down() -> str:
        raise ConnectionError("connection refused")

    try:
        await BoundedRetryExecutor(RetryPolicy.general()).execute(always_down)
    except RetryExhaustedError as exc:
        print(f"gave up: {exc.reason} after {exc.attempts} attempts in {exc.elapsed:.1f}s")


if __name__ == "__main__":
    run_virtual(main())
