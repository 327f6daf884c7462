"""Failures exitguard absorbs so an exit goes on, counted by where they happened.

A hook that raises, a look-up that fails, a broken halt file: none of them may break or
delay an exit, and none may pass unseen. Each is logged where it happens (once per kind,
not once per occurrence) and counted here; ``exitguard.telemetry`` reads the counts at
scrape time (``exitguard_faults_total{component}``), so counting costs nothing per exit.
"""

from __future__ import annotations

import enum
import threading

__all__ = ["FaultCounts", "FaultSource"]


class FaultSource(enum.StrEnum):
    """Where an absorbed failure happened (the ``component`` label)."""

    HOOK = "hook"  # an instrumentation or paging hook raised
    LOOKUP = "lookup"  # a reconciliation look-up failed or answered garbage
    QUOTE = "quote"  # a price quote failed or answered garbage
    CLASSIFIER = "classifier"  # the error classifier raised
    PENDING_STORE = "pending_store"  # the pending-transaction store failed
    HALT_STORE = "halt_store"  # the halt store is corrupt, unreachable or cannot be written
    BREAKER_STORE = "breaker_store"  # a shared breaker's store failed: the breaker decided alone
    VENUE_CALL = "venue_call"  # a venue call ignored cancellation: left to finish on its own


class FaultCounts:
    """How many failures of each source were absorbed (thread-safe: background
    reconciliation and halt listeners may run on other threads)."""

    __slots__ = ("_counts", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[FaultSource, int] = dict.fromkeys(FaultSource, 0)

    def add(self, source: FaultSource, n: int = 1) -> None:
        with self._lock:
            self._counts[source] += n

    def snapshot(self) -> dict[FaultSource, int]:
        """Every source, zeros included."""
        with self._lock:
            return dict(self._counts)

    def __repr__(self) -> str:
        counts = ", ".join(f"{k.value}={v}" for k, v in self.snapshot().items() if v)
        return f"FaultCounts({counts})"
