"""Faults around the pager: whatever Slack's or Discord's webhook does, an exit is never late.

Both channels misbehave at once (one hangs, the other answers 500, and the other way round)
while a guard's exits trip its breaker and halt trading: every exit still returns within its
deadline, nothing is sold twice, and each page is counted once with its result and logged
once. Real clock, with a local HTTP sink standing in for both services.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from apprise.plugins.discord import NotifyDiscord
from apprise.plugins.slack import NotifySlack
from prometheus_client import CollectorRegistry

from exitguard import (
    CircuitBreaker,
    ExitGuard,
    ExitOutcome,
    ExitStatus,
    Hooks,
    Position,
    TradingHalt,
    catalogue,
)
from exitguard.alerting.pager import Pager
from exitguard.testing import FaultyVenue, RecordingHooks
from tests.support.faults import HANG_FOREVER, PRICE, REAL_DEADLINE, REAL_POLICY
from tests.support.logs import LogRecords
from tests.support.servers import WebhookSink

SLACK_URL = "slack://T00000000/B00000000/FaultSlackTok3n"
DISCORD_URL = "discord://112233445566778899/FaultDiscordTok3n"
#: The pager's timeout per page, seconds.
PAGE_TIMEOUT = 0.5
#: How much longer than the control run (the same exits without the pager, in the same test)
#: an exit may take. An exit that waited on a hanging webhook would take the page timeout
#: longer, so half of it still catches that, while scheduling noise on a loaded 2-core
#: machine, mostly absorbed by the control, stays well below. (A webhook answering 500 answers
#: at once: waiting on it would cost no measurable time; the counts show it is handled.)
PAGE_MARGIN = PAGE_TIMEOUT / 2


def _exits(*hooks: Hooks) -> tuple[list[ExitOutcome], list[float], FaultyVenue]:
    """Three exits on the real clock whose confirmations hang: the first trips the breaker
    and halts trading, the next two are refused fast. Returns the outcomes, each exit's wall
    time and the venue."""
    venue = FaultyVenue(default=HANG_FOREVER, price=PRICE)
    halt = TradingHalt(approvers=["ops"])

    async def main() -> tuple[list[ExitOutcome], list[float]]:
        guard = ExitGuard(venue, policy=REAL_POLICY, deadline=REAL_DEADLINE,
                          hooks=list(hooks), halt=halt, name="bot",
                          breaker=CircuitBreaker(1, name="venue"),
                          background_reconcile_for=0.5, refuse_when_open=True)
        outcomes, walls = [], []
        for i in range(3):
            started = time.perf_counter()
            outcomes.append(await guard.exit(Position(f"pos-{i}", "SOL", 1.0, 100.0),
                                             signal_price=95.0))
            walls.append(time.perf_counter() - started)
        for hook in hooks:
            if isinstance(hook, Pager):
                await hook.drain(timeout=5.0)
        await guard.aclose()
        return outcomes, walls

    outcomes, walls = asyncio.run(main())
    return outcomes, walls, venue


@pytest.mark.parametrize(("slack", "discord"), [("hang", "fail"), ("fail", "hang")])
def test_hanging_or_failing_webhooks_never_delay_an_exit_and_count_each_page_once(
    slack: str, discord: str, monkeypatch: pytest.MonkeyPatch, logs: LogRecords
) -> None:
    _, control, _ = _exits()  # the same exits without the pager, in the same test
    registry = CollectorRegistry()
    with WebhookSink() as sink:
        sink.behaviour.update({"/slack": slack, "/discord": discord})  # type: ignore[dict-item]
        monkeypatch.setattr(NotifySlack, "webhook_url", sink.url("/slack"))
        monkeypatch.setattr(NotifyDiscord, "notify_url", sink.url("/discord"))
        pager = Pager([SLACK_URL, DISCORD_URL], timeout=PAGE_TIMEOUT, min_interval=60.0,
                      registry=registry)
        recording = RecordingHooks()
        try:
            outcomes, walls, venue = _exits(pager, recording)
        finally:
            pager.close(timeout=2)
        requests = {path: len(sink.requests(path)) for path in ("/slack", "/discord")}

    # Every exit returned within its deadline although both channels misbehaved.
    assert [o.status for o in outcomes] == [
        ExitStatus.UNRESOLVED, ExitStatus.REFUSED, ExitStatus.REFUSED
    ]
    latest = max(REAL_DEADLINE, *control) + PAGE_MARGIN
    assert all(wall <= latest for wall in walls), (walls, control)
    assert outcomes[0].pending_tx_ids == ("tx1",)
    assert venue.violations == []
    assert venue.submit_calls == 1
    # Two events (breaker open, trading halted): one page each per channel, each counted
    # once with its result and logged once. (apprise throttles Slack to about one request
    # a second, so the second Slack page may time out before it is even sent.)
    assert 1 <= requests["/slack"] <= 2
    assert 1 <= requests["/discord"] <= 2

    def count(channel: str, result: str) -> float:
        value = registry.get_sample_value(
            catalogue.ALERTS_SENT.name, {"guard": "bot", "channel": channel, "result": result}
        )
        return value or 0.0

    for number, channel, mode in ((1, "slack", slack), (2, "discord", discord)):
        assert count(channel, "sent") == 0
        assert count(channel, "failed") + count(channel, "timeout") == 2
        if mode == "hang":
            assert count(channel, "timeout") == 2
        else:
            assert count(channel, "failed") >= 1  # the first page got its 500
        assert len(logs.matching(f"to channel #{number} ({channel}):")) == 2
    assert len(recording.payloads("halted")) == 1
