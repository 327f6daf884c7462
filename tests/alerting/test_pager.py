"""The in-process pager, against a real local HTTP server standing in for Slack and Discord.

apprise's Slack and Discord plugins post to fixed public hosts; the ``services`` fixture points
their URL attributes (``NotifySlack.webhook_url``, ``NotifyDiscord.notify_url``) at the sink.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from apprise.plugins.discord import NotifyDiscord
from apprise.plugins.slack import NotifySlack
from prometheus_client import CollectorRegistry, generate_latest

from exitguard import catalogue
from exitguard.alerting import pager as pager_module
from exitguard.alerting.pager import Pager, parse_urls
from exitguard.breaker import BreakerState
from exitguard.halt import HaltRecord
from exitguard.hooks import SafeHooks
from tests.support.alerting import RUNBOOKS, github_anchors
from tests.support.servers import WebhookSink

SLACK_SECRET = "SlackS3cretTok3nXYZ"
DISCORD_SECRET = "DiscordS3cretTok3n-abc"
DISCORD_ID = "112233445566778899"
SLACK_URL = f"slack://T00000000/B00000000/{SLACK_SECRET}"
DISCORD_URL = f"discord://{DISCORD_ID}/{DISCORD_SECRET}"
CLOSED, HALF_OPEN, OPEN = BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN


@pytest.fixture
def services(sink: WebhookSink, monkeypatch: pytest.MonkeyPatch) -> WebhookSink:
    """Slack and Discord (as apprise knows them) now live on the local sink."""
    monkeypatch.setattr(NotifySlack, "webhook_url", sink.url("/slack"))
    # apprise spaces Slack posts 1.2 s apart (Slack's own limit); the sink needs no such care.
    monkeypatch.setattr(NotifySlack, "request_rate_per_sec", 0)
    monkeypatch.setattr(NotifyDiscord, "notify_url", sink.url("/discord"))
    return sink


@pytest.fixture
def make_pager(registry: CollectorRegistry) -> Iterator[Callable[..., Pager]]:
    """Pagers closed at teardown, even when the test fails."""
    made: list[Pager] = []

    def make(
        urls: tuple[str, ...] = (SLACK_URL, DISCORD_URL),
        *,
        min_interval: float = pager_module.DEFAULT_MIN_INTERVAL,
        timeout: float = pager_module.DEFAULT_TIMEOUT,
    ) -> Pager:
        pager = Pager(urls, registry=registry, min_interval=min_interval, timeout=timeout)
        made.append(pager)
        return pager

    yield make
    for pager in made:
        pager.close(timeout=2)


def sent(registry: CollectorRegistry, guard: str, channel: str, result: str) -> float:
    value = registry.get_sample_value(
        catalogue.ALERTS_SENT.name, {"guard": guard, "channel": channel, "result": result}
    )
    return value or 0.0


def trip(pager: Pager, guard: str = "g1", breaker: str = "venue") -> float:
    """One breaker trip through the hook; returns how long the hook call took."""
    started = time.perf_counter()
    pager.breaker_transition(guard, breaker, CLOSED, OPEN)
    return time.perf_counter() - started


# --- what a page carries ----------------------------------------------------------------------


def test_a_trip_pages_slack_and_discord(
    services: WebhookSink, make_pager: Callable[..., Pager], registry: CollectorRegistry
) -> None:
    pager = make_pager()
    assert pager.channels == ("slack", "discord")
    trip(pager)
    asyncio.run(pager.drain())

    slack = services.wait_for_requests("/slack")
    discord = services.wait_for_requests("/discord")
    assert len(slack) == len(discord) == 1
    # Each service got its own webhook path and the body shape it expects.
    assert slack[0].path == f"/slack/T00000000/B00000000/{SLACK_SECRET}"
    assert discord[0].path.startswith(f"/discord/{DISCORD_ID}/{DISCORD_SECRET}")
    assert "attachments" in slack[0].json() or "blocks" in slack[0].json()
    assert "content" in discord[0].json() or "embeds" in discord[0].json()
    for body in (slack[0].text, discord[0].text):
        assert "circuit breaker open (guard g1, breaker venue)" in body  # the title
        assert "Circuit breaker 'venue' of guard 'g1' opened (closed → open)" in body
        for line in ("guard: g1", "breaker: venue", "event: breaker_open",
                     "transition: closed → open", "#exitguardcircuitbreakertripped"):
            assert line in body, (line, body)
        assert "suppressed" not in body
    assert sent(registry, "g1", "slack", "sent") == 1
    assert sent(registry, "g1", "discord", "sent") == 1


def test_a_halt_pages_with_reason_actor_and_time(
    services: WebhookSink, make_pager: Callable[..., Pager]
) -> None:
    pager = make_pager()
    at = 1_700_000_000.0
    pager.halted("g1", HaltRecord(halted=True, reason="breaker venue opened", actor="breaker",
                                  at=at))
    asyncio.run(pager.drain())
    for prefix in ("/slack", "/discord"):
        body = services.wait_for_requests(prefix)[0].text
        for line in ("trading halted (guard g1)", "event: halted",
                     "reason: breaker venue opened", "actor: breaker",
                     "at: 2023-11-14T22:13:20Z",
                     "exitguard halt resume --file PATH --approver NAME",
                     "#exitguardtradinghalted"):
            assert line in body, (line, body)


def test_a_halt_that_could_not_be_saved_pages_with_its_error(
    services: WebhookSink, make_pager: Callable[..., Pager]
) -> None:
    from exitguard.events import HaltNotSaved

    pager = make_pager()
    pager(HaltNotSaved("g1", "cannot write halt store: No space left on device"))
    asyncio.run(pager.drain())
    for prefix in ("/slack", "/discord"):
        body = services.wait_for_requests(prefix)[0].text
        for line in ("halt state not saved (guard g1)", "event: halt_not_saved",
                     "No space left on device", "a restart would lose it"):
            assert line in body, (line, body)


def test_only_transitions_to_open_page(
    services: WebhookSink, make_pager: Callable[..., Pager]
) -> None:
    pager = make_pager()
    pager.breaker_transition("g1", "venue", OPEN, HALF_OPEN)
    pager.breaker_transition("g1", "venue", HALF_OPEN, CLOSED)
    asyncio.run(pager.drain())
    assert services.requests() == []
    pager.breaker_transition("g1", "venue", HALF_OPEN, OPEN)  # a failed probe re-opens it
    asyncio.run(pager.drain())
    assert "transition: half_open → open" in services.wait_for_requests("/slack")[0].text


def test_the_pager_works_behind_safe_hooks_and_without_an_event_loop(
    services: WebhookSink, make_pager: Callable[..., Pager]
) -> None:
    pager = make_pager()
    hooks = SafeHooks(pager)
    thread = threading.Thread(target=hooks.breaker_transition, args=("g1", "b", CLOSED, OPEN))
    thread.start()
    thread.join()
    services.wait_for_requests("/slack")
    services.wait_for_requests("/discord")
    assert hooks.failure_counts == {}


def test_pages_link_to_the_configured_runbooks(
    services: WebhookSink, registry: CollectorRegistry
) -> None:
    """The base is configurable, like the alert rules' (--runbook-base-url)."""
    base = "https://wiki.example.org/ops/runbooks"
    pager = Pager((SLACK_URL,), registry=registry, runbook_base_url=base)
    try:
        trip(pager)
        asyncio.run(pager.drain())
        body = services.wait_for_requests("/slack")[0].text
        assert f"{base}#exitguardcircuitbreakertripped" in body
        assert "github.com/exitguard" not in body
    finally:
        pager.close(timeout=2)
    from_env = Pager.from_env({"EXITGUARD_RUNBOOK_BASE_URL": base}, registry=registry)
    assert from_env.runbook_base_url == base
    with pytest.raises(ValueError, match="EXITGUARD_RUNBOOK_BASE_URL must not contain '#'"):
        Pager.from_env({"EXITGUARD_RUNBOOK_BASE_URL": f"{base}#x"}, registry=registry)
    with pytest.raises(ValueError, match="runbook_base_url must be an http"):
        Pager(runbook_base_url="runbooks.md", registry=registry)


