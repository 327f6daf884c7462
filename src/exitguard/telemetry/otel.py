"""OpenTelemetry traces for exitguard: one ``exitguard.exit`` span per exit.

``TracingHooks`` is a hook (``exitguard.hooks``). Each exit gets a span named
``exitguard.exit`` whose parent is the caller's current span (if any); it is made current
for the whole exit, so the venue's own instrumentation, the metrics' exemplars and the log
events all carry its trace id. Each submission gets a child ``exitguard.exit.attempt`` span
(current while it runs). State transitions, backoff waits, retries and reconciliation
look-ups are events on the exit span; the status is ERROR when the exit did not close.

``configure_tracing`` sets up the OTLP/HTTP exporter behind a ``BatchSpanProcessor``: spans
are queued in memory and exported by a background thread with a bounded timeout, so an
unreachable or slow collector never slows an exit::

    from exitguard.telemetry import configure_tracing, instrument, shutdown_tracing

    provider = configure_tracing("http://127.0.0.1:4318")  # -> .../v1/traces
    instrument(guard, tracer_provider=provider)
    ...
    shutdown_tracing(provider)  # flushes what is queued, bounded in time

Why one module of about 600 lines: the span model (names, attributes, events), the hook that
builds it and the export set-up that redacts and counts what leaves are one contract with the
OTLP receiver the tests check; split, a renamed attribute would drift from its exporter.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import Span, Status, StatusCode, Tracer

from .. import catalogue
from .._validate import fraction, positive
from ..events import (
    AttemptInfo,
    AttemptReport,
    AttemptResult,
    Backoff,
    BreakerTransition,
    ExitEvent,
    ExitInfo,
    Halted,
    HookEvent,
    LateFill,
    Reconciled,
    Resumed,
    Retry,
)
from ..outcome import ExitOutcome, ExitStatus
from ..redaction import get_logger, protect_third_party_loggers, redact
from ..state_machine import TransitionRecord
from ._export_failures import TRACE_EXPORT_FAILURES

__all__ = [
    "ATTEMPT_SPAN",
    "EXIT_SPAN",
    "LATE_FILL_SPAN",
    "CountingSpanExporter",
    "TracingHooks",
    "configure_tracing",
    "redact_span",
    "shutdown_tracing",
]

INSTRUMENTATION_NAME: Final = "exitguard"
#: ``service.name`` when neither ``configure_tracing`` nor the environment names it.
DEFAULT_SERVICE_NAME: Final = "exitguard"

# Span names.
EXIT_SPAN: Final = "exitguard.exit"
ATTEMPT_SPAN: Final = "exitguard.exit.attempt"
LATE_FILL_SPAN: Final = "exitguard.exit.late_fill"

# Exit span attributes.
A_GUARD: Final = "exitguard.guard"
A_POSITION_ID: Final = "exitguard.position.id"
A_SYMBOL: Final = "exitguard.position.symbol"
A_SIZE: Final = "exitguard.position.size"
A_SIGNAL_PRICE: Final = "exitguard.signal_price"
A_REASON: Final = "exitguard.reason"
A_DEADLINE: Final = "exitguard.deadline_s"
A_OUTCOME: Final = "exitguard.outcome"
A_ATTEMPTS: Final = "exitguard.attempts"
A_SLIPPAGE: Final = "exitguard.slippage_bps"
A_FILLED: Final = "exitguard.filled_size"
A_DEADLINE_EXCEEDED: Final = "exitguard.deadline_exceeded"
A_PENDING: Final = "exitguard.pending_tx_ids"
A_VENUE: Final = "exitguard.venue"
A_ERROR_TYPE: Final = "error.type"  # OpenTelemetry semantic convention: the error class

# Attempt span attributes.
A_ATTEMPT: Final = "exitguard.attempt.number"
A_MODE: Final = "exitguard.order.mode"
A_MAX_SLIPPAGE: Final = "exitguard.order.max_slippage_bps"
A_PRIORITY_FEE: Final = "exitguard.order.priority_fee"
A_TX_ID: Final = "exitguard.tx_id"
A_RESULT: Final = "exitguard.attempt.result"
A_FILL_SIZE: Final = "exitguard.fill.size"
A_FILL_PRICE: Final = "exitguard.fill.price"

# Events on the exit span, and their attributes.
E_TRANSITION: Final = "exitguard.transition"
E_BACKOFF: Final = "exitguard.backoff"
E_RETRY: Final = "exitguard.retry"
E_RECONCILE: Final = "exitguard.reconcile"
E_BREAKER: Final = "exitguard.breaker.transition"
E_HALTED: Final = "exitguard.trading.halted"
E_RESUMED: Final = "exitguard.trading.resumed"
A_FROM: Final = "exitguard.state.from"
A_TO: Final = "exitguard.state.to"
A_DETAIL: Final = "exitguard.detail"
A_LATE: Final = "exitguard.late"
A_DELAY: Final = "exitguard.backoff.delay_s"
A_NEXT_ATTEMPT: Final = "exitguard.attempt.next"
A_TX_STATUS: Final = "exitguard.tx.status"
A_BREAKER: Final = "exitguard.breaker"

_OK_RESULTS = frozenset({AttemptResult.FILLED, AttemptResult.PARTIAL})


def _exit_attributes(info: ExitInfo) -> dict[str, Any]:
    position = info.position
    return {
        A_GUARD: info.guard,
        A_POSITION_ID: position.id,
        A_SYMBOL: position.symbol,
        A_SIZE: position.size,
        A_SIGNAL_PRICE: info.signal_price,
        A_REASON: info.reason,  # the bot's own label for the exit (not venue text)
        A_DEADLINE: info.deadline_s,
    }


class _TraceObserver:
    """Owns one exit's span (current from exit_started to exit_finished) and its attempts."""

    __slots__ = (
        "_add_event", "_attempt", "_attempt_attributes", "_attempt_token", "_attributes",
        "_context", "_span", "_token", "_tracer",
    )

    def __init__(self, tracer: Tracer, span: Span, info: ExitInfo) -> None:
        self._tracer = tracer
        # Attributes are set once, when the span ends (one validation pass instead of two;
        # a span is exported only once it has ended anyway).
        self._attributes = _exit_attributes(info)
        self._span = span
        # The SDK's add_event re-validates every attribute of every event (a third of the
        # cost of tracing an exit); ours are a few str/int/float/bool values under every
        # limit, so an SDK span takes them as they are. Any other span: the public API.
        self._add_event = getattr(span, "_add_event", None) if isinstance(span, SdkSpan) else None
        self._context = trace.set_span_in_context(span)
        self._token: object | None = otel_context.attach(self._context)
        self._attempt: Span | None = None
        self._attempt_attributes: dict[str, Any] = {}
        self._attempt_token: object | None = None

    def __call__(self, event: ExitEvent) -> None:
        # By frequency: transitions (several per exit, their body inlined), the attempt's
        # start and end, the exit's end; then the rare ones.
        if isinstance(event, TransitionRecord):
            attributes: dict[str, Any] = {
                A_FROM: event.from_state.value, A_TO: event.to_state.value,
            }
            if event.detail:
                attributes[A_DETAIL] = event.detail
            if event.tx_id is not None:
                attributes[A_TX_ID] = event.tx_id
            if event.late:
                attributes[A_LATE] = True
            self._event(E_TRANSITION, attributes)
        elif isinstance(event, AttemptInfo):
            self._attempt_started(event)
        elif isinstance(event, AttemptReport):
            self._attempt_finished(event)
        elif isinstance(event, ExitOutcome):
            self._exit_finished(event)
        elif isinstance(event, Retry):
            self._event(E_RETRY, {A_ERROR_TYPE: event.error_class.value,
                                  A_NEXT_ATTEMPT: event.next_attempt})
        elif isinstance(event, Backoff):
            self._event(E_BACKOFF, {A_DELAY: event.delay_s})
        elif isinstance(event, Reconciled):
            self._event(E_RECONCILE, {A_TX_ID: event.tx_id, A_TX_STATUS: event.status.value})

    def _attempt_started(self, attempt: AttemptInfo) -> None:
        if self._attempt is not None:  # a previous attempt never reported: close it
            self._end_attempt("superseded by the next attempt")
        order = attempt.order
        attributes: dict[str, Any] = {
            A_ATTEMPT: attempt.number,
            A_MODE: order.mode.value,
            A_MAX_SLIPPAGE: order.max_slippage_bps,
            A_VENUE: attempt.venue,
        }
        if order.priority_fee is not None:
            attributes[A_PRIORITY_FEE] = order.priority_fee
        span = self._tracer.start_span(ATTEMPT_SPAN, self._context)
        self._attempt = span
        self._attempt_attributes = attributes
        self._attempt_token = otel_context.attach(trace.set_span_in_context(span, self._context))

    def _attempt_finished(self, report: AttemptReport) -> None:
        span = self._attempt
        if span is None:
            return
        attributes = self._attempt_attributes
        attributes[A_RESULT] = report.result.value
        if report.tx_id is not None:
            attributes[A_TX_ID] = report.tx_id
        if report.error_class is not None:
            attributes[A_ERROR_TYPE] = report.error_class.value
        span.set_attributes(attributes)
        if report.result not in _OK_RESULTS:
            span.set_status(Status(
                StatusCode.ERROR, redact(report.error) if report.error else report.result.value
            ))
        self._attempt = None
        span.end()
        self._detach_attempt()

    def _detach_attempt(self) -> None:
        token, self._attempt_token = self._attempt_token, None
        if token is not None:
            otel_context.detach(token)  # type: ignore[arg-type]

    def _end_attempt(self, why: str) -> None:
        span, self._attempt = self._attempt, None
        if span is not None:
            span.set_attributes(self._attempt_attributes)
            span.set_status(Status(StatusCode.ERROR, why))
            span.end()
        self._detach_attempt()

    def _event(self, name: str, attributes: dict[str, Any]) -> None:
        add = self._add_event
        if add is not None:
            add(Event(name, attributes))
        else:
            self._span.add_event(name, attributes)

    def _exit_finished(self, outcome: ExitOutcome) -> None:
        if self._attempt is not None:
            self._end_attempt(f"exit ended during the attempt ({redact(outcome.reason)})")
        span = self._span
        attributes = self._attributes
        attributes[A_OUTCOME] = outcome.status.value
        attributes[A_ATTEMPTS] = outcome.attempts
        attributes[A_FILLED] = outcome.filled_size
        attributes[A_DEADLINE_EXCEEDED] = outcome.deadline_exceeded
        if outcome.slippage_bps is not None:
            attributes[A_SLIPPAGE] = outcome.slippage_bps
        if outcome.error_class is not None:
            attributes[A_ERROR_TYPE] = outcome.error_class.value
        if outcome.pending_tx_ids:
            attributes[A_PENDING] = list(outcome.pending_tx_ids)
        span.set_attributes(attributes)
        if outcome.status is not ExitStatus.CLOSED:
            span.set_status(Status(StatusCode.ERROR, redact(outcome.reason)))
        span.end()
        token, self._token = self._token, None
        if token is not None:
            otel_context.detach(token)  # type: ignore[arg-type]


