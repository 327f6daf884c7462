"""Grafana dashboards as code (grafana-foundation-sdk, the build for the stack's Grafana 11.6).

The committed JSON under ``dashboards/`` is generated from here, so a panel can never drift
from the metric catalogue: every query is assembled from ``exitguard.catalogue`` names, and
``check_dashboards`` fails when the committed files differ from what this module generates.
Users who run their own Prometheus regenerate with their datasource uid, job label and title
(``exitguard dashboards build --datasource-uid UID --job JOB --title T``).

Why one long module: it is one dashboard read top to bottom (query helpers, panel helpers, then
each row of panels in layout order); splitting the rows from the helpers they all use would
only make a reader jump between files.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar
from urllib.parse import quote

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash_b
from grafana_foundation_sdk.builders import heatmap as heatmap_b
from grafana_foundation_sdk.builders import prometheus as prom_b
from grafana_foundation_sdk.builders import stat as stat_b
from grafana_foundation_sdk.builders import statetimeline as statetimeline_b
from grafana_foundation_sdk.builders import timeseries as timeseries_b
from grafana_foundation_sdk.cog import builder as cog_builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_m
from grafana_foundation_sdk.models import dashboard as dash_m
from grafana_foundation_sdk.models import heatmap as heatmap_m
from grafana_foundation_sdk.models import prometheus as prom_m

from exitguard import catalogue as cat
from exitguard.filestore import SHARED, atomic_write_text
from exitguard.runbooks import RUNBOOK_BASE_URL, check_base_url, runbook_url

from .drift import drift, stale

_Panels = list[cog_builder.Builder[dash_m.Panel]]

__all__ = [
    "DEADLINE_SECONDS",
    "DEFAULT_DATASOURCE_UID",
    "DEFAULT_JOB",
    "DEFAULT_OUT_DIR",
    "DEFAULT_TITLE",
    "DEFAULT_VARIABLE_VALUES",
    "EXIT_TIME_PANEL_TITLE",
    "FAILED_EXITS_PANEL_TITLE",
    "FLEET_PANEL_TITLES",
    "PANEL_RUNBOOKS",
    "TEMPO_DATASOURCE_UID",
    "build_dashboards",
    "check_dashboards",
    "dashboard_queries",
    "panel_queries",
    "render",
    "substitute_variables",
    "write_dashboards",
]

#: The uid of the Prometheus datasource provisioned by the compose stack.
DEFAULT_DATASOURCE_UID = "prometheus"
#: The scrape job of the bot in ``stack/prometheus.yml``.
DEFAULT_JOB = "exitguard"
DEFAULT_TITLE = "Exit health"
#: Where ``exitguard dashboards build|check`` read and write, relative to the repository root.
DEFAULT_OUT_DIR = Path("dashboards")
#: The default total exit deadline; drawn as a threshold line on the exit-time panel.
DEADLINE_SECONDS = 30.0
EXIT_TIME_PANEL_TITLE = "Exit time (p50 / p90 / p99)"
FAILED_EXITS_PANEL_TITLE = "Failed / unresolved exits"
#: The uid of the Tempo datasource provisioned by the compose stack (``stack/grafana``): the
#: failed-exit panels link to the traces of those exits there.
TEMPO_DATASOURCE_UID = "tempo"

#: Values for the dashboard's variables when a query is run outside Grafana (live tests):
#: the "All" value for multi-value variables and fixed windows for Grafana's built-ins.
DEFAULT_VARIABLE_VALUES: Mapping[str, str] = {
    "datasource": DEFAULT_DATASOURCE_UID,
    "job": DEFAULT_JOB,
    "instance": ".*",
    "guard": ".*",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
}

_FILE_NAME = "exit-health.json"
_DS = dash_m.DataSourceRef(type_val="prometheus", uid="${datasource}")
_ALL = ".*"
# The metric whose label values fill the job/instance/guard pickers: a guard's in-flight gauge
# appears with its first exit and never goes away, so every guard that ever exited is listed.
_VARIABLE_SOURCE = cat.EXITS_IN_FLIGHT.name
_PROCESS_SELECTOR = 'job=~"$job", instance=~"$instance"'
#: The fleet row looks at every process of the job, whatever the instance and guard pickers say.
_FLEET_SELECTOR = 'job=~"$job"'
_FAILED = 'outcome=~"failed|unresolved"'
_SELECTOR = f'{_PROCESS_SELECTOR}, {cat.GUARD_LABEL}=~"$guard"'
_RATE = "$__rate_interval"
_RANGE = "$__range"
# Refused exits (trading halted before any order) never made an attempt: they would dilute
# the first-attempt ratio.
_ATTEMPTED = 'outcome!="refused"'

# Grafana's colours for states; names are Grafana's palette names.
_GREEN, _YELLOW, _ORANGE, _RED, _BLUE = "green", "yellow", "orange", "red", "blue"


# --- PromQL assembled from catalogue names ---------------------------------------------------


def _sel(spec: cat.MetricSpec, suffix: str = "", extra: str = "") -> str:
    """A selector for one series of ``spec``, filtered by the dashboard's variables.

    A process-wide metric (``per_guard=False``) has no guard label: filtering it by guard
    would match nothing, so it is filtered by job and instance only.
    """
    selector = _SELECTOR if spec.per_guard else _PROCESS_SELECTOR
    matchers = f"{selector}, {extra}" if extra else selector
    return f"{spec.series(suffix)}{{{matchers}}}"


def _by(labels: tuple[str, ...]) -> str:
    return f"sum by ({', '.join(labels)}) " if labels else "sum"


def _rate(
    spec: cat.MetricSpec,
    *,
    by: tuple[str, ...] = (),
    suffix: str = "",
    extra: str = "",
    window: str = _RATE,
) -> str:
    return f"{_by(by)}(rate({_sel(spec, suffix, extra)}[{window}]))"


def _increase(
    spec: cat.MetricSpec, *, by: tuple[str, ...] = (), extra: str = "", window: str = _RATE
) -> str:
    return f"{_by(by)}(increase({_sel(spec, extra=extra)}[{window}]))"


def _gauge(spec: cat.MetricSpec, agg: str = "sum", by: tuple[str, ...] = ()) -> str:
    grouping = f" by ({', '.join(by)}) " if by else ""
    return f"{agg}{grouping}({_sel(spec)})"


def _quantile(q: float, spec: cat.MetricSpec, window: str = _RATE) -> str:
    return f"histogram_quantile({q}, {_rate(spec, by=('le',), suffix='bucket', window=window)})"


def _average(spec: cat.MetricSpec, window: str = _RATE) -> str:
    return (
        f"{_rate(spec, suffix='sum', window=window)} / {_rate(spec, suffix='count', window=window)}"
    )


def _buckets(spec: cat.MetricSpec) -> str:
    """Per-bucket counts in each step, the shape Grafana's heatmap format expects."""
    return f"sum by (le) (increase({_sel(spec, 'bucket')}[{_RATE}]))"