def test_the_runbook_links_of_pages_exist() -> None:
    anchors = github_anchors(RUNBOOKS.read_text(encoding="utf-8"))
    for url in pager_module._RUNBOOKS.values():
        assert url.split("#", 1)[1] in anchors, url
    assert "in-process-pager" in anchors


# --- rate limit -------------------------------------------------------------------------------


def test_a_storm_of_trips_sends_one_page_per_interval_and_counts_the_rest(
    services: WebhookSink, make_pager: Callable[..., Pager], registry: CollectorRegistry
) -> None:
    pager = make_pager(min_interval=60.0)

    async def storm() -> None:
        for _ in range(50):
            trip(pager)
        trip(pager, guard="g2")  # another guard is paged on its own
        pager.halted("g1", HaltRecord(halted=True, reason="r", actor="a", at=time.time()))
        await pager.drain()

    asyncio.run(storm())
    slack = services.wait_for_requests("/slack", count=3)
    time.sleep(0.3)  # nothing else may be on its way
    assert len(services.requests("/slack")) == len(services.requests("/discord")) == 3
    assert sorted(("guard: g2" in r.text, "event: halted" in r.text) for r in slack) == [
        (False, False), (False, True), (True, False),
    ]
    for channel in ("slack", "discord"):
        assert sent(registry, "g1", channel, "sent") == 2  # the first trip and the halt
        assert sent(registry, "g1", channel, "suppressed") == 49
        assert sent(registry, "g2", channel, "sent") == 1

    # The held-back count goes out with the next page (here: flushed at shutdown).
    asyncio.run(pager.flush())
    digest = services.wait_for_requests("/slack", where=lambda r: "suppressed" in r.text)
    assert len(digest) == 1
    assert "suppressed: 49 more breaker_open event(s) for guard g1" in digest[0].text
    assert "Still happening: Circuit breaker 'venue' of guard 'g1'" in digest[0].text
    services.wait_for_requests("/discord", where=lambda r: "49 more breaker_open" in r.text)
    assert sent(registry, "g1", "slack", "sent") == 3


