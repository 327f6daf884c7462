"""The trading halt of a whole fleet, kept in Redis: a ``HaltStore`` for ``TradingHalt``.

``RedisHaltStore`` is a drop-in for ``FileHaltStore`` (same ``TradingHalt`` API, same HMAC
chain, same approver rule: those live in ``exitguard.halt`` over the records a store keeps).
What Redis adds:

- **pushed, not polled**: every write publishes the store's new version; each process's
  subscriber thread takes it and refreshes its ``TradingHalt`` at once (listeners, metrics,
  pages), and ``check_entry`` reads the version the push left, without a round trip. The
  subscription reconnects by itself and re-reads on each reconnect (pub/sub keeps nothing);
- **one writer at a time, fleet-wide**: ``locked()`` is a Redis lock (redis-py's ``Lock``, a
  token with an expiry), and the write is a compare-and-set on the version read under it, so
  a writer whose lock expired (a process paused past ``lock_timeout``) fails instead of
  overwriting: a resume that races a new halt never wins silently;
- **fail safe**: Redis unreachable or timed out makes ``read`` raise
  ``HaltStoreUnavailable``, something under our keys that is not ours ``HaltStoreError``
  (corrupt): the halt is then *halted* (entries refused, exits go on),
  counted (``exitguard_faults_total{component="halt_store"}``), logged and paged once by
  ``TradingHalt`` (the halt it records names the outage). While Redis is down, calls fail at
  once (no network wait) and Redis is tried again every ``retry_every`` seconds. When it
  answers, its state is read back; an empty Redis is believed only if this process had seen
  no record either (else the next point applies);
- **nothing lost when Redis comes back empty** (restarted without persistence): each store
  keeps the last chain it read or wrote; a store that finds in Redis a strict prefix of that
  chain (records lost, none changed) writes its copy back before answering. A chain that
  differs is never overwritten: ``TradingHalt`` verifies it and halts on a rollback or a
  tampered record. Redis's own state always wins over a stale process; a longer verified
  chain only ever restores what Redis lost.

Keys, for ``namespace`` ``ns`` and halt ``name`` ``n`` (one hash tag, one cluster slot):
``ns:halt:{n}:records`` (a list of JSON records), ``ns:halt:{n}:version``,
``ns:halt:{n}:lock``, and the channel ``ns:halt:{n}:changes``.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Any

import redis
from redis.exceptions import LockError

from ..errors import ConfigError, HaltStoreError, HaltStoreUnavailable
from ..halt import TradingHalt
from ..redaction import get_logger
from ._redis import STORE_ERRORS, check_namespace, check_timeout, connect, describe
from ._subscriber import Subscriber

_log = get_logger("exitguard.fleet")

__all__ = ["RedisHaltStore", "shared_halt"]

#: A stored record (``exitguard.halt.StoredRecord``): a JSON object the store never interprets.
Record = dict[str, Any]

# KEYS 1 records, 2 version; ARGV 1 expected version ('' = none), 2 new version, 3 channel,
# 4.. the records (JSON). Compare-and-set: the write happens only on the version read.
_WRITE = """
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[1] then
  return redis.error_reply('exitguard: the halt store changed since it was read')
