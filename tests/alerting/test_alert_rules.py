"""The Prometheus alert rules: generated from the catalogue, valid for promtool, unit-tested.

The promtool unit tests in alerts/tests/ are hand-written: they check the generated rules
against what a human expects, firing and not firing, including a breaker open shorter than a
scrape interval.
"""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from exitguard import catalogue
from exitguard.artefacts import rules
from exitguard.artefacts.rules import Thresholds
from exitguard.runbooks import RUNBOOK_BASE_URL
from tests.support.alerting import ALERTS, RUNBOOKS, github_anchors
from tests.support.servers import require_binary, run_tool

RULES_FILE = ALERTS / "exitguard.rules.yml"
PROMTOOL_TESTS = sorted((ALERTS / "tests").glob("*.yml"))
METRIC_NAME = re.compile(r"\b(exitguard_[a-z0-9_]+)\b")
PROMQL_KEYWORDS = {"by", "on", "or", "and", "unless", "offset", "le"}
#: Other programs' metrics a rule may watch (Alertmanager's own failures).
EXTERNAL_METRICS = (catalogue.ALERTMANAGER_NOTIFICATIONS_FAILED,)


def _promtool() -> str:
    return require_binary("promtool")


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _generated() -> list[dict[str, Any]]:
    data = yaml.safe_load(rules.render_rules())
    return [rule for group in data["groups"] for rule in group["rules"]]


# --- generation -------------------------------------------------------------------------------


def test_committed_rules_equal_the_generated_ones() -> None:
    assert rules.check_rules(RULES_FILE) == []


def test_rendering_is_deterministic_and_valid_yaml() -> None:
    first, second = rules.render_rules(), rules.render_rules()
    assert first == second
    data = yaml.safe_load(first)
    assert [g["name"] for g in data["groups"]] == [
        "exitguard.safety", "exitguard.quality", "exitguard.availability", "exitguard.paging",
    ]


def test_check_rules_reports_drift(tmp_path: Path) -> None:
    path = tmp_path / "rules.yml"
    assert rules.check_rules(path) == [f"{path}: missing"]

    rules.write_rules(path)
    assert rules.check_rules(path) == []

    path.write_text(path.read_text().replace("> 20\n", "> 25\n"))
    problems = rules.check_rules(path)
    assert any("ExitguardExitP99Slow" in p and "differs" in p for p in problems), problems

    rules.write_rules(path)
    path.write_text(path.read_text() + "# a hand edit\n")
    problems = rules.check_rules(path)
    assert problems == [problems[0]]  # one finding, the diff on its following lines
    first, *diff = problems[0].splitlines()
    assert first.endswith("text differs from the generated file (formatting or comments)")
    assert "+# a hand edit" not in diff
    assert "-# a hand edit" in diff


def test_thresholds_keep_the_p99_warning_below_the_deadline() -> None:
    with pytest.raises(ValueError, match="below the deadline"):
        Thresholds(p99_exit_seconds=30.0)
    assert "> 12\n" in rules.render_rules(Thresholds(p99_exit_seconds=12.0))


def test_expected_alerts_exist_once_per_severity() -> None:
    names = [(r["alert"], r["labels"]["severity"]) for r in _generated()]
    assert len(names) == len(set(names))
    assert {name for name, _ in names} == {
        "ExitguardCircuitBreakerTripped", "ExitguardTradingHalted",
        "ExitguardExitDeadlineExceeded", "ExitguardExitFailed",
        "ExitguardUnresolvedExitTransactions", "ExitguardExitP99Slow",
        "ExitguardExitRetryRateHigh", "ExitguardExitSlippageHigh", "ExitguardLossAmplified",
        "ExitguardTargetDown", "ExitguardMetricsAbsent", "ExitguardFaultsAbsorbed",
        "ExitguardTraceExportFailing", "ExitguardAlertmanagerNotificationsFailing",
    }


def test_rule_groups_leave_the_evaluation_interval_to_prometheus() -> None:
    for group in yaml.safe_load(rules.render_rules())["groups"]:
        assert "interval" not in group, group["name"]


