"""Telemetry for exitguard: Prometheus metrics, OpenTelemetry traces, structlog logs.

Everything attaches to a guard as hooks (``exitguard.hooks``: callables taking one event);
the core never imports this package. One call instruments a guard::

    from exitguard import ExitGuard, telemetry

    guard = ExitGuard(venue, name="mybot")
    telemetry.configure_logging(json=True)                    # structlog, JSON lines
    telemetry.configure_tracing("http://127.0.0.1:4318")      # OTLP/HTTP, batched
    telemetry.instrument(guard)                               # metrics + traces + logs
    server = telemetry.serve_metrics(port=9464)               # http://127.0.0.1:9464/metrics

or at construction: ``ExitGuard(venue, hooks=telemetry.hooks(traces=False))``.

Bots that keep their own exit code get the same metrics, spans and logs with
``track_exit`` (a context manager, ``with`` or ``async with``) or ``@instrumented_exit`` (a
decorator for ``def`` and ``async def``): see
``exitguard.telemetry.instrument`` and docs/instrumentation.md.
"""

from __future__ import annotations

from ..redaction import redact
from ._context import current_span_ids, current_trace_id
from .instrument import (
    ExitResultWarning,
    Instrumentation,
    TrackedAttempt,
    TrackedExit,
    current_exit,
    default_hooks,
    instrument,
    instrumented_exit,
    make_hooks,
    set_default_hooks,
    track_exit,
)
from .logs import LogHooks, add_trace_context, configure_logging, stdlib_formatter
from .otel import CountingSpanExporter, TracingHooks, configure_tracing, shutdown_tracing
from .prometheus import REGISTERED_METRICS, MetricsServer, PrometheusHooks, serve_metrics

#: ``ExitGuard(venue, hooks=exitguard.telemetry.hooks(...))``
hooks = make_hooks

__all__ = [
    "REGISTERED_METRICS",
    "CountingSpanExporter",
    "ExitResultWarning",
    "Instrumentation",
    "LogHooks",
    "MetricsServer",
    "PrometheusHooks",
    "TracingHooks",
    "TrackedAttempt",
    "TrackedExit",
    "add_trace_context",
    "configure_logging",
    "configure_tracing",
    "current_exit",
    "current_span_ids",
    "current_trace_id",
    "default_hooks",
    "hooks",
    "instrument",
    "instrumented_exit",
    "make_hooks",
    "redact",
    "serve_metrics",
    "set_default_hooks",
    "shutdown_tracing",
    "stdlib_formatter",
    "track_exit",
]
