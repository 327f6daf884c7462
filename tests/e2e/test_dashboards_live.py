"""Every dashboard query, run against a real Prometheus scraping a live exitguard.

The simulator's ``--serve`` mode runs as a real process with full instrumentation (and the
in-process pager pointed at a local sink, so the pages-sent counter exists); a real Prometheus
(Debian package) scrapes it with the stack's own ``stack/prometheus.yml``, its targets
rewritten to the local port. Then each panel, variable and annotation query of the generated
dashboard runs through the Prometheus HTTP API with the template variables substituted: it
must parse and return data. Exemplars carrying a trace id must be stored too.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from exitguard import catalogue
from exitguard.artefacts.dashboards import build_dashboards, dashboard_queries, substitute_variables
from tests.support import REPO
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.servers import (
    Prometheus,
    free_port,
    http_get,
    prometheus,
    running,
    wait_until,
    webhook_sink,
)

#: With a 1 s scrape interval, a 30 s window holds enough samples for rate().
VALUES = {"__rate_interval": "30s", "__interval": "5s", "__range": "10m"}


def stack_config(port: int) -> str:
    """The stack's prometheus.yml with the bot's target on 127.0.0.1 and 1 s intervals."""
    config: dict[str, Any] = yaml.safe_load((REPO / "stack/prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(REPO / "alerts/exitguard.rules.yml")]
    config.pop("alerting", None)
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == "exitguard"]
    assert jobs, "stack/prometheus.yml has no exitguard job"
    jobs[0]["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    jobs[0].pop("file_sd_configs", None)  # the fleet's target files are container paths
    config["scrape_configs"] = jobs
    return yaml.safe_dump(config)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    workdir = tmp_path_factory.mktemp("live")
    port = free_port()
    with webhook_sink() as sink, OtlpReceiver() as receiver:
        env = {"EXITGUARD_PAGER_URLS": f"json://{sink.url.removeprefix('http://')}/pager",
               "PYTHONPATH": str(REPO / "src")}
        argv = [sys.executable, "-m", "exitguard", "demo", "--serve", "--port", str(port),
                "--otlp-endpoint", receiver.endpoint, "--duration", "240"]
        with running("exitguard-serve", argv, ready_url=f"http://127.0.0.1:{port}/metrics",
                     workdir=workdir, env=env), \
                prometheus(stack_config(port), workdir) as prom:
            # Enough exits for every rate window, and at least one slow/refused path.
            wait_until(lambda: _count(prom, f"sum({catalogue.EXITS.name})") >= 15, 90,
                       interval=1.0, what="15 exits scraped")
            # The alerts annotation needs an alert firing: the simulated congestion and
            # outage phases make one within a couple of minutes.
            wait_until(lambda: _count(prom, 'count(ALERTS{alertstate="firing"})') >= 1, 180,
                       interval=1.0, what="an alert firing")
            time.sleep(2)
            yield prom


def _count(prom: Prometheus, expr: str) -> float:
    result = prom.query(expr)
    return float(result[0]["value"][1]) if result else 0.0


def queries() -> list[tuple[str, str]]:
    dashboards = build_dashboards()
    assert dashboards
    return [(f"{name}: {where}", expr) for name, model in dashboards.items()
            for where, expr in dashboard_queries(model)]


def _as_promql(expr: str) -> str:
    """Variable queries are Grafana's ``label_values(metric, label)``: run the metric."""
    if expr.startswith("label_values("):
        inner = expr[len("label_values("):-1]
        metric = inner.rsplit(",", 1)[0] if "," in inner else inner
        return metric.strip()
    return expr


def test_every_dashboard_query_returns_data_from_a_live_exitguard(live: Prometheus) -> None:
    failures = []
    for where, expr in queries():
        promql = _as_promql(substitute_variables(expr, VALUES))
        try:
            result = live.query(promql)
        except Exception as exc:  # a parse error is a failure of that panel, reported below
            failures.append(f"{where}: {promql}: {exc}")
            continue
        if not result:
            failures.append(f"{where}: no data: {promql}")
    assert not failures, "\n".join(failures)


def test_every_catalogue_metric_is_scraped(live: Prometheus) -> None:
    missing = [spec.name for spec in catalogue.ALL_METRICS
               if not live.query(f'{{__name__=~"{spec.name}(_bucket)?", job="exitguard"}}')]
    assert missing == []


def test_exemplars_carry_trace_ids(live: Prometheus) -> None:
    series = catalogue.EXIT_DURATION.series("bucket")
    now = time.time()
    query = urllib.parse.urlencode({"query": series, "start": now - 600, "end": now})
    payload = json.loads(http_get(f"{live.url}/api/v1/query_exemplars?{query}"))
    assert payload["status"] == "success"
    exemplars = [e for group in payload["data"] for e in group["exemplars"]]
    assert exemplars, "no exemplars stored"
    assert all(len(e["labels"]["trace_id"]) == 32 for e in exemplars)