def _query(
    expr: str, legend: str, ref: str, *, instant: bool = False, exemplar: bool = False
) -> prom_b.Dataquery:
    query = (
        prom_b.Dataquery()
        .expr(expr)
        .legend_format(legend)
        .ref_id(ref)
        .datasource(_DS)
        .editor_mode(prom_m.QueryEditorMode.CODE)
        .exemplar(exemplar)
    )
    return query.instant() if instant else query.range()


# --- panels ---------------------------------------------------------------------------------

_T = TypeVar("_T", bound="_PanelBuilder")


class _PanelBuilder(Protocol):
    """What every SDK panel builder shares; lets one helper set the common fields."""

    def title(self, title: str) -> Self: ...
    def description(self, description: str) -> Self: ...
    def datasource(self, datasource: dash_m.DataSourceRef) -> Self: ...
    def height(self, h: int) -> Self: ...
    def span(self, w: int) -> Self: ...
    def unit(self, unit: str) -> Self: ...
    def with_target(self, target: prom_b.Dataquery) -> Self: ...


def _panel(
    builder: _T,
    title: str,
    description: str,
    unit: str,
    targets: list[prom_b.Dataquery],
    *,
    w: int,
    h: int,
) -> _T:
    built = (
        builder.title(title)
        .description(description)
        .datasource(_DS)
        .span(w)
        .height(h)
        .unit(unit)
    )
    for target in targets:
        built = built.with_target(target)
    return built


def _steps(*steps: tuple[float | None, str]) -> dash_b.ThresholdsConfig:
    return (
        dash_b.ThresholdsConfig()
        .mode(dash_m.ThresholdsMode.ABSOLUTE)
        .steps([dash_m.Threshold(value=value, color=color) for value, color in steps])
    )


def _legend() -> common_b.VizLegendOptions:
    return (
        common_b.VizLegendOptions()
        .display_mode(common_m.LegendDisplayMode.LIST)
        .placement(common_m.LegendPlacement.BOTTOM)
        .show_legend(True)
    )


def _tooltip() -> common_b.VizTooltipOptions:
    return (
        common_b.VizTooltipOptions()
        .mode(common_m.TooltipDisplayMode.MULTI)
        .sort(common_m.SortOrder.DESCENDING)
    )


def _timeseries(
    title: str,
    description: str,
    unit: str,
    targets: list[prom_b.Dataquery],
    *,
    w: int = 12,
    h: int = 8,
    bars: bool = False,
    stacked: bool = False,
) -> timeseries_b.Panel:
    panel = (
        _panel(timeseries_b.Panel(), title, description, unit, targets, w=w, h=h)
        .legend(_legend())
        .tooltip(_tooltip())
        .fill_opacity(60 if bars else 10)
        .min(0)
    )
    if bars:
        panel = panel.draw_style(common_m.GraphDrawStyle.BARS)
    if stacked:
        panel = panel.stacking(common_b.StackingConfig().mode(common_m.StackingMode.NORMAL))
    return panel


def _stat(
    title: str,
    description: str,
    unit: str,
    target: prom_b.Dataquery,
    thresholds: dash_b.ThresholdsConfig,
    *,
    mappings: list[dash_m.ValueMapping] | None = None,
    no_value: str = "0",
    w: int = 3,
) -> stat_b.Panel:
    panel = (
        _panel(stat_b.Panel(), title, description, unit, [target], w=w, h=4)
        .thresholds(thresholds)
        .color_mode(common_m.BigValueColorMode.BACKGROUND)
        .graph_mode(common_m.BigValueGraphMode.NONE)
        .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .no_value(no_value)
    )
    return panel.mappings(mappings) if mappings else panel


