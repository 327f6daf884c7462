"""The current span's ids, read the same way by metrics' exemplars and logs."""

from __future__ import annotations

from opentelemetry import trace


def current_span_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) of the current span in lowercase hex, or None without one."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def current_trace_id() -> str | None:
    """The current span's trace id in lowercase hex (32 digits), or None."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def sampled_trace_id() -> str | None:
    """The current span's trace id if its trace is sampled (exported), else None.

    What an exemplar may carry: with a sampler below 100%, an unsampled exit still has a
    trace id (logs keep it, to tie the exit's lines together), but a link to it from a
    metric would lead to a trace that no store has.
    """
    context = trace.get_current_span().get_span_context()
    if not (context.is_valid and context.trace_flags.sampled):
        return None
    return format(context.trace_id, "032x")
