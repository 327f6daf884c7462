"""TradingHalt over RedisHaltStore (exitguard.fleet.shared_halt), several "processes" in one
test (each a TradingHalt with its own store and Redis connections), against a real
redis-server: a halt pushed to the others, approvers and audit in Redis, concurrent writes
serialized, a dead Redis failing safe (counted and paged once, exits going on), and a
stale process never overwriting what Redis holds.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

pytest.importorskip("redis")

import contextlib
import itertools

from exitguard import ExitGuard, Position
from exitguard.errors import HaltResumeError, TradingHalted
from exitguard.faults import FaultSource
from exitguard.fleet import RedisHaltStore, shared_halt
from exitguard.halt import HaltRecord, TradingHalt
from exitguard.testing import RecordingHooks, ScriptedVenue, TxPlan
from tests.support.servers import RedisServer, wait_until


def close(*halts: TradingHalt) -> None:
    for halt in halts:
        store = halt.store
        assert isinstance(store, RedisHaltStore)
        store.close()


@pytest.fixture
def fleet(redis_server: RedisServer) -> Iterator[list[TradingHalt]]:
    halts = [shared_halt(redis_server.url, ["alice"], namespace="t") for _ in range(3)]
    for halt in halts:
        store = halt.store
        assert isinstance(store, RedisHaltStore)
        assert store.subscribed is not None
        assert store.subscribed.wait(10)
    try:
        yield halts
    finally:
        close(*halts)


def test_a_halt_reaches_the_other_processes_listeners_without_any_call_of_theirs(
    fleet: list[TradingHalt],
) -> None:
    first, *others = fleet
    heard: list[list[HaltRecord]] = [[] for _ in others]
    for halt, seen in zip(others, heard, strict=True):
        halt.on_halt(seen.append)
    assert first.halt("venue down", actor="circuit_breaker")
    wait_until(lambda: all(heard), 10, 0.01, "the halt pushed to every process")
    for seen in heard:
        assert [r.reason for r in seen] == ["venue down"]
        assert seen[0].approvers == ("alice",)  # stored with the halt, in Redis
    for halt in others:
        with pytest.raises(TradingHalted, match="venue down"):
            halt.check_entry()


def test_the_halt_s_own_approver_list_decides_in_every_process(
    redis_server: RedisServer,
) -> None:
    writer = shared_halt(redis_server.url, ["alice"], namespace="t")
    lenient = shared_halt(redis_server.url, ["alice", "mallory"], namespace="t")
    try:
        writer.halt("incident")
        with pytest.raises(HaltResumeError, match="not an approver of this halt"):
            lenient.resume("mallory", "looks fine")
        assert writer.is_halted
        assert lenient.is_halted
        lenient.resume("alice", "fixed")
        wait_until(lambda: not writer.is_halted, 10, 0.01, "the resume pushed")
        assert [r.actor for r in writer.history] == ["circuit_breaker", "alice"]
    finally:
        close(writer, lenient)


def test_concurrent_halts_and_resumes_are_serialized_and_none_is_lost(
    fleet: list[TradingHalt],
) -> None:
    """A halt that said True is in the shared history, and the state is always the last
    record's: a resume racing a halt either comes before it (halted) or finds it (and
    lifts it, recorded), never overwrites it."""
    halter, resumer, _ = fleet
    halted_by_call: list[str] = []

    def halts() -> None:
        for i in range(15):
            if halter.halt(f"trip {i}"):
                halted_by_call.append(f"trip {i}")

    def resumes() -> None:
        for i in range(15):
            with contextlib.suppress(HaltResumeError):
                resumer.resume("alice", f"ok {i}")

    threads = [threading.Thread(target=halts), threading.Thread(target=resumes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for halt in fleet:
        halt.refresh(force=True)
    histories = {tuple((r.halted, r.reason) for r in h.history) for h in fleet}
    assert len(histories) == 1  # one history, the same everywhere
    history = next(iter(histories))
    assert [reason for halted, reason in history if halted] == halted_by_call
    assert all(a[0] != b[0] for a, b in itertools.pairwise(history))
    assert {h.is_halted for h in fleet} == {history[-1][0]}


def test_a_stale_process_never_overwrites_what_redis_holds(redis_server: RedisServer) -> None:
    # No push and a long poll: this process still believes trading is allowed.
    stale_store = RedisHaltStore(redis_server.url, namespace="t", push=False)
    stale = TradingHalt(["alice"], store=stale_store, poll_interval=3600)
    fresh = shared_halt(redis_server.url, ["alice"], namespace="t")
    try:
        assert fresh.halt("incident 1", actor="operator")
        assert stale.halt("its own trip") is False  # re-read under the lock: already halted
        assert [r.reason for r in fresh.history] == ["incident 1"]
        assert stale.is_halted  # and it has adopted the fleet's state
    finally:
        close(fresh)


def test_redis_down_entries_halted_exits_go_on_counted_and_paged_once(
    redis_server: RedisServer,
) -> None:
    halt = shared_halt(redis_server.url, ["alice"], namespace="t")
    hooks = RecordingHooks()
    venue = ScriptedVenue(default=TxPlan(confirm_after=0.0, lands_after=0.0))
    guard = ExitGuard(venue, halt=halt, hooks=hooks, deadline=5.0)
    try:
        guard.check_entry()
        redis_server.kill()
        wait_until(lambda: halt.is_halted, 10, 0.01, "entries halted (fail safe)")
        for _ in range(200):
            with pytest.raises(TradingHalted, match="unreachable"):
                guard.check_entry()

        async def exits() -> list[str]:
            out = []
            for i in range(3):
                outcome = await guard.exit(Position(f"p{i}", "SOL", 1.0, 100.0),
                                           signal_price=100.0)
                out.append(outcome.status.value)
            return out

        assert asyncio.run(exits()) == ["closed"] * 3
        assert guard.fault_counts[FaultSource.HALT_STORE] == 1  # one outage, counted once
        pages = [p for p in hooks.payloads("halted") if "unreachable" in str(p)]
        assert len(pages) == 1  # one page (the halt naming the outage), not one per check

        redis_server.start()  # empty: nothing was ever halted in it
        wait_until(lambda: not halt.is_halted, 15, 0.05, "the state read back from Redis")
        guard.check_entry()
    finally:
        close(halt)


def test_a_longer_chain_restores_what_a_shorter_one_restored_first(
    redis_server: RedisServer,
) -> None:
    behind = shared_halt(redis_server.url, ["alice"], namespace="t")
    ahead = shared_halt(redis_server.url, ["alice"], namespace="t")
    try:
        ahead.halt("incident")
        wait_until(lambda: behind.is_halted, 10, 0.01, "the halt pushed")
        behind_store = behind.store
        assert isinstance(behind_store, RedisHaltStore)
        behind_store.close()  # from here on, "behind" misses the resume
        ahead.resume("alice", "fixed")
        redis_server.kill()
        redis_server.start()
        # The one that knows less writes its chain back first; the one that knows more
        # extends it: the resume is not lost, and nothing was overwritten.
        behind.refresh(force=True)
        ahead.refresh(force=True)
        wait_until(lambda: not ahead.is_halted and len(ahead.history) == 2, 15, 0.05,
                   "the longer chain back")
        behind.refresh(force=True)
        assert [r.halted for r in behind.history] == [True, False]
    finally:
        close(ahead)


def test_garbage_under_the_halt_s_keys_means_halted_in_every_process(
    fleet: list[TradingHalt], redis_server: RedisServer,
) -> None:
    import redis

    raw = redis.Redis.from_url(redis_server.url)
    raw.rpush("t:halt:{default}:records", '{"halted": false}')  # not a sealed record
    raw.set("t:halt:{default}:version", "garbage")
    raw.publish("t:halt:{default}:changes", "garbage")
    wait_until(lambda: all(h.is_halted for h in fleet), 10, 0.02, "halted on garbage")
    for halt in fleet:
        with pytest.raises(TradingHalted, match="halt store"):
            halt.check_entry()
        assert halt.store_error