def test_rules_use_only_catalogue_metrics_and_their_labels() -> None:
    for rule in _generated():
        names = set(METRIC_NAME.findall(rule["expr"]))
        for name in names:
            base = catalogue.base_metric_name(name)
            assert base in catalogue.BY_NAME, f"{rule['alert']}: {name} is not in the catalogue"
            if base != name:
                spec = catalogue.BY_NAME[base]
                assert spec.kind == "histogram" or name == spec.created_series, name
        known = {"instance", "job", "le", rules.VENUE_LABEL}
        for spec in (catalogue.BY_NAME[catalogue.base_metric_name(n)] for n in names):
            known.update(spec.all_labels)
        for spec in EXTERNAL_METRICS:
            if spec.name in rule["expr"]:
                known.update(spec.all_labels)
        for grouping in re.findall(r"\b(?:by|on) \(([^)]*)\)", rule["expr"]):
            for label in (s.strip() for s in grouping.split(",") if s.strip()):
                assert label in known, f"{rule['alert']}: unknown label {label!r}"


def test_every_rule_has_severity_summary_description_and_runbook() -> None:
    for rule in _generated():
        alert = rule["alert"]
        assert alert.startswith("Exitguard")
        assert rule["labels"]["severity"] in ("critical", "warning"), alert
        notes = rule["annotations"]
        assert set(notes) == {"summary", "description", "runbook_url"}, alert
        assert notes["summary"], alert
        assert "{{" not in notes["summary"], f"{alert}: the summary is static"
        assert "$value" in notes["description"], f"{alert}: description shows the value"
        # The labels the alert keeps: a count by venue keeps the venue only.
        kept = re.match(r"count by \(([^)]*)\)", rule["expr"])
        groupings = [kept.group(1)] if kept else re.findall(r"\bby \(([^)]*)\)", rule["expr"])
        if any(re.search(r"\bguard\b", grouping) for grouping in groupings):
            assert "$labels.guard" in notes["description"], alert
        if re.search(r"\bby \([^)]*\bvenue\b", rule["expr"]):
            assert "$labels.venue" in notes["description"], alert
        assert notes["runbook_url"].startswith(RUNBOOK_BASE_URL + "#"), alert


def _specs(expr: str) -> set[catalogue.MetricSpec]:
    return {catalogue.BY_NAME[catalogue.base_metric_name(n)] for n in METRIC_NAME.findall(expr)}


def test_rules_on_guard_metrics_keep_the_guard_label() -> None:
    for rule in _generated():
        if rule["alert"] in ("ExitguardTargetDown", "ExitguardMetricsAbsent",
                             "ExitguardAlertmanagerNotificationsFailing"):
            continue
        specs = _specs(rule["expr"])
        assert specs, rule["alert"]
        if not any(spec.per_guard for spec in specs):
            continue  # process-wide metrics have no guard label to keep
        outer = re.findall(r"\bby \(([^)]*)\)", rule["expr"])
        if rule["alert"] == "ExitguardCircuitBreakerTripped":
            # Per venue across the fleet: the outer count keeps the venue only; each inner
            # series is one breaker of one guard of one process.
            assert outer[0] == "venue", outer
            outer = outer[1:]
            for grouping in outer:
                assert "breaker" in grouping, grouping
        for grouping in outer:
            labels = {s.strip() for s in grouping.split(",")}
            assert {"instance", "guard"} <= labels, (
                f"{rule['alert']}: by ({grouping}) drops the guard or the process"
            )


def test_rules_on_process_wide_metrics_keep_their_target() -> None:
    """A metric without a guard label (one trace exporter per process) is told apart by its
    scrape target: grouping must keep job and instance, and never name a guard."""
    process_wide = [
        r for r in _generated()
        if (specs := _specs(r["expr"])) and not any(spec.per_guard for spec in specs)
    ]
    assert [r["alert"] for r in process_wide] == ["ExitguardTraceExportFailing"]
    for rule in process_wide:
        for grouping in re.findall(r"\bby \(([^)]*)\)", rule["expr"]):
            labels = {s.strip() for s in grouping.split(",")}
            assert {"job", "instance"} <= labels, f"{rule['alert']}: by ({grouping})"
            assert "guard" not in labels, f"{rule['alert']}: by ({grouping})"
        assert "$labels.instance" in rule["annotations"]["description"], rule["alert"]
        assert "$labels.guard" not in rule["annotations"]["description"], rule["alert"]


