"""The process-wide count of span batches the trace exporter failed to deliver.

Kept apart from ``otel`` so the Prometheus side reads it without importing the SDK's
exporter machinery; ``exitguard_trace_export_failures_total`` exposes it.
"""

from __future__ import annotations

import threading


class Tally:
    """A count the export threads add to."""

    __slots__ = ("_lock", "total")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total = 0

    def add(self) -> None:
        with self._lock:
            self.total += 1


TRACE_EXPORT_FAILURES = Tally()
