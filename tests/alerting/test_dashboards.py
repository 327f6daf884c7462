"""The generated dashboards: up to date, built from the catalogue only, and well-formed PromQL."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from exitguard import catalogue as cat
from exitguard.artefacts import dashboards as dash
from exitguard.runbooks import RUNBOOK_BASE_URL
from tests.support import REPO
from tests.support.servers import require_binary

COMMITTED = REPO / "dashboards"
METRIC_TOKEN = re.compile(r"\bexitguard_[A-Za-z0-9_:]*")
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.*),\s*(?P<label>\w+)\)$")
BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__range", "__all"}


@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    board: dict[str, Any] = dash.build_dashboards()["exit-health.json"]
    return board


def _panels(model: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in model["panels"] if p["type"] != "row"]


def _panel(model: dict[str, Any], title: str) -> dict[str, Any]:
    matches: list[dict[str, Any]] = [p for p in model["panels"] if p.get("title") == title]
    assert len(matches) == 1, f"expected one panel titled {title!r}, found {len(matches)}"
    return matches[0]


def _variables(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in model["templating"]["list"]}


def _all_queries(model: dict[str, Any]) -> list[tuple[str, str]]:
    return dash.dashboard_queries(model)


def _strip_strings(expr: str) -> str:
    """The expression with string literals blanked, so brackets inside regexes don't count."""
    out, quote, escaped = [], "", False
    for char in expr:
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
            out.append(" ")
        elif char in "\"'`":
            quote = char
            out.append(" ")
        else:
            out.append(char)
    assert not quote, f"unterminated string literal in {expr!r}"
    return "".join(out)


def _balanced(expr: str) -> bool:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in _strip_strings(expr):
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack


def _promql(where: str, text: str) -> str:
    """The PromQL part of a dashboard query (a variable's label_values wraps a selector)."""
    if where.startswith("variable "):
        match = LABEL_VALUES.match(text)
        assert match, f"{where}: not a label_values(selector, label) query: {text!r}"
        return match.group("selector")
    return text


# --- committed files ------------------------------------------------------------------------


def test_committed_dashboards_match_the_code() -> None:
    assert dash.check_dashboards(COMMITTED) == [], (
        "dashboards/ is stale: run `exitguard dashboards build` (or dashboards.write_dashboards)"
    )


def test_check_reports_drift_missing_and_stale_files(tmp_path: Path) -> None:
    written = dash.write_dashboards(tmp_path)
    assert [p.name for p in written] == ["exit-health.json"]
    assert dash.check_dashboards(tmp_path) == []

    path = tmp_path / "exit-health.json"
    path.write_text(path.read_text().replace('"Exit health"', '"Edited by hand"'))
    problems = dash.check_dashboards(tmp_path)
    assert len(problems) == 1
    assert problems[0].splitlines()[0] == f"{path}: field 'title' differs from the code"
    assert "Edited by hand" in problems[0]

    (tmp_path / "old-dashboard.json").write_text("{}\n")
    path.unlink()
    problems = dash.check_dashboards(tmp_path)
    assert any("missing" in p for p in problems)
    assert any("old-dashboard.json" in p and "stale" in p for p in problems)


def test_rendering_is_deterministic(model: dict[str, Any]) -> None:
    text = dash.render(model)
    assert text == dash.render(dash.build_dashboards()["exit-health.json"])
    assert text.endswith("}\n")
    assert not text.endswith("\n\n")
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


# --- catalogue coverage, both ways ----------------------------------------------------------


def test_every_catalogue_metric_appears_in_a_panel(model: dict[str, Any]) -> None:
    used = {
        cat.base_metric_name(token)
        for _, expr in dash.panel_queries(model)
        for token in METRIC_TOKEN.findall(expr)
    }
    missing = sorted(spec.name for spec in cat.ALL_METRICS if spec.name not in used)
    assert not missing, f"catalogue metrics on no panel: {missing}"


