"""The one catalogue of exitguard's Prometheus metrics.

Instrumentation, dashboards, alert rules and tests all read names from here, so a
metric is spelled by hand exactly once. Standard library only: importing it never
pulls in prometheus_client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MetricKind = Literal["counter", "gauge", "histogram"]

#: Every per-guard metric carries the guard's name; label values are always bounded.
GUARD_LABEL = "guard"

#: Exit duration buckets (seconds); 30 is the default deadline so breaches are exact.
DURATION_BUCKETS: tuple[float, ...] = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 25.0, 30.0, 45.0, 60.0, 120.0,
)
#: Slippage of the average fill against the signal price, adverse positive (bps). No negative
#: bucket: OpenMetrics drops a histogram's ``_sum`` when buckets go below zero, and the average
#: needs it; favourable fills land in the ``le="0"`` bucket.
SLIPPAGE_BUCKETS: tuple[float, ...] = (
    0.0, 10.0, 25.0, 50.0, 100.0, 200.0, 300.0, 500.0, 750.0, 1000.0, 1500.0, 2000.0,
)
#: Realized loss divided by the loss at the signal price (1.0 = no amplification).
LOSS_AMPLIFICATION_BUCKETS: tuple[float, ...] = (
    0.5, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0,
)


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """A metric as exposed to Prometheus (``name`` is the exposition name)."""

    name: str
    kind: MetricKind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    #: False for the few process-wide metrics (one trace exporter serves every guard).
    per_guard: bool = True

    @property
    def all_labels(self) -> tuple[str, ...]:
        """Labels in exposition order; ``guard`` comes first on every per-guard metric."""
        if not self.per_guard or GUARD_LABEL in self.labels:
            return self.labels
        return (GUARD_LABEL, *self.labels)

    @property
    def base_name(self) -> str:
        """The name prometheus_client wants (it appends ``_total`` to counters itself)."""
        if self.kind == "counter" and self.name.endswith("_total"):
            return self.name[: -len("_total")]
        return self.name

    def series(self, suffix: str = "") -> str:
        """A series name, e.g. ``spec.series("bucket")`` for a histogram's buckets."""
        return f"{self.name}_{suffix}" if suffix else self.name

    @property
    def created_series(self) -> str:
        """The series prometheus_client exposes beside a counter: when it was created (unix
        time). Alert rules read it to see a counter's first events before its first scrape.

        A counter's series share its base name: ``exitguard_exits`` (``_total``,
        ``_created``), and likewise ``exitguard_circuit_breaker_trips``,
        ``exitguard_exit_deadline_exceeded``, ``exitguard_faults`` and
        ``exitguard_trace_export_failures``, the ones the rules read both of
        (``tests/alerting`` checks every series name against this catalogue)."""
        return f"{self.base_name}_created"