def _heatmap(
    title: str,
    description: str,
    unit: str,
    spec: cat.MetricSpec,
    *,
    exemplar: bool = False,
    w: int = 12,
) -> heatmap_b.Panel:
    target = (
        _query(_buckets(spec), "{{le}}", "A", exemplar=exemplar)
        .format(prom_m.PromQueryFormat.HEATMAP)
    )
    return (
        _panel(heatmap_b.Panel(), title, description, unit, [target], w=w, h=8)
        .calculate(False)
        .rows_frame(heatmap_b.RowsHeatmapOptions().layout(common_m.HeatmapCellLayout.LE))
        .y_axis(heatmap_b.YAxisConfig().unit(unit))
        .cell_values(heatmap_b.CellValues().unit("short"))
        .color(
            heatmap_b.HeatmapColorOptions()
            .mode(heatmap_m.HeatmapColorMode.SCHEME)
            .scheme("Oranges")
            .steps(64)
        )
        .show_value(common_m.VisibilityMode.NEVER)
        .exemplars_color("rgba(255,0,255,0.7)")
    )


def _state_timeline(
    title: str,
    description: str,
    targets: list[prom_b.Dataquery],
    states: dict[int, tuple[str, str]],
    *,
    w: int = 12,
) -> statetimeline_b.Panel:
    mapping = dash_m.ValueMap(
        options={
            str(value): dash_m.ValueMappingResult(text=text, color=color, index=index)
            for index, (value, (text, color)) in enumerate(sorted(states.items()))
        }
    )
    return (
        _panel(statetimeline_b.Panel(), title, description, "none", targets, w=w, h=6)
        .mappings([mapping])
        .thresholds(_steps((None, _GREEN)))
        .color_scheme(dash_b.FieldColor().mode(dash_m.FieldColorModeId.THRESHOLDS))
        .show_value(common_m.VisibilityMode.NEVER)
        .merge_values(True)
        .row_height(0.8)
        .fill_opacity(80)
        .legend(_legend())
    )


def _breaker_states() -> dict[int, tuple[str, str]]:
    colours = {"closed": _GREEN, "half_open": _YELLOW, "open": _RED}
    return {
        value: (name.replace("_", "-"), colours[name])
        for name, value in cat.BREAKER_STATE_VALUES.items()
    }


# --- the dashboard --------------------------------------------------------------------------


def _overview() -> _Panels:
    halted = dash_m.ValueMap(
        options={
            "0": dash_m.ValueMappingResult(text="trading", color=_GREEN, index=0),
            "1": dash_m.ValueMappingResult(text="HALTED", color=_RED, index=1),
        }
    )
    first_ratio = (
        f"{_increase(cat.EXITS_FIRST_ATTEMPT, window=_RANGE)}"
        f" / {_increase(cat.EXITS, extra=_ATTEMPTED, window=_RANGE)}"
    )
    # The two things that page come first: exits that failed or may still land, and breakers.
    failed = (
        f"round(sum(increase({_sel(cat.EXITS, extra=_FAILED)}[{_RANGE}])))"
    )
    open_value = cat.BREAKER_STATE_VALUES["open"]
    open_breakers = (
        f"count(max by (instance, guard, breaker) ({_sel(cat.BREAKER_STATE)}) == {open_value})"
        f" or sum(max by (instance, guard, breaker) ({_sel(cat.BREAKER_STATE)})) * 0"
    )
    all_closed = dash_m.ValueMap(
        options={"0": dash_m.ValueMappingResult(text="all closed", color=_GREEN, index=0)}
    )
    return [
        _stat(FAILED_EXITS_PANEL_TITLE, "Exits that ended failed or unresolved in the time"
            " range (a count, not a rate: a bot exits a few times an hour). The position may"
            " still be open. Click a value for the traces of those exits.", "short",
            _query(failed, "failed or unresolved", "A", instant=True),
            _steps((None, _GREEN), (1, _RED)),
        ),
        _stat("Open breakers", "Circuit breakers open now (one per guard and venue of each"
            " process): their processes halted new entries; exits still go.", "short",
            _query(open_breakers, "open", "A", instant=True),
            _steps((None, _GREEN), (1, _RED)),
            mappings=[all_closed], no_value="no breakers",
        ),
        _stat("First-attempt success", "Share of exits in the time range that closed on"
            " their first attempt (refused exits excluded).", "percentunit",
            _query(first_ratio, "first attempt", "A", instant=True),
            _steps((None, _RED), (0.8, _YELLOW), (0.95, _GREEN)),
            no_value="no exits",
        ),
        _stat("p99 exit time", "p99 of signal-to-final-state time over the time range;"
            f" red at the {DEADLINE_SECONDS:g} s deadline.", "s",
            _query(_quantile(0.99, cat.EXIT_DURATION, _RANGE), "p99", "A", instant=True),
            _steps((None, _GREEN), (DEADLINE_SECONDS * 2 / 3, _YELLOW), (DEADLINE_SECONDS, _RED)),
            no_value="no exits",
        ),
        _stat("Deadline breaches", "Exits that hit their total deadline in the time range.",
            "short",
            _query(_increase(cat.EXIT_DEADLINE_EXCEEDED, window=_RANGE), "breaches", "A",
                   instant=True),
            _steps((None, _GREEN), (1, _RED)),
        ),
        _stat("Exits in flight", "Exits running now.", "short",
            _query(_gauge(cat.EXITS_IN_FLIGHT), "in flight", "A", instant=True),
            _steps((None, _BLUE)),
        ),
        _stat("Unresolved transactions", "Exit submissions that may still land: a double"
            " sell is possible until they resolve.", "short",
            _query(_gauge(cat.UNRESOLVED_TRANSACTIONS), "unresolved", "A", instant=True),
            _steps((None, _GREEN), (1, _RED)),
        ),
        _stat("Trading", "Whether new entries are halted (exits are always allowed).", "none",
            _query(_gauge(cat.TRADING_HALTED, "max"), "halted", "A", instant=True),
            _steps((None, _GREEN), (1, _RED)),
            mappings=[halted],
        ),
    ]


