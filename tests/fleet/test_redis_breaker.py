"""The shared breaker view against a real redis-server: one window, one state and one
half-open probe for breakers of the same venue in several "processes" (each a backend with
its own Redis connection, as a process would have), and the local fallback when Redis is
gone or answers garbage.

Cool-downs and leases run on Redis's clock (real time): they are short, and each test waits
for the effect it asserts, never for a fixed time alone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

pytest.importorskip("redis")

import redis

from exitguard.breaker import (
    BreakerAction,
    BreakerState,
    CircuitBreaker,
    Permit,
    SharedState,
)
from exitguard.errors import ConfigError
from exitguard.faults import FaultSource
from exitguard.fleet import RedisBreakerBackend
from exitguard.testing import FakeClock
from tests.support.servers import RedisServer, wait_until

Transition = tuple[str, BreakerState, BreakerState, str]


@pytest.fixture
def backends(redis_server: RedisServer) -> Iterator[list[RedisBreakerBackend]]:
    """Three backends, one Redis connection each: three processes of one fleet."""
    made = [RedisBreakerBackend(redis_server.url, namespace="t") for _ in range(3)]
    try:
        yield made
    finally:
        for backend in made:
            backend.close()


def fleet(backends: list[RedisBreakerBackend], **settings: object) -> list[CircuitBreaker]:
    breakers = [CircuitBreaker(name="binance", shared=b, **settings)  # type: ignore[arg-type]
                for b in backends]
    for backend in backends:
        event = backend.subscribed
        assert event is not None
        assert event.wait(10)
    return breakers


def record(breaker: CircuitBreaker) -> list[Transition]:
    seen: list[Transition] = []
    breaker.add_listener(lambda *t: seen.append(t))
    return seen


def test_three_processes_failing_once_each_trip_one_breaker_seen_by_all(
    backends: list[RedisBreakerBackend],
) -> None:
    breakers = fleet(backends, failure_threshold=3, cooldown=60)
    heard = [record(b) for b in breakers]
    assert breakers[0].record_failure(breakers[0].allow()) is BreakerAction.CONTINUE
    assert breakers[1].record_failure(breakers[1].allow()) is BreakerAction.CONTINUE
    # Locally each has one failure; the fleet has three: the third trips it.
    assert breakers[2].record_failure(breakers[2].allow()) is BreakerAction.HALT_TRADING
    assert heard[2] == [("binance", BreakerState.CLOSED, BreakerState.OPEN,
                         "3 consecutive failed exits across the fleet")]
    # Pushed to the other two, without any call of theirs.
    wait_until(lambda: all(h for h in heard), 10, 0.01, "the trip reaching every process")
    for h in heard:
        assert [t[2] for t in h] == [BreakerState.OPEN]
    assert all(b.allow() is None for b in breakers)
    assert all(b.shared_failures == 0 for b in breakers)


def test_a_success_anywhere_resets_the_fleet_count(backends: list[RedisBreakerBackend]) -> None:
    a, b, c = fleet(backends, failure_threshold=3)
    a.record_failure(a.allow())
    b.record_failure(b.allow())
    # The count left zero: pushed, so c's next success goes to Redis and resets it (a success
    # racing the push would be skipped: the fleet count is "since the last success it knew").
    wait_until(lambda: c.consecutive_failures > 0, 10, 0.01, "the count pushed to c")
    c.record_success(c.allow())
    a.record_failure(a.allow())
    assert b.record_failure(b.allow()) is BreakerAction.CONTINUE
    assert a.state is BreakerState.CLOSED
    assert a.consecutive_failures == 2


def test_the_half_open_probe_goes_to_exactly_one_process(
    backends: list[RedisBreakerBackend],
) -> None:
    breakers = fleet(backends, failure_threshold=1, cooldown=0.2)
    breakers[0].record_failure(breakers[0].allow())
    wait_until(lambda: breakers[1].state is BreakerState.HALF_OPEN, 10, 0.02, "half-open")
    permits: list[tuple[CircuitBreaker, Permit | None]] = []
    start = threading.Barrier(len(breakers) * 4)

    def ask(breaker: CircuitBreaker) -> None:
        start.wait()
        permits.append((breaker, breaker.allow()))

    threads = [threading.Thread(target=ask, args=(b,)) for b in breakers for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    granted = [(b, p) for b, p in permits if p is not None]
    assert len(permits) == 12
    assert len(granted) == 1
    holder, permit = granted[0]
    assert permit.probe
    assert permit.lease
    # The probe's success closes the breaker for the whole fleet.
    holder.record_success(permit)
    wait_until(lambda: all(b.state is BreakerState.CLOSED for b in breakers), 10, 0.02,
               "closed everywhere")


def test_a_failed_probe_reopens_for_everyone_and_a_released_lease_is_free_again(
    backends: list[RedisBreakerBackend],
) -> None:
    a, b, _ = fleet(backends, failure_threshold=1, cooldown=0.2)
    a.record_failure(a.allow())
    wait_until(lambda: a.state is BreakerState.HALF_OPEN, 10, 0.02, "half-open")
    probe = a.allow()
    assert probe is not None
    assert b.allow() is None
    a.release(probe)
    second = b.allow()
    assert second is not None
    assert second.probe
    assert b.record_failure(second) is BreakerAction.HALT_TRADING
    wait_until(lambda: a.state is BreakerState.OPEN, 10, 0.02, "re-opened everywhere")


def test_a_probe_lease_of_a_dead_process_expires(redis_server: RedisServer) -> None:
    backend = RedisBreakerBackend(redis_server.url, namespace="t", probe_lease=0.3, push=False)
    other = RedisBreakerBackend(redis_server.url, namespace="t", probe_lease=0.3, push=False)
    a = CircuitBreaker(name="v", failure_threshold=1, cooldown=0.1, shared=backend)
    b = CircuitBreaker(name="v", failure_threshold=1, cooldown=0.1, shared=other)
    a.record_failure(a.allow())
    wait_until(lambda: a.state is BreakerState.HALF_OPEN, 10, 0.02, "half-open")
    assert a.allow() is not None  # then "dies" without a verdict
    assert b.allow() is None
    wait_until(lambda: b.allow() is not None, 10, 0.02, "the lease to expire")


def test_the_failure_rate_counts_across_the_fleet(backends: list[RedisBreakerBackend]) -> None:
    a, b, c = fleet(backends, failure_threshold=100, failure_rate=0.5, window=60, min_calls=4)
    heard = record(a)
    a.record_success(a.allow())
    b.record_failure(b.allow())
    c.record_success(c.allow())
    assert a.record_failure(a.allow()) is BreakerAction.HALT_TRADING
    assert heard[-1][3] == "failure rate across the fleet over 60s above 50%"
    assert c.sync() is BreakerState.OPEN


def test_redis_down_the_breaker_decides_alone_then_takes_the_fleet_state_back(
    redis_server: RedisServer,
) -> None:
    clock = FakeClock(100.0)
    backend = RedisBreakerBackend(redis_server.url, namespace="t", push=False)
    breaker = CircuitBreaker(name="v", failure_threshold=2, cooldown=30, clock=clock,
                             shared=backend, shared_retry=1.0)
    heard = record(breaker)
    assert breaker.allow() == Permit(probe=False)
    breaker.record_failure(Permit(probe=False))  # the fleet counts 1
    redis_server.kill()
    # Exits go on: permits from the local state; one failed call, then none for 1 s.
    assert breaker.allow() == Permit(probe=False)
    assert breaker.shared_failures == 1
    assert breaker.shared_error
    breaker.record_success(Permit(probe=False))
    assert breaker.shared_failures == 1  # within shared_retry: Redis not asked again
    redis_server.start()  # empty: no persistence
    clock.advance(1.0)
    # Redis answers again: its state (closed, nothing counted) replaces the local one.
    assert breaker.allow() == Permit(probe=False)
    assert breaker.shared_error is None
    assert breaker.consecutive_failures == 0
    assert heard == []


def test_a_trip_decided_alone_during_an_outage_opens_the_fleet_s_breaker_when_redis_returns(
    redis_server: RedisServer,
) -> None:
    clock = FakeClock(100.0)
    backend = RedisBreakerBackend(redis_server.url, namespace="t", push=False)
    other = CircuitBreaker(name="v", failure_threshold=2, cooldown=30,
                           shared=RedisBreakerBackend(redis_server.url, namespace="t",
                                                      push=False))
    breaker = CircuitBreaker(name="v", failure_threshold=2, cooldown=30, clock=clock,
                             shared=backend, shared_retry=1.0)
    heard = record(breaker)
    redis_server.kill()
    assert breaker.record_failure(breaker.allow()) is BreakerAction.CONTINUE
    assert breaker.record_failure(breaker.allow()) is BreakerAction.HALT_TRADING
    assert [t[2] for t in heard] == [BreakerState.OPEN]  # its own guard halts entries
    redis_server.start()  # empty: the fleet's breaker reads closed
    clock.advance(1.0)
    # The venue outage seen alone is handed to the fleet, not forgotten.
    assert breaker.allow() is None
    assert [t[2] for t in heard] == [BreakerState.OPEN]
    assert other.state is BreakerState.OPEN
    reason = redis.Redis.from_url(redis_server.url).hget("t:breaker:{v}", "reason")
    assert isinstance(reason, bytes)
    assert b"own count while the shared state was down" in reason


@pytest.mark.parametrize("garbage", ["wrong type", "unknown state"])
def test_garbage_in_redis_is_a_store_failure_and_the_breaker_decides_alone(
    redis_server: RedisServer, garbage: str,
) -> None:
    backend = RedisBreakerBackend(redis_server.url, namespace="t", push=False)
    breaker = CircuitBreaker(name="v", failure_threshold=1, shared=backend)
    raw = redis.Redis.from_url(redis_server.url)
    if garbage == "wrong type":
        raw.set("t:breaker:{v}", "nonsense")
    else:
        raw.hset("t:breaker:{v}", mapping={"state": "exploded", "reason": "x"})
    assert breaker.allow() == Permit(probe=False)
    assert breaker.shared_failures == 1
    assert breaker.record_failure(Permit(probe=False)) is BreakerAction.HALT_TRADING


def test_a_guard_counts_shared_breaker_failures_as_faults(redis_server: RedisServer) -> None:
    from exitguard import ExitGuard
    from exitguard.testing import ScriptedVenue

    backend = RedisBreakerBackend(redis_server.url, namespace="t", push=False)
    guard = ExitGuard(ScriptedVenue(name="v"), breaker=CircuitBreaker(name="v", shared=backend))
    redis_server.kill()
    assert guard.breaker.allow() is not None
    assert guard.fault_counts[FaultSource.BREAKER_STORE] == 1


@pytest.mark.parametrize(("field", "kwargs"), [
    ("namespace", {"url": "redis://127.0.0.1:1/0", "namespace": "has space"}),
    ("timeout", {"url": "redis://127.0.0.1:1/0", "timeout": 0}),
    ("probe_lease", {"url": "redis://127.0.0.1:1/0", "probe_lease": -1}),
    ("url", {"url": "http://user:secret@host/"}),
    ("url", {}),
])
def test_invalid_settings_fail_at_construction_naming_the_field(
    field: str, kwargs: dict[str, object],
) -> None:
    with pytest.raises(ConfigError) as caught:
        RedisBreakerBackend(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert "secret" not in str(caught.value)


def test_a_dead_redis_costs_an_allow_little(redis_server: RedisServer) -> None:
    """Not a timing claim (see benchmarks/bench_fleet.py): a refused connection must not
    wait for the socket timeout. 0.25 s is the timeout; a refused connect takes microseconds."""
    backend = RedisBreakerBackend(redis_server.url, namespace="t", push=False, timeout=5)
    breaker = CircuitBreaker(name="v", shared=backend)
    redis_server.kill()
    started = time.monotonic()
    breaker.allow()
    assert time.monotonic() - started < 2.5  # far below the 5 s timeout


class CountingBackend(RedisBreakerBackend):
    """Counts the calls an exit's path makes to Redis (pushed syncs are not on it)."""

    asked = 0

    def allow(self, breaker: CircuitBreaker) -> SharedState:
        self.asked += 1
        return super().allow(breaker)

    def record(self, breaker: CircuitBreaker, *, ok: bool, lease: str | None,
               forced: bool) -> SharedState:
        self.asked += 1
        return super().record(breaker, ok=ok, lease=lease, forced=forced)