class _UnsampledObserver:
    """An exit whose trace the sampler dropped: its span context is still current for the
    whole exit (the log lines share its trace id; the bot's own spans inside it follow the
    decision), but nothing is recorded, so no attribute, event or attempt span is built."""

    __slots__ = ("_token",)

    def __init__(self, span: Span) -> None:
        self._token: object | None = otel_context.attach(trace.set_span_in_context(span))

    def __call__(self, event: ExitEvent) -> None:
        if isinstance(event, ExitOutcome):
            token, self._token = self._token, None
            if token is not None:
                otel_context.detach(token)  # type: ignore[arg-type]


class TracingHooks:
    """Hooks that trace each exit (see the module docstring).

    ``tracer_provider``: where spans go (default: the global one, set by
    ``configure_tracing`` or by the bot's own OpenTelemetry set-up).
    """

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        from .. import __version__

        self.tracer_provider = tracer_provider
        self.tracer: Tracer = trace.get_tracer(
            INSTRUMENTATION_NAME, __version__, tracer_provider=tracer_provider
        )

    def __call__(self, event: HookEvent) -> _TraceObserver | _UnsampledObserver | None:
        if isinstance(event, ExitInfo):
            span = self.tracer.start_span(EXIT_SPAN)
            if span.is_recording():
                return _TraceObserver(self.tracer, span, event)
            return _UnsampledObserver(span)
        if isinstance(event, LateFill):
            # Background reconciliation runs in a task created while the exit span was
            # current, so the late fill's span joins the exit's trace.
            attributes = _exit_attributes(event.exit)
            fill = event.fill
            attributes.update({A_TX_ID: fill.tx_id, A_FILL_SIZE: fill.size,
                               A_FILL_PRICE: fill.price})
            self.tracer.start_span(LATE_FILL_SPAN, attributes=attributes).end()
        elif isinstance(event, BreakerTransition):
            self._event(E_BREAKER, {A_GUARD: event.guard, A_BREAKER: event.breaker,
                                    A_FROM: event.old.value, A_TO: event.new.value})
        elif isinstance(event, Halted):
            self._event(E_HALTED, {A_GUARD: event.guard, A_DETAIL: redact(event.record.reason)})
        elif isinstance(event, Resumed):
            self._event(E_RESUMED, {A_GUARD: event.guard, A_DETAIL: redact(event.record.reason)})
        return None

    def _event(self, name: str, attributes: Mapping[str, Any]) -> None:
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(name, attributes)


