"""A fleet of bot processes sharing one halt and one breaker view per venue through Redis.

The optional extra ``exitguard[redis]`` (redis-py). Nothing here is needed by one process
alone: the core's file and memory stores stay as they are.

- :class:`RedisBreakerBackend`: ``CircuitBreaker(name="binance", shared=backend)`` in every
  process: one failure window, one state and one half-open probe for the fleet.
- :class:`RedisHaltStore`, :func:`shared_halt`: one ``TradingHalt`` for the fleet (the
  approvers and the HMAC-chained audit history in Redis), pushed to every process.
"""

from __future__ import annotations

from .redis_breaker import RedisBreakerBackend
from .redis_halt import RedisHaltStore, shared_halt

__all__ = ["RedisBreakerBackend", "RedisHaltStore", "shared_halt"]
