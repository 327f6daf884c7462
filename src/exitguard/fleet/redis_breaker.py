"""One circuit breaker state per venue for a whole fleet, kept in Redis.

``RedisBreakerBackend`` is a ``SharedBreakerBackend`` (``exitguard.breaker``): pass it as
``CircuitBreaker(..., shared=backend)`` in every process, with the same breaker ``name`` for
the same venue, and

- every exit's verdict counts into one window per name (three processes failing once each
  trip a breaker whose ``failure_threshold`` is 3); the rules are the local breaker's;
- a transition made by one process is published and mirrored by every process (listeners,
  metrics, the guard's halt), and read again on each ``allow``;
- in half-open, the probe is a lease (``SET NX PX``) held by one process of the fleet, for at
  most ``probe_lease`` seconds (a process killed mid-probe frees it when it expires);
- time is Redis's clock (``TIME`` inside the scripts): one clock for hosts whose clocks differ.

Each decision is one Lua script, so two processes can never both open, close or probe on a
stale read. The push keeps each process's mirror current (the state, and whether the fleet's
failure count is zero), so while the fleet's breaker is closed an ``allow`` is answered from
it, and so is the success of a healthy exit while no failure is counted: a healthy exit costs
no round trip; a failed exit, a success that resets the count, and every exit of a breaker
with a ``failure_rate`` (its window is the fleet's) cost one; open and half-open ask Redis on
each ``allow`` (the cool-down runs on Redis's clock; the probe is a lease). Without a live
push (``push=False``, or the subscription down) every call asks Redis.

**When Redis is down** (refused, timed out, or an answer that is not ours) the breaker decides
alone: it keeps the last state it saw from the fleet and counts only its own exits (a
venue outage during a Redis outage still opens it, per process), counts the failure
(``exitguard_faults_total{component="breaker_store"}``), logs once, and tries Redis again
every ``shared_retry`` seconds (1 s) so a dead Redis costs an exit nothing more. When Redis
answers again, the fleet's state replaces the local one, except that a breaker this process
opened alone meanwhile opens the fleet's (if it is closed): a venue outage seen during a
Redis outage is not forgotten. Failures counted alone that did not open it stay local.
"""

from __future__ import annotations

import itertools
import os
import threading
import uuid
import weakref
from typing import Any

import redis

from ..breaker import BreakerState, CircuitBreaker, SharedState
from ..redaction import get_logger
from ._redis import check_namespace, check_timeout, connect
from ._subscriber import Subscriber

_log = get_logger("exitguard.fleet")

__all__ = ["RedisBreakerBackend"]

# KEYS: 1 state hash, 2 calls zset, 3 failures zset, 4.. probe lease keys.
# Every script starts with the same prelude: the time, the state, the cool-down refresh.
_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local channel = ARGV[1]
local name = ARGV[2]
local cooldown = tonumber(ARGV[3])
local h = redis.call('HMGET', KEYS[1], 'state', 'reason', 'consecutive', 'opened_at')
local state = h[1] or 'closed'
local reason = h[2] or ''
local consecutive = tonumber(h[3] or '0')
local opened_at = tonumber(h[4] or '0')
if (state ~= 'closed' and state ~= 'open' and state ~= 'half_open') or consecutive == nil
   or opened_at == nil then
  return redis.error_reply('exitguard: breaker state is not ours: ' .. tostring(h[1]))
end
local function set_state(new, why)
  state = new
  reason = why
  redis.call('HSET', KEYS[1], 'state', new, 'reason', why)
  if new == 'open' then
    opened_at = now
    redis.call('HSET', KEYS[1], 'opened_at', now)
  end
  if new ~= 'half_open' then
    for i = 4, #KEYS do redis.call('DEL', KEYS[i]) end
  end
  if new == 'closed' then redis.call('DEL', KEYS[2], KEYS[3]) end
  redis.call('HINCRBY', KEYS[1], 'epoch', 1)
  redis.call('PUBLISH', channel, name)
end
if state == 'open' and now - opened_at >= cooldown then
  set_state('half_open', 'cool-down elapsed')
end
"""

_READ = _PRELUDE + """
return {state, reason, consecutive, false}
"""

# ARGV 4 lease ms, 5 token
_ALLOW = _PRELUDE + """
if state == 'half_open' then
  for i = 4, #KEYS do
    if redis.call('SET', KEYS[i], ARGV[5], 'NX', 'PX', tonumber(ARGV[4])) then
      return {state, reason, consecutive, (i - 3) .. ':' .. ARGV[5]}
    end
  end
