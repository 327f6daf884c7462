"""Highly available paging (issue 18, item 3): two real Alertmanagers in a cluster, as
docker-compose.yml runs them (gossip, basic auth), paging a local sink.

Debian's prometheus-alertmanager 0.25 on 127.0.0.1 free ports. Gossip is sped up
(tests/support/secured.py), and every wait is a poll with a generous deadline; the "exactly
one page" checks wait several peer timeouts (the time the second replica holds a notification
back, waiting for the first one's "sent" record) before counting.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exitguard.artefacts.alertmanager import RouteTimings, write_alertmanager_config
from tests.support import REPO
from tests.support.alerting import TEMPLATES
from tests.support.secured import (
    PEER_TIMEOUT_S,
    Node,
    Secrets,
    alertmanager_cluster,
    secured_prometheus,
    stack_secrets_dir,
)
from tests.support.servers import WebhookSink, wait_until, webhook_sink

SLACK = "/slack/T0HA/B0HA/ha-slack-secret"
DISCORD = "/discord/2000/ha-discord-secret"
#: Long enough for the second replica to have paged, had it not seen the first one's record.
QUIET_S = 3 * PEER_TIMEOUT_S + 5
PAGE_DEADLINE_S = 60.0


def _alert(guard: str, name: str = "ExitguardCircuitBreakerTripped") -> dict[str, Any]:
    return {
        "labels": {"alertname": name, "severity": "critical", "guard": guard,
                   "breaker": "venue"},
        "annotations": {"summary": "a breaker opened", "description": f"{guard}: value 1",
                        "runbook_url": "https://example.invalid/runbooks#x"},
    }


@pytest.fixture
def sink() -> Iterator[WebhookSink]:
    with webhook_sink() as s:
        yield s


@pytest.fixture
def secrets(tmp_path: Path, sink: WebhookSink) -> Secrets:
    made = stack_secrets_dir(tmp_path)
    # What a user does to page for real: the URLs written into the generated files.
    (made.directory / "slack_webhook_url").write_text(sink.url(SLACK))
    (made.directory / "discord_webhook_url").write_text(sink.url(DISCORD))
    return made


@pytest.fixture
def config(tmp_path: Path, secrets: Secrets) -> Path:
    """The project's Alertmanager config (fast timings; Discord URL inlined for 0.25)."""
    path = tmp_path / "alertmanager.yml"
    write_alertmanager_config(
        path, slack_url_file=secrets.directory / "slack_webhook_url",
        discord_url_file=secrets.directory / "discord_webhook_url",
        templates=[TEMPLATES], timings=RouteTimings.fast(), inline_discord_url=True,
    )
    return path


@pytest.fixture
def cluster(config: Path, tmp_path: Path, secrets: Secrets) -> Iterator[list[Node]]:
    with alertmanager_cluster(config, tmp_path, secrets, size=2) as nodes:
        yield nodes


def _pages(sink: WebhookSink, guard: str) -> tuple[int, int]:
    slack = len([r for r in sink.requests("/slack") if guard in r.text])
    discord = len([r for r in sink.requests("/discord") if guard in r.text])
    return slack, discord


def _wait_one_page_each(sink: WebhookSink, guard: str) -> None:
    sink.wait_for_requests("/slack", where=lambda r: guard in r.text, timeout=PAGE_DEADLINE_S)
    sink.wait_for_requests("/discord", where=lambda r: guard in r.text, timeout=PAGE_DEADLINE_S)


def test_the_same_alert_sent_to_both_pages_once(cluster: list[Node], sink: WebhookSink) -> None:
    first, second = cluster
    # As Prometheus does: every alert to every Alertmanager.
    first.post_alerts([_alert("g-both")])
    second.post_alerts([_alert("g-both")])
    _wait_one_page_each(sink, "g-both")
    time.sleep(QUIET_S)  # the second replica's turn has come and gone
    assert _pages(sink, "g-both") == (1, 1)
    # Both know the alert: either one could have paged.
    for node in cluster:
        assert any(a["labels"]["guard"] == "g-both" for a in node.alerts()), node.name


def test_with_one_instance_killed_the_page_still_arrives(
    cluster: list[Node], sink: WebhookSink
) -> None:
    first, second = cluster
    first.kill()
    guard = "g-survivor"
    # Prometheus keeps sending to both; the dead one refuses the connection.
    second.post_alerts([_alert(guard)])
    _wait_one_page_each(sink, guard)
    second.process.assert_running()
    time.sleep(QUIET_S)
    assert _pages(sink, guard) == (1, 1)


