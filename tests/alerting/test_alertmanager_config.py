"""alerts/alertmanager.yml: generated, valid for amtool, routed and templated as intended.

Debian's Alertmanager is 0.25, whose ``discord_configs`` have no ``webhook_url_file`` (it came
in 0.28); there the tests check a copy whose Discord URL is inlined from a temporary file, the
way :func:`render_alertmanager_config` does it for an old Alertmanager. The last test runs a
real Alertmanager against a local sink standing in for Slack and Discord.
"""

from __future__ import annotations

import json
import re
import stat
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from exitguard.artefacts import alertmanager as am_config
from exitguard.artefacts import alerts
from exitguard.artefacts.alertmanager import CRITICAL_RECEIVER, WARNING_RECEIVER, RouteTimings
from tests.support.alerting import ALERTS, TEMPLATES, supports_discord_url_file
from tests.support.servers import (
    ALERTMANAGER_BINARIES,
    WebhookSink,
    alertmanager,
    require_binary,
    run_tool,
)

CONFIG = ALERTS / "alertmanager.yml"
BREAKER_RUNBOOK = (
    "https://github.com/exitguard/exitguard/blob/main/docs/runbooks.md"
    "#exitguardcircuitbreakertripped"
)


def _amtool() -> str:
    return require_binary("amtool")


def _config() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    return data


def _checkable_copy(tmp_path: Path, text: str, amtool: str) -> Path:
    """``text`` with templates at their absolute path and, for amtool < 0.28, the Discord URL
    inlined from a temporary file (what ``inline_discord_url=True`` does)."""
    data = yaml.safe_load(text)
    data["templates"] = [str(ALERTS / t) for t in data["templates"]]
    if not supports_discord_url_file(amtool):
        for receiver in data["receivers"]:
            for discord in receiver.get("discord_configs", []):
                discord["webhook_url"] = "http://127.0.0.1:9/discord/0/placeholder"
                del discord["webhook_url_file"]
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def checked_config(tmp_path: Path) -> Path:
    return _checkable_copy(tmp_path, CONFIG.read_text(encoding="utf-8"), _amtool())


# --- the file ---------------------------------------------------------------------------------


def test_committed_config_equals_the_generated_one() -> None:
    assert am_config.check_alertmanager_config(CONFIG) == []
    assert alerts.check_all(ALERTS) == []


def test_check_reports_a_hand_edit(tmp_path: Path) -> None:
    path = tmp_path / "alertmanager.yml"
    path.write_text(CONFIG.read_text().replace("repeat_interval: 1h", "repeat_interval: 9h"))
    problems = am_config.check_alertmanager_config(path)
    assert problems
    assert problems[0].splitlines()[0].endswith(": route differs from the code")


def test_webhook_urls_are_read_from_files_never_written_in_the_repo() -> None:
    cfg = _config()
    receivers = {r["name"]: r for r in cfg["receivers"]}
    for receiver in receivers.values():
        for slack in receiver.get("slack_configs", []):
            assert "api_url" not in slack
            assert slack["api_url_file"].startswith("/run/secrets/")
        for discord in receiver.get("discord_configs", []):
            assert "webhook_url" not in discord
            assert discord["webhook_url_file"].startswith("/run/secrets/")
    webhook = re.compile(r"hooks\.slack\.com/services/\w|discord(app)?\.com/api/webhooks/\d")
    for path in [*ALERTS.rglob("*"), ALERTS.parent / "docs" / "runbooks.md"]:
        if path.is_file():
            assert not webhook.search(path.read_text(errors="replace")), path


def test_critical_pages_slack_and_discord_warning_pages_slack_only() -> None:
    receivers = {r["name"]: r for r in _config()["receivers"]}
    critical, warning = receivers[CRITICAL_RECEIVER], receivers[WARNING_RECEIVER]
    assert set(critical) == {"name", "slack_configs", "discord_configs"}
    assert set(warning) == {"name", "slack_configs"}
    for target in (*critical["slack_configs"], *critical["discord_configs"],
                   *warning["slack_configs"]):
        assert target["send_resolved"] is True