def _exits() -> _Panels:
    attempted = _rate(cat.EXITS, extra=_ATTEMPTED)
    exit_time = (
        _timeseries(EXIT_TIME_PANEL_TITLE, "Signal-to-final-state time. The dashed line is the"
            f" default {DEADLINE_SECONDS:g} s deadline; exemplar dots link to the exit's trace.",
            "s",
            [
                _query(_quantile(0.5, cat.EXIT_DURATION), "p50", "A"),
                _query(_quantile(0.9, cat.EXIT_DURATION), "p90", "B"),
                # One target carries exemplars: three would draw every exemplar three times.
                _query(_quantile(0.99, cat.EXIT_DURATION), "p99", "C", exemplar=True),
            ],
        )
        .thresholds(_steps((None, _GREEN), (DEADLINE_SECONDS, _RED)))
        .thresholds_style(
            common_b.GraphThresholdsStyleConfig().mode(common_m.GraphThresholdsStyleMode.DASHED)
        )
        .axis_soft_max(DEADLINE_SECONDS * 1.1)
    )
    return [
        _timeseries("Exits by outcome", "Finished exits per interval, by outcome (counts: a"
            " bot exits a few times an hour). Click a failed or unresolved bar for its traces.",
            "short", [_query(_increase(cat.EXITS, by=("outcome",)), "{{outcome}}", "A")],
            bars=True, stacked=True,
        ),
        _timeseries("First-attempt success ratio", "Share of finished exits that closed on the"
            " first attempt, and share that needed retries (refused exits excluded).",
            "percentunit",
            [
                _query(f"{_rate(cat.EXITS_FIRST_ATTEMPT)} / {attempted}", "first attempt", "A"),
                _query(f"{_rate(cat.EXITS_RETRIED)} / {attempted}", "retried", "B"),
            ],
        ).max(1),
        exit_time,
        _heatmap("Exit time distribution", "Exits per duration bucket; exemplars link to"
            " traces.", "s", cat.EXIT_DURATION, exemplar=True,
        ),
        _timeseries("Deadline breaches", "Exits that hit their total deadline, per window.",
            "short", [_query(_increase(cat.EXIT_DEADLINE_EXCEEDED), "breaches", "A")],
            bars=True,
        ).thresholds(_steps((None, _RED))).color_scheme(
            dash_b.FieldColor().mode(dash_m.FieldColorModeId.FIXED).fixed_color(_RED)
        ),
        _timeseries("In-flight exits and unresolved transactions", "Exits running now, and"
            " submissions whose outcome is still unknown.", "short",
            [
                _query(_gauge(cat.EXITS_IN_FLIGHT), "in flight", "A"),
                _query(_gauge(cat.UNRESOLVED_TRANSACTIONS), "unresolved transactions", "B"),
            ],
        ),
    ]


def _orders() -> _Panels:
    return [
        _timeseries("Retries by error class", "Retries per second, by the error that caused"
            " them.", "ops",
            [_query(_rate(cat.EXIT_RETRIES, by=("error_class",)), "{{error_class}}", "A")],
            w=8, stacked=True,
        ),
        _timeseries("Attempts by order mode", "Submissions per second by mode: market orders"
            " appear when the ladder escalates past limit orders.", "ops",
            [_query(_rate(cat.EXIT_ATTEMPTS, by=("mode",)), "{{mode}}", "A")],
            w=8, stacked=True,
        ),
        _timeseries("Attempt results", "Submissions per second by mode and result.", "ops",
            [_query(_rate(cat.EXIT_ATTEMPTS, by=("mode", "result")), "{{mode}} {{result}}",
                    "A")],
            w=8,
        ),
    ]


