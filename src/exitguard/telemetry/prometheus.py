"""Prometheus metrics for exitguard: every metric of ``exitguard.catalogue``, and /metrics.

``PrometheusHooks`` is a hook (``exitguard.hooks``). Names, types, label names, help texts
and histogram buckets all come from the catalogue; no metric name is spelled here. Label
values are bounded: the guard's name, the breaker's name and enum values (outcome, order
mode, attempt result, error class, breaker state) — never a position id, a tx id or a
symbol. ``exitguard_alerts_sent_total`` is left to the pager (``exitguard.alerting``).

The registry is injectable (default: prometheus_client's global ``REGISTRY``); several
``PrometheusHooks`` on one registry share its collectors, so many guards (and the drop-in
wrappers) can report into one registry. The exit duration histogram carries the exit's trace
id as an exemplar ``{"trace_id": "<32 hex>"}`` whenever a span is current (the exit span
when tracing is on), exposed by ``serve_metrics`` in the OpenMetrics format::

    from prometheus_client import CollectorRegistry
    from exitguard.telemetry import PrometheusHooks, serve_metrics

    registry = CollectorRegistry()
    guard = ExitGuard(venue, hooks=PrometheusHooks(registry), name="mybot")
    server = serve_metrics(port=9464, registry=registry)  # http://127.0.0.1:9464/metrics
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from .. import catalogue
from .._validate import whole
from ..breaker import BreakerState
from ..errors import ConfigError, ErrorClass
from ..events import (
    AttemptReport,
    AttemptResult,
    BreakerTransition,
    ExitEvent,
    ExitInfo,
    Halted,
    HookEvent,
    LateFill,
    PendingResolved,
    Reconciled,
    Resumed,
    Retry,
)
from ..faults import FaultSource
from ..outcome import ExitOutcome, ExitStatus
from ..venue import OrderMode, TxStatus
from ._context import sampled_trace_id
from ._export_failures import TRACE_EXPORT_FAILURES

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from ..guard import ExitGuard

__all__ = ["REGISTERED_METRICS", "MetricsServer", "PrometheusHooks", "serve_metrics"]

#: The catalogue metrics ``PrometheusHooks`` registers (all but the pager's).
REGISTERED_METRICS: tuple[catalogue.MetricSpec, ...] = tuple(
    spec for spec in catalogue.ALL_METRICS if spec is not catalogue.ALERTS_SENT
)


def _counter(spec: catalogue.MetricSpec, registry: CollectorRegistry) -> Counter:
    assert spec.kind == "counter", spec
    return Counter(spec.base_name, spec.help, spec.all_labels, registry=registry)


def _gauge(spec: catalogue.MetricSpec, registry: CollectorRegistry) -> Gauge:
    assert spec.kind == "gauge", spec
    return Gauge(spec.name, spec.help, spec.all_labels, registry=registry)


def _histogram(spec: catalogue.MetricSpec, registry: CollectorRegistry) -> Histogram:
    assert spec.kind == "histogram", spec
    return Histogram(
        spec.name, spec.help, spec.all_labels, registry=registry, buckets=spec.buckets
    )


class _FaultCollector(Collector):
    """Absorbed failures, read at scrape time from the watched guards (counting them costs
    the exit nothing) and from the process-wide trace exporter count."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._guards: list[weakref.ReferenceType[ExitGuard]] = []

    def watch(self, guard: ExitGuard) -> None:
        with self._lock:
            self._guards = [ref for ref in self._guards if ref() is not None]
            if not any(ref() is guard for ref in self._guards):
                self._guards.append(weakref.ref(guard))

    def _families(self) -> tuple[CounterMetricFamily, CounterMetricFamily]:
        faults, export = catalogue.FAULTS, catalogue.TRACE_EXPORT_FAILURES
        return (
            CounterMetricFamily(faults.base_name, faults.help, labels=faults.all_labels),
            CounterMetricFamily(export.base_name, export.help, labels=export.all_labels),
        )

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        faults, export = self._families()
        totals: dict[str, dict[FaultSource, int]] = {}
        with self._lock:
            guards = [guard for ref in self._guards if (guard := ref()) is not None]
        for guard in guards:  # two guards of one name add up
            mine = totals.setdefault(guard.name, dict.fromkeys(FaultSource, 0))
            for source, count in guard.fault_counts.items():
                mine[source] += count
        for name, counts in totals.items():
            for source, count in counts.items():
                faults.add_metric([name, source.value], count)
        export.add_metric([], TRACE_EXPORT_FAILURES.total)
        yield faults
        yield export


