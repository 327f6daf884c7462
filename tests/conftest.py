"""Fixtures every layer's tests share. One definition each: a fixture two test files need
lives here, not in both.

Doubles a user of exitguard would want too (ScriptedVenue, FaultyVenue, FakeClock,
RecordingHooks, run_virtual) are public in ``exitguard.testing``; helpers that are not
fixtures (real local servers, the OTLP receiver, log collection, the fault tests' settings)
are in ``tests/support``. Third-party imports stay inside the fixtures, so the core's tests
collect without the telemetry and alerting dependencies installed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.support.logs import LogRecords

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from tests.support.dropin import Kit
    from tests.support.otlp_receiver import OtlpReceiver
    from tests.support.servers import RedisServer, WebhookSink


@pytest.fixture
def logs() -> Iterator[LogRecords]:
    """The records of the ``exitguard`` loggers during the test, WARNING and above at least.

    Attached to the ``exitguard`` logger itself: telemetry's configure_logging may turn its
    propagation off, which would hide the records from pytest's caplog.
    """
    handler = LogRecords()
    logger = logging.getLogger("exitguard")
    old_level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


@pytest.fixture
def kit() -> Kit:
    """Telemetry hooks on a private registry and in-memory spans (the drop-in tests)."""
    from tests.support.dropin import Kit

    return Kit()


@pytest.fixture
def registry() -> CollectorRegistry:
    """A Prometheus registry of the test's own, so counts never leak between tests."""
    from prometheus_client import CollectorRegistry

    return CollectorRegistry()


@pytest.fixture
def sink() -> Iterator[WebhookSink]:
    """A local HTTP server standing in for Slack, Discord and Alertmanager's webhooks,
    stopped after the test whatever its result."""
    from tests.support.servers import webhook_sink

    with webhook_sink() as server:
        yield server


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """A running OTLP/HTTP trace receiver on 127.0.0.1, stopped after the test whatever its
    result."""
    from tests.support.otlp_receiver import OtlpReceiver

    receiver = OtlpReceiver()
    try:
        yield receiver
    finally:
        receiver.close()


#: The halt's HMAC key in tests (a real bot keeps its own outside the repository). Set for
#: the whole session too, for module-scoped fixtures and the processes they start.
TEST_HALT_KEY = "test-halt-key-0123456789abcdef"
os.environ["EXITGUARD_HALT_KEY"] = TEST_HALT_KEY
os.environ.pop("EXITGUARD_HALT_KEY_FILE", None)


@pytest.fixture(autouse=True)
def halt_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test (and the processes it starts) signs halt files with the same test key, as
    a bot and its operators share one; a test about the key itself unsets or replaces it."""
    monkeypatch.delenv("EXITGUARD_HALT_KEY_FILE", raising=False)
    monkeypatch.setenv("EXITGUARD_HALT_KEY", TEST_HALT_KEY)
    return TEST_HALT_KEY


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on a free 127.0.0.1 port (skipped without the binary, failing in
    CI), stopped after the test whatever its result; the test may kill and restart it."""
    from tests.support.servers import redis_server as start_redis

    with start_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server
