"""A pub/sub listener that outlives Redis restarts: the push half of the fleet stores.

One daemon thread per store holds a subscription; every message calls ``on_message``, and
every (re)subscription calls ``on_connect`` first, since messages published while the
connection was down are lost for good (Redis pub/sub keeps nothing): the store re-reads its
state there. A lost connection is retried with a doubling pause (``retry_min`` to
``retry_max``), forever, until ``close``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

import redis

from ..redaction import get_logger
from ._redis import STORE_ERRORS, describe

_log = get_logger("exitguard.fleet")


class Subscriber:
    def __init__(
        self,
        client: redis.Redis,
        channel: str,
        *,
        on_message: Callable[[str], None],
        on_connect: Callable[[], None],
        on_lost: Callable[[BaseException], None],
        name: str,
        retry_min: float = 0.05,
        retry_max: float = 1.0,
    ) -> None:
        self._client = client
        self._channel = channel
        self._on_message = on_message
        self._on_connect = on_connect
        self._on_lost = on_lost
        self._retry_min = retry_min
        self._retry_max = retry_max
        self._stop = threading.Event()
        #: Set while subscribed (tests and benchmarks wait for it).
        self.connected = threading.Event()
        self.reconnects = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.connected.clear()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        pause = self._retry_min
        while not self._stop.is_set():
            pubsub = self._client.pubsub(  # type: ignore[no-untyped-call]
                ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self._channel)
                self._on_connect()
                self.connected.set()
                pause = self._retry_min
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if message is not None and message.get("type") == "message":
                        data = message.get("data")
                        self._on_message(data if isinstance(data, str) else "")
            except STORE_ERRORS as exc:
                if self.connected.is_set():
                    self.connected.clear()
                    self.reconnects += 1
                    _log.warning("fleet subscription to %s lost (%s); reconnecting",
                                 self._channel, describe(exc))
                self._on_lost(exc)
            except Exception:
                self.connected.clear()
                _log.exception("fleet subscription handler raised; resubscribing")
            finally:
                with contextlib.suppress(*STORE_ERRORS):
                    pubsub.close()
            self._stop.wait(pause)
            pause = min(self._retry_max, pause * 2)
        self.connected.clear()  # closed: nothing is pushed any more