def test_suppressed_events_ride_on_the_page_at_the_end_of_the_interval(
    services: WebhookSink, make_pager: Callable[..., Pager]
) -> None:
    interval = 0.6
    pager = make_pager(min_interval=interval)
    for _ in range(10):
        trip(pager)
    first, second = services.wait_for_requests("/slack", count=2, timeout=10)
    assert "suppressed" not in first.text
    assert "suppressed: 9 more breaker_open event(s)" in second.text
    # Held back to the end of the interval, not sent at once. (Half the interval: the first
    # request may reach the sink later than it was sent, on a loaded machine.)
    assert second.at - first.at >= interval * 0.5
    time.sleep(interval * 2)  # the interval ended with nothing held back: no third page
    assert len(services.requests("/slack")) == 2

    trip(pager)  # a new interval: paged at once, with nothing suppressed
    third = services.wait_for_requests("/slack", count=3)[2]
    assert "suppressed" not in third.text


# --- never in the way -------------------------------------------------------------------------


def test_hanging_and_failing_webhooks_never_block_the_caller(
    services: WebhookSink, make_pager: Callable[..., Pager], registry: CollectorRegistry
) -> None:
    services.behaviour.update({"/slack": "fail", "/discord": "hang"})
    pager = make_pager(timeout=0.5, min_interval=0.0)

    async def trading() -> tuple[list[float], float, float]:
        loop = asyncio.get_running_loop()
        lag = 0.0
        calls = []
        for i in range(20):
            calls.append(trip(pager, guard=f"g{i % 2}"))
            before = loop.time()
            await asyncio.sleep(0.01)
            lag = max(lag, loop.time() - before - 0.01)
        started = loop.time()
        await pager.drain()
        return calls, lag, loop.time() - started

    calls, lag, drained_in = asyncio.run(trading())
    # A hook call (or the loop) that waited on the hanging webhook would take the 0.5 s page
    # timeout; half of it catches that and stays above scheduling noise on a loaded 2-core
    # machine (a failing webhook answers at once: no timing can tell, the counts below do).
    assert max(calls) < 0.25, f"a hook call took {max(calls) * 1000:.1f} ms"
    assert lag < 0.25, f"the event loop stalled for {lag * 1000:.0f} ms"
    assert drained_in < 0.5 + 3, "drain is bounded by the page timeout"
    # Discord really hung (pages queued behind the hung ones time out before being sent).
    assert 1 <= len(services.requests("/discord")) < 20
    assert len(services.requests("/slack")) == 20
    for guard in ("g0", "g1"):
        assert sent(registry, guard, "slack", "failed") == 10
        assert sent(registry, guard, "discord", "timeout") == 10
        assert sent(registry, guard, "slack", "sent") == 0
        assert sent(registry, guard, "discord", "sent") == 0


def test_an_unreachable_service_counts_as_failed(
    make_pager: Callable[..., Pager], registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch, sink: WebhookSink,
) -> None:
    port = sink.port
    sink.close()  # nothing listens there any more
    monkeypatch.setattr(NotifySlack, "webhook_url", f"http://127.0.0.1:{port}/slack")
    pager = make_pager((SLACK_URL,), timeout=5.0)
    trip(pager)
    asyncio.run(pager.drain())
    assert sent(registry, "g1", "slack", "failed") == 1


def test_a_closed_pager_ignores_events(
    services: WebhookSink, make_pager: Callable[..., Pager]
) -> None:
    pager = make_pager()
    asyncio.run(pager.aclose())
    assert not pager.enabled
    trip(pager)
    time.sleep(0.2)
    assert services.requests() == []
    asyncio.run(pager.aclose())  # idempotent