end
redis.call('DEL', KEYS[1])
local chunk = {}
for i = 4, #ARGV do
  chunk[#chunk + 1] = ARGV[i]
  if #chunk == 500 then redis.call('RPUSH', KEYS[1], unpack(chunk)); chunk = {} end
end
if #chunk > 0 then redis.call('RPUSH', KEYS[1], unpack(chunk)) end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[2])
return 1
"""


def _token(records: Sequence[Record]) -> str:
    """The version of a list of records: its length and last MAC. Derived from the content,
    so a list written back after a Redis restart has the version it had before."""
    if not records:
        return "0:"
    last = records[-1].get("mac")
    return f"{len(records)}:{last if isinstance(last, str) else json.dumps(records[-1])[:64]}"


class RedisHaltStore:
    """Keeps one halt's records in Redis for every process of a fleet.

    ``url`` (``redis://host:port/db``, ``rediss://``, ``unix://``) or ``client`` (a
    ``redis.Redis`` made with ``decode_responses=True``); ``name`` names the halt (processes
    sharing it use the same name and namespace). ``timeout`` bounds each call; ``lock_timeout``
    is how long a writer may hold the lock (its expiry), ``lock_wait`` how long a writer waits
    for it; ``retry_every`` how often Redis is tried again while it is down; ``max_staleness``
    how old the pushed version may get before a look asks Redis (one GET). ``push=False``
    skips the subscription (the halt then polls, every ``poll_interval`` of its own).

    Pass it to ``TradingHalt(store=...)``, or use :func:`exitguard.fleet.shared_halt`, which
    also wires the push to the halt.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: redis.Redis | None = None,
        name: str = "default",
        namespace: str = "exitguard",
        timeout: float = 0.25,
        lock_timeout: float = 10.0,
        lock_wait: float = 5.0,
        retry_every: float = 0.5,
        max_staleness: float = 1.0,
        push: bool = True,
    ) -> None:
        owner = "RedisHaltStore"
        self.namespace = check_namespace(owner, namespace)
        if not isinstance(name, str) or not name or "{" in name or "}" in name:
            raise ConfigError(owner, "name", "must be a non-empty string without braces", name)
        self.name = name
        self.timeout = check_timeout(owner, timeout)
        for field, value in (("lock_timeout", lock_timeout), ("lock_wait", lock_wait),
                             ("retry_every", retry_every), ("max_staleness", max_staleness)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                0 < value <= 3600
            ):
                raise ConfigError(owner, field, "must be seconds in (0, 3600]", value)
        self.lock_timeout = float(lock_timeout)
        self.lock_wait = float(lock_wait)
        self.retry_every = float(retry_every)
        self.max_staleness = float(max_staleness)
        if client is None:
            if url is None:
                raise ConfigError(owner, "url", "is required without a client", url)
            client = connect(url, timeout=self.timeout, owner=owner)
        self.client = client
        base = f"{self.namespace}:halt:{{{name}}}"
        self.where = base  # names the store in errors and logs (never the URL: a password)
        self._records_key = f"{base}:records"
        self._version_key = f"{base}:version"
        self._lock_key = f"{base}:lock"
        self.channel = f"{base}:changes"
        self._write = client.register_script(_WRITE)
        self._mutex = threading.RLock()  # one writer per process; locked() is re-entrant
        self._held = 0
        self._read_version = ""  # the version read under the lock (the write's expectation)
        self._known: list[Record] = []  # the last chain read or written: restores a lost one
        self._down_until = 0.0
        self._down_error: str | None = None
        #: Calls that failed because Redis was unreachable or answered garbage.
        self.failures = 0
        #: Lists written back after Redis had lost records (restarted without persistence).
        self.restores = 0
        self._pushed: str | None = None  # the version the last push said (None: unknown)
        self._pushes = 0  # counts pushes and losses: a slower read never overwrites a push
        self._push_lock = threading.Lock()
        self._confirmed_at = 0.0  # when Redis (a push or a read) last said the version
        self._watchers: list[Callable[[], None]] = []
        self._subscriber: Subscriber | None = None
        if push:
            self._subscriber = Subscriber(
                client, self.channel, on_message=self._on_push, on_connect=self._on_connect,
                on_lost=self._on_lost, name=f"exitguard-halt-{name}",
            )
            self._subscriber.start()

    # -- push ---------------------------------------------------------------------------

    def watch(self, callback: Callable[[], None]) -> None:
        """``callback()`` (on the subscriber thread) whenever the halt may have changed: a
        write anywhere in the fleet, the subscription lost, or back."""
        self._watchers.append(callback)

    @property
    def subscribed(self) -> threading.Event | None:
        """Set while the subscription is up (None with ``push=False``)."""
        return self._subscriber.connected if self._subscriber is not None else None

    def _on_push(self, version: str) -> None:
        self._set_pushed(version)
        self._changed()

    def _on_connect(self) -> None:
        self._set_pushed(None)  # messages may have been missed: the next look asks Redis
        self._down_until = 0.0
        self._changed()

    def _on_lost(self, exc: BaseException) -> None:
        self._set_pushed(None)
        self._changed()

    def _set_pushed(self, version: str | None) -> None:
        with self._push_lock:
            self._pushes += 1
            self._pushed = version
            self._confirmed_at = time.monotonic()

    def _changed(self) -> None:
        for callback in tuple(self._watchers):
            try:
                callback()
            except Exception:
                _log.exception("halt store watcher raised; ignored")

    # -- failures -----------------------------------------------------------------------

    def _fail_fast(self) -> None:
        if self._down_error is not None and time.monotonic() < self._down_until:
            raise OSError(self._down_error)

    def _failed(self, exc: BaseException) -> str:
        self.failures += 1
        # The same words for the whole outage: TradingHalt logs, counts and pages once per
        # distinct error.
        error = f"halt store {self.where} unreachable ({type(exc).__name__})"
        if self._down_error is None:
            _log.error("%s: %s; entries halted until it answers (tried again every %gs)",
                       error, describe(exc), self.retry_every)
        self._down_error = error
        self._down_until = time.monotonic() + self.retry_every
        self._set_pushed(None)
        return error

    def _answered(self) -> None:
        if self._down_error is not None:
            _log.warning("halt store %s reachable again; its state is read back", self.where)
        self._down_error = None

    # -- HaltStore ----------------------------------------------------------------------

    def read(self) -> list[Record] | None:
        try:
            self._fail_fast()
        except OSError as exc:
            raise HaltStoreUnavailable(str(exc)) from None
        records, version, stored = self._fetch()
        if self._lost(records):
            records, version = self._restore()
            stored = stored or bool(records)
        with self._mutex:
            if self._held:
                self._read_version = version
        self._known = list(records)
        return records if stored else None

    def _fetch(self) -> tuple[list[Record], str, bool]:
        """(records, version, anything stored) as Redis has them now."""
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.lrange(self._records_key, 0, -1)
                pipe.get(self._version_key)
                raw, version = pipe.execute()
        except redis.ResponseError as exc:  # WRONGTYPE: something not ours under our key
            self.failures += 1
            raise HaltStoreError(f"halt store {self.where} is corrupt ({describe(exc)})"
                                 ) from None
        except STORE_ERRORS as exc:
            raise HaltStoreUnavailable(self._failed(exc)) from None
        self._answered()
        return self._decode(raw), version if isinstance(version, str) else "", bool(raw)

    def _lost(self, records: list[Record]) -> bool:
        """Fewer records than this process saw, and the same ones: Redis lost the rest."""
        known = self._known
        return len(records) < len(known) and records == known[: len(records)]

    def _decode(self, raw: Any) -> list[Record]:
        if not isinstance(raw, list):
            raise HaltStoreError(f"halt store {self.where} is corrupt (not a list)")
        records: list[Record] = []
        for index, item in enumerate(raw):
            try:
                record = json.loads(item)
                if not isinstance(record, dict):
                    raise TypeError("not an object")
            except (ValueError, TypeError, RecursionError) as exc:
                self.failures += 1
                raise HaltStoreError(f"halt store {self.where} is corrupt (record {index}:"
                                     f" {type(exc).__name__})") from None
            records.append(record)
        return records

    def _restore(self) -> tuple[list[Record], str]:
        """Redis lost records this process saw (a restart without persistence): under the
        lock, read again (another process may have written them back already, or written
        more) and write this process's copy back only if Redis still lacks them."""
        known = list(self._known)
        try:
            with self.locked():
                records, version, _ = self._fetch()
                if not self._lost(records):
                    return records, version
                self._cas(version, known)
        except OSError as exc:
            raise HaltStoreError(f"halt store {self.where} lost records and they could not"
                                 f" be written back ({exc})") from None
        self.restores += 1
        _log.warning("halt store %s had lost %d of %d record(s) (Redis restarted without"
                     " persistence?); written back from this process's copy", self.where,
                     len(known) - len(records), len(known))
        return known, _token(known)

    def write(self, records: Sequence[Record]) -> None:
        with self._mutex:
            expected = self._read_version
        self._cas(expected, records)

    def _cas(self, expected: str, records: Sequence[Record]) -> None:
        self._fail_fast()
        token = _token(records)
        payload = [json.dumps(r, separators=(",", ":")) for r in records]
        pushes = self._pushes
        try:
            self._write(keys=[self._records_key, self._version_key],
                        args=[expected, token, self.channel, *payload])
        except redis.ResponseError as exc:
            raise OSError(f"halt store {self.where} not written: {describe(exc)}") from None
        except STORE_ERRORS as exc:
            raise OSError(self._failed(exc)) from None
        self._answered()
        with self._mutex:
            self._read_version = token
        with self._push_lock:
            if pushes == self._pushes and self._pushed is not None:
                self._pushed = token  # what our own push will say; nothing newer came
        self._known = [dict(r) for r in records]

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with self._mutex:
            if self._held:
                self._held += 1
                try:
                    yield
                finally:
                    self._held -= 1
                return
            self._fail_fast()
            lock = self.client.lock(self._lock_key, timeout=self.lock_timeout,
                                    blocking_timeout=self.lock_wait, thread_local=False)
            try:
                acquired = lock.acquire()
            except STORE_ERRORS as exc:
                raise OSError(self._failed(exc)) from None
            if not acquired:
                raise OSError(f"halt store {self.where}: its lock stayed held elsewhere for"
                              f" {self.lock_wait:g}s")
            self._held = 1
            self._read_version = ""
            try:
                yield
            finally:
                self._held = 0
                with contextlib.suppress(LockError, *STORE_ERRORS):
                    lock.release()  # expired or Redis gone: the expiry frees it

    def version(self) -> Hashable:
        """The version the last push said, without a round trip; asked of Redis when no push
        is known (subscription down or just back, or ``push=False``), and at least every
        ``max_staleness`` seconds: a subscription that died silently (a partition that sent
        no reset) delays a halt by that much at most."""
        pushed = self._pushed
        if pushed is not None and self._subscriber is not None and (
            self._subscriber.connected.is_set()
        ) and time.monotonic() - self._confirmed_at < self.max_staleness:
            return pushed
        self._fail_fast()
        pushes = self._pushes
        try:
            value = self.client.get(self._version_key)
        except STORE_ERRORS as exc:
            raise OSError(self._failed(exc)) from None
        self._answered()
        version = value if isinstance(value, str) else ""
        with self._push_lock:
            if pushes == self._pushes and self._subscriber is not None and (
                self._subscriber.connected.is_set()
            ):
                self._pushed = version  # nothing pushed meanwhile: good until the next push
                self._confirmed_at = time.monotonic()
        return version

    def resume_args(self) -> tuple[str, ...]:
        """``exitguard halt`` options that reach this halt: the URL (its password) comes from
        ``$EXITGUARD_REDIS_URL``, never from a command line that ``ps`` shows."""
        return ("--halt-name", self.name, "--namespace", self.namespace, "--redis")

    def close(self) -> None:
        """Stop the subscription thread."""
        if self._subscriber is not None:
            self._subscriber.close()

    def __repr__(self) -> str:
        return f"RedisHaltStore({self.where!r})"


def shared_halt(
    url: str | None = None,
    approvers: Iterable[str] = (),
    *,
    client: redis.Redis | None = None,
    name: str = "default",
    namespace: str = "exitguard",
    key: bytes | str | None = None,
    key_file: str | os.PathLike[str] | None = None,
    timeout: float = 0.25,
) -> TradingHalt:
    """A ``TradingHalt`` on a :class:`RedisHaltStore`, refreshed by every push: a halt or a
    resume anywhere in the fleet reaches this process's listeners (metrics, pages) as soon
    as Redis publishes it, and ``check_entry`` costs no round trip (it reads the version the
    last push left; ``poll_interval=0``). ``key``/``key_file`` as for ``TradingHalt`` (the
    HMAC key every process of the fleet shares; by default from the environment)."""
    store = RedisHaltStore(url, client=client, name=name, namespace=namespace,
                           timeout=timeout)
    halt = TradingHalt(approvers, store=store, name=name, key=key, key_file=key_file,
                       poll_interval=0.0)
    store.watch(lambda: halt.refresh(force=True))
    return halt
