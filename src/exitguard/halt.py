"""A reduce-only trading halt with an approved, audited resume and a persistent store.

A halt blocks new entries (``check_entry`` raises) and never exits. It survives a restart:
the file store writes atomically (temp file, fsync, rename), and a file that cannot be read
means "halted", never "trading allowed". Resume needs an approver from a configured list and
is recorded (who, when, why) in the audit history.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from . import logline
from .clock import wall_time
from .errors import HaltResumeError, HaltStoreError, TradingHalted
from .filestore import atomic_write_json
from .redaction import get_logger

_log = get_logger("exitguard.halt")


@dataclass(frozen=True, slots=True)
class HaltRecord:
    """One audit entry: a halt (actor = what halted it) or a resume (actor = the approver)."""

    halted: bool
    reason: str
    actor: str
    at: float


@dataclass(frozen=True, slots=True)
class HaltSnapshot:
    halted: bool
    reason: str
    history: tuple[HaltRecord, ...]


class HaltStore(Protocol):
    def load(self) -> HaltSnapshot | None: ...
    def save(self, snapshot: HaltSnapshot) -> None: ...


class MemoryHaltStore:
    """Keeps the halt in memory only (tests, or bots that accept losing it on restart)."""

    def __init__(self) -> None:
        self.snapshot: HaltSnapshot | None = None

    def load(self) -> HaltSnapshot | None:
        return self.snapshot

    def save(self, snapshot: HaltSnapshot) -> None:
        self.snapshot = snapshot


def _typed(data: dict[str, Any], key: str, kind: type[Any]) -> Any:
    value = data[key]
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise TypeError(f"{key} is not a {kind.__name__}: {value!r}")
    return value


def _record(raw: object) -> HaltRecord:
    if not isinstance(raw, dict):
        raise TypeError(f"history entry is not an object: {raw!r}")
    at = raw["at"]
    if isinstance(at, bool) or not isinstance(at, int | float):
        raise TypeError(f"history entry time is not a number: {at!r}")
    return HaltRecord(
        _typed(raw, "halted", bool), _typed(raw, "reason", str), _typed(raw, "actor", str),
        float(at),
    )


class FileHaltStore:
    """A JSON file, written atomically. A missing file means "never halted"."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> HaltSnapshot | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except UnicodeDecodeError as exc:  # garbage bytes: corrupt, not "never halted"
            raise HaltStoreError(f"halt file {self.path} is corrupt: {exc}") from exc
        except OSError as exc:
            raise HaltStoreError(
                f"cannot read halt file {self.path}: {exc.strerror or exc}"
            ) from exc
        try:
            data: Any = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError("the document is not an object")
            halted = _typed(data, "halted", bool)
            reason = _typed(data, "reason", str)
            records = _typed(data, "history", list)
            history = tuple(_record(r) for r in records)
            return HaltSnapshot(halted, reason, history)
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise HaltStoreError(f"halt file {self.path} is corrupt: {exc!r}") from exc

    def save(self, snapshot: HaltSnapshot) -> None:
        payload = {
            "halted": snapshot.halted,
            "reason": snapshot.reason,
            "history": [asdict(record) for record in snapshot.history],
        }
        atomic_write_json(self.path, payload)


HaltListener = Callable[[HaltRecord], None]


#: Seconds between two attempts to write a halt state whose write failed.
_RETRY_SAVE_EVERY = 5.0


