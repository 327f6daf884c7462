"""The telemetry hooks, attached to a guard (``instrument``) or kept as the drop-in's default.

``make_hooks`` builds the chosen sinks (traces, metrics, logs) as one ``SafeHooks`` in the
order the fan-out needs; ``instrument`` attaches them to an ``ExitGuard`` and starts its
series; ``set_default_hooks`` / ``default_hooks`` are what ``track_exit`` and
``@instrumented_exit`` report to when not given hooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..hooks import Hooks, SafeHooks

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider
    from prometheus_client import CollectorRegistry

    from ..guard import ExitGuard
    from .logs import LogHooks
    from .otel import TracingHooks
    from .prometheus import PrometheusHooks

__all__ = [
    "Instrumentation",
    "default_hooks",
    "instrument",
    "make_hooks",
    "set_default_hooks",
]


@dataclass(frozen=True, slots=True)
class Instrumentation:
    """What ``instrument`` attached: the chosen hooks as one ``SafeHooks``, in call order
    (traces, metrics, logs), and each of them (None when not chosen)."""

    hooks: SafeHooks
    prometheus: PrometheusHooks | None
    tracing: TracingHooks | None
    logs: LogHooks | None


def _build(
    metrics: bool, traces: bool, logs: bool, registry: CollectorRegistry | None,
    tracer_provider: TracerProvider | None, logger: Any,
) -> Instrumentation:
    tracing_hooks = prometheus_hooks = log_hooks = None
    if traces:
        from .otel import TracingHooks

        tracing_hooks = TracingHooks(tracer_provider)
    if metrics:
        from .prometheus import PrometheusHooks

        prometheus_hooks = PrometheusHooks(registry)
    if logs:
        from .logs import LogHooks

        log_hooks = LogHooks(logger)
    # Traces first: SafeHooks delivers events in order (the span is current when the others
    # observe) and ending events in reverse order (the span is still current while metrics
    # read its trace id for the exemplar and logs their ids).
    chosen = [h for h in (tracing_hooks, prometheus_hooks, log_hooks) if h is not None]
    return Instrumentation(SafeHooks(*chosen), prometheus_hooks, tracing_hooks, log_hooks)


def make_hooks(
    *,
    metrics: bool = True,
    traces: bool = True,
    logs: bool = True,
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
    logger: Any = None,
) -> SafeHooks:
    """The telemetry hooks, as one ``SafeHooks``, for ``ExitGuard(venue, hooks=...)``.

    Exported as ``exitguard.telemetry.hooks``. ``registry``: Prometheus registry (default
    the global one); ``tracer_provider``: OpenTelemetry provider (default the global one);
    ``logger``: structlog logger (default ``structlog.get_logger("exitguard")``).
    """
    return _build(metrics, traces, logs, registry, tracer_provider, logger).hooks


def instrument(
    guard: ExitGuard,
    *,
    metrics: bool = True,
    traces: bool = True,
    logs: bool = True,
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
    logger: Any = None,
) -> Instrumentation:
    """Attach metrics, traces and logs (any combination) to ``guard``.

    The guard's series start at once (breaker states, halt, zeroed counters), so a
    dashboard or an alert sees them before the first exit.
    """
    built = _build(metrics, traces, logs, registry, tracer_provider, logger)
    if built.hooks.hooks:
        guard.add_hooks(built.hooks)
    if built.prometheus is not None:
        built.prometheus.watch(guard)
    return built


_default: SafeHooks | None = None


def set_default_hooks(*hooks: Hooks) -> None:
    """The hooks ``track_exit``/``instrumented_exit`` use when not given any.

    Without a call, they are ``make_hooks()`` (metrics, traces and logs, on the global
    registry, tracer provider and structlog configuration), built on first use.
    """
    global _default
    _default = SafeHooks(*hooks)


def default_hooks() -> SafeHooks:
    """The hooks ``track_exit``/``instrumented_exit`` use when not given any."""
    global _default
    if _default is None:
        _default = SafeHooks(make_hooks())
    return _default