def _quality() -> _Panels:
    bps = "suffix: bps"
    return [
        _heatmap("Slippage distribution", "Exits per slippage bucket (average fill against"
            " signal price, adverse positive).", bps, cat.EXIT_SLIPPAGE, w=8,
        ),
        _timeseries("Slippage (average and p90)", "Average fill against signal price, adverse"
            " positive, in basis points.", bps,
            [
                _query(_average(cat.EXIT_SLIPPAGE), "average", "A"),
                _query(_quantile(0.9, cat.EXIT_SLIPPAGE), "p90", "B"),
            ],
            w=8,
        ).min(-50),
        _timeseries("Loss amplification", "Realized loss over the loss at the signal price"
            " (1 = none); how much waiting to exit cost.", "suffix:×",
            [
                _query(_average(cat.EXIT_LOSS_AMPLIFICATION), "average", "A"),
                _query(_quantile(0.9, cat.EXIT_LOSS_AMPLIFICATION), "p90", "B"),
            ],
            w=8,
        )
        .thresholds(_steps((None, _GREEN), (1.5, _ORANGE), (2.0, _RED)))
        .thresholds_style(
            common_b.GraphThresholdsStyleConfig().mode(common_m.GraphThresholdsStyleMode.DASHED)
        ),
    ]


def _controls() -> _Panels:
    return [
        _state_timeline("Circuit breaker state", "Each breaker over time: closed, half-open, open.",
            [_query(_gauge(cat.BREAKER_STATE, "max", ("guard", "breaker")),
                    "{{guard}} / {{breaker}}", "A")],
            _breaker_states(),
        ),
        _state_timeline("Trading halted", "Whether new entries are halted, per guard.",
            [_query(_gauge(cat.TRADING_HALTED, "max", ("guard",)), "{{guard}}", "A")],
            {0: ("trading", _GREEN), 1: ("halted", _RED)},
        ),
        _timeseries("Breaker trips, halts and resumes", "Events per window: breaker trips and"
            " transitions, trading halts and approved resumes.", "short",
            [
                _query(_increase(cat.BREAKER_TRIPS), "breaker trips", "A"),
                _query(_increase(cat.TRADING_HALTS), "halts", "B"),
                _query(_increase(cat.TRADING_RESUMES), "resumes", "C"),
                _query(_increase(cat.BREAKER_TRANSITIONS, by=("to",)), "breaker to {{to}}", "D"),
            ],
            w=8, bars=True,
        ),
        _timeseries("Late fills", "Landings found after their exit had ended (an exit that was"
            " given up on filled anyway).", "short",
            [_query(_increase(cat.LATE_FILLS), "late fills", "A")],
            w=8, bars=True,
        ),
        _timeseries("Pages sent", "In-process pages per window, by channel and result.", "short",
            [_query(_increase(cat.ALERTS_SENT, by=("channel", "result")),
                    "{{channel}} {{result}}", "A")],
            w=8, bars=True,
        ),
    ]


def _faults() -> _Panels:
    return [
        _timeseries("Faults absorbed", "Failures exitguard absorbed so exits went on, per"
            " window, by component: hook, lookup, quote, classifier, pending_store, halt_store"
            " (see the runbook of ExitguardFaultsAbsorbed).", "short",
            [_query(_increase(cat.FAULTS, by=("component",)), "{{component}}", "A")],
            w=16, bars=True, stacked=True,
        ),
        _timeseries("Trace export failures", "Span batches the trace exporter failed to deliver"
            " (their spans were dropped), per window and process. Not filtered by guard: one"
            " exporter serves every guard of a process; exits are unaffected.", "short",
            [_query(_increase(cat.TRACE_EXPORT_FAILURES, by=("instance",)), "{{instance}}",
                    "A")],
            w=8, bars=True,
        ),
    ]


#: The fleet row: every process of the job at once (not filtered by the instance and guard
#: pickers); its per-instance panels link down to this dashboard for that instance.
FLEET_PANEL_TITLES = (
    "Halted processes", "Open breakers per venue", "Exits failing per instance",
    "Trading halted by instance",
)


def _fleet_sel(spec: cat.MetricSpec, extra: str = "") -> str:
    matchers = f"{_FLEET_SELECTOR}, {extra}" if extra else _FLEET_SELECTOR
    return f"{spec.series()}{{{matchers}}}"


def _fleet() -> _Panels:
    open_value = cat.BREAKER_STATE_VALUES["open"]
    per_breaker = f"max by (instance, guard, breaker) ({_fleet_sel(cat.BREAKER_STATE)})"
    halted = f"max by (instance) ({_fleet_sel(cat.TRADING_HALTED)})"
    halted_processes = _stat(FLEET_PANEL_TITLES[0], "Bot processes (scrape targets) with new"
        " entries halted now, across the fleet; exits still run. Which ones: the timeline"
        " below.", "short",
        _query(f"count({halted} > 0) or sum({halted}) * 0", "halted", "A", instant=True),
        _steps((None, _GREEN), (1, _RED)), no_value="no processes", w=4,
    ).height(8)
    return [
        halted_processes,
        _timeseries(FLEET_PANEL_TITLES[1], "Open circuit breakers of each venue across the"
            " fleet (one per guard of each process; a breaker is named after its venue). One"
            " venue outage seen by every process is one line here and one page.", "short",
            [_query(
                f"count by (breaker) ({per_breaker} == {open_value})"
                f" or count by (breaker) ({per_breaker}) * 0",
                "{{breaker}}", "A",
            )],
            w=10,
        ),
        _timeseries(FLEET_PANEL_TITLES[2], "Exits that ended failed or unresolved, per"
            " interval and process. Click a bar to drill down to that process.", "short",
            [_query(
                f"sum by (instance) (increase({_fleet_sel(cat.EXITS, _FAILED)}[{_RATE}]))",
                "{{instance}}", "A",
            )],
            w=10, bars=True, stacked=True,
        ),
        _state_timeline(FLEET_PANEL_TITLES[3], "Whether each process halted new entries."
            " Click a process to drill down to it.",
            [_query(halted, "{{instance}}", "A")],
            {0: ("trading", _GREEN), 1: ("halted", _RED)},
            w=24,
        ),
    ]