def test_grouping_and_timings() -> None:
    route = _config()["route"]
    # One page per alert and venue (issue 18: a venue outage pages once, not per process).
    assert route["group_by"] == ["alertname", "venue"]
    critical = next(r for r in route["routes"] if r["receiver"] == CRITICAL_RECEIVER)

    def seconds(duration: str) -> float:
        units = {"s": 1, "m": 60, "h": 3600}
        return float(duration[:-1]) * units[duration[-1]]

    assert seconds(critical["repeat_interval"]) < seconds(route["repeat_interval"])
    assert seconds(critical["group_wait"]) <= seconds(route["group_wait"])
    assert seconds(route["group_wait"]) <= 60
    assert seconds(route["repeat_interval"]) <= 24 * 3600


def test_a_target_down_inhibits_the_metrics_absent_alert() -> None:
    assert {
        "source_matchers": ['alertname="ExitguardTargetDown"'],
        "target_matchers": ['alertname="ExitguardMetricsAbsent"'],
    } in _config()["inhibit_rules"]
    # The retry warning of a guard with an open breaker is held back by its rule (the breaker
    # alert is per venue, with no guard label an inhibition could match on).
    assert not any("ExitguardExitRetryRateHigh" in str(rule["target_matchers"])
                   for rule in _config()["inhibit_rules"])


def test_templates_carry_every_field_a_page_needs() -> None:
    text = TEMPLATES.read_text()
    for field in (".Labels.alertname", ".Labels.guard", ".Labels.venue", ".Labels.instance",
                  ".Annotations.summary", ".Annotations.description",
                  ".Annotations.runbook_url"):
        assert field in text, field
    used = set(re.findall(r'template "([^"]+)"', CONFIG.read_text()))
    defined = set(re.findall(r'define "([^"]+)"', text))
    assert used
    assert used <= defined, used - defined


def test_inline_discord_url_for_an_old_alertmanager(tmp_path: Path) -> None:
    slack, discord = tmp_path / "slack_url", tmp_path / "discord_url"
    slack.write_text("http://127.0.0.1:1/slack\n")
    discord.write_text("http://127.0.0.1:1/discord/1/TOKEN\n")
    out = tmp_path / "run" / "alertmanager.yml"
    am_config.write_alertmanager_config(
        out, slack_url_file=slack, discord_url_file=discord, inline_discord_url=True,
        templates=[TEMPLATES], timings=RouteTimings.fast(),
    )
    data = yaml.safe_load(out.read_text())
    critical = next(r for r in data["receivers"] if r["name"] == CRITICAL_RECEIVER)
    assert critical["discord_configs"][0]["webhook_url"] == "http://127.0.0.1:1/discord/1/TOKEN"
    assert critical["slack_configs"][0]["api_url_file"] == str(slack)
    assert data["route"]["group_wait"] == "0s"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_a_config_with_an_inlined_url_says_so_in_its_header(tmp_path: Path) -> None:
    """The header above an inlined webhook URL must not claim URLs never go in the file."""
    discord = tmp_path / "discord_url"
    discord.write_text("http://127.0.0.1:1/discord/1/TOKEN\n")
    text = am_config.render_alertmanager_config(discord_url_file=discord, inline_discord_url=True)
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert "TOKEN" in text
    assert not any("never go here" in line for line in header), header
    assert any("SECRET" in line and "Discord webhook URL" in line for line in header), header
    assert any("never commit" in line for line in header), header
    # Nor does a runtime config claim `exitguard alerts build` made it or `check` watches it.
    assert not any("exitguard alerts" in line for line in header), header
    committed = CONFIG.read_text().splitlines()
    assert "never go here" in committed[2]
    assert committed[0].startswith("# Generated by `exitguard alerts build`")


# --- amtool -----------------------------------------------------------------------------------


def test_amtool_check_config(checked_config: Path) -> None:
    result = run_tool(_amtool(), "check-config", str(checked_config))
    assert result.returncode == 0, result.stdout + result.stderr
    for found in ("SUCCESS", "2 inhibit rules", "2 receivers", "1 templates"):
        assert found in result.stdout, result.stdout