def test_every_metric_name_in_a_query_is_in_the_catalogue(model: dict[str, Any]) -> None:
    unknown = sorted(
        f"{where}: {token}"
        for where, expr in _all_queries(model)
        for token in METRIC_TOKEN.findall(expr)
        if cat.base_metric_name(token) not in cat.BY_NAME
    )
    assert not unknown, f"names not in exitguard.catalogue: {unknown}"


def test_series_are_used_the_way_their_kind_allows(model: dict[str, Any]) -> None:
    """Histograms only through _bucket/_sum/_count, counters only inside rate()/increase()."""
    wrong = []
    for where, expr in _all_queries(model):
        for match in METRIC_TOKEN.finditer(expr):
            token = match.group(0)
            spec = cat.BY_NAME[cat.base_metric_name(token)]
            before = expr[: match.start()]
            if spec.kind == "histogram" and token == spec.name:
                wrong.append(f"{where}: bare histogram {token}")
            if spec.kind != "histogram" and token != spec.name:
                wrong.append(f"{where}: suffix on {spec.kind} {token}")
            if spec.kind == "counter" and not re.search(r"\b(rate|increase)\($", before):
                wrong.append(f"{where}: counter {token} not inside rate()/increase()")
            if spec.kind == "gauge" and re.search(r"\b(rate|increase)\($", before):
                wrong.append(f"{where}: rate() of gauge {token}")
    assert not wrong, wrong


# --- options --------------------------------------------------------------------------------


def test_custom_datasource_job_and_title(tmp_path: Path) -> None:
    custom = dash.build_dashboards(datasource_uid="my-prom", job="bot-fleet", title="Fleet exits")
    board = custom["exit-health.json"]
    variables = _variables(board)
    assert board["title"] == "Fleet exits"
    assert variables["datasource"]["current"]["value"] == "my-prom"
    assert variables["job"]["current"]["value"] == "bot-fleet"
    default_uid = dash.build_dashboards()["exit-health.json"]["uid"]
    assert board["uid"] != default_uid
    assert len(board["uid"]) <= 40
    assert board["uid"] == dash.build_dashboards(job="bot-fleet")["exit-health.json"]["uid"]

    dash.write_dashboards(tmp_path, datasource_uid="my-prom", job="bot-fleet", title="Fleet exits")
    assert dash.check_dashboards(
        tmp_path, datasource_uid="my-prom", job="bot-fleet", title="Fleet exits"
    ) == []
    assert dash.check_dashboards(tmp_path) != []
    text = (tmp_path / "exit-health.json").read_text()
    assert '"my-prom"' in text
    assert '"bot-fleet"' in text
    assert '"Fleet exits"' in text


def test_template_variables(model: dict[str, Any]) -> None:
    variables = _variables(model)
    assert list(variables) == ["datasource", "job", "instance", "guard"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance", "guard"):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"]["uid"] == "${datasource}"
        match = LABEL_VALUES.match(variable["query"])
        assert match
        assert match.group("label") == name
        assert cat.base_metric_name(METRIC_TOKEN.findall(match.group("selector"))[0]) in cat.BY_NAME
    for name in ("instance", "guard"):
        assert variables[name]["includeAll"]
        assert variables[name]["allValue"] == ".*"


def test_queries_only_use_defined_variables(model: dict[str, Any]) -> None:
    defined = set(_variables(model)) | BUILTIN_VARIABLES
    for where, expr in _all_queries(model):
        used = set(re.findall(r"\$\{?(\w+)", expr))
        assert used <= defined, f"{where}: undefined variables {used - defined}"


def test_every_panel_and_target_uses_the_datasource_variable(model: dict[str, Any]) -> None:
    for panel in _panels(model):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert target["refId"], f"{panel['title']}: empty refId"


# --- the panels the design asks for ---------------------------------------------------------