end
return {state, reason, consecutive, false}
"""

# ARGV 4 ok (1/0), 5 threshold, 6 rate ('' = none), 7 window ms, 8 min calls, 9 lease slot
# (0 = none), 10 lease token, 11 forced (1/0), 12 call id
_RECORD = _PRELUDE + """
local ok = ARGV[4] == '1'
local forced = ARGV[11] == '1'
local before = consecutive
if ok then consecutive = 0 else consecutive = consecutive + 1 end
redis.call('HSET', KEYS[1], 'consecutive', consecutive)
if (before == 0) ~= (consecutive == 0) then
  -- the other processes' healthy exits skip the store only while the count is zero
  redis.call('PUBLISH', channel, name)
end
local rated = ARGV[6] ~= ''
local calls, failures = 0, 0
if rated then
  local window = tonumber(ARGV[7])
  redis.call('ZADD', KEYS[2], now, ARGV[12])
  if not ok then redis.call('ZADD', KEYS[3], now, ARGV[12]) end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - window)
  redis.call('PEXPIRE', KEYS[2], window)
  redis.call('PEXPIRE', KEYS[3], window)
  calls = redis.call('ZCARD', KEYS[2])
  failures = redis.call('ZCARD', KEYS[3])
end
local slot = tonumber(ARGV[9])
if ok then
  if state == 'half_open' or (forced and state == 'open') then
    set_state('closed', 'probe exit succeeded')
  elseif slot > 0 and redis.call('GET', KEYS[3 + slot]) == ARGV[10] then
    redis.call('DEL', KEYS[3 + slot])
  end
elseif state == 'half_open' then
  set_state('open', 'probe exit failed')
elseif state == 'closed' then
  local threshold = tonumber(ARGV[5])
  if consecutive >= threshold then
    set_state('open', consecutive .. ' consecutive failed exits across the fleet')
  elseif rated and calls >= tonumber(ARGV[8]) and failures / calls >= tonumber(ARGV[6]) then
    set_state('open', 'failure rate across the fleet over ' .. (tonumber(ARGV[7]) / 1000)
              .. 's above ' .. math.floor(tonumber(ARGV[6]) * 100 + 0.5) .. '%')
  end
end
return {state, reason, consecutive, false}
"""

# ARGV 4 lease slot, 5 token
_RELEASE = """
local key = KEYS[3 + tonumber(ARGV[4])]
if key and redis.call('GET', key) == ARGV[5] then redis.call('DEL', key) end
return 1
"""

# ARGV 4 reason
_TRIP = _PRELUDE + """
if state == 'closed' then set_state('open', ARGV[4]) end
return {state, reason, consecutive, false}
"""

_RESET = _PRELUDE + """
redis.call('HSET', KEYS[1], 'consecutive', 0)
if state ~= 'closed' then
  set_state('closed', 'reset')
else
  redis.call('DEL', KEYS[2], KEYS[3])
end
return {state, reason, 0, false}
"""


def _view(answer: Any) -> SharedState:
    """The script's answer, checked: anything else is the store answering garbage."""
    if not isinstance(answer, list) or len(answer) != 4:
        raise ValueError(f"unexpected answer from the breaker script: {answer!r}")
    state, reason, consecutive, lease = answer
    if not isinstance(reason, str) or isinstance(consecutive, bool) or not isinstance(
        consecutive, int
    ):
        raise ValueError(f"unexpected answer from the breaker script: {answer!r}")
    return SharedState(BreakerState(state), reason, consecutive,
                       lease if isinstance(lease, str) and lease else None)