def test_amtool_rejects_a_broken_template(tmp_path: Path) -> None:
    bad = tmp_path / "templates" / "bad.tmpl"
    bad.parent.mkdir()
    bad.write_text('{{ define "exitguard.title" }}{{ .Status {{ end }}')
    path = _checkable_copy(tmp_path, CONFIG.read_text(), _amtool())
    data = yaml.safe_load(path.read_text())
    data["templates"] = [str(bad)]
    path.write_text(yaml.safe_dump(data))
    assert run_tool(_amtool(), "check-config", str(path)).returncode != 0


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        ({"alertname": "ExitguardCircuitBreakerTripped", "severity": "critical"},
         CRITICAL_RECEIVER),
        ({"alertname": "ExitguardTradingHalted", "severity": "critical"}, CRITICAL_RECEIVER),
        ({"alertname": "ExitguardExitRetryRateHigh", "severity": "warning"}, WARNING_RECEIVER),
        ({"alertname": "ExitguardExitP99Slow", "severity": "warning"}, WARNING_RECEIVER),
        # Anything without a known severity still reaches someone (Slack).
        ({"alertname": "SomethingElse"}, WARNING_RECEIVER),
    ],
)
def test_amtool_routes(checked_config: Path, labels: dict[str, str], receiver: str) -> None:
    args = [f"{k}={v}" for k, v in {**labels, "guard": "g1"}.items()]
    result = run_tool(
        _amtool(), "config", "routes", "test", f"--config.file={checked_config}",
        f"--verify.receivers={receiver}", *args,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == [receiver]


# --- a real Alertmanager ----------------------------------------------------------------------


def _alert(name: str, severity: str, **labels: str) -> dict[str, Any]:
    where = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return {
        "labels": {"alertname": name, "severity": severity, **labels},
        "annotations": {
            "summary": f"summary of {name}",
            "description": f"{name} on {where}: value 3",
            "runbook_url": (
                "https://github.com/exitguard/exitguard/blob/main/docs/runbooks.md#"
                + name.lower()
            ),
        },
    }


def _running_config(tmp_path: Path, sink: WebhookSink, binary: str) -> Path:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "slack").write_text(sink.url("/slack/T0/B0/secret") + "\n")
    (secrets / "discord").write_text(sink.url("/discord/1/secret") + "\n")
    config = tmp_path / "alertmanager.yml"
    am_config.write_alertmanager_config(
        config,
        slack_url_file=secrets / "slack",
        discord_url_file=secrets / "discord",
        templates=[TEMPLATES],
        timings=RouteTimings.fast(),
        inline_discord_url=not supports_discord_url_file(binary),
    )
    return config


def test_real_alertmanager_pages_slack_and_discord(tmp_path: Path, sink: WebhookSink) -> None:
    binary = require_binary(*ALERTMANAGER_BINARIES)
    with alertmanager(_running_config(tmp_path, sink, binary), tmp_path, binary=binary) as am:
        am.post_alerts([_alert("ExitguardCircuitBreakerTripped", "critical", venue="binance")])
        slack = sink.wait_for_requests("/slack", where=lambda r: "CircuitBreaker" in r.text)[0]
        discord = sink.wait_for_requests("/discord", where=lambda r: "CircuitBreaker" in r.text)[0]
        for body in (slack.text, discord.text):
            for expected in ("ExitguardCircuitBreakerTripped venue=binance",
                             "summary of ExitguardCircuitBreakerTripped",
                             "ExitguardCircuitBreakerTripped on venue=binance: value 3",
                             BREAKER_RUNBOOK):
                assert expected in body, (expected, body)
            # A label the alert does not have is not printed (no empty "guard=").
            assert "guard=" not in body, body
        assert slack.json()["attachments"][0]["color"] == "danger"
        assert slack.json()["attachments"][0]["title_link"] == BREAKER_RUNBOOK
        assert "embeds" in discord.json()

        # Warnings page Slack only.
        am.post_alerts([_alert("ExitguardExitSlippageHigh", "warning", guard="g2",
                               instance="a:9464")])
        sink.wait_for_requests("/slack", where=lambda r: "ExitguardExitSlippageHigh" in r.text)
        time.sleep(1.5)  # group_interval is 1s: anything still coming would be here by now
        assert not any("Slippage" in r.text for r in sink.requests("/discord")), (
            "warnings must not reach Discord"
        )


