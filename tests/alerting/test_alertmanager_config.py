"""alerts/alertmanager.yml: generated, valid for amtool, routed and templated as intended.

Debian's Alertmanager is 0.25, whose ``discord_configs`` have no ``webhook_url_file`` (it came
in 0.28); there the tests check a copy whose Discord URL is inlined from a temporary file, the
way :func:`render_alertmanager_config` does it for an old Alertmanager. The last test runs a
real Alertmanager against a local sink standing in for Slack and Discord.
"""

from __future__ import annotations

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
    assert route["group_by"] == ["alertname", "guard"]
    critical = next(r for r in route["routes"] if r["receiver"] == CRITICAL_RECEIVER)

    def seconds(duration: str) -> float:
        units = {"s": 1, "m": 60, "h": 3600}
        return float(duration[:-1]) * units[duration[-1]]

    assert seconds(critical["repeat_interval"]) < seconds(route["repeat_interval"])
    assert seconds(critical["group_wait"]) <= seconds(route["group_wait"])
    assert seconds(route["group_wait"]) <= 60
    assert seconds(route["repeat_interval"]) <= 24 * 3600


def test_open_breaker_inhibits_the_retry_warning_of_the_same_guard() -> None:
    assert {
        "source_matchers": ['alertname="ExitguardCircuitBreakerTripped"'],
        "target_matchers": ['alertname="ExitguardExitRetryRateHigh"'],
        "equal": ["guard"],
    } in _config()["inhibit_rules"]


def test_templates_carry_every_field_a_page_needs() -> None:
    text = TEMPLATES.read_text()
    for field in (".Labels.alertname", ".Labels.guard", ".Labels.breaker",
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


def _alert(name: str, severity: str, guard: str, **extra: str) -> dict[str, Any]:
    return {
        "labels": {"alertname": name, "severity": severity, "guard": guard, **extra},
        "annotations": {
            "summary": f"summary of {name}",
            "description": f"{name} on {guard}: value 3",
            "runbook_url": (
                "https://github.com/exitguard/exitguard/blob/main/docs/runbooks.md#"
                + name.lower()
            ),
        },
    }


def test_real_alertmanager_pages_slack_and_discord(tmp_path: Path, sink: WebhookSink) -> None:
    binary = require_binary(*ALERTMANAGER_BINARIES)
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
    with alertmanager(config, tmp_path, binary=binary) as am:
        am.post_alerts([_alert("ExitguardCircuitBreakerTripped", "critical", "g1",
                               breaker="venue")])
        slack = sink.wait_for_requests("/slack", where=lambda r: "CircuitBreaker" in r.text)[0]
        discord = sink.wait_for_requests("/discord", where=lambda r: "CircuitBreaker" in r.text)[0]
        for body in (slack.text, discord.text):
            for expected in ("ExitguardCircuitBreakerTripped", "guard=g1", "breaker=venue",
                             "summary of ExitguardCircuitBreakerTripped",
                             "ExitguardCircuitBreakerTripped on g1: value 3", BREAKER_RUNBOOK):
                assert expected in body, (expected, body)
        assert slack.json()["attachments"][0]["color"] == "danger"
        assert slack.json()["attachments"][0]["title_link"] == BREAKER_RUNBOOK
        assert "embeds" in discord.json()

        # The breaker of g1 is firing: g1's retry-rate warning is inhibited, g2's is not.
        am.post_alerts([
            _alert("ExitguardExitRetryRateHigh", "warning", "g1"),
            _alert("ExitguardExitRetryRateHigh", "warning", "g2"),
            _alert("ExitguardExitSlippageHigh", "warning", "g2"),
        ])
        sink.wait_for_requests("/slack", where=lambda r: "ExitguardExitSlippageHigh" in r.text)
        retry = sink.wait_for_requests(
            "/slack", where=lambda r: "ExitguardExitRetryRateHigh" in r.text
        )
        assert all("guard=g2" in r.text and "guard=g1" not in r.text for r in retry)
        statuses = {
            (a["labels"]["alertname"], a["labels"]["guard"]): a["status"]
            for a in am.alerts()
        }
        assert statuses[("ExitguardExitRetryRateHigh", "g1")]["inhibitedBy"]
        assert not statuses[("ExitguardExitRetryRateHigh", "g2")]["inhibitedBy"]

        time.sleep(1.5)  # group_interval is 1s: anything still coming would be here by now
        assert not any("Slippage" in r.text or "RetryRate" in r.text
                       for r in sink.requests("/discord")), "warnings must not reach Discord"
        assert not any("guard=g1" in r.text and "RetryRate" in r.text
                       for r in sink.requests("/slack"))