#: The runbook section (alert name, or anchor) each panel links to, by panel title.
PANEL_RUNBOOKS: Mapping[str, str] = {
    FAILED_EXITS_PANEL_TITLE: "ExitguardExitFailed",
    "Open breakers": "ExitguardCircuitBreakerTripped",
    "First-attempt success": "ExitguardExitRetryRateHigh",
    "p99 exit time": "ExitguardExitP99Slow",
    "Deadline breaches": "ExitguardExitDeadlineExceeded",
    "Exits in flight": "ExitguardUnresolvedExitTransactions",
    "Unresolved transactions": "ExitguardUnresolvedExitTransactions",
    "Trading": "ExitguardTradingHalted",
    "Halted processes": "ExitguardTradingHalted",
    "Open breakers per venue": "ExitguardCircuitBreakerTripped",
    "Exits failing per instance": "ExitguardExitFailed",
    "Trading halted by instance": "ExitguardTradingHalted",
    "Exits by outcome": "ExitguardExitFailed",
    "First-attempt success ratio": "ExitguardExitRetryRateHigh",
    EXIT_TIME_PANEL_TITLE: "ExitguardExitP99Slow",
    "Exit time distribution": "ExitguardExitP99Slow",
    "In-flight exits and unresolved transactions": "ExitguardUnresolvedExitTransactions",
    "Retries by error class": "ExitguardExitRetryRateHigh",
    "Attempts by order mode": "ExitguardExitSlippageHigh",
    "Attempt results": "ExitguardExitRetryRateHigh",
    "Slippage distribution": "ExitguardExitSlippageHigh",
    "Slippage (average and p90)": "ExitguardExitSlippageHigh",
    "Loss amplification": "ExitguardLossAmplified",
    "Circuit breaker state": "ExitguardCircuitBreakerTripped",
    "Trading halted": "ExitguardTradingHalted",
    "Breaker trips, halts and resumes": "ExitguardCircuitBreakerTripped",
    "Late fills": "ExitguardUnresolvedExitTransactions",
    "Pages sent": "In-process pager",
    "Faults absorbed": "ExitguardFaultsAbsorbed",
    "Trace export failures": "ExitguardTraceExportFailing",
}

#: Span name and attributes of an exit's trace (``exitguard.telemetry.otel``; a test keeps
#: them equal, artefacts may not import telemetry).
_EXIT_SPAN = "exitguard.exit"
_SPAN_OUTCOME = "span.exitguard.outcome"
_SPAN_GUARD = "span.exitguard.guard"
#: Grafana variables left unencoded in a link URL so Grafana fills them in.
_LINK_VARIABLES = ("${__from}", "${__to}", "${guard:pipe}")


def _runbook_link(title: str, base_url: str) -> dict[str, Any]:
    section = PANEL_RUNBOOKS.get(title)
    if section is None:
        raise ValueError(f"panel {title!r} has no runbook in PANEL_RUNBOOKS")
    url = runbook_url(section, base_url).replace(" ", "-")
    # Grafana renders a panel link from title, url and targetBlank; its published types
    # (@grafana/schema) declare panel links as full DashboardLinks, so the rest is spelt out.
    return {"title": f"Runbook: {section}", "url": url, "targetBlank": True, "type": "link",
            "icon": "doc", "tooltip": f"What to do: {section}", "asDropdown": False,
            "includeVars": False, "keepTime": False, "tags": []}


def _traces_link(tempo_uid: str) -> dict[str, Any]:
    """A data link to Grafana Explore: the traces of failed or unresolved exits of the guards
    picked, over the panel's time range (Tempo, TraceQL)."""
    traceql = (
        f'{{ name = "{_EXIT_SPAN}" && {_SPAN_OUTCOME} =~ "failed|unresolved"'
        f' && {_SPAN_GUARD} =~ "${{guard:pipe}}" }}'
    )
    panes = {"traces": {
        "datasource": tempo_uid,
        "queries": [{
            "refId": "A", "datasource": {"type": "tempo", "uid": tempo_uid},
            "queryType": "traceql", "query": traceql, "limit": 50, "tableType": "traces",
        }],
        "range": {"from": "${__from}", "to": "${__to}"},
    }}
    encoded = quote(json.dumps(panes, separators=(",", ":")), safe="")
    for variable in _LINK_VARIABLES:
        encoded = encoded.replace(quote(variable, safe=""), variable)
    return {
        "title": "Traces of failed / unresolved exits",
        "url": f"/explore?schemaVersion=1&orgId=1&panes={encoded}",
        "targetBlank": True,
    }