class TradingHalt:
    """The system-wide, reduce-only halt: blocks new entries (never exits) until an approver
    on ``approvers`` resumes it; kept in ``store`` so a restart stays halted."""

    def __init__(
        self,
        approvers: Iterable[str] = (),
        *,
        store: HaltStore | None = None,
        name: str = "default",
    ) -> None:
        self.name = name
        self.approvers = frozenset(a for a in approvers if a)
        self.store: HaltStore = store if store is not None else MemoryHaltStore()
        self._lock = threading.Lock()
        self._halt_listeners: list[HaltListener] = []
        self._resume_listeners: list[HaltListener] = []
        self.store_error: str | None = None
        #: Store reads and writes that failed (``exitguard_faults_total{component="halt_store"}``).
        self.store_failures = 0
        self._last_save_try = 0.0
        self._unsaved = False  # the last write failed: the state lives in memory only
        try:
            snapshot = self.store.load()
        except HaltStoreError as exc:
            # Unknown state must fail safe: halted until a human resumes.
            _log.error("%s; trading stays halted until an approved resume", exc)
            self.store_error = str(exc)
            self.store_failures += 1
            record = HaltRecord(True, str(exc), "halt_store", wall_time())
            snapshot = HaltSnapshot(True, str(exc), (record,))
        self._halted = snapshot.halted if snapshot else False
        self._reason = snapshot.reason if snapshot else ""
        self._history: list[HaltRecord] = list(snapshot.history) if snapshot else []

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], approvers: Iterable[str] = (), *,
                  name: str = "default") -> TradingHalt:
        return cls(approvers, store=FileHaltStore(path), name=name)

    def on_halt(self, listener: HaltListener) -> None:
        self._halt_listeners.append(listener)

    def on_resume(self, listener: HaltListener) -> None:
        self._resume_listeners.append(listener)

    @property
    def is_halted(self) -> bool:
        return self._halted

    @property
    def reason(self) -> str | None:
        return self._reason if self._halted else None

    @property
    def history(self) -> tuple[HaltRecord, ...]:
        return tuple(self._history)

    def check_entry(self) -> None:
        """Raise TradingHalted while halted. Call before opening a position, never before exits.

        A state whose write failed is written again first (at most every few seconds): a
        halt that lives only in memory is lost on restart."""
        if self._unsaved:
            self.retry_save()
        if self._halted:
            raise TradingHalted(self._reason)

    def retry_save(self) -> bool:
        """Write the state again after a failed write; True once it is saved. Rate-limited to
        one try per ``_RETRY_SAVE_EVERY`` seconds (wall time) so entry checks stay cheap."""
        if not self._unsaved:
            return True
        now = wall_time()
        if now - self._last_save_try < _RETRY_SAVE_EVERY:
            return False
        with self._lock:
            self._persist()
        if not self._unsaved:
            _log.warning("halt state saved after an earlier failed write")
        return not self._unsaved

    def halt(self, reason: str, *, actor: str = "circuit_breaker") -> bool:
        """Halt new entries; True if this call halted (False if already halted)."""
        with self._lock:
            if self._halted:
                return False
            record = HaltRecord(True, reason, actor, wall_time())
            self._halted, self._reason = True, reason
            self._history.append(record)
            self._persist()
        with logline.hearing() as heard:  # a structured log of the halt replaces the line
            self._notify(self._halt_listeners, record)
        if not heard.reported:
            _log.critical("TRADING HALTED (reduce-only: exits continue): %s", reason)
        return True

    def resume(self, approver: str, reason: str) -> HaltRecord:
        """Resume trading; the approver must be on the list. Recorded in the audit history."""
        with self._lock:
            if not self.approvers:
                raise HaltResumeError("resume refused: no approvers are configured")
            if approver not in self.approvers:
                raise HaltResumeError(f"resume refused: {approver!r} is not an approver")
            if not reason or not reason.strip():
                raise HaltResumeError("resume refused: a reason is required")
            if not self._halted:
                raise HaltResumeError("resume refused: trading is not halted")
            record = HaltRecord(False, reason, approver, wall_time())
            self._halted, self._reason = False, ""
            self._history.append(record)
            self._persist()
        with logline.hearing() as heard:
            self._notify(self._resume_listeners, record)
        if not heard.reported:
            _log.warning("trading resumed by %s: %s", approver, reason)
        return record

    def _persist(self) -> None:
        self._last_save_try = wall_time()
        try:
            self.store.save(HaltSnapshot(self._halted, self._reason, tuple(self._history)))
            self.store_error = None
            self._unsaved = False
        except OSError as exc:
            # The in-memory state stands (a halt is never lost while the process lives);
            # a resume that cannot be persisted comes back as a halt after a restart: safe.
            # A halt that cannot be persisted is lost on restart: said loudly, counted
            # (exitguard_faults_total{component="halt_store"}) and written again later.
            first = not self._unsaved
            self._unsaved = True
            self.store_error = f"cannot write halt store: {exc.strerror or exc}"
            self.store_failures += 1
            if first:
                _log.critical("%s: the %s lives in memory only and is LOST ON RESTART until"
                              " a write succeeds (retried at each entry check)",
                              self.store_error, "halt" if self._halted else "resume")

    @staticmethod
    def _notify(listeners: list[HaltListener], record: HaltRecord) -> None:
        for listener in tuple(listeners):
            try:
                listener(record)
            except Exception:
                _log.exception("halt listener raised; ignored")