def test_faults_rule_names_the_component() -> None:
    rule = next(r for r in _generated() if r["alert"] == "ExitguardFaultsAbsorbed")
    assert catalogue.FAULTS.name in rule["expr"]
    for grouping in re.findall(r"\bby \(([^)]*)\)", rule["expr"]):
        assert {s.strip() for s in grouping.split(",")} == {"instance", "guard", "component"}
    assert "$labels.component" in rule["annotations"]["description"]
    assert rule["labels"]["severity"] == "warning"


def test_every_runbook_anchor_is_a_heading_of_the_runbooks() -> None:
    anchors = github_anchors(RUNBOOKS.read_text(encoding="utf-8"))
    for rule in _generated():
        anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor in anchors, f"{rule['alert']}: no heading for #{anchor} in {RUNBOOKS}"


def test_github_anchor_slugs() -> None:
    text = "# Title\n## ExitguardTradingHalted\n```sh\n# not a heading\n```\n## In-process pager\n"
    assert github_anchors(text) == {"title", "exitguardtradinghalted", "in-process-pager"}


# --- promtool ---------------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    result = run_tool(_promtool(), "check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_generated())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    assert PROMTOOL_TESTS, "no promtool tests in alerts/tests"
    result = run_tool(_promtool(), "test", "rules", *map(str, PROMTOOL_TESTS), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout


def _promtool_tests_against(tmp_path: Path, rules_text: str) -> str:
    """Run the committed promtool tests against ``rules_text``; returns promtool's output."""
    (tmp_path / "tests").mkdir()
    for test in PROMTOOL_TESTS:
        shutil.copy(test, tmp_path / "tests" / test.name)
    (tmp_path / RULES_FILE.name).write_text(rules_text)
    result = run_tool(
        _promtool(), "test", "rules", *(str(tmp_path / "tests" / t.name) for t in PROMTOOL_TESTS)
    )
    assert result.returncode != 0, "the promtool tests did not notice the broken rules"
    return result.stdout + result.stderr


def test_promtool_tests_catch_a_breaker_rule_that_only_reads_the_gauge(tmp_path: Path) -> None:
    text = rules.render_rules()
    start = text.index("      - alert: ExitguardCircuitBreakerTripped")
    expr_start = text.index("expr: |-\n", start)
    labels = text.index("        labels:", start)
    gauge_only = (
        text[:expr_start]
        + "expr: count by (venue) (label_replace(max by (instance, guard, breaker)"
        + ' (exitguard_circuit_breaker_state) == 2, "venue", "$1", "breaker", "(.*)"))\n'
        + text[labels:]
    )
    output = _promtool_tests_against(tmp_path, gauge_only)
    assert "starts and ends between two scrapes" in output
    assert "did not exist before" in output


def test_promtool_tests_catch_a_wrong_threshold(tmp_path: Path) -> None:
    output = _promtool_tests_against(tmp_path, rules.render_rules(Thresholds(slippage_bps=400)))
    assert "ExitguardExitSlippageHigh" in output


def test_every_rule_is_tested_firing_and_not_firing() -> None:
    firing: dict[str, set[str]] = {}
    quiet: set[str] = set()
    for path in PROMTOOL_TESTS:
        data = _load(path)
        assert data["rule_files"] == ["../exitguard.rules.yml"], path
        for test in data["tests"]:
            for case in test.get("alert_rule_test", []):
                expected = case.get("exp_alerts") or []
                if expected:
                    for alert in expected:
                        firing.setdefault(case["alertname"], set()).add(
                            alert["exp_labels"]["severity"]
                        )
                else:
                    quiet.add(case["alertname"])
    for rule in _generated():
        assert rule["labels"]["severity"] in firing.get(rule["alert"], set()), (
            f"no promtool test shows {rule['alert']} ({rule['labels']['severity']}) firing"
        )
        assert rule["alert"] in quiet, f"no promtool test shows {rule['alert']} not firing"


def test_promtool_tests_use_only_catalogue_metric_names() -> None:
    used: set[str] = set()
    for path in PROMTOOL_TESTS:
        for test in _load(path)["tests"]:
            for series in test.get("input_series", []):
                match = re.match(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", series["series"])
                assert match, series
                used.add(match.group(1))
    exitguard_names = {n for n in used if n.startswith("exitguard_")}
    assert exitguard_names, "the promtool tests feed no exitguard series"
    for name in sorted(exitguard_names):
        base = catalogue.base_metric_name(name)
        assert base in catalogue.BY_NAME, f"{name} (in alerts/tests) is not in the catalogue"
        if base != name:
            spec = catalogue.BY_NAME[base]
            assert spec.kind == "histogram" or name == spec.created_series, name
    assert used - exitguard_names <= {"up", *(m.name for m in EXTERNAL_METRICS)}, (
        used - exitguard_names
    )


def test_target_down_watches_exactly_the_job_given(tmp_path: Path) -> None:
    """`--job` (issue: TargetDown never fired for a bot scraped under another job name)."""
    job = "my-bots.prod"  # '.' must match a dot only; '-' is literal
    (tmp_path / "rules.yml").write_text(rules.render_rules(job=job))
    check = run_tool(_promtool(), "check", "rules", str(tmp_path / "rules.yml"))
    assert check.returncode == 0, check.stdout + check.stderr
    down = "'0x10'"
    description = (f"Prometheus cannot scrape a:1 (job {job}, up = 0) for 2m: its exits are no"
                   " longer observed.")
    (tmp_path / "test.yml").write_text(textwrap.dedent(f"""\
        rule_files: [rules.yml]
        evaluation_interval: 1m
        tests:
          - interval: 1m
            input_series:
              - series: 'up{{job="{job}", instance="a:1"}}'
                values: {down}
              - series: 'up{{job="my-botsXprod", instance="b:1"}}'
                values: {down}
              - series: 'up{{job="exitguard", instance="c:1"}}'
                values: {down}
            alert_rule_test:
              - eval_time: 5m
                alertname: ExitguardTargetDown
                exp_alerts:
                  - exp_labels: {{severity: critical, job: "{job}", instance: "a:1"}}
                    exp_annotations:
                      summary: Prometheus cannot scrape an exitguard target
                      description: '{description}'
                      runbook_url: {RUNBOOK_BASE_URL}#exitguardtargetdown
        """))
    result = run_tool(_promtool(), "test", "rules", str(tmp_path / "test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    # Without --job the default still watches every job named like exitguard.
    assert 'up{job=~".*exitguard.*"} == 0' in rules.render_rules()


def test_runbook_links_follow_the_base_url() -> None:
    base = "https://wiki.example.org/runbooks"
    for rule in rules.all_rules(runbook_base_url=base):
        assert rule.runbook_url == f"{base}#{rule.alert.lower()}"
    with pytest.raises(ValueError, match="must not contain '#'"):
        rules.render_rules(runbook_base_url=f"{base}#top")
    with pytest.raises(ValueError, match="http"):
        rules.render_rules(runbook_base_url="docs/runbooks.md")


def test_failed_notifications_page_per_alertmanager_and_integration() -> None:
    """Issue 21 item 5: a page Alertmanager cannot deliver (an unreadable webhook file) must
    itself raise an alert; critical, so it goes to every integration, not only the failing one.
    """
    name = "ExitguardAlertmanagerNotificationsFailing"
    rule = next(r for r in _generated() if r["alert"] == name)
    assert catalogue.ALERTMANAGER_NOTIFICATIONS_FAILED.name in rule["expr"]
    assert rule["labels"]["severity"] == "critical"
    for grouping in re.findall(r"\bby \(([^)]*)\)", rule["expr"]):
        assert {s.strip() for s in grouping.split(",")} == {"job", "instance", "integration"}
    assert "$labels.integration" in rule["annotations"]["description"]