def _drill_down_link(dashboard_uid: str) -> dict[str, Any]:
    """A data link from a process's series to this dashboard, filtered to that process."""
    return {
        "title": "Drill down to ${__field.labels.instance}",
        "url": (
            f"/d/{dashboard_uid}/?${{__url_time_range}}&var-datasource=${{datasource}}"
            "&var-job=${job}&var-instance=${__field.labels.instance}&var-guard=$__all"
        ),
    }


def _variables(datasource_uid: str, job: str) -> list[cog_builder.Builder[dash_m.VariableModel]]:
    def query_var(name: str, label: str, query: str) -> dash_b.QueryVariable:
        return (
            dash_b.QueryVariable(name)
            .label(label)
            .datasource(_DS)
            .query(query)
            .refresh(dash_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dash_m.VariableSort.ALPHABETICAL_ASC)
        )

    def everything(variable: dash_b.QueryVariable) -> dash_b.QueryVariable:
        return (
            variable.multi(True)
            .include_all(True)
            .all_value(_ALL)
            .current(dash_m.VariableOption(selected=True, text=["All"], value=["$__all"]))
        )

    return [
        dash_b.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .current(dash_m.VariableOption(selected=True, text=datasource_uid, value=datasource_uid)),
        query_var("job", "Job", f"label_values({_VARIABLE_SOURCE}, job)").current(
            dash_m.VariableOption(selected=True, text=job, value=job)
        ),
        everything(
            query_var(
                "instance", "Instance", f'label_values({_VARIABLE_SOURCE}{{job=~"$job"}}, instance)'
            )
        ),
        everything(
            query_var(
                "guard", "Guard",
                f'label_values({_VARIABLE_SOURCE}{{job=~"$job", instance=~"$instance"}},'
                f" {cat.GUARD_LABEL})",
            )
        ),
    ]


#: Prometheus annotation fields the SDK's generic AnnotationQuery does not model.
_ALERT_ANNOTATION_EXTRA: dict[str, object] = {
    "step": "30s",
    "titleFormat": "{{alertname}}",
    "textFormat": "{{severity}}: {{guard}}",
    "tagKeys": "severity,guard",
    "useValueForTime": False,
}
_ALERT_ANNOTATION_NAME = "Exitguard alerts firing"