# -- set-up ------------------------------------------------------------------------------

_log = get_logger("exitguard.telemetry")
#: The OTLP/HTTP exporter logs every failed batch (and every retry) under this name.
_OTLP_LOGGER = "opentelemetry.exporter.otlp.proto.http.trace_exporter"
_in_outage: set[int] = set()  # ids of CountingSpanExporters whose export is failing


class _QuietDuringOutage(logging.Filter):
    """Drops the OTLP exporter's per-batch lines while an outage is already logged (its
    first failure's lines, with the reason, pass)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _in_outage


_QUIET = _QuietDuringOutage()


#: Shorter strings cannot hold a secret shape worth a look-up (``token=x`` is 7).
_SHORTEST_SECRET_TEXT = 8


def _clean_text(value: str) -> str:
    if len(value) < _SHORTEST_SECRET_TEXT or not (
        " " in value or ":" in value or "=" in value or "/" in value or "\t" in value
    ):
        return value  # an id, an enum value, a word: what most attributes are
    return redact(value, None)


def _clean_attributes(attributes: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """``attributes`` itself when nothing in it is a secret, else a redacted copy. (This
    runs for every attribute of every span on the export thread: one pass, no copy unless
    something changes; the SDK's BoundedAttributes is read through its plain dict.)"""
    if not attributes:
        return attributes
    items = getattr(attributes, "_dict", attributes)
    cleaned: dict[str, Any] | None = None
    for key, value in items.items():
        if type(value) is str:
            new: Any = _clean_text(value)
        elif isinstance(value, tuple | list) and value and isinstance(value[0], str):
            new = tuple(_clean_text(item) for item in value)
            if new == tuple(value):
                continue
        else:
            continue
        if new != value:
            if cleaned is None:
                cleaned = dict(items)
            cleaned[key] = new
    return attributes if cleaned is None else cleaned


def redact_span(span: ReadableSpan) -> ReadableSpan:
    """``span`` with every text that may quote a secret redacted: its name, status
    description, attributes and events' attributes (the bot's own spans too: an HTTP
    client's instrumentation records the full URL, key included). The span itself when
    nothing changes (the usual case: no copy)."""
    name = _clean_text(span.name)
    attributes = _clean_attributes(span.attributes)
    status = span.status
    if status.description:
        description = _clean_text(status.description)
        if description != status.description:
            status = Status(status.status_code, description)
    events = []
    events_changed = False
    for event in span.events:
        event_attributes = _clean_attributes(event.attributes)
        if event_attributes is not event.attributes:
            events_changed = True
            event = Event(event.name, event_attributes, event.timestamp)
        events.append(event)
    if (name == span.name and attributes is span.attributes and status is span.status
            and not events_changed):
        return span
    return ReadableSpan(
        name=name, context=span.context, parent=span.parent, resource=span.resource,
        attributes=attributes, events=events, links=span.links, kind=span.kind,
        status=status, start_time=span.start_time, end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class CountingSpanExporter(SpanExporter):
    """Wraps a span exporter: the one place every exported span passes through.

    Each span is redacted first (``redact_span``: names, statuses, attributes, events; the
    bot's spans included), on the export thread, so it costs an exit nothing. A collector
    outage is logged once and counted, not logged per batch: every failed batch (a FAILURE
    result or an exception) adds one to ``exitguard_trace_export_failures_total``; the
    first failure of an outage is logged (after the exporter's own lines, which carry the
    reason), further ones are not (the OTLP exporter's per-batch lines are dropped
    meanwhile), and the recovery is logged. ``configure_tracing`` puts it around every
    exporter it sets up.
    """

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter
        self.failures = 0  # this exporter's failed batches
        self._outage_failures = 0
        logger = get_logger(_OTLP_LOGGER)  # redacted too: its lines quote the endpoint URL
        if _QUIET not in logger.filters:
            logger.addFilter(_QUIET)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.exporter.export([redact_span(span) for span in spans])
            error = "" if result is SpanExportResult.SUCCESS else "the exporter reported failure"
        except Exception as exc:  # an exporter must never take the export thread down
            result, error = SpanExportResult.FAILURE, f"{type(exc).__name__}: {redact(str(exc))}"
        if result is SpanExportResult.SUCCESS:
            if self._outage_failures:
                _log.warning("exitguard trace export recovered after %d failed batch(es)",
                             self._outage_failures)
                self._outage_failures = 0
                _in_outage.discard(id(self))
            return result
        self.failures += 1
        TRACE_EXPORT_FAILURES.add()
        self._outage_failures += 1
        if self._outage_failures == 1:
            _in_outage.add(id(self))
            _log.error(
                "exitguard trace export failed (%s; %d span(s) dropped); exits go on. Further"
                " failures are counted in %s, not logged, until it recovers", error, len(spans),
                catalogue.TRACE_EXPORT_FAILURES.name,
            )
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        _in_outage.discard(id(self))
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)



def _traces_url(endpoint: str) -> str:
    """``http://host:4318`` -> ``http://host:4318/v1/traces`` (a query is kept after the
    path); a URL with a path is kept."""
    endpoint = endpoint.strip()
    if "://" not in endpoint:
        endpoint = f"http://{endpoint}"
    parts = urlsplit(endpoint)
    if parts.path in ("", "/"):
        return urlunsplit(parts._replace(path="/v1/traces"))
    return endpoint


def configure_tracing(
    endpoint: str | None,
    *,
    service_name: str | None = None,
    default_service_name: str = DEFAULT_SERVICE_NAME,
    timeout: float = 2.0,
    set_global: bool = True,
    exporter: SpanExporter | None = None,
    schedule_delay: float = 1.0,
    max_queue_size: int = 2048,
    resource_attributes: Mapping[str, str] | None = None,
    sample_ratio: float | None = None,
) -> TracerProvider:
    """A TracerProvider exporting over OTLP/HTTP in batches, off the exit's path.

    ``endpoint``: the collector, ``http://host:4318`` (``/v1/traces`` is appended) or the
    full traces URL. None reads ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` /
    ``OTEL_EXPORTER_OTLP_ENDPOINT``; with neither, spans are still created (trace ids for
    exemplars and logs) but not exported. The collector's credentials belong in
    ``OTEL_EXPORTER_OTLP_HEADERS`` (or ``OTEL_EXPORTER_OTLP_TRACES_HEADERS``), which the
    exporter sends with every request; whatever is logged about the endpoint (by exitguard,
    the exporter, urllib3) is redacted. ``exporter`` replaces the OTLP exporter (tests,
    benchmarks). Either way it is wrapped in ``CountingSpanExporter``: a collector outage
    is logged once (and its recovery), and each failed batch is counted. ``timeout``
    (seconds) bounds each export, retries included; exports run on the
    BatchSpanProcessor's thread every ``schedule_delay`` seconds, and when the
    in-memory queue (``max_queue_size`` spans) is full, new spans are dropped rather than
    waited for. ``set_global`` installs it as the global provider (once per process, an
    OpenTelemetry rule); ``instrument(guard)`` then uses it without being told.

    ``service_name`` and ``resource_attributes`` describe the process (the OTel resource);
    unset, the standard ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` apply, and
    ``service.name`` is ``default_service_name`` only when neither names it. Given, they
    win over the environment.

    ``sample_ratio``: the share of exits whose trace is recorded and exported (head
    sampling, decided when the exit starts; an exit inside a span of the bot's follows that
    span's decision). None (default) keeps the SDK's choice: ``OTEL_TRACES_SAMPLER`` /
    ``OTEL_TRACES_SAMPLER_ARG`` if set, else every trace. An unsampled exit costs far less
    (see benchmarks/README.md) and still has a trace id for its log lines, but no trace and
    no exemplar; it is dropped whatever its outcome, so keep 1.0 (and sample in the
    collector) when every failed exit's trace matters.
    """
    positive("configure_tracing", "timeout", timeout)
    provider = TracerProvider(resource=_resource(service_name, resource_attributes,
                                                 default_service_name),
                              sampler=_sampler(sample_ratio))
    if exporter is None:
        url = endpoint
        if url is None:
            url = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or None
            if url is None and os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
                url = _traces_url(os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"])
        else:
            url = _traces_url(url)
        if url is not None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )

            exporter = OTLPSpanExporter(endpoint=url, timeout=float(timeout))
            # Its loggers, urllib3's and requests' exist now: their lines (a failed export,
            # a retry) quote the collector's URL, whose userinfo or query may be a key.
            protect_third_party_loggers()
    if exporter is not None:
        provider.add_span_processor(
            BatchSpanProcessor(
                CountingSpanExporter(exporter),
                max_queue_size=max_queue_size,
                schedule_delay_millis=schedule_delay * 1000,
                export_timeout_millis=timeout * 1000,
            )
        )
    if set_global:
        trace.set_tracer_provider(provider)
    return provider


def _resource(
    service_name: str | None, attributes: Mapping[str, str] | None, default_name: str
) -> Resource:
    """The SDK's resource: ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_SERVICE_NAME`` as the
    OpenTelemetry specification says, under what the caller passes; ``service.name`` is
    ``default_name`` only when neither the caller nor the environment names the service."""
    given: dict[str, str] = dict(attributes or {})
    if service_name is not None:
        given["service.name"] = service_name
    resource = Resource.create(given)
    if "service.name" not in given and (
        not os.environ.get("OTEL_SERVICE_NAME", "").strip()
        and "service.name" not in _env_resource_keys()
    ):
        resource = resource.merge(Resource({"service.name": default_name}))
    return resource


def _env_resource_keys() -> set[str]:
    raw = os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    return {item.split("=", 1)[0].strip() for item in raw.split(",") if "=" in item}


def _sampler(sample_ratio: float | None) -> Sampler | None:
    """None: the SDK's default (which reads the OTEL_TRACES_SAMPLER environment variables)."""
    if sample_ratio is None:
        return None
    ratio = fraction("configure_tracing", "sample_ratio", sample_ratio)
    return ParentBased(TraceIdRatioBased(ratio))


def shutdown_tracing(provider: trace.TracerProvider | None = None, timeout: float = 5.0) -> bool:
    """Flush what is queued and stop exporting, waiting at most ``timeout`` seconds.

    True if it finished in time. ``provider`` defaults to the global one.
    """
    target = provider if provider is not None else trace.get_tracer_provider()
    stop = getattr(target, "shutdown", None)
    if stop is None:
        return True
    worker = threading.Thread(target=stop, name="exitguard-tracing-shutdown", daemon=True)
    worker.start()
    worker.join(timeout)
    return not worker.is_alive()