def test_a_fleet_pages_once_per_alert_and_venue(tmp_path: Path, sink: WebhookSink) -> None:
    """Three processes fail exits on one venue outage: one page for their failed exits (every
    process listed), one for the venue's breakers; a target down holds back MetricsAbsent."""
    binary = require_binary(*ALERTMANAGER_BINARIES)
    with alertmanager(_running_config(tmp_path, sink, binary), tmp_path, binary=binary) as am:
        am.post_alerts([
            _alert("ExitguardExitFailed", "critical", guard="momentum", instance="a:9464"),
            _alert("ExitguardExitFailed", "critical", guard="meanrev", instance="b:9464"),
            _alert("ExitguardExitFailed", "critical", guard="momentum", instance="c:9464"),
            _alert("ExitguardCircuitBreakerTripped", "critical", venue="binance"),
        ])
        sink.wait_for_requests("/slack", where=lambda r: "ExitguardExitFailed" in r.text)
        sink.wait_for_requests("/slack", where=lambda r: "CircuitBreaker" in r.text)
        time.sleep(2.5)  # group_interval is 1s: a second page would be here by now
        failed = [r for r in sink.requests("/slack") if "ExitguardExitFailed" in r.text]
        breaker = [r for r in sink.requests("/slack") if "CircuitBreaker" in r.text]
        assert len(failed) == 1, [r.text for r in failed]
        assert len(breaker) == 1, [r.text for r in breaker]
        for instance in ("a:9464", "b:9464", "c:9464"):
            assert f"instance={instance}" in failed[0].text, failed[0].text
        assert "[FIRING:3] ExitguardExitFailed (critical)" in failed[0].text

        # TargetDown first, as the rules order them (the target is down before its metrics
        # are absent): inhibition holds back only what arrives while its source is known,
        # and Alertmanager gives no order between alerts of one post.
        am.post_alerts([
            _alert("ExitguardTargetDown", "critical", job="exitguard", instance="a:9464"),
        ])
        sink.wait_for_requests("/slack", where=lambda r: "ExitguardTargetDown" in r.text)
        am.post_alerts([_alert("ExitguardMetricsAbsent", "critical")])
        time.sleep(2.5)  # group_interval is 1s: a page for it would be here by now
        statuses = {a["labels"]["alertname"]: a["status"] for a in am.alerts()}
        assert statuses["ExitguardMetricsAbsent"]["inhibitedBy"]
        assert not any("ExitguardMetricsAbsent" in r.text for r in sink.requests())
        down = next(r for r in sink.requests("/slack") if "ExitguardTargetDown" in r.text)
        assert "guard=" not in down.text, down.text
        assert "instance=a:9464 job=exitguard" in down.text, down.text


def test_a_page_prints_only_the_labels_an_alert_has(tmp_path: Path) -> None:
    """The title and text of an alert without a guard label (MetricsAbsent, TargetDown)."""
    data = {
        "receiver": CRITICAL_RECEIVER, "status": "firing", "externalURL": "http://127.0.0.1",
        "alerts": [{**_alert("ExitguardMetricsAbsent", "critical"), "status": "firing"}],
        "groupLabels": {"alertname": "ExitguardMetricsAbsent"},
        "commonLabels": {"alertname": "ExitguardMetricsAbsent", "severity": "critical"},
        "commonAnnotations": {},
    }
    (tmp_path / "data.json").write_text(json.dumps(data))
    result = run_tool(
        _amtool(), "template", "render", f"--template.glob={TEMPLATES}",
        '--template.text={{ template "exitguard.title" . }}|'
        '{{ template "exitguard.slack.text" . }}',
        f"--template.data={tmp_path / 'data.json'}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    title, text = result.stdout.split("|", 1)
    assert title == "[FIRING:1] ExitguardMetricsAbsent (critical)", title
    assert text.splitlines()[0] == "FIRING ExitguardMetricsAbsent", text
    assert "=" not in text.splitlines()[0]