def _annotations() -> list[cog_builder.Builder[dash_m.AnnotationQuery]]:
    built_in = (
        dash_b.AnnotationQuery()
        .name("Annotations & Alerts")
        .datasource(dash_m.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
        .enable(True)
        .hide(True)
        .icon_color("rgba(0, 211, 255, 1)")
        .type("dashboard")
        .built_in(1)
        .target(
            dash_b.AnnotationTarget().limit(100).match_any(False).tags([]).type("dashboard")
        )
    )
    firing = (
        dash_b.AnnotationQuery()
        .name(_ALERT_ANNOTATION_NAME)
        .datasource(_DS)
        .enable(True)
        .hide(False)
        .icon_color(_RED)
        # Not filtered by job or guard: a target-down alert carries neither label.
        .expr('ALERTS{alertname=~"Exitguard.*", alertstate="firing"}')
    )
    return [built_in, firing]


def _dashboard_uid(job: str) -> str:
    """A uid that stays put across regenerations, and differs per job so two can coexist."""
    if job == DEFAULT_JOB:
        return "exitguard-exit-health"
    return "exitguard-exit-health-" + hashlib.sha256(job.encode()).hexdigest()[:12]


def _exit_health(
    datasource_uid: str, job: str, title: str, runbook_base_url: str
) -> dict[str, Any]:
    uid = _dashboard_uid(job)
    board = (
        dash_b.Dashboard(title)
        .uid(uid)
        .description(
            "Exits of trading bots guarded by exitguard: outcomes, time against the deadline,"
            " retries and escalation, slippage, breaker and halts, pages, absorbed faults."
        )
        .tags(["exitguard", "trading"])
        .editable()
        .tooltip(dash_m.DashboardCursorSync.CROSSHAIR)
        .time("now-1h", "now")
        .refresh("10s")
        .timezone("browser")
        .variables(_variables(datasource_uid, job))
        .annotations(_annotations())
    )
    sections: list[tuple[str, _Panels]] = [
        ("Overview", _overview()),
        ("Fleet: every process of the job", _fleet()),
        ("Exits", _exits()),
        ("Orders and retries", _orders()),
        ("Execution quality", _quality()),
        ("Breaker, halts and pages", _controls()),
        ("Absorbed faults and trace export", _faults()),
    ]
    for row_title, panels in sections:
        board = board.with_row(dash_b.Row(row_title))
        for panel in panels:
            board = board.with_panel(panel)
    model: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    # Ids in layout order, assigned here so that adding a panel renumbers predictably.
    for number, panel in enumerate(model["panels"], start=1):
        panel["id"] = number
        if panel["type"] == "row":
            continue
        panel["links"] = [_runbook_link(panel["title"], runbook_base_url)]
        data_links: list[dict[str, Any]] = []
        if panel["title"] in (FAILED_EXITS_PANEL_TITLE, "Exits by outcome"):
            data_links.append(_traces_link(TEMPO_DATASOURCE_UID))
        if panel["title"] in FLEET_PANEL_TITLES[2:]:
            data_links.append(_drill_down_link(uid))
        if data_links:
            panel["fieldConfig"]["defaults"]["links"] = data_links
    for annotation in model["annotations"]["list"]:
        if annotation["name"] == _ALERT_ANNOTATION_NAME:
            annotation.update(_ALERT_ANNOTATION_EXTRA)
    return model


# --- public API -----------------------------------------------------------------------------


def build_dashboards(
    datasource_uid: str = DEFAULT_DATASOURCE_UID,
    job: str = DEFAULT_JOB,
    title: str = DEFAULT_TITLE,
    runbook_base_url: str = RUNBOOK_BASE_URL,
) -> dict[str, dict[str, Any]]:
    """Every dashboard as a JSON model, by file name.

    ``datasource_uid`` is the default of the dashboard's datasource picker, ``job`` the default
    of its job picker (the bot's scrape job), ``title`` the dashboard's title; every panel
    links to its section of the runbooks page at ``runbook_base_url`` (the same
    ``--runbook-base-url`` as ``exitguard alerts build``).
    """
    check_base_url(runbook_base_url)
    return {_FILE_NAME: _exit_health(datasource_uid, job, title, runbook_base_url)}


def render(model: Mapping[str, Any]) -> str:
    """The committed form of a dashboard: sorted keys, two-space indent, trailing newline."""
    return json.dumps(model, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def write_dashboards(
    out_dir: Path,
    *,
    datasource_uid: str = DEFAULT_DATASOURCE_UID,
    job: str = DEFAULT_JOB,
    title: str = DEFAULT_TITLE,
    runbook_base_url: str = RUNBOOK_BASE_URL,
) -> list[Path]:
    """Write every dashboard into ``out_dir`` (created if needed); returns the paths written."""
    written = []
    dashboards = build_dashboards(datasource_uid, job, title, runbook_base_url)
    for name, model in sorted(dashboards.items()):
        path = out_dir / name
        atomic_write_text(path, render(model), mode=SHARED)
        written.append(path)
    return written


def check_dashboards(
    out_dir: Path,
    *,
    datasource_uid: str = DEFAULT_DATASOURCE_UID,
    job: str = DEFAULT_JOB,
    title: str = DEFAULT_TITLE,
    runbook_base_url: str = RUNBOOK_BASE_URL,
) -> list[str]:
    """Differences between ``out_dir`` and what the code generates; empty when up to date.

    A stale ``*.json`` left in ``out_dir`` is reported too: Grafana would still provision it.
    """
    problems: list[str] = []
    dashboards = build_dashboards(datasource_uid, job, title, runbook_base_url)
    for name, model in sorted(dashboards.items()):
        problems.extend(drift(out_dir / name, render(model), _items))
    return problems + stale(out_dir, "*.json", dashboards)


def _items(text: str) -> dict[str, object]:
    """A dashboard's panels (by layout position and title) and its other top-level fields."""
    model = json.loads(text)
    if not isinstance(model, dict):
        raise ValueError("not a dashboard (not a JSON object)")
    items: dict[str, object] = {
        f"field {key!r}": value for key, value in model.items() if key != "panels"
    }
    for number, panel in enumerate(_panels(list(model.get("panels") or [])), start=1):
        items[f"panel {number} {str(panel.get('title', ''))!r}"] = panel
    return items


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])  # a collapsed row nests its panels


def panel_queries(dashboard: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every panel query as (panel title, PromQL expression), in layout order."""
    return [
        (str(panel.get("title", "")), str(target["expr"]))
        for panel in _panels(list(dashboard.get("panels") or []))
        for target in panel.get("targets") or []
        if target.get("expr")
    ]


def dashboard_queries(dashboard: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Panel queries plus template-variable and annotation queries, as (where, text)."""
    queries = list(panel_queries(dashboard))
    for variable in (dashboard.get("templating") or {}).get("list") or []:
        if variable.get("type") == "query" and isinstance(variable.get("query"), str):
            queries.append((f"variable {variable['name']}", variable["query"]))
    for annotation in (dashboard.get("annotations") or {}).get("list") or []:
        if annotation.get("expr"):
            queries.append((f"annotation {annotation['name']}", str(annotation["expr"])))
    return queries


_VARIABLE = re.compile(r"\$\{(?P<braced>\w+)(?::\w+)?\}|\[\[(?P<old>\w+)\]\]|\$(?P<bare>\w+)")


def substitute_variables(expr: str, values: Mapping[str, str]) -> str:
    """Replace Grafana variables (``$guard``, ``${guard}``, ``${guard:regex}``, ``[[guard]]``,
    ``$__rate_interval``, ...) so a dashboard query can run against Prometheus directly.

    ``values`` override ``DEFAULT_VARIABLE_VALUES``. A variable with no value raises
    ``ValueError``: sending ``$something`` to Prometheus would only fail later, less clearly.
    """
    merged = {**DEFAULT_VARIABLE_VALUES, **values}
    missing: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("old") or match.group("bare")
        if name not in merged:
            missing.add(name)
            return match.group(0)
        return merged[name]

    result = _VARIABLE.sub(replace, expr)
    if missing:
        raise ValueError(f"no value for dashboard variable(s): {', '.join(sorted(missing))}")
    return result
