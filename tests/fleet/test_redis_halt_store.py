"""RedisHaltStore as a store, against a real redis-server: what it keeps, how a write is
pushed, the compare-and-set under the fleet-wide lock, what a dead or garbage Redis means
(an error, never "nothing stored"), and a chain Redis lost written back.

``TradingHalt`` over it (the chain, approvers, fail-safe halts) is in test_redis_halt.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("redis")

import redis

from exitguard.errors import ConfigError, HaltStoreError
from exitguard.fleet import RedisHaltStore
from tests.support.servers import RedisServer, wait_until

RECORDS = [{"seq": 0, "halted": True, "mac": "aa"}, {"seq": 1, "halted": False, "mac": "bb"}]


@pytest.fixture
def stores(redis_server: RedisServer) -> Iterator[list[RedisHaltStore]]:
    made = [RedisHaltStore(redis_server.url, namespace="t", retry_every=0.05)
            for _ in range(2)]
    for store in made:
        assert store.subscribed is not None
        assert store.subscribed.wait(10)
    try:
        yield made
    finally:
        for store in made:
            store.close()


def write(store: RedisHaltStore, records: list[dict[str, object]]) -> None:
    with store.locked():
        store.read()
        store.write(records)


def test_nothing_stored_reads_none_and_a_write_is_read_back_elsewhere(
    stores: list[RedisHaltStore],
) -> None:
    a, b = stores
    assert a.read() is None
    assert b.read() is None
    write(a, RECORDS)
    assert b.read() == RECORDS


def test_a_write_is_pushed_to_the_other_processes(stores: list[RedisHaltStore]) -> None:
    a, b = stores
    seen: list[int] = []
    b.watch(lambda: seen.append(1))
    before = b.version()
    write(a, RECORDS)
    wait_until(lambda: bool(seen), 10, 0.01, "the push")
    assert b.version() != before
    assert b.version() == a.version()


def test_a_writer_whose_lock_expired_cannot_overwrite_what_was_written_since(
    stores: list[RedisHaltStore], redis_server: RedisServer,
) -> None:
    _, b = stores
    slow = RedisHaltStore(redis_server.url, namespace="t", lock_timeout=0.2, push=False)
    with slow.locked():
        slow.read()
        write(b, RECORDS[:1])  # waits for slow's lock to expire (a process paused too long)
        with pytest.raises(OSError, match="changed since it was read"):
            slow.write(RECORDS)
    assert slow.read() == RECORDS[:1]


def test_the_lock_is_one_writer_at_a_time_across_processes(
    stores: list[RedisHaltStore], redis_server: RedisServer,
) -> None:
    _, b = stores
    impatient = RedisHaltStore(redis_server.url, namespace="t", lock_wait=0.2, push=False)
    with b.locked(), pytest.raises(OSError, match="lock stayed held"), impatient.locked():
        pass


def test_redis_restarted_empty_gets_the_chain_back(
    stores: list[RedisHaltStore], redis_server: RedisServer,
) -> None:
    a, b = stores
    write(a, RECORDS)
    assert b.read() == RECORDS
    redis_server.kill()
    with pytest.raises(HaltStoreError, match="unreachable"):
        b.read()
    with pytest.raises(HaltStoreError, match="unreachable"):
        b.read()  # fails fast until retry_every passes: same words, one outage
    redis_server.start()  # no persistence: empty

    def restored() -> bool:
        try:
            return b.read() == RECORDS
        except HaltStoreError:
            return False

    wait_until(restored, 10, 0.05, "the chain written back")
    assert b.restores == 1
    assert redis.Redis.from_url(redis_server.url).llen("t:halt:{default}:records") == 2


def test_a_different_chain_in_redis_is_never_overwritten(stores: list[RedisHaltStore]) -> None:
    a, b = stores
    write(a, RECORDS)
    assert b.read() == RECORDS
    other = [{"seq": 0, "halted": True, "mac": "zz"}]
    write(a, other)
    assert b.read() == other
    assert b.restores == 0


@pytest.mark.parametrize("garbage", ["wrong type", "not json", "not an object"])
def test_garbage_in_redis_is_an_error_not_nothing_stored(
    redis_server: RedisServer, garbage: str,
) -> None:
    raw = redis.Redis.from_url(redis_server.url)
    key = "t:halt:{default}:records"
    if garbage == "wrong type":
        raw.set(key, "halted=false")
    else:
        raw.rpush(key, "{not json" if garbage == "not json" else "[1, 2]")
    store = RedisHaltStore(redis_server.url, namespace="t", push=False)
    with pytest.raises(HaltStoreError, match="corrupt"):
        store.read()


def test_a_dead_redis_fails_every_call_fast(redis_server: RedisServer) -> None:
    store = RedisHaltStore(redis_server.url, namespace="t", push=False)
    redis_server.kill()
    with pytest.raises(HaltStoreError):
        store.read()
    with pytest.raises(OSError, match="unreachable"):
        store.version()
    with pytest.raises(OSError, match="unreachable"), store.locked():
        pass
    assert store.failures == 1  # the later calls did not even try within retry_every


@pytest.mark.parametrize(("field", "kwargs"), [
    ("name", {"name": "a{b}"}),
    ("namespace", {"namespace": ""}),
    ("lock_timeout", {"lock_timeout": 0}),
    ("retry_every", {"retry_every": True}),
    ("url", {"url": None}),
])
def test_invalid_settings_fail_at_construction_naming_the_field(
    field: str, kwargs: dict[str, object],
) -> None:
    settings: dict[str, object] = {"url": "redis://127.0.0.1:1/0", "push": False, **kwargs}
    with pytest.raises(ConfigError) as caught:
        RedisHaltStore(**settings)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_a_change_whose_push_never_came_is_seen_within_max_staleness(
    redis_server: RedisServer,
) -> None:
    """A subscription that died without a reset (a partition) hears nothing: the pushed
    version is trusted for ``max_staleness`` only, then Redis is asked."""
    store = RedisHaltStore(redis_server.url, namespace="t", max_staleness=2.0)
    try:
        assert store.subscribed is not None
        assert store.subscribed.wait(10)
        before = store.version()
        # A write that publishes nothing: what a process sees when the push is lost.
        redis.Redis.from_url(redis_server.url).set("t:halt:{default}:version", "1:zz")
        assert store.version() == before  # the push is trusted...
        wait_until(lambda: store.version() == "1:zz", 10, 0.05, "the change, by a read")
    finally:
        store.close()
