"""End to end, with the real servers: a breaker trip in a real exitguard process pages Slack
and Discord twice over, through Prometheus and Alertmanager, and through the in-process pager.

The chain under test: ``tests/support/e2e_bot.py`` (an ExitGuard over a ScriptedVenue whose
venue goes down on command, ``exitguard.telemetry`` metrics on /metrics, the apprise ``Pager``)
-> a real Prometheus scraping it and evaluating ``alerts/exitguard.rules.yml`` every second ->
a real Alertmanager with the project's generated config (``RouteTimings.fast()``) -> a local
sink standing in for Slack and Discord. The pager's real Slack and Discord plugins post to the
same sink (their endpoint overridden). Missing server binaries skip the test, or fail it in CI.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from exitguard.artefacts.rules import all_rules
from tests.support.alerting import (
    AM_DISCORD,
    AM_SLACK,
    PAGER_DISCORD_BASE,
    PAGER_SLACK_BASE,
    AlertingStack,
    alerting_stack,
)
from tests.support.e2e_bot import venue_of
from tests.support.servers import Received

GUARD = "e2e-bot"
VENUE = venue_of(GUARD)
ALERT = "ExitguardCircuitBreakerTripped"
RULE = next(rule for rule in all_rules() if rule.alert == ALERT)
SUMMARY = RULE.summary
RUNBOOK = RULE.runbook_url

#: Generous bounds (a loaded CI machine); benchmarks/bench_alert_latency.py measures them.
PAGER_WITHIN_S = 5.0
ALERTMANAGER_WITHIN_S = 20.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AlertingStack]:
    with alerting_stack(tmp_path_factory.mktemp("alerting-e2e"), [GUARD]) as running_stack:
        yield running_stack


def _breaker_page(received: Received) -> bool:
    return ALERT in received.text and f"venue={VENUE}" in received.text


def test_a_breaker_trip_pages_slack_and_discord_through_prometheus_and_alertmanager(
    stack: AlertingStack,
) -> None:
    stack.wait_scraped(GUARD)
    assert stack.prometheus.targets_up()
    assert stack.sink.requests() == [], "a healthy guard pages nobody"

    tripped_at = stack.trip(GUARD)

    # The in-process pager: the real apprise Slack and Discord plugins, at once.
    pager_slack = stack.sink.wait_for_requests(PAGER_SLACK_BASE, timeout=PAGER_WITHIN_S)[0]
    pager_discord = stack.sink.wait_for_requests(PAGER_DISCORD_BASE, timeout=PAGER_WITHIN_S)[0]
    assert "attachments" in pager_slack.json() or "blocks" in pager_slack.json()
    assert "embeds" in pager_discord.json() or "content" in pager_discord.json()
    for page in (pager_slack, pager_discord):
        for line in (f"guard: {GUARD}", f"breaker: {VENUE}", "event: breaker_open",
                     "transition: closed → open", f"runbook: {RUNBOOK}"):
            assert line in page.text, (line, page.text)
        assert 0 < page.at - tripped_at < PAGER_WITHIN_S

    # Prometheus -> Alertmanager -> Slack and Discord, with the project's templates.
    am_slack = stack.sink.wait_for_requests(AM_SLACK, where=_breaker_page,
                                            timeout=ALERTMANAGER_WITHIN_S)[0]
    am_discord = stack.sink.wait_for_requests(AM_DISCORD, where=_breaker_page,
                                              timeout=ALERTMANAGER_WITHIN_S)[0]
    for page in (am_slack, am_discord):
        for expected in (f"FIRING {ALERT} venue={VENUE}\n",
                         f"Summary: {SUMMARY}",
                         f"Venue {VENUE}: 1 circuit breaker(s) across the fleet are open",
                         f"Runbook: {RUNBOOK}"):
            assert expected in page.text, (expected, page.text)
        assert page.at > tripped_at
    slack = am_slack.json()["attachments"][0]
    assert slack["color"] == "danger"
    assert slack["title_link"] == RUNBOOK
    assert f"{ALERT} venue={VENUE} (critical)" in slack["title"]
    assert am_discord.json()["embeds"][0]["title"].startswith(f"[FIRING:1] {ALERT}")

    # The same alert, as Prometheus and Alertmanager hold it.
    firing = [a for a in stack.prometheus.alerts()
              if a["labels"]["alertname"] == ALERT and a["state"] == "firing"]
    assert [a["labels"]["venue"] for a in firing] == [VENUE]
    held = [a for a in stack.alertmanager.alerts() if a["labels"]["alertname"] == ALERT]
    assert held
    assert held[0]["labels"]["severity"] == "critical"
    assert held[0]["annotations"]["runbook_url"] == RUNBOOK

    # Nothing reached the sink but pages for this guard (no other guard, no stray receiver).
    for received in stack.sink.requests():
        assert received.path.startswith(("/slack/", "/discord/", "/pager/")), received.path
        assert GUARD in received.text or VENUE in received.text