class _Collectors:
    """The collectors of one registry (created once per registry, shared by all hooks)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        c = catalogue
        self.exits = _counter(c.EXITS, registry)
        self.first_attempt = _counter(c.EXITS_FIRST_ATTEMPT, registry)
        self.retried = _counter(c.EXITS_RETRIED, registry)
        self.attempts = _counter(c.EXIT_ATTEMPTS, registry)
        self.retries = _counter(c.EXIT_RETRIES, registry)
        self.deadline_exceeded = _counter(c.EXIT_DEADLINE_EXCEEDED, registry)
        self.duration = _histogram(c.EXIT_DURATION, registry)
        self.slippage = _histogram(c.EXIT_SLIPPAGE, registry)
        self.loss_amplification = _histogram(c.EXIT_LOSS_AMPLIFICATION, registry)
        self.in_flight = _gauge(c.EXITS_IN_FLIGHT, registry)
        self.unresolved = _gauge(c.UNRESOLVED_TRANSACTIONS, registry)
        self.late_fills = _counter(c.LATE_FILLS, registry)
        self.breaker_state = _gauge(c.BREAKER_STATE, registry)
        self.breaker_transitions = _counter(c.BREAKER_TRANSITIONS, registry)
        self.breaker_trips = _counter(c.BREAKER_TRIPS, registry)
        self.halted = _gauge(c.TRADING_HALTED, registry)
        self.halts = _counter(c.TRADING_HALTS, registry)
        self.resumes = _counter(c.TRADING_RESUMES, registry)
        self.faults = _FaultCollector()
        registry.register(self.faults)
        self._lock = threading.Lock()
        self._guards: dict[str, _GuardSeries] = {}

    def guard(self, name: str) -> _GuardSeries:
        series = self._guards.get(name)
        if series is None:
            with self._lock:
                series = self._guards.get(name)
                if series is None:
                    series = self._guards[name] = _GuardSeries(self, name)
        return series


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, _Collectors] = (
    weakref.WeakKeyDictionary()
)
_BY_REGISTRY_LOCK = threading.Lock()


def _collectors_for(registry: CollectorRegistry) -> _Collectors:
    with _BY_REGISTRY_LOCK:
        collectors = _BY_REGISTRY.get(registry)
        if collectors is None:
            try:
                collectors = _BY_REGISTRY[registry] = _Collectors(registry)
            except ValueError as exc:  # "Duplicated timeseries in CollectorRegistry"
                raise ValueError(
                    f"exitguard metrics are already registered in this registry by something"
                    f" other than exitguard.telemetry ({exc}); pass another registry"
                ) from exc
        return collectors


@dataclass(slots=True)
class _BreakerSeries:
    state: Gauge
    transitions: dict[str, Counter]
    trips: Counter


class _GuardSeries:
    """Label children of one guard, bound once: the hot path does no ``labels()`` call.

    Every bounded label combination starts at zero, so ``rate()``/``increase()`` see the
    first event of each series.
    """

    __slots__ = (
        "_breakers", "_collectors", "_lock", "attempts", "deadline_exceeded", "duration",
        "exits", "first_attempt", "halted", "halts", "in_flight", "late_fills",
        "loss_amplification", "name", "pending", "resumes", "retried", "retries", "slippage",
        "unresolved",
    )

    def __init__(self, collectors: _Collectors, name: str) -> None:
        c = collectors
        self._collectors = collectors
        self._lock = threading.Lock()
        self.name = name
        self.exits: dict[str, Counter] = {s.value: c.exits.labels(name, s.value)
                                          for s in ExitStatus}
        self.first_attempt = c.first_attempt.labels(name)
        self.retried = c.retried.labels(name)
        self.attempts: dict[tuple[str, str], Counter] = {
            (m.value, r.value): c.attempts.labels(name, m.value, r.value)
            for m in OrderMode for r in AttemptResult
        }
        self.retries: dict[str, Counter] = {e.value: c.retries.labels(name, e.value)
                                            for e in ErrorClass}
        self.deadline_exceeded = c.deadline_exceeded.labels(name)
        self.duration = c.duration.labels(name)
        self.slippage = c.slippage.labels(name)
        self.loss_amplification = c.loss_amplification.labels(name)
        self.in_flight = c.in_flight.labels(name)
        self.unresolved = c.unresolved.labels(name)
        self.late_fills = c.late_fills.labels(name)
        self.halted = c.halted.labels(name)
        self.halts = c.halts.labels(name)
        self.resumes = c.resumes.labels(name)
        self._breakers: dict[str, _BreakerSeries] = {}
        #: Submissions of finished exits that may still land, by id(ExitInfo).
        self.pending: dict[int, tuple[ExitInfo, set[str]]] = {}

    def breaker(self, name: str, state: BreakerState | None = None) -> _BreakerSeries:
        series = self._breakers.get(name)
        if series is None:
            with self._lock:
                series = self._breakers.get(name)
                if series is None:
                    c = self._collectors
                    series = _BreakerSeries(
                        c.breaker_state.labels(self.name, name),
                        {s.value: c.breaker_transitions.labels(self.name, name, s.value)
                         for s in BreakerState},
                        c.breaker_trips.labels(self.name, name),
                    )
                    self._breakers[name] = series
                    if state is not None:
                        series.state.set(state.gauge_value)
        return series


class _MetricsObserver:
    """One exit's metrics: in flight from start to finish, then counters and histograms."""

    __slots__ = ("_info", "_series", "_unknown")

    def __init__(self, series: _GuardSeries, info: ExitInfo) -> None:
        self._series = series
        self._info = info
        self._unknown: set[str] | None = None  # submissions whose outcome is unknown

    def __call__(self, event: ExitEvent) -> None:
        if isinstance(event, AttemptReport):
            self._attempt_finished(event)
        elif isinstance(event, ExitOutcome):
            self._exit_finished(event)
        elif isinstance(event, Retry):
            self._series.retries[event.error_class].inc()
        elif isinstance(event, Reconciled):
            self._reconciled(event)

    def _attempt_finished(self, report: AttemptReport) -> None:
        series = self._series
        series.attempts[report.attempt.order.mode, report.result].inc()
        if report.result is AttemptResult.TIMEOUT and report.tx_id is not None:
            if self._unknown is None:
                self._unknown = set()
            if report.tx_id not in self._unknown:
                self._unknown.add(report.tx_id)
                series.unresolved.inc()

    def _reconciled(self, event: Reconciled) -> None:
        unknown = self._unknown
        if event.status is not TxStatus.PENDING and unknown is not None and (
            event.tx_id in unknown
        ):
            unknown.discard(event.tx_id)
            self._series.unresolved.dec()

    def _exit_finished(self, outcome: ExitOutcome) -> None:
        series = self._series
        series.in_flight.dec()
        series.exits[outcome.status].inc()
        attempts = outcome.attempts
        if attempts > 1:
            series.retried.inc()
        elif attempts == 1 and outcome.status is ExitStatus.CLOSED:
            series.first_attempt.inc()
        if outcome.deadline_exceeded:
            series.deadline_exceeded.inc()
        trace_id = sampled_trace_id()
        series.duration.observe(
            outcome.elapsed_s, None if trace_id is None else {"trace_id": trace_id}
        )
        if outcome.slippage_bps is not None:
            series.slippage.observe(outcome.slippage_bps)
        if outcome.loss_amplification is not None:
            series.loss_amplification.observe(outcome.loss_amplification)
        if not self._unknown and not outcome.pending_tx_ids:
            return
        # What may still land now is exactly the outcome's pending ids (a cancelled exit's
        # in-flight submission included); reconciliation goes on in the background.
        unknown = self._unknown or set()
        still = set(outcome.pending_tx_ids)
        delta = len(still) - len(unknown & still) - len(unknown - still)
        if delta > 0:
            series.unresolved.inc(delta)
        elif delta < 0:
            series.unresolved.dec(-delta)
        if still:
            with series._lock:
                series.pending[id(self._info)] = (self._info, still)