def test_without_urls_the_pager_is_a_no_op(registry: CollectorRegistry) -> None:
    pager = Pager(registry=registry)
    assert not pager.enabled
    assert trip(pager) < 0.25  # nothing to wait on (0.25 s: noise on a loaded machine)
    asyncio.run(pager.aclose())


def test_pagers_share_the_counter_of_a_registry(registry: CollectorRegistry) -> None:
    Pager(registry=registry)
    Pager(registry=registry)  # no "Duplicated timeseries" error
    assert b"# TYPE exitguard_alerts_sent_total counter" in generate_latest(registry)


# --- configuration ----------------------------------------------------------------------------


def test_parse_urls() -> None:
    text = (
        "# pager targets\n"
        "slack://T0/B0/abc, discord://1/tok\n"
        "\n"
        "json://host/path?to=a,b  mailto://u:p@example.com\n"
    )
    assert parse_urls(text) == [
        "slack://T0/B0/abc", "discord://1/tok", "json://host/path?to=a,b",
        "mailto://u:p@example.com",
    ]


def test_from_env(tmp_path: Path, registry: CollectorRegistry) -> None:
    url_file = tmp_path / "pager_urls"
    url_file.write_text(f"# secrets\n{DISCORD_URL}\n")
    pager = Pager.from_env(
        {
            "EXITGUARD_PAGER_URLS": f"{SLACK_URL}, json://127.0.0.1:9/hook",
            "EXITGUARD_PAGER_URLS_FILE": str(url_file),
            "EXITGUARD_PAGER_MIN_INTERVAL": "30",
            "EXITGUARD_PAGER_TIMEOUT": "2.5",
        },
        registry=registry,
    )
    try:
        assert pager.channels == ("slack", "json", "discord")
        assert (pager.min_interval, pager.timeout) == (30.0, 2.5)
    finally:
        pager.close()
    assert not Pager.from_env({}, registry=registry).enabled
    with pytest.raises(ValueError, match="EXITGUARD_PAGER_TIMEOUT must be a number"):
        Pager.from_env({"EXITGUARD_PAGER_TIMEOUT": "soon"}, registry=registry)
    with pytest.raises(ValueError, match="EXITGUARD_PAGER_URLS_FILE: cannot read"):
        Pager.from_env({"EXITGUARD_PAGER_URLS_FILE": str(tmp_path / "nope")}, registry=registry)


# --- secrets ----------------------------------------------------------------------------------


def test_webhook_secrets_never_leak(
    services: WebhookSink, make_pager: Callable[..., Pager], registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture, tmp_path: Path,
) -> None:
    json_secret = "JsonS3cretTok3n42"
    secrets = (SLACK_SECRET, DISCORD_SECRET, DISCORD_ID, json_secret, "Bogus5ecretValue")
    caplog.set_level(logging.DEBUG)  # everything, apprise's and urllib3's debug output included
    errors: list[str] = []

    # A page that is sent, one that fails, one that times out.
    services.behaviour.update({"/json": "hang", "/discord": "fail"})
    pager = make_pager(
        (SLACK_URL, DISCORD_URL, services.url(f"/json/{json_secret}").replace("http", "json")),
        timeout=0.5,
    )
    trip(pager)
    pager.halted("g1", HaltRecord(halted=True, reason="r", actor="a", at=time.time()))
    asyncio.run(pager.drain())
    assert sent(registry, "g1", "slack", "sent") == 2
    assert sent(registry, "g1", "discord", "failed") == 2
    assert sent(registry, "g1", "json", "timeout") == 2

    # Invalid URLs and unreadable files are reported without the URL.
    for bad in ("bogus://Bogus5ecretValue/x", f"discord://{DISCORD_SECRET}", "Bogus5ecretValue"):
        with pytest.raises(ValueError, match="pager URL #2 ") as info:
            Pager([SLACK_URL, bad], registry=registry)
        errors.append(str(info.value))
        errors.append(repr(info.value))
    errors.append(repr(pager))

    exposed = [caplog.text, *errors, generate_latest(registry).decode()]
    exposed += [r.getMessage() for r in caplog.records]
    for text in exposed:
        for secret in secrets:
            assert secret not in text, f"{secret!r} leaked into: {text[:300]}"
    # Not vacuous: apprise and urllib3 did log the webhook addresses, redacted.
    assert any("***" in r.getMessage() for r in caplog.records
               if r.name.startswith(("apprise", "urllib3")))
    assert re.search(r"#2 \(discord\)|#2 discord", caplog.text)
