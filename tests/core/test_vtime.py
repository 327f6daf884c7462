"""The virtual-time loop: the clock jumps when every task waits on a timer."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time

import pytest

from exitguard.clock import loop_time
from exitguard.vtime import VirtualTimeLoop, run_virtual


def test_an_hour_of_sleep_takes_no_real_time() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.sleep(3600)
        return loop.time() - start

    real_start = time.monotonic()
    virtual_elapsed = run_virtual(main())
    assert time.monotonic() - real_start < 1.0
    assert virtual_elapsed == 3600.0


def test_sleeps_longer_than_a_day_still_jump() -> None:
    # asyncio caps one selector wait at a day; the loop jumps as often as it takes.
    async def main() -> float:
        await asyncio.sleep(10 * 86_400)
        return asyncio.get_running_loop().time()

    real_start = time.monotonic()
    assert run_virtual(main()) == pytest.approx(10 * 86_400)
    assert time.monotonic() - real_start < 1.0


def test_run_virtual_returns_the_result_and_starts_where_asked() -> None:
    async def main() -> tuple[str, float, bool, float]:
        loop = asyncio.get_running_loop()
        return "result", loop.time(), isinstance(loop, VirtualTimeLoop), loop_time()

    assert run_virtual(main(), start=123.5) == ("result", 123.5, True, 123.5)
    assert run_virtual(main())[1] == 0.0


def test_run_virtual_propagates_exceptions() -> None:
    async def main() -> None:
        await asyncio.sleep(5)
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        run_virtual(main())


def test_timers_fire_in_order_at_their_times() -> None:
    async def main() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        fired: list[tuple[str, float]] = []

        async def sleeper(name: str, delay: float) -> None:
            await asyncio.sleep(delay)
            fired.append((name, loop.time()))

        await asyncio.gather(
            sleeper("c", 3.0), sleeper("a", 1.0), sleeper("d", 7.5), sleeper("b", 2.0)
        )
        return fired

    assert run_virtual(main()) == [("a", 1.0), ("b", 2.0), ("c", 3.0), ("d", 7.5)]


def test_many_timers_in_order() -> None:
    rng = random.Random(3)
    delays = [rng.uniform(0, 1000) for _ in range(2000)]

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        fired: list[float] = []

        async def sleeper(delay: float) -> None:
            await asyncio.sleep(delay)
            fired.append(loop.time())
            assert loop.time() == pytest.approx(delay)

        await asyncio.gather(*(sleeper(d) for d in delays))
        return fired

    real_start = time.monotonic()
    fired = run_virtual(main())
    assert time.monotonic() - real_start < 5.0
    assert fired == sorted(fired)
    assert fired == pytest.approx(sorted(delays))


def test_asyncio_timeout_expires_in_virtual_time() -> None:
    async def main() -> tuple[float, str]:
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(5.0):
                await asyncio.sleep(100.0)
        expired_at = loop.time()
        async with asyncio.timeout(5.0):  # one that does not expire
            await asyncio.sleep(4.0)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.Event().wait(), 2.0)
        return expired_at, f"{loop.time():.1f}"

    assert run_virtual(main()) == (5.0, "11.0")


def test_to_thread_still_works() -> None:
    def blocking() -> int:
        time.sleep(0.05)
        return threading.get_ident()

    async def main() -> tuple[int, float, float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        ident = await asyncio.to_thread(blocking)
        return ident, start, loop.time()

    ident, start, end = run_virtual(main())
    assert ident != threading.get_ident()  # it really ran in a worker thread
    assert end == start  # no timer was pending, so the clock did not jump


def test_real_socket_io_still_works() -> None:
    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        left, right = socket.socketpair()
        left.setblocking(False)
        right.setblocking(False)
        try:
            reader = loop.create_task(loop.sock_recv(right, 100))
            await asyncio.sleep(0)
            await loop.sock_sendall(left, b"fill")
            return await reader
        finally:
            left.close()
            right.close()

    assert run_virtual(main()) == b"fill"


def test_advance_never_goes_backwards() -> None:
    loop = VirtualTimeLoop(start=10.0)
    try:
        loop.advance(-5.0)
        assert loop.time() == 10.0
        loop.advance(2.5)
        assert loop.time() == 12.5
    finally:
        loop.close()
