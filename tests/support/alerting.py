"""Alerting-specific helpers for the alerting tests, the end-to-end test and the alert latency
benchmark. The servers themselves (Prometheus, Alertmanager, the webhook sink, binaries, free
ports) come from :mod:`_servers`, the test-suite's one set of server helpers.

* :data:`ALERTS`, :data:`RUNBOOKS`, :func:`github_anchors`: the alert files and runbook links;
* :func:`alerting_stack`: a real exitguard process (``tests/support/e2e_bot.py``) scraped by a real
  Prometheus evaluating ``alerts/exitguard.rules.yml`` every second, a real Alertmanager with
  the project's generated config (fast timings), and a sink standing in for Slack and Discord,
  both for Alertmanager and for the bot's in-process pager.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exitguard.artefacts.alertmanager import (
    DISCORD_URL_FILE_MIN_VERSION,
    RouteTimings,
    write_alertmanager_config,
)
from tests.support.servers import (
    ALERTMANAGER_BINARIES,
    Alertmanager,
    Process,
    Prometheus,
    WebhookSink,
    alertmanager,
    binary_version,
    free_port,
    prometheus,
    require_binary,
    running,
    wait_until,
    webhook_sink,
)

__all__ = [
    "ALERTS",
    "BOT",
    "REPO",
    "RUNBOOKS",
    "TEMPLATES",
    "AlertingStack",
    "WebhookSink",  # re-exported for older imports; it lives in _servers
    "alerting_stack",
    "github_anchors",
    "supports_discord_url_file",
]

from tests.support import REPO

ALERTS = REPO / "alerts"
RUNBOOKS = REPO / "docs" / "runbooks.md"
TEMPLATES = ALERTS / "templates" / "exitguard.tmpl"
RULES = ALERTS / "exitguard.rules.yml"
BOT = Path(__file__).resolve().parent / "e2e_bot.py"

#: Where the sink receives what (Alertmanager's receivers; the bot's apprise plugins).
AM_SLACK = "/slack/T0E2E/B0E2E/am-slack-secret"
AM_DISCORD = "/discord/1000/am-discord-secret"
PAGER_SLACK_BASE = "/pager/slack"
PAGER_DISCORD_BASE = "/pager/discord"
PAGER_URLS = ("slack://T00000000/B00000000/PagerSlackTok3n",
              "discord://112233445566778899/PagerDiscordTok3n")


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of ``markdown``."""
    anchors: set[str] = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        match = None if in_code else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


def supports_discord_url_file(alertmanager_binary: str) -> bool:
    """Alertmanager >= 0.28 reads the Discord webhook URL from a file; 0.25 (Debian) cannot."""
    return binary_version(alertmanager_binary)[:2] >= DISCORD_URL_FILE_MIN_VERSION


def prometheus_config(bot_address: str, alertmanager_address: str) -> str:
    """Scrape the bot and evaluate the repo's rules every second; alert to Alertmanager."""
    return json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                   "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "alerting": {"alertmanagers": [{"static_configs": [
            {"targets": [alertmanager_address]}]}]},
        "scrape_configs": [{"job_name": "exitguard-e2e",
                            "static_configs": [{"targets": [bot_address]}]}],
    }, indent=2)


@dataclass
class AlertingStack:
    sink: WebhookSink
    alertmanager: Alertmanager
    prometheus: Prometheus
    bot: Process
    events_path: Path

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The bot's events so far (``ready``, ``tripped``...)."""
        try:
            lines = self.events_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        found = [json.loads(line) for line in lines if line.strip()]
        return [e for e in found if kind is None or e["event"] == kind]

    def wait_event(self, kind: str, timeout: float, **fields: Any) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def check() -> bool:
            self.bot.assert_running()
            found[:] = [e for e in self.events(kind)
                        if all(e.get(k) == v for k, v in fields.items())]
            return bool(found)

        try:
            wait_until(check, timeout, interval=0.02, what=f"the bot's {kind} event {fields}")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.bot.log_tail()}") from exc
        return found[0]

    def wait_scraped(self, guard: str, timeout: float = 30.0) -> None:
        """Until Prometheus holds the guard's healthy state (a closed exit, breaker closed)."""
        expr = (f'exitguard_exits_total{{guard="{guard}",outcome="closed"}} > 0'
                f' and on (guard) exitguard_circuit_breaker_state{{guard="{guard}"}} == 0')

        def check() -> bool:
            self.bot.assert_running()
            return bool(self.prometheus.query(expr))

        try:
            wait_until(check, timeout, interval=0.1, what=f"a scrape of guard {guard}")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.prometheus.process.log_tail()}") from exc

    def trip(self, guard: str, timeout: float = 10.0) -> float:
        """Trip ``guard``'s breaker; returns the trip's ``time.monotonic()`` (in the bot)."""
        self.bot.send(f"trip {guard}")
        return float(self.wait_event("tripped", timeout, guard=guard)["mono"])


@contextlib.contextmanager
def alerting_stack(
    workdir: Path, guards: Sequence[str], bot_args: Sequence[str] = ()
) -> Iterator[AlertingStack]:
    """Sink, Alertmanager, bot, Prometheus (in that order), all torn down on the way out.

    Alertmanager pages ``/slack/...`` and ``/discord/...`` of the sink; the bot's pager (the
    real apprise Slack and Discord plugins, their endpoint pointed at the sink) pages
    ``/pager/slack/...`` and ``/pager/discord/...``. Returns once the bot has made its healthy
    exits; call :meth:`AlertingStack.wait_scraped` before tripping.
    """
    am_binary = require_binary(*ALERTMANAGER_BINARIES)
    require_binary("prometheus")
    with webhook_sink() as sink:
        secrets = workdir / "secrets"
        secrets.mkdir(mode=0o700, exist_ok=True)
        (secrets / "slack").write_text(sink.url(AM_SLACK) + "\n")
        (secrets / "discord").write_text(sink.url(AM_DISCORD) + "\n")
        config = workdir / "alertmanager.yml"
        write_alertmanager_config(
            config, slack_url_file=secrets / "slack", discord_url_file=secrets / "discord",
            templates=[TEMPLATES], timings=RouteTimings.fast(),
            inline_discord_url=not supports_discord_url_file(am_binary),
        )
        with alertmanager(config, workdir, binary=am_binary) as am:
            port = free_port()
            events = workdir / "bot-events.jsonl"
            argv = [sys.executable, str(BOT), "--port", str(port), "--events", str(events),
                    "--slack-endpoint", sink.url(PAGER_SLACK_BASE),
                    "--discord-endpoint", sink.url(PAGER_DISCORD_BASE)]
            for url in PAGER_URLS:
                argv += ["--pager-url", url]
            for guard in guards:
                argv += ["--guard", guard]
            argv += bot_args
            env = {"PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
            with running("exitguard-bot", argv, ready_url=f"http://127.0.0.1:{port}/metrics",
                         workdir=workdir, env=env, stdin=subprocess.PIPE) as bot:
                stack_config = prometheus_config(f"127.0.0.1:{port}", am.address)
                with prometheus(stack_config, workdir) as prom:
                    stack = AlertingStack(sink, am, prom, bot, events)
                    stack.wait_event("ready", timeout=20)
                    yield stack