def test_exit_time_panel_has_exemplars_and_the_deadline_line(model: dict[str, Any]) -> None:
    panel = _panel(model, dash.EXIT_TIME_PANEL_TITLE)
    assert panel["type"] == "timeseries"
    assert any(t["exemplar"] is True for t in panel["targets"])
    exprs = " ".join(t["expr"] for t in panel["targets"])
    for q in ("0.5", "0.9", "0.99"):
        assert f"histogram_quantile({q}, " in exprs
    assert cat.EXIT_DURATION.series("bucket") in exprs
    defaults = panel["fieldConfig"]["defaults"]
    assert defaults["unit"] == "s"
    assert 30 in [step["value"] for step in defaults["thresholds"]["steps"]]
    assert dash.DEADLINE_SECONDS == 30
    assert 30.0 in cat.DURATION_BUCKETS
    assert defaults["custom"]["thresholdsStyle"]["mode"] in {"line", "dashed", "line+area"}


def test_required_panels_and_types(model: dict[str, Any]) -> None:
    by_title = {p["title"]: p for p in _panels(model)}
    required = {
        "Exits by outcome": "timeseries",
        "First-attempt success ratio": "timeseries",
        dash.EXIT_TIME_PANEL_TITLE: "timeseries",
        "Deadline breaches": "timeseries",
        "Retries by error class": "timeseries",
        "Attempts by order mode": "timeseries",
        "Slippage distribution": "heatmap",
        "Slippage (average and p90)": "timeseries",
        "Loss amplification": "timeseries",
        "In-flight exits and unresolved transactions": "timeseries",
        "Late fills": "timeseries",
        "Circuit breaker state": "state-timeline",
        "Trading halted": "state-timeline",
        "Breaker trips, halts and resumes": "timeseries",
        "Pages sent": "timeseries",
        "Faults absorbed": "timeseries",
        "Trace export failures": "timeseries",
    }
    for title, kind in required.items():
        assert title in by_title, f"missing panel {title!r}"
        assert by_title[title]["type"] == kind, title
    heatmap = by_title["Slippage distribution"]
    assert heatmap["targets"][0]["format"] == "heatmap"
    assert heatmap["options"]["calculate"] is False
    mapping = by_title["Circuit breaker state"]["fieldConfig"]["defaults"]["mappings"][0]
    texts = {int(k): v["text"] for k, v in mapping["options"].items()}
    assert texts == {v: n.replace("_", "-") for n, v in cat.BREAKER_STATE_VALUES.items()}
    modes = by_title["Attempts by order mode"]["targets"][0]["expr"]
    assert "sum by (mode)" in modes


def test_process_wide_metrics_are_not_filtered_by_guard(model: dict[str, Any]) -> None:
    """A metric without a guard label would match nothing under ``guard=~"$guard"``."""
    checked = set()
    for where, expr in dash.panel_queries(model):
        for match in re.finditer(r"\b(exitguard_[A-Za-z0-9_:]*)\{([^}]*)\}", expr):
            spec = cat.BY_NAME[cat.base_metric_name(match.group(1))]
            matchers = match.group(2)
            assert 'job=~"$job"' in matchers, f"{where}: {match.group(0)}"
            if where in dash.FLEET_PANEL_TITLES:
                # The fleet row sees every process of the job, whatever the pickers say.
                assert "$instance" not in matchers, where
                assert "$guard" not in matchers, where
                continue
            assert 'instance=~"$instance"' in matchers, f"{where}: {match.group(0)}"
            has_guard = f'{cat.GUARD_LABEL}=~"$guard"' in matchers
            assert has_guard == spec.per_guard, f"{where}: {match.group(0)}"
            checked.add(spec.name)
    assert cat.TRACE_EXPORT_FAILURES.name in checked
    assert cat.FAULTS.name in checked


def test_fault_panels(model: dict[str, Any]) -> None:
    faults = _panel(model, "Faults absorbed")["targets"]
    assert [t["expr"].startswith("sum by (component) (increase(") for t in faults] == [True]
    assert cat.FAULTS.name in faults[0]["expr"]
    assert faults[0]["legendFormat"] == "{{component}}"
    export = _panel(model, "Trace export failures")["targets"]
    assert len(export) == 1
    assert cat.TRACE_EXPORT_FAILURES.name in export[0]["expr"]
    assert not re.search(rf"\b{cat.GUARD_LABEL}\b", export[0]["expr"])