def test_healthy_exits_cost_no_round_trip_while_the_push_is_live(
    redis_server: RedisServer,
) -> None:
    backends = [CountingBackend(redis_server.url, namespace="t") for _ in range(2)]
    try:
        a, b = fleet(list(backends))
        for _ in range(50):
            a.record_success(a.allow())
        assert backends[0].asked == 0
        # A failure is always counted in Redis, and the others hear that the count moved:
        # their next success asks Redis (which resets the count, pushed again).
        a.record_failure(a.allow())
        assert backends[0].asked == 1  # the allow was still answered from the mirror
        wait_until(lambda: b.consecutive_failures == 1, 10, 0.01, "the count pushed to b")
        b.record_success(b.allow())
        assert backends[1].asked == 1  # the success, which resets the fleet's count
        wait_until(lambda: a.consecutive_failures == 0, 10, 0.01, "the reset pushed to a")
        a.record_success(a.allow())
        assert backends[0].asked == 1
    finally:
        for backend in backends:
            backend.close()


def test_without_a_push_every_call_asks_redis(redis_server: RedisServer) -> None:
    backend = CountingBackend(redis_server.url, namespace="t", push=False)
    breaker = CircuitBreaker(name="v", shared=backend)
    for _ in range(5):
        breaker.record_success(breaker.allow())
    assert backend.asked == 10