class PrometheusHooks:
    """Hooks that move every catalogue metric (except ``exitguard_alerts_sent_total``).

    ``registry``: where to register (default: prometheus_client's global ``REGISTRY``).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry: CollectorRegistry = registry if registry is not None else REGISTRY
        self._collectors = _collectors_for(self.registry)

    def watch(self, guard: ExitGuard) -> None:
        """Start every series of ``guard`` at its current value (breakers, halt) or zero,
        and expose its absorbed failures (``guard.fault_counts``, read at each scrape).

        ``instrument`` calls it; hooks passed at construction start the series on the first
        event of each guard instead (breakers on their first transition), and report the
        guard's faults only once ``watch`` is called.
        """
        series = self._collectors.guard(guard.name)
        for _, breaker in guard.routes:
            series.breaker(breaker.name, breaker.state).state.set(breaker.state.gauge_value)
        if guard.halt is not None:
            series.halted.set(1 if guard.halt.is_halted else 0)
        self._collectors.faults.watch(guard)

    # -- the hook ---------------------------------------------------------------------------

    def __call__(self, event: HookEvent) -> _MetricsObserver | None:
        if isinstance(event, ExitInfo):
            series = self._collectors.guard(event.guard)
            series.in_flight.inc()
            return _MetricsObserver(series, event)
        if isinstance(event, PendingResolved):
            self._pending_resolved(event)
        elif isinstance(event, LateFill):
            self._collectors.guard(event.exit.guard).late_fills.inc()
        elif isinstance(event, BreakerTransition):
            breaker = self._collectors.guard(event.guard).breaker(event.breaker)
            breaker.state.set(event.new.gauge_value)
            breaker.transitions[event.new].inc()
            if event.new is BreakerState.OPEN:
                breaker.trips.inc()
        elif isinstance(event, Halted):
            series = self._collectors.guard(event.guard)
            series.halted.set(1)
            series.halts.inc()
        elif isinstance(event, Resumed):
            series = self._collectors.guard(event.guard)
            series.halted.set(0)
            series.resumes.inc()
        return None

    def _pending_resolved(self, event: PendingResolved) -> None:
        # Once per background-reconciled submission, also with PENDING when reconciliation
        # gives up or is abandoned: either way it is no longer tracked.
        exit = event.exit
        series = self._collectors.guard(exit.guard)
        with series._lock:
            entry = series.pending.get(id(exit))
            if entry is None or entry[0] is not exit or event.tx_id not in entry[1]:
                return
            entry[1].discard(event.tx_id)
            if not entry[1]:
                del series.pending[id(exit)]
        series.unresolved.dec()


class MetricsServer:
    """A running /metrics endpoint (a daemon thread); ``close()`` stops it."""

    def __init__(self, httpd: WSGIServer, thread: threading.Thread, addr: str) -> None:
        self._httpd = httpd
        self._thread = thread
        self.addr = addr
        self.port: int = httpd.server_port
        host = f"[{addr}]" if ":" in addr else addr
        self.url = f"http://{host}:{self.port}/metrics"
        self._closed = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MetricsServer({self.url!r})"


def serve_metrics(
    port: int = 9464, addr: str = "127.0.0.1", registry: CollectorRegistry | None = None
) -> MetricsServer:
    """Serve ``registry`` (default: the global one) on ``http://addr:port/metrics``.

    A scraper that sends ``Accept: application/openmetrics-text`` gets the OpenMetrics
    format, with exemplars (Prometheus does with ``--enable-feature=exemplar-storage``);
    others get the classic text format. Binds 127.0.0.1 unless ``addr`` says otherwise (pass
    ``addr="0.0.0.0"`` explicitly to expose it wider). ``port=0`` picks a free port (see
    ``.port``). A port in use raises OSError naming it.
    """
    if whole("serve_metrics", "port", port, 0) > 65535:
        raise ConfigError("serve_metrics", "port", "must be an integer from 0 to 65535", port)
    try:
        httpd, thread = start_http_server(
            port, addr=addr, registry=registry if registry is not None else REGISTRY
        )
    except OSError as exc:
        raise OSError(
            exc.errno,
            f"cannot serve exitguard metrics on {addr}:{port}: {exc.strerror or exc}"
            + (" (is another process using that port? pass port=0 for a free one)"
               if port else ""),
        ) from exc
    thread.name = f"exitguard-metrics-{httpd.server_port}"
    return MetricsServer(httpd, thread, addr)