def test_a_silence_set_on_one_replicates_to_the_other(
    cluster: list[Node], sink: WebhookSink
) -> None:
    first, second = cluster
    now = dt.datetime.now(dt.UTC)
    silence = {
        "matchers": [{"name": "guard", "value": "g-silenced", "isRegex": False}],
        "startsAt": now.isoformat(), "endsAt": (now + dt.timedelta(hours=1)).isoformat(),
        "createdBy": "on-call", "comment": "maintenance of g-silenced",
    }
    created = first.api("POST", "/api/v2/silences", silence)
    assert created.status == 200, created.body
    silence_id = created.json()["silenceID"]

    def replicated() -> bool:
        return any(s["id"] == silence_id and s["status"]["state"] == "active"
                   for s in second.silences())

    wait_until(replicated, 60, interval=0.2, what="the silence on the second replica")
    # And it mutes there: an alert sent only to the second one is suppressed, never paged.
    second.post_alerts([_alert("g-silenced")])

    def suppressed() -> bool:
        return any(a["labels"]["guard"] == "g-silenced"
                   and a["status"]["state"] == "suppressed"
                   and silence_id in a["status"]["silencedBy"] for a in second.alerts())

    wait_until(suppressed, 30, interval=0.2, what="the alert suppressed by the silence")
    # A control on the same cluster: an unsilenced alert pages, the silenced one does not.
    second.post_alerts([_alert("g-loud")])
    _wait_one_page_each(sink, "g-loud")
    time.sleep(QUIET_S)
    assert _pages(sink, "g-silenced") == (0, 0)


def _stack_prometheus_config(nodes: list[Node], rules: Path, secrets: Secrets) -> str:
    """stack/prometheus.yml with the Alertmanager targets and password files made local, the
    jobs scraping containers dropped, and a rule that always fires."""
    config: dict[str, Any] = yaml.safe_load((REPO / "stack/prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(rules)]
    local = {
        "/run/secrets/alertmanager_password": str(secrets.directory / "alertmanager_password"),
        "/run/secrets/prometheus_password": str(secrets.directory / "prometheus_password"),
    }
    addresses = [n.address for n in nodes]
    for am in config["alerting"]["alertmanagers"]:
        am["basic_auth"]["password_file"] = local[am["basic_auth"]["password_file"]]
        am["static_configs"] = [{"targets": addresses}]
    jobs = []
    for job in config["scrape_configs"]:
        if job["job_name"] == "alertmanager":
            job["static_configs"] = [{"targets": addresses}]
        elif job["job_name"] != "prometheus":
            continue
        job["basic_auth"]["password_file"] = local[job["basic_auth"]["password_file"]]
        jobs.append(job)
    config["scrape_configs"] = jobs
    return yaml.safe_dump(config)


def test_prometheus_sends_to_both_with_credentials_and_one_page_results(
    cluster: list[Node], sink: WebhookSink, secrets: Secrets, tmp_path: Path
) -> None:
    stack = yaml.safe_load((REPO / "stack/prometheus.yml").read_text())
    targets = stack["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert targets == ["alertmanager:9093", "alertmanager-2:9093"]
    rules = tmp_path / "always.rules.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "t", "rules": [{
        "alert": "ExitguardCircuitBreakerTripped", "expr": "vector(1)",
        "labels": {"severity": "critical", "guard": "g-prom", "breaker": "venue"},
        "annotations": {"summary": "s", "description": "g-prom via Prometheus"},
    }]}]}))
    config = _stack_prometheus_config(cluster, rules, secrets)
    # Prometheus itself is the stack's secured one; its self-scrape needs its own port.
    # Resend every second: the first send can happen before the targets are discovered.
    with secured_prometheus(config, tmp_path, secrets,
                            flags=["--rules.alert.resend-delay=1s"]) as prom:
        self_job = f"127.0.0.1:{prom.url.rsplit(':', 1)[1]}"
        text = (tmp_path / "prometheus.yml").read_text().replace("localhost:9090", self_job)
        (tmp_path / "prometheus.yml").write_text(text)
        prom.process.popen.send_signal(1)  # SIGHUP: the lifecycle API is off

        def delivered_to_both() -> bool:
            return all(any(a["labels"].get("guard") == "g-prom" for a in node.alerts())
                       for node in cluster)

        try:
            wait_until(delivered_to_both, PAGE_DEADLINE_S, interval=0.5,
                       what="the alert on both Alertmanagers")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{prom.process.log_tail()}") from exc
        _wait_one_page_each(sink, "g-prom")

        def scraped() -> bool:
            up = {(r["metric"]["job"], r["metric"]["instance"]): r["value"][1]
                  for r in prom.query("up")}
            return (all(up.get(("alertmanager", n.address)) == "1" for n in cluster)
                    and up.get(("prometheus", self_job)) == "1")

        wait_until(scraped, PAGE_DEADLINE_S, interval=0.5,
                   what="authenticated scrapes of both Alertmanagers and of Prometheus")
        time.sleep(QUIET_S)
        assert _pages(sink, "g-prom") == (1, 1)
        failed = prom.query("sum(alertmanager_notifications_failed_total)")
        assert failed
        assert float(failed[0]["value"][1]) == 0