class RedisBreakerBackend:
    """Keeps every breaker attached to it in Redis, under ``{namespace}:breaker:{name}``.

    ``url``: ``redis://host:port/db`` (or ``rediss://``, ``unix://``); or pass ``client``, a
    ``redis.Redis`` made with ``decode_responses=True``. ``timeout`` bounds each call (connect
    and read): on an exit's path, keep it small. ``probe_lease``: how long one process may
    hold the half-open probe (longer than an exit's deadline). ``push=False`` skips the
    pub/sub thread (each process then sees another's transition at its next call).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: redis.Redis | None = None,
        namespace: str = "exitguard",
        timeout: float = 0.25,
        probe_lease: float = 60.0,
        push: bool = True,
    ) -> None:
        owner = "RedisBreakerBackend"
        self.namespace = check_namespace(owner, namespace)
        self.timeout = check_timeout(owner, timeout)
        if isinstance(probe_lease, bool) or not isinstance(probe_lease, int | float) or not (
            0 < probe_lease <= 86400
        ):
            from ..errors import ConfigError

            raise ConfigError(owner, "probe_lease", "must be seconds in (0, 86400]",
                              probe_lease)
        self.probe_lease = float(probe_lease)
        if client is None:
            if url is None:
                from ..errors import ConfigError

                raise ConfigError(owner, "url", "is required without a client", url)
            client = connect(url, timeout=self.timeout, owner=owner)
        self.client = client
        self.channel = f"{self.namespace}:breaker:transitions"
        # One token per process and backend, a counter per permit: a lease is released only
        # by the exit that holds it.
        self._token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._serial = itertools.count(1)
        self._scripts = {name: client.register_script(body) for name, body in (
            ("read", _READ), ("allow", _ALLOW), ("record", _RECORD), ("release", _RELEASE),
            ("reset", _RESET), ("trip", _TRIP))}
        self._lock = threading.Lock()
        self._breakers: dict[str, weakref.WeakSet[CircuitBreaker]] = {}
        self._push = push
        self._subscriber: Subscriber | None = None

    # -- keys ---------------------------------------------------------------------------

    def _keys(self, breaker: CircuitBreaker) -> list[str]:
        # One hash tag per breaker: every key of one script lives on one cluster slot.
        base = f"{self.namespace}:breaker:{{{breaker.name}}}"
        leases = [f"{base}:probe:{i}" for i in range(1, breaker.half_open_probes + 1)]
        return [base, f"{base}:calls", f"{base}:failures", *leases]

    def _run(self, script: str, breaker: CircuitBreaker, *extra: str | int) -> Any:
        args: list[str | int] = [self.channel, breaker.name, int(breaker.cooldown * 1000),
                                 *extra]
        return self._scripts[script](keys=self._keys(breaker), args=args)

    # -- SharedBreakerBackend -----------------------------------------------------------

    def attach(self, breaker: CircuitBreaker) -> None:
        with self._lock:
            self._breakers.setdefault(breaker.name, weakref.WeakSet()).add(breaker)
            if self._push and self._subscriber is None:
                self._subscriber = Subscriber(
                    self.client, self.channel, on_message=self._on_message,
                    on_connect=self._sync_all, on_lost=lambda exc: None,
                    name=f"exitguard-breakers-{self.namespace}",
                )
                self._subscriber.start()

    def fresh(self, breaker: CircuitBreaker) -> bool:
        subscriber = self._subscriber
        return subscriber is not None and subscriber.connected.is_set()

    def allow(self, breaker: CircuitBreaker) -> SharedState:
        token = f"{self._token}-{next(self._serial)}"
        return _view(self._run("allow", breaker, int(self.probe_lease * 1000), token))

    def record(self, breaker: CircuitBreaker, *, ok: bool, lease: str | None,
               forced: bool) -> SharedState:
        slot, token = _split(lease)
        rate = "" if breaker.failure_rate is None else repr(float(breaker.failure_rate))
        call_id = f"{self._token}-{next(self._serial)}"
        return _view(self._run(
            "record", breaker, 1 if ok else 0, breaker.failure_threshold, rate,
            int(breaker.window * 1000), breaker.min_calls, slot, token, 1 if forced else 0,
            call_id,
        ))

    def release(self, breaker: CircuitBreaker, lease: str) -> None:
        slot, token = _split(lease)
        if slot:
            keys = self._keys(breaker)
            self._scripts["release"](keys=keys, args=[self.channel, breaker.name, 0, slot,
                                                      token])

    def read(self, breaker: CircuitBreaker) -> SharedState:
        return _view(self._run("read", breaker))

    def reset(self, breaker: CircuitBreaker) -> SharedState:
        return _view(self._run("reset", breaker))

    def trip(self, breaker: CircuitBreaker, reason: str) -> SharedState:
        return _view(self._run("trip", breaker, reason))

    # -- push ---------------------------------------------------------------------------

    @property
    def subscribed(self) -> threading.Event | None:
        """Set while the transition subscription is up (None before the first attach)."""
        return self._subscriber.connected if self._subscriber is not None else None

    def _attached(self, name: str | None = None) -> list[CircuitBreaker]:
        with self._lock:
            if name is not None:
                return list(self._breakers.get(name, ()))
            return [b for group in self._breakers.values() for b in group]

    def _on_message(self, name: str) -> None:
        for breaker in self._attached(name):
            breaker.sync()

    def _sync_all(self) -> None:
        for breaker in self._attached():
            breaker.sync()

    def close(self) -> None:
        """Stop the subscription thread (the breakers go on, pulling at each call)."""
        if self._subscriber is not None:
            self._subscriber.close()

    def __repr__(self) -> str:
        return f"RedisBreakerBackend(namespace={self.namespace!r})"


def _split(lease: str | None) -> tuple[int, str]:
    if not lease:
        return 0, ""
    slot, _, token = lease.partition(":")
    try:
        return int(slot), token
    except ValueError:
        _log.error("ignoring a malformed probe lease")
        return 0, ""