def test_layout_ids_unique_and_grid_fits(model: dict[str, Any]) -> None:
    ids = [p["id"] for p in model["panels"]]
    assert ids == list(range(1, len(ids) + 1))
    cells: set[tuple[int, int]] = set()
    for panel in model["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & area, f"{panel['title']} overlaps another panel"
        cells |= area


def test_annotations(model: dict[str, Any]) -> None:
    annotations = model["annotations"]["list"]
    assert any(a.get("builtIn") == 1 and a["datasource"]["type"] == "grafana" for a in annotations)
    alerts = [a for a in annotations if "ALERTS" in (a.get("expr") or "")]
    assert len(alerts) == 1
    assert 'alertname=~"Exitguard.*"' in alerts[0]["expr"]
    assert alerts[0]["datasource"]["uid"] == "${datasource}"
    assert alerts[0]["enable"] is True


# --- query syntax ---------------------------------------------------------------------------


def test_queries_are_balanced_after_substitution(model: dict[str, Any]) -> None:
    for where, text in _all_queries(model):
        expr = dash.substitute_variables(text, {})
        assert "$" not in expr, f"{where}: unsubstituted variable in {expr!r}"
        assert _balanced(expr), f"{where}: unbalanced brackets in {expr!r}"


def test_queries_parse_with_promtool(model: dict[str, Any], tmp_path: Path) -> None:
    """promtool has no offline query parser, but it parses every rule expression: each
    dashboard query becomes a recording rule in a throw-away file."""
    promtool = require_binary("promtool")
    rules = [
        {"record": f"dashboard:query_{i}", "expr": dash.substitute_variables(_promql(w, t), {})}
        for i, (w, t) in enumerate(_all_queries(model))
    ]
    path = tmp_path / "dashboard-queries.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_promtool_check_catches_a_broken_query(tmp_path: Path) -> None:
    """The parse check above can fail: a query with a missing bracket is rejected."""
    promtool = require_binary("promtool")
    path = tmp_path / "broken.rules.yml"
    broken = {"record": "dashboard:broken", "expr": "sum(rate(x[1m])"}
    path.write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": [broken]}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert not _balanced("sum(rate(x[1m])")
    assert _balanced('sum(x{a=~"(b"})')


# --- helpers for the live test --------------------------------------------------------------


def test_substitute_variables() -> None:
    expr = (
        'rate(m{job=~"$job", guard=~"${guard}", i=~"${instance:regex}", x="[[guard]]"}'
        "[$__rate_interval])"
    )
    out = dash.substitute_variables(expr, {"guard": "g1", "__rate_interval": "30s"})
    assert out == 'rate(m{job=~"exitguard", guard=~"g1", i=~".*", x="g1"}[30s])'
    assert dash.substitute_variables("x[$__range]", {}) == "x[1h]"
    with pytest.raises(ValueError, match="nope"):
        dash.substitute_variables("up{a=\"$nope\"}", {})


def test_panel_queries_lists_every_target_and_nested_rows(model: dict[str, Any]) -> None:
    queries = dash.panel_queries(model)
    assert len(queries) == sum(len(p["targets"]) for p in _panels(model))
    assert queries[0][0] == dash.FAILED_EXITS_PANEL_TITLE
    nested = {
        "panels": [
            {"type": "row", "title": "r", "collapsed": True,
             "panels": [{"title": "inner", "targets": [{"expr": "up"}, {"refId": "B"}]}]},
        ]
    }
    assert dash.panel_queries(nested) == [("inner", "up")]


# --- what the on-call sees first, and where it leads (issues 15 and 18) ----------------------


def _overview(model: dict[str, Any]) -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = model["panels"]
    rows = [i for i, p in enumerate(panels) if p["type"] == "row"]
    return panels[rows[0] + 1:rows[1]]


def test_the_top_row_starts_with_failed_exits_as_counts_and_open_breakers(
    model: dict[str, Any],
) -> None:
    first, second, *_ = _overview(model)
    assert first["title"] == dash.FAILED_EXITS_PANEL_TITLE
    expr = first["targets"][0]["expr"]
    assert f"increase({cat.EXITS.name}{{" in expr, expr
    assert "[$__range]" in expr, expr
    assert 'outcome=~"failed|unresolved"' in expr
    assert "rate(" not in expr, "a count over the range, not a per-second rate"
    assert first["fieldConfig"]["defaults"]["unit"] == "short"
    assert second["title"] == "Open breakers"
    assert cat.BREAKER_STATE.name in second["targets"][0]["expr"]
    assert {p["gridPos"]["y"] for p in (first, second)} == {first["gridPos"]["y"]}
    assert first["gridPos"]["x"] == 0


def test_every_panel_links_to_its_runbook_section(model: dict[str, Any]) -> None:
    from tests.support.alerting import RUNBOOKS, github_anchors

    anchors = github_anchors(RUNBOOKS.read_text(encoding="utf-8"))
    for panel in _panels(model):
        links = panel.get("links") or []
        assert len(links) == 1, panel["title"]
        url = links[0]["url"]
        base, _, anchor = url.partition("#")
        assert base == RUNBOOK_BASE_URL, url
        assert anchor in anchors, f"{panel['title']}: no runbook section #{anchor}"
    other = dash.build_dashboards(runbook_base_url="https://wiki.example.org/rb")
    for panel in _panels(other["exit-health.json"]):
        assert panel["links"][0]["url"].startswith("https://wiki.example.org/rb#")
    with pytest.raises(ValueError, match="#"):
        dash.build_dashboards(runbook_base_url="https://wiki.example.org/rb#x")


def test_failed_exits_link_to_their_traces(model: dict[str, Any]) -> None:
    from urllib.parse import parse_qs, urlsplit

    from exitguard.telemetry import otel

    for title in (dash.FAILED_EXITS_PANEL_TITLE, "Exits by outcome"):
        (link,) = _panel(model, title)["fieldConfig"]["defaults"]["links"]
        parts = urlsplit(link["url"])
        assert parts.path == "/explore"
        panes = json.loads(parse_qs(parts.query)["panes"][0])
        (pane,) = panes.values()
        assert pane["datasource"] == dash.TEMPO_DATASOURCE_UID
        assert pane["range"] == {"from": "${__from}", "to": "${__to}"}
        query = pane["queries"][0]["query"]
        # The span name and attributes the telemetry really writes.
        assert f'name = "{otel.EXIT_SPAN}"' in query
        assert f'span.{otel.A_OUTCOME} =~ "failed|unresolved"' in query
        assert f'span.{otel.A_GUARD} =~ "${{guard:pipe}}"' in query
    # Exemplars (trace_id) on the exit-time panels open single traces.
    assert any(t["exemplar"] for t in _panel(model, dash.EXIT_TIME_PANEL_TITLE)["targets"])


def test_fleet_row_and_drill_down_per_instance(model: dict[str, Any]) -> None:
    by_title = {p["title"]: p for p in _panels(model)}
    for title in dash.FLEET_PANEL_TITLES:
        assert title in by_title, title
    breakers = by_title["Open breakers per venue"]["targets"][0]["expr"]
    assert breakers.startswith("count by (breaker) (max by (instance, guard, breaker) ("), breakers
    failing = by_title["Exits failing per instance"]["targets"][0]
    assert failing["expr"].startswith("sum by (instance) (increase("), failing["expr"]
    assert failing["legendFormat"] == "{{instance}}"
    halted = by_title["Halted processes"]["targets"][0]["expr"]
    assert halted.startswith("count(max by (instance) ("), halted
    for title in ("Exits failing per instance", "Trading halted by instance"):
        (link,) = by_title[title]["fieldConfig"]["defaults"]["links"]
        assert link["url"].startswith(f"/d/{model['uid']}/?"), link
        assert "var-instance=${__field.labels.instance}" in link["url"]
        assert "${__url_time_range}" in link["url"]
    assert "instance" in _variables(model)
