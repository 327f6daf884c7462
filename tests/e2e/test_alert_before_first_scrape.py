"""An exit that failed before Prometheus first scraped the bot still pages (issue 15).

A real exitguard process (``tests/support/e2e_bot.py --fail-first``) fails one exit before the
real Prometheus evaluating ``alerts/exitguard.rules.yml`` has scraped it even once: its first
sample of the failed-exits counter is already 1, so ``increase()`` cannot see the failure and
the target was not up a window ago. The rule sees it through the counter's ``_created`` time,
which this checks prometheus_client really exposes and Prometheus really stores.
"""

from __future__ import annotations

import pytest

from tests.support.alerting import alerting_stack
from tests.support.servers import wait_until

EARLY = "failed-early"
HEALTHY = "healthy"


def test_a_failure_before_the_first_scrape_fires_exit_failed(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    workdir = tmp_path_factory.mktemp("alert-first-scrape")
    with alerting_stack(workdir, [EARLY, HEALTHY], bot_args=["--fail-first", EARLY]) as stack:
        firing: list[dict[str, str]] = []

        def fired() -> bool:
            stack.bot.assert_running()
            firing[:] = [a["labels"] for a in stack.prometheus.alerts()
                         if a["labels"]["alertname"] == "ExitguardExitFailed"
                         and a["state"] == "firing"]
            return bool(firing)

        wait_until(fired, 30.0, interval=0.2, what="ExitguardExitFailed firing")
        assert [labels["guard"] for labels in firing] == [EARLY], firing
        # The only way the rule could see it: the counter's _created sample, in Prometheus.
        created = stack.prometheus.query(
            f'exitguard_exits_created{{guard="{EARLY}", outcome="failed"}}'
        )
        assert created, "Prometheus holds no _created sample of the failed-exits counter"
        first = stack.prometheus.query(
            f'exitguard_exits_total{{guard="{EARLY}", outcome="failed"}} offset 1h'
        )
        assert first == [], "the counter was scraped before the failure: not the case tested"
