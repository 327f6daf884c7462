"""One way to reach Redis for the fleet stores: short timeouts, no hidden retries, one
namespace.

A fleet store's call sits on an exit's path (the shared breaker) or an entry check (the halt):
it must fail fast when Redis is gone, not retry behind the caller's back. redis-py retries
by default (three times with backoff since 6.0); here every call is one try with a
``timeout`` (connect and read), and the store decides what a failure means (fail safe).
"""

from __future__ import annotations

import re
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..errors import ConfigError

#: What a key prefix may contain: printable, no spaces, no braces (they are hash tags).
_NAMESPACE = re.compile(r"^[A-Za-z0-9_.:/-]{1,100}$")

#: A failure of the store: unreachable, timed out, refused, or an answer that is not ours.
STORE_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OSError, ValueError,
                                                 TypeError, KeyError, IndexError)


def check_namespace(owner: str, namespace: str) -> str:
    if not isinstance(namespace, str) or not _NAMESPACE.match(namespace):
        raise ConfigError(owner, "namespace", "must be 1-100 characters of letters, digits"
                          " and _.:/-", namespace)
    return namespace


def check_timeout(owner: str, timeout: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (
        0 < timeout <= 60
    ):
        raise ConfigError(owner, "timeout", "must be a number of seconds in (0, 60]", timeout)
    return float(timeout)


def connect(url: str, *, timeout: float, owner: str) -> redis.Redis:
    """A client for ``url`` (``redis://host:port/db``, ``rediss://`` or ``unix://``) whose
    every call is one try bounded by ``timeout``. Raises ConfigError on a malformed URL
    (without echoing it: it may carry a password)."""
    if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(owner, "url", "must be a redis://, rediss:// or unix:// URL",
                          "<hidden>")
    options: dict[str, Any] = {
        "socket_timeout": timeout, "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0), "decode_responses": True,
    }
    try:
        return redis.Redis.from_url(url, **options)
    except ValueError as exc:
        raise ConfigError(owner, "url", f"is not a valid Redis URL ({type(exc).__name__})",
                          "<hidden>") from None


def describe(exc: BaseException) -> str:
    """A failure in one line, without the URL (redis-py's messages name host and port, never
    the password; still, keep it to the class and the first line)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__