EXITS = MetricSpec(
    "exitguard_exits_total", "counter", "Exits finished, by outcome.", ("outcome",)
)
EXITS_FIRST_ATTEMPT = MetricSpec(
    "exitguard_exits_first_attempt_total", "counter", "Exits closed on their first attempt."
)
EXITS_RETRIED = MetricSpec(
    "exitguard_exits_retried_total", "counter", "Exits that needed more than one attempt."
)
EXIT_ATTEMPTS = MetricSpec(
    "exitguard_exit_attempts_total", "counter", "Every exit submission, by order mode and result.",
    ("mode", "result"),
)
EXIT_RETRIES = MetricSpec(
    "exitguard_exit_retries_total", "counter", "Retries, by the error class that caused them.",
    ("error_class",),
)
EXIT_DEADLINE_EXCEEDED = MetricSpec(
    "exitguard_exit_deadline_exceeded_total", "counter", "Exits that hit their total deadline."
)
EXIT_DURATION = MetricSpec(
    "exitguard_exit_duration_seconds", "histogram",
    "Time from exit signal to final state (exemplars carry trace_id).",
    buckets=DURATION_BUCKETS,
)
EXIT_SLIPPAGE = MetricSpec(
    "exitguard_exit_slippage_bps", "histogram",
    "Average fill price against the signal price, adverse positive, in basis points.",
    buckets=SLIPPAGE_BUCKETS,
)
EXIT_LOSS_AMPLIFICATION = MetricSpec(
    "exitguard_exit_loss_amplification_ratio", "histogram",
    "Realized loss divided by the loss at the signal price, for exits signalled at a loss.",
    buckets=LOSS_AMPLIFICATION_BUCKETS,
)
EXITS_IN_FLIGHT = MetricSpec(
    "exitguard_exits_in_flight", "gauge", "Exits running now."
)
UNRESOLVED_TRANSACTIONS = MetricSpec(
    "exitguard_exit_unresolved_transactions", "gauge", "Exit submissions that may still land."
)
LATE_FILLS = MetricSpec(
    "exitguard_exit_late_fills_total", "counter", "Landings found after their exit had ended."
)
BREAKER_STATE = MetricSpec(
    "exitguard_circuit_breaker_state", "gauge",
    "Circuit breaker state: 0 closed, 1 half-open, 2 open.", ("guard", "breaker"),
)
BREAKER_TRANSITIONS = MetricSpec(
    "exitguard_circuit_breaker_transitions_total", "counter",
    "Circuit breaker transitions, by target state.", ("guard", "breaker", "to"),
)
BREAKER_TRIPS = MetricSpec(
    "exitguard_circuit_breaker_trips_total", "counter",
    "Circuit breaker transitions to open.", ("guard", "breaker"),
)
TRADING_HALTED = MetricSpec(
    "exitguard_trading_halted", "gauge", "1 while new entries are halted (exits still allowed)."
)
TRADING_HALTS = MetricSpec(
    "exitguard_trading_halts_total", "counter", "Trading halts."
)
TRADING_RESUMES = MetricSpec(
    "exitguard_trading_resumes_total", "counter", "Approved resumes of trading."
)
ALERTS_SENT = MetricSpec(
    "exitguard_alerts_sent_total", "counter", "In-process pages, by channel and result.",
    ("channel", "result"),
)
FAULTS = MetricSpec(
    "exitguard_faults_total", "counter",
    "Failures absorbed so exits went on, by component (values: exitguard.faults.FaultSource).",
    ("component",),
)
TRACE_EXPORT_FAILURES = MetricSpec(
    "exitguard_trace_export_failures_total", "counter",
    "Span batches the trace exporter failed to deliver (dropped); process-wide.",
    per_guard=False,
)

ALL_METRICS: tuple[MetricSpec, ...] = (
    EXITS, EXITS_FIRST_ATTEMPT, EXITS_RETRIED, EXIT_ATTEMPTS, EXIT_RETRIES,
    EXIT_DEADLINE_EXCEEDED, EXIT_DURATION, EXIT_SLIPPAGE, EXIT_LOSS_AMPLIFICATION,
    EXITS_IN_FLIGHT, UNRESOLVED_TRANSACTIONS, LATE_FILLS, BREAKER_STATE, BREAKER_TRANSITIONS,
    BREAKER_TRIPS, TRADING_HALTED, TRADING_HALTS, TRADING_RESUMES, ALERTS_SENT, FAULTS,
    TRACE_EXPORT_FAILURES,
)
BY_NAME: dict[str, MetricSpec] = {m.name: m for m in ALL_METRICS}

#: Not exitguard's own (so not in ALL_METRICS): Alertmanager's count of notifications it gave
#: up on after its retries, by ``integration``. The rules watch it so that a page which cannot
#: be delivered (an unreadable webhook file, a revoked webhook) is itself noticed.
ALERTMANAGER_NOTIFICATIONS_FAILED = MetricSpec(
    "alertmanager_notifications_failed_total", "counter",
    "Notifications Alertmanager failed to deliver, by integration (Alertmanager's metric).",
    ("integration",), per_guard=False,
)

#: Values of the breaker state gauge.
BREAKER_STATE_VALUES: dict[str, int] = {"closed": 0, "half_open": 1, "open": 2}


def base_metric_name(series: str) -> str:
    """Map a series name (``..._bucket``, ``..._count``, ``..._sum``) to its catalogue name."""
    if series in BY_NAME:
        return series
    if series.endswith("_created"):
        counter = BY_NAME.get(series[: -len("_created")] + "_total")
        if counter is not None and counter.kind == "counter":
            return counter.name
    for suffix in ("_bucket", "_count", "_sum", "_created"):
        if series.endswith(suffix) and series[: -len(suffix)] in BY_NAME:
            return series[: -len(suffix)]
    return series
