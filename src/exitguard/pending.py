"""Submissions that may still land, kept where a restart cannot lose them.

The guard adds a record the moment ``venue.submit`` returns (before waiting for the
confirmation) and removes it when the transaction resolves. A bot killed mid-exit restarts,
calls ``await guard.resume_pending()``, and the new guard reconciles what the old one left:
a landing is reported as a late fill, and a new exit of that position takes the records
over instead of selling twice. Times are wall-clock: loop time means nothing after a restart.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from .errors import ErrorClass, ExitError
from .filestore import atomic_write_json
from .venue import ExitOrder, OrderMode, Position, Side

_log = logging.getLogger("exitguard.pending")


class PendingStoreError(ExitError):
    """The pending-transaction file is unreadable or corrupt."""


@dataclass(frozen=True, slots=True)
class PendingRecord:
    tx_id: str
    guard: str
    venue: str
    position_id: str
    symbol: str
    position_size: float
    entry_price: float
    side: str
    order_size: float
    mode: str
    reference_price: float
    max_slippage_bps: int
    attempt: int
    priority_fee: int | None
    cause: str
    sent_at: float  # wall time

    @classmethod
    def of(cls, tx_id: str, order: ExitOrder, *, guard: str, venue: str, cause: ErrorClass,
           sent_at: float) -> PendingRecord:
        position = order.position
        return cls(
            tx_id, guard, venue, position.id, position.symbol, position.size,
            position.entry_price, position.side, order.size, order.mode.value,
            order.reference_price, order.max_slippage_bps, order.attempt, order.priority_fee,
            cause.value, sent_at,
        )

    def position(self) -> Position:
        side: Side = "short" if self.side == "short" else "long"
        return Position(self.position_id, self.symbol, self.position_size, self.entry_price, side)

    def order(self) -> ExitOrder:
        return ExitOrder(self.position(), self.order_size, OrderMode(self.mode),
                         self.reference_price, self.max_slippage_bps, self.attempt,
                         self.priority_fee)

    def error_class(self) -> ErrorClass:
        try:
            return ErrorClass(self.cause)
        except ValueError:
            return ErrorClass.UNKNOWN


class PendingStore(Protocol):
    def load(self) -> list[PendingRecord]: ...
    def add(self, record: PendingRecord) -> None: ...
    def remove(self, tx_id: str) -> None: ...


class MemoryPendingStore:
    """In memory only: survives nothing, for tests."""

    def __init__(self) -> None:
        self.records: dict[str, PendingRecord] = {}

    def load(self) -> list[PendingRecord]:
        return list(self.records.values())

    def add(self, record: PendingRecord) -> None:
        self.records[record.tx_id] = record

    def remove(self, tx_id: str) -> None:
        self.records.pop(tx_id, None)


def _record(raw: object) -> PendingRecord:
    if not isinstance(raw, dict):
        raise TypeError(f"record is not an object: {raw!r}")
    record = PendingRecord(**raw)
    numbers = (record.position_size, record.entry_price, record.order_size,
               record.reference_price, record.sent_at)
    if not all(isinstance(n, int | float) and not isinstance(n, bool) and math.isfinite(n)
               for n in numbers):
        raise TypeError(f"record {record.tx_id!r} has a non-numeric field")
    if not isinstance(record.tx_id, str) or not record.tx_id:
        raise TypeError("record without a transaction id")
    record.order()  # validates the position, mode and sizes
    return record


class FilePendingStore:
    """A JSON file rewritten atomically on every change (one fsync per submission and per
    resolution: the price of surviving a kill). A missing file means nothing is pending."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._records: dict[str, PendingRecord] | None = None

    def _read(self) -> dict[str, PendingRecord]:
        try:
            text = self.path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            raise PendingStoreError(f"cannot read pending file {self.path}: {exc}") from exc
        try:
            data: Any = json.loads(text)
            if not isinstance(data, dict) or not isinstance(data.get("pending"), list):
                raise TypeError("no list of pending records")
            records = [_record(raw) for raw in data["pending"]]
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            raise PendingStoreError(f"pending file {self.path} is corrupt: {exc}") from exc
        return {record.tx_id: record for record in records}

    def load(self) -> list[PendingRecord]:
        with self._lock:
            self._records = self._read()
            return list(self._records.values())

    def _write(self) -> None:
        assert self._records is not None
        atomic_write_json(self.path, {"pending": [asdict(r) for r in self._records.values()]})

    def add(self, record: PendingRecord) -> None:
        with self._lock:
            if self._records is None:
                self._records = self._read()
            self._records[record.tx_id] = record
            self._write()

    def remove(self, tx_id: str) -> None:
        with self._lock:
            if self._records is None:
                self._records = self._read()
            if self._records.pop(tx_id, None) is not None:
                self._write()
