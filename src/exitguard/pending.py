"""Submissions that may still land, and what each position sold, kept where a restart
cannot lose them.

The guard adds a record *before* it sends an order (under the order's client order id, or
the transaction id a two-phase venue knows before broadcasting), replaces it by the venue's
id when ``submit`` answers, and removes it when the transaction resolves. What landed is
added to the position's sold quantity (a ``SoldRecord``), so a re-exit of the same position
id after a restart sells only what is still held. A bot killed mid-exit restarts, calls
``await guard.resume_pending()``, and the new guard reconciles what the old one left; even
without that call, its first exit of a position takes the position's records over.

Times are wall-clock: loop time means nothing after a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .errors import ErrorClass, ExitError
from .filestore import atomic_write_json
from .redaction import get_logger
from .venue import ExitOrder, OrderMode, Position, Side

_log = get_logger("exitguard.pending")


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
    venue_data: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, tx_id: str, order: ExitOrder, *, guard: str, venue: str, cause: ErrorClass,
           sent_at: float, venue_data: dict[str, str] | None = None) -> PendingRecord:
        position = order.position
        return cls(
            tx_id, guard, venue, position.id, position.symbol, position.size,
            position.entry_price, position.side, order.size, order.mode.value,
            order.reference_price, order.max_slippage_bps, order.attempt, order.priority_fee,
            cause.value, sent_at, dict(venue_data or {}),
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


@dataclass(frozen=True, slots=True)
class SoldRecord:
    """What the exits of one position (of one guard) have sold so far, in base units."""

    guard: str
    position_id: str
    sold: float
    updated_at: float  # wall time


class PendingStore(Protocol):
    """Where a guard keeps what may still land and what each position sold.

    Records of several guards may share one store: each carries its guard's name.
    """

    def load(self) -> list[PendingRecord]: ...
    def add(self, record: PendingRecord) -> None: ...
    def remove(self, tx_id: str) -> None: ...
    def load_sold(self) -> list[SoldRecord]: ...
    def set_sold(self, record: SoldRecord) -> None: ...


class MemoryPendingStore:
    """In memory only: survives nothing, for tests."""

    def __init__(self) -> None:
        self.records: dict[str, PendingRecord] = {}
        self.sold: dict[tuple[str, str], SoldRecord] = {}

    def load(self) -> list[PendingRecord]:
        return list(self.records.values())

    def add(self, record: PendingRecord) -> None:
        self.records[_record(asdict(record)).tx_id] = record

    def remove(self, tx_id: str) -> None:
        self.records.pop(tx_id, None)

    def load_sold(self) -> list[SoldRecord]:
        return list(self.sold.values())

    def set_sold(self, record: SoldRecord) -> None:
        self.sold[(record.guard, record.position_id)] = _sold(asdict(record))


def _finite_numbers(*numbers: object) -> bool:
    return all(isinstance(n, int | float) and not isinstance(n, bool) and math.isfinite(n)
               for n in numbers)


def _record(raw: object) -> PendingRecord:
    """Validate a record, on its way in (so a bad id never reaches the file) and out."""
    if not isinstance(raw, dict):
        raise TypeError(f"record is not an object: {raw!r}")
    record = PendingRecord(**raw)
    if not isinstance(record.tx_id, str) or not record.tx_id:
        raise TypeError(f"transaction id {record.tx_id!r} is not a non-empty string")
    for name in ("guard", "venue", "position_id", "symbol", "mode", "cause"):
        if not isinstance(getattr(record, name), str):
            raise TypeError(f"record {record.tx_id!r}: {name} is not a string")
    if not _finite_numbers(record.position_size, record.entry_price, record.order_size,
                           record.reference_price, record.sent_at):
        raise TypeError(f"record {record.tx_id!r} has a non-numeric field")
    if not isinstance(record.venue_data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in record.venue_data.items()
    ):
        raise TypeError(f"record {record.tx_id!r}: venue_data is not a map of strings")
    record.order()  # validates the position, mode and sizes
    return record


def _sold(raw: object) -> SoldRecord:
    if not isinstance(raw, dict):
        raise TypeError(f"sold record is not an object: {raw!r}")
    record = SoldRecord(**raw)
    if not (isinstance(record.guard, str) and isinstance(record.position_id, str)
            and record.position_id and _finite_numbers(record.sold, record.updated_at)
            and record.sold >= 0):
        raise TypeError(f"sold record {raw!r} is invalid")
    return record


class FilePendingStore:
    """A JSON file rewritten atomically on every change (one fsync per submission and per
    resolution: the price of surviving a kill). A missing file means nothing is pending.

    Several stores may share one file (two guards of one bot, two processes): every change
    takes an exclusive lock (``flock`` on ``<file>.lock``), re-reads the file and writes it
    back, so no store overwrites another's records. Sold quantities are kept for
    ``sold_retention`` seconds after their last change (default a day): a re-exit of a
    position within that time sells only what is still held.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, sold_retention: float = 86_400.0
    ) -> None:
        if not (_finite_numbers(sold_retention) and sold_retention > 0):
            raise ValueError(f"FilePendingStore.sold_retention must be a finite number > 0,"
                             f" got {sold_retention!r}")
        self.path = Path(path)
        self.sold_retention = float(sold_retention)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing releases the lock

    def _read(self) -> tuple[dict[str, PendingRecord], dict[tuple[str, str], SoldRecord]]:
        try:
            text = self.path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            return {}, {}
        except (OSError, UnicodeDecodeError) as exc:
            raise PendingStoreError(f"cannot read pending file {self.path}: {exc}") from exc
        try:
            data: Any = json.loads(text)
            if not isinstance(data, dict) or not isinstance(data.get("pending"), list):
                raise TypeError("no list of pending records")
            records = [_record(raw) for raw in data["pending"]]
            sold = [_sold(raw) for raw in data.get("sold", [])]
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            raise PendingStoreError(f"pending file {self.path} is corrupt: {exc}") from exc
        return ({record.tx_id: record for record in records},
                {(r.guard, r.position_id): r for r in sold})

    def _write(self, records: dict[str, PendingRecord],
               sold: dict[tuple[str, str], SoldRecord]) -> None:
        horizon = time.time() - self.sold_retention
        atomic_write_json(self.path, {
            "pending": [asdict(r) for r in records.values()],
            "sold": [asdict(r) for r in sold.values() if r.updated_at >= horizon],
        })

    def load(self) -> list[PendingRecord]:
        with self._locked():
            return list(self._read()[0].values())

    def load_sold(self) -> list[SoldRecord]:
        with self._locked():
            return list(self._read()[1].values())

    def add(self, record: PendingRecord) -> None:
        record = _record(asdict(record))
        with self._locked():
            records, sold = self._read()
            records[record.tx_id] = record
            self._write(records, sold)

    def remove(self, tx_id: str) -> None:
        with self._locked():
            records, sold = self._read()
            if records.pop(tx_id, None) is not None:
                self._write(records, sold)

    def set_sold(self, record: SoldRecord) -> None:
        record = _sold(asdict(record))
        with self._locked():
            records, sold = self._read()
            sold[(record.guard, record.position_id)] = record
            self._write(records, sold)
