"""A fleet, with the real servers: three bot processes found by file-based service discovery,
one venue outage seen by all three, one breaker alert (issue 18).

Three real exitguard processes (``tests/support/e2e_bot.py``, each with a guard named
``momentum`` on the same venue) are listed in a file_sd targets file, the way
``stack/prometheus.yml`` and docs/stack.md tell a fleet to list its processes. A real
Prometheus with that job and ``alerts/exitguard.rules.yml`` scrapes them. The venue goes down
for every process: the rules must give one ``ExitguardCircuitBreakerTripped`` for the venue
(value 3), and the dashboard's fleet panels must show each process.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exitguard.artefacts import dashboards as dash
from tests.support import REPO
from tests.support.alerting import BOT, RULES
from tests.support.e2e_bot import venue_of
from tests.support.servers import (
    Process,
    Prometheus,
    free_port,
    prometheus,
    require_binary,
    running,
    wait_until,
)

GUARD = "momentum"
PROCESSES = 3


def fleet_config(targets_dir: Path) -> str:
    """stack/prometheus.yml's exitguard job, its file_sd pointed at ``targets_dir``."""
    config: dict[str, Any] = yaml.safe_load((REPO / "stack/prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(RULES)]
    config.pop("alerting", None)
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == dash.DEFAULT_JOB]
    assert job["file_sd_configs"] == [{"files": ["/etc/prometheus/targets/*.yml"]}]
    job.pop("static_configs")  # the demo bot
    job["file_sd_configs"] = [{"files": [str(targets_dir / "*.yml")], "refresh_interval": "1s"}]
    config["scrape_configs"] = [job]
    return yaml.safe_dump(config)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Prometheus, list[Process]]]:
    require_binary("prometheus")
    workdir = tmp_path_factory.mktemp("fleet")
    ports = [free_port() for _ in range(PROCESSES)]
    with contextlib.ExitStack() as stack:
        bots = []
        for number, port in enumerate(ports):
            argv = [sys.executable, str(BOT), "--port", str(port), "--guard", GUARD,
                    "--events", str(workdir / f"events-{number}.jsonl")]
            bots.append(stack.enter_context(running(
                f"bot-{number}", argv, ready_url=f"http://127.0.0.1:{port}/metrics",
                workdir=workdir, stdin=subprocess.PIPE,
                env={"PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"},
            )))
        targets = workdir / "targets"
        targets.mkdir()
        (targets / "fleet.yml").write_text(yaml.safe_dump(
            [{"targets": [f"127.0.0.1:{port}" for port in ports], "labels": {"host": "local"}}]
        ))
        prom = stack.enter_context(prometheus(fleet_config(targets), workdir))
        yield prom, bots


def _query_values(prom: Prometheus, expr: str) -> dict[str, float]:
    return {json.dumps(r["metric"], sort_keys=True): float(r["value"][1])
            for r in prom.query(expr)}


def test_one_venue_outage_across_three_processes_is_one_alert(
    fleet: tuple[Prometheus, list[Process]],
) -> None:
    prom, bots = fleet
    wait_until(lambda: len(prom.query(f'up{{job="{dash.DEFAULT_JOB}"}} == 1')) == PROCESSES,
               30.0, what="three processes scraped")
    wait_until(lambda: len(prom.query(
        f'exitguard_exits_total{{guard="{GUARD}", outcome="closed"}} > 0')) == PROCESSES,
        30.0, what="the healthy exits of three processes")
    for bot in bots:
        bot.send(f"trip {GUARD}")

    venue = venue_of(GUARD)
    firing: list[dict[str, Any]] = []

    def three_breakers_one_alert() -> bool:
        for bot in bots:
            bot.assert_running()
        firing[:] = [a for a in prom.alerts()
                     if a["labels"]["alertname"] == "ExitguardCircuitBreakerTripped"
                     and a["state"] == "firing"]
        return bool(firing) and float(firing[0]["value"]) == PROCESSES

    wait_until(three_breakers_one_alert, 30.0, interval=0.2,
               what="one breaker alert counting three breakers")
    assert [a["labels"]["venue"] for a in firing] == [venue]
    assert "instance" not in firing[0]["labels"]
    assert "guard" not in firing[0]["labels"]

    # The dashboard's fleet row, as Grafana would run it (job picked, any instance).
    queries = dict(dash.panel_queries(dash.build_dashboards()["exit-health.json"]))
    values = {"job": dash.DEFAULT_JOB, "__rate_interval": "1m"}
    breakers = prom.query(dash.substitute_variables(queries["Open breakers per venue"], values))
    assert [(r["metric"]["breaker"], float(r["value"][1])) for r in breakers] == [
        (venue, float(PROCESSES))
    ]
    failing = prom.query(dash.substitute_variables(queries["Exits failing per instance"], values))
    assert len({r["metric"]["instance"] for r in failing}) == PROCESSES
    assert all(float(r["value"][1]) > 0 for r in failing), failing
