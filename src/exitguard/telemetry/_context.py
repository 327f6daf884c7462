"""The current span's ids (read the same way by metrics' exemplars and logs) and redaction."""

from __future__ import annotations

import re

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


_SECRET_PATTERNS = (
    # user:password@ in URLs
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@"), r"\1***@"),
    # sensitive query parameters and key=value pairs
    (re.compile(
        r"(?i)\b((?:api[-_]?key|apikey|access[-_]?token|token|secret|password|passwd|auth"
        r"|authorization|signature|sig|key)\s*[=:]\s*)[^\s&,;'\"]+"
    ), r"\1***"),
    # bearer tokens
    (re.compile(r"(?i)\b(bearer\s+)[a-z0-9._~+/=-]+"), r"\1***"),
)
_MAX_TEXT = 500


def redact(text: str) -> str:
    """An error text fit for logs and spans: credentials in URLs and key=value pairs masked,
    length bounded. Venue errors often quote the RPC URL, whose query may hold an API key."""
    if len(text) > _MAX_TEXT:
        text = text[:_MAX_TEXT] + "..."
    if "=" not in text and ":" not in text and "earer" not in text.lower():
        return text  # nothing any pattern could match (most texts: skip the regexes)
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text
