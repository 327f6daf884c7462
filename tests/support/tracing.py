"""Traces kept in memory, for tests that read back the spans an exit made."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Sampler


def in_memory_tracing(
    sampler: Sampler | None = None,
) -> tuple[TracerProvider, InMemorySpanExporter]:
    """A private tracer provider (never the global one) whose spans end up, synchronously, in
    the returned exporter's ``get_finished_spans()``."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter
