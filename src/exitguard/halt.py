"""A reduce-only trading halt: lifted only by an approver stored with the halt, audited in a
tamper-evident chain, shared by every process that reads the same store.

A halt blocks new entries (``check_entry`` raises) and never exits. Its audit is a list of
records, append-only: each record is chained to the one before it by an HMAC-SHA256 over its
content and the previous record's MAC, with a key the bot holds (``key=``, or the
``EXITGUARD_HALT_KEY_FILE`` / ``EXITGUARD_HALT_KEY`` environment variables). The chain is
verified on every load. Whatever cannot be trusted means "halted", never "trading allowed":
an unreadable store, a record edited by hand (``"halted": false`` breaks its MAC), a broken
link, or a store that went back in time (fewer records than this process has already seen,
or a vanished file).

Who may resume is stored WITH the halt: each halt record carries the approver list of the
``TradingHalt`` that wrote it, so ``exitguard halt resume`` checks the resumer against the
halt's own list, never against a list the resumer brings. Each record also names the OS user
of the process that wrote it.

Another process's write (``exitguard halt resume`` from a shell, another bot on the same
file) is seen by this one within ``poll_interval`` seconds: ``check_entry``, ``is_halted``,
``reason`` and ``history`` look at the store's cheap version token (a file's inode, size and
mtime) when the last look is older than that, and reload only when it changed. Every write
takes the store's exclusive lock, re-reads and verifies the chain, and appends on top of
what it found, so the bot's next write never erases a resume written by the CLI.

What a store must provide is :class:`~exitguard.halt_store.HaltStore` (in ``halt_store.py``,
and nothing else); the chain (records, key, seal, verify) is in ``halt_chain.py``. The
approver rule, rollback detection and the poll live here, over records, so a store only keeps
JSON objects. Every name of those two modules a user needs is importable from here too.
At about 500 lines this module is the halt's rules and nothing else.
"""

from __future__ import annotations

import math
import os
import secrets
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

from . import logline
from .clock import wall_time
from .errors import HaltResumeError, HaltStoreError, HaltStoreUnavailable, TradingHalted
from .halt_chain import (
    ENV_KEY,
    ENV_KEY_FILE,
    MIN_KEY_BYTES,
    ChainVerifier,
    HaltRecord,
    HaltTampered,
    StoredRecord,
    load_key,
    os_user,
    seal,
    verify,
)
from .halt_store import FILE_FORMAT, FileHaltStore, HaltStore, MemoryHaltStore
from .redaction import get_logger, redact

__all__ = [
    "DEFAULT_POLL_INTERVAL", "ENV_KEY", "ENV_KEY_FILE", "FILE_FORMAT", "MIN_KEY_BYTES",
    "FileHaltStore", "HaltRecord", "HaltSnapshot", "HaltStore", "HaltTampered",
    "MemoryHaltStore", "StoredRecord", "TradingHalt", "load_key", "os_user", "seal", "verify",
]

_log = get_logger("exitguard.halt")

#: Default seconds between two looks at the store for another process's write.
DEFAULT_POLL_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class HaltSnapshot:
    """A read-only view of a halt: its state and its audit history (oldest first)."""

    halted: bool
    reason: str
    history: tuple[HaltRecord, ...]


HaltListener = Callable[[HaltRecord], None]

#: Seconds between two attempts to write a halt state whose write failed.
_RETRY_SAVE_EVERY = 5.0


@dataclass
class _Changes:
    """Listener calls collected under the lock, made after it is released."""

    halts: list[HaltRecord] = field(default_factory=list)
    resumes: list[HaltRecord] = field(default_factory=list)
    store_failure: str | None = None


class TradingHalt:
    """The system-wide, reduce-only halt: blocks new entries (never exits) until an approver
    on the halt's stored list resumes it; kept in ``store`` so a restart stays halted.

    ``approvers`` is the list written with each halt this object records. ``key`` (or
    ``key_file``; by default the ``EXITGUARD_HALT_KEY_FILE`` / ``EXITGUARD_HALT_KEY``
    environment variables) signs and verifies the audit chain; it is required with a
    ``store`` (without one, the halt lives in this process only and a random key is used).
    ``poll_interval`` (seconds, 0 = every call) bounds how stale this process's view of
    another process's write can be; ``clock`` is the monotonic clock for it (tests pass a
    virtual one).
    """

    def __init__(
        self,
        approvers: Iterable[str] = (),
        *,
        store: HaltStore | None = None,
        name: str = "default",
        key: bytes | str | None = None,
        key_file: str | os.PathLike[str] | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(approvers, str):
            raise TypeError("TradingHalt approvers must be a list of names, not one string")
        if (isinstance(poll_interval, bool) or not isinstance(poll_interval, int | float)
                or not math.isfinite(poll_interval) or poll_interval < 0):
            raise ValueError(f"TradingHalt poll_interval must be a finite number >= 0,"
                             f" got {poll_interval!r}")
        resolved = load_key(key, key_file)
        if resolved is None:
            if store is not None:
                raise ValueError(
                    f"TradingHalt key: a halt store needs an HMAC key; pass key= or key_file=,"
                    f" or set ${ENV_KEY_FILE} (a file outside the repository) or ${ENV_KEY}")
            resolved = secrets.token_bytes(32)  # memory only: nothing outlives the process
        self._key = resolved
        self._verify = ChainVerifier(resolved)  # remembers the verified prefix
        self.name = name
        self.approvers = frozenset(a for a in approvers if a)
        self.store: HaltStore = store if store is not None else MemoryHaltStore()
        self.poll_interval = float(poll_interval)
        self._clock = clock
        self.os_user = os_user()
        self._lock = threading.RLock()
        self._halt_listeners: list[HaltListener] = []
        self._resume_listeners: list[HaltListener] = []
        self._store_failure_listeners: list[Callable[[str], None]] = []
        self.store_error: str | None = None
        #: Store reads and writes that failed (``exitguard_faults_total{component="halt_store"}``).
        self.store_failures = 0
        self._last_save_try = 0.0
        self._records: list[HaltRecord] = []  # verified + this process's unsaved ones
        self._macs: list[str] = []  # of the verified, saved records
        self._pending: list[HaltRecord] = []  # recorded here, not written yet
        self._trusted = True  # False: the store failed to load or verify (halted)
        self._unavailable = False  # the distrust is a network store out of reach
        self._halted = False
        self._reason = ""
        self._version: Hashable = object()
        self._next_poll = self._clock() + self.poll_interval
        with self._lock:
            changes = _Changes()
            self._reload(changes)  # nobody listens yet: the changes are not announced

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], approvers: Iterable[str] = (), *,
                  name: str = "default", key: bytes | str | None = None,
                  key_file: str | os.PathLike[str] | None = None,
                  poll_interval: float = DEFAULT_POLL_INTERVAL) -> TradingHalt:
        return cls(approvers, store=FileHaltStore(path), name=name, key=key,
                   key_file=key_file, poll_interval=poll_interval)

    def on_halt(self, listener: HaltListener) -> None:
        self._halt_listeners.append(listener)

    def on_resume(self, listener: HaltListener) -> None:
        self._resume_listeners.append(listener)

    def on_store_failure(self, listener: Callable[[str], None]) -> None:
        """``listener(error)`` when a write of the halt state first fails (the guard pages)."""
        self._store_failure_listeners.append(listener)

    # --- reading (each look is at most poll_interval stale) ---------------------------------

    @property
    def is_halted(self) -> bool:
        self.refresh()
        return self._halted

    @property
    def reason(self) -> str | None:
        self.refresh()
        return self._reason if self._halted else None

    @property
    def history(self) -> tuple[HaltRecord, ...]:
        self.refresh()
        return tuple(self._records)

    @property
    def approvers_of_halt(self) -> frozenset[str]:
        """Who may lift the current halt: the list stored with it (the configured list when
        the halt was recorded without one, or when the store cannot be trusted)."""
        with self._lock:
            return self._allowed()

    def snapshot(self) -> HaltSnapshot:
        self.refresh()
        with self._lock:
            return HaltSnapshot(self._halted, self._reason, tuple(self._records))

    def check_entry(self) -> None:
        """Raise TradingHalted while halted. Call before opening a position, never before exits.

        Sees another process's resume or halt within ``poll_interval``; a state whose write
        failed is written again first (at most every few seconds)."""
        self.refresh()
        if self._halted:
            raise TradingHalted(self._reason)

    def refresh(self, *, force: bool = False) -> None:
        """Look at the store if the last look is ``poll_interval`` old (or ``force``): reload
        when another process changed it, and announce what changed to the listeners."""
        if self._pending:
            self.retry_save()
            return
        now = self._clock()
        if not force and now < self._next_poll:
            return
        changes = _Changes()
        with self._lock:
            self._next_poll = now + self.poll_interval
            try:
                version = self.store.version()
            except OSError:
                version = object()  # never equal: read, and let read() report the problem
            if version != self._version or not self._trusted:
                self._reload(changes)
        self._announce(changes)

    def retry_save(self) -> bool:
        """Write the state again after a failed write; True once it is saved. Rate-limited to
        one try per ``_RETRY_SAVE_EVERY`` seconds (wall time) so entry checks stay cheap."""
        if not self._pending:
            return True
        if wall_time() - self._last_save_try < _RETRY_SAVE_EVERY:
            return False
        changes = _Changes()
        with self._lock:
            self._transact(lambda _view: [], changes)
        self._announce(changes)
        if not self._pending:
            _log.warning("halt state saved after an earlier failed write")
        return not self._pending

    def resume_command(self) -> str | None:
        """The shell command that lifts this halt, with this store's options (None when the
        CLI cannot reach the store); NAME is one of the approvers stored with the halt."""
        from .runbooks import resume_command

        args = self.store.resume_args()
        return resume_command(args) if args else None

    # --- writing ----------------------------------------------------------------------------

    def halt(self, reason: str, *, actor: str = "circuit_breaker") -> bool:
        """Halt new entries; True if this call halted (False if already halted). The reason
        is stored redacted: it often quotes a venue's error, and the halt file is read by
        people and printed by the CLI."""
        record = HaltRecord(True, redact(reason), actor, wall_time(), tuple(sorted(self.approvers)),
                            self.os_user)
        changes = _Changes()
        with self._lock:
            written = self._transact(lambda view: [] if view.halted else [record], changes)
        self._announce(changes)
        return bool(written)

    def resume(self, approver: str, reason: str) -> HaltRecord:
        """Resume trading; the approver must be on the halt's stored list. Recorded (with the
        OS user of this process) in the audit history."""
        record = HaltRecord(False, redact(reason), approver, wall_time(), (), self.os_user)

        def decide(view: _View) -> list[HaltRecord]:
            if not view.allowed:
                raise HaltResumeError(
                    "resume refused: no approvers are stored with this halt (the bot's"
                    " TradingHalt(approvers=...) writes them with each halt)"
                    if view.trusted else
                    f"resume refused: {view.error}; the halt store cannot say who may resume"
                    " (the bot itself can, or move the file aside: a running bot then writes"
                    " a fresh halted file)")
            if approver not in view.allowed:
                raise HaltResumeError(f"resume refused: {approver!r} is not an approver of"
                                      " this halt")
            if not reason or not reason.strip():
                raise HaltResumeError("resume refused: a reason is required")
            if not view.halted:
                raise HaltResumeError("resume refused: trading is not halted")
            return [record]

        changes = _Changes()
        with self._lock:
            self._transact(decide, changes)
        self._announce(changes)
        return record

    # --- internals (self._lock held) ---------------------------------------------------------

    def _allowed(self) -> frozenset[str]:
        last_halt = next((r for r in reversed(self._records) if r.halted), None)
        if self._trusted and last_halt is not None and last_halt.approvers:
            return frozenset(last_halt.approvers)
        return self.approvers

    def _read(self) -> tuple[Hashable, list[StoredRecord], list[HaltRecord], list[str]]:
        """(version, stored, records, macs) of the store, verified. Raises HaltStoreError."""
        try:
            version = self.store.version()
        except OSError:
            version = object()
        stored = self.store.read() or []
        try:
            records, macs = self._verify(stored)
        except HaltTampered as exc:
            where = " ".join(self.store.resume_args()[1:]) or type(self.store).__name__
            raise HaltTampered(f"halt store {where} fails verification: {exc}") from None
        return version, stored, records, macs

    def _reload(self, changes: _Changes) -> None:
        try:
            version, _, records, macs = self._read()
        except HaltStoreError as exc:
            self._unavailable = isinstance(exc, HaltStoreUnavailable)
            self._distrust(str(exc), changes)
            return
        known = self._macs
        if self._trusted and known and macs[:len(known)] != known:
            # Fewer records than already seen, or others in their place: a rollback (an old
            # copy put back, the file deleted). Recorded as a halt on top of what is there.
            self._version = version
            what = f"{len(macs)} records found, {len(known)} already seen"
            self._adopt(records, macs, version, _Changes())  # an old state is no news
            self._record_halt(f"halt store went back in time ({what}): trading halted",
                              changes)
            return
        if not records and self._halted and not (self._unavailable and not self._macs):
            # Emptied (a bad file moved aside) while halted: the halt is written down again,
            # with this process's approvers, so it is lifted by an approved resume only.
            # (Not a network store found empty after an outage, as this process last saw it.)
            self._version = version
            self._record_halt(f"halt store emptied while halted ({self._reason})", changes)
            return
        self._adopt(records, macs, version, changes)

    def _adopt(self, records: list[HaltRecord], macs: list[str], version: Hashable,
               changes: _Changes) -> None:
        known = len(self._macs)
        extends = self._trusted and macs[:known] == self._macs
        was_halted = self._halted
        self._records, self._macs, self._version = list(records), list(macs), version
        self._pending.clear()
        self._trusted, self.store_error = True, None
        last = records[-1] if records else None
        self._halted = bool(last and last.halted)
        self._reason = last.reason if last and last.halted else ""
        fresh = records[known:] if extends else ([last] if last and (
            last.halted != was_halted) else [])
        for record in fresh:
            (changes.halts if record.halted else changes.resumes).append(record)

    def _distrust(self, error: str, changes: _Changes) -> None:
        """The store cannot be read or trusted: halted, in memory, until an approved resume."""
        if self._trusted or error != self.store_error:
            _log.error("%s; trading stays halted until an approved resume", error)
            self.store_failures += 1
            record = HaltRecord(True, error, "halt_store", wall_time(),
                                tuple(sorted(self.approvers)), self.os_user)
            self._records.append(record)
            if not self._halted or self._trusted:
                changes.halts.append(record)
            self._halted, self._reason = True, error
        self._trusted, self.store_error = False, error
        self._version = object()

    def _record_halt(self, reason: str, changes: _Changes) -> None:
        record = HaltRecord(True, redact(reason), "halt_store", wall_time(),
                            tuple(sorted(self.approvers)), self.os_user)
        self._transact(lambda _view: [record], changes)

    def _transact(self, decide: Callable[[_View], list[HaltRecord]],
                  changes: _Changes) -> list[HaltRecord]:
        """Under the store's lock: re-read and verify, ``decide`` on the fresh state what to
        append, append it (and any unsaved records) on top of what was read, write. When the
        store cannot be read or written, ``decide`` runs on the state in memory and the new
        records are kept there until a write succeeds. Returns the records ``decide`` added."""
        self._last_save_try = wall_time()
        new: list[HaltRecord] | None = None
        try:
            with self.store.locked():
                try:
                    version, stored, records, macs = self._read()
                    base_error = None
                except HaltStoreError as exc:
                    version, stored, records, macs, base_error = None, [], [], [], str(exc)
                if base_error is None:
                    self._adopt_base(records, macs, version, changes)
                elif self._trusted or base_error != self.store_error:
                    self._distrust(base_error, changes)
                new = decide(self._view())
                if not new and not self._pending:
                    return []
                todo = [*self._pending, *new]
                if base_error is not None:
                    # Nothing to chain to: a new chain starts with what made it necessary.
                    todo.insert(0, HaltRecord(True, f"{base_error}; a new audit chain starts"
                                              " here", "halt_store", wall_time(),
                                              tuple(sorted(self.approvers)), self.os_user))
                sealed = seal(self._key, todo, seq=len(macs), prev=macs[-1] if macs else "")
                self.store.write([*stored, *sealed])
                written_version = self.store.version()
        except OSError as exc:
            if new is None:  # the store could not even be locked or read: decide in memory
                new = decide(self._view())
                if not new and not self._pending:
                    return []  # nothing to write: no write failed
            self._keep_unsaved(new, exc, changes)
            return new
        self._pending.clear()
        self._adopt([*records, *todo], [*macs, *(r["mac"] for r in sealed)], written_version,
                    changes)
        # Announce only what this call decided: unsaved records were announced when they
        # were made, and a new chain's opening note is not a new halt.
        quiet = {id(r) for r in todo} - {id(r) for r in new}
        changes.halts = [r for r in changes.halts if id(r) not in quiet]
        changes.resumes = [r for r in changes.resumes if id(r) not in quiet]
        return new

    def _adopt_base(self, records: list[HaltRecord], macs: list[str], version: Hashable,
                    changes: _Changes) -> None:
        """Take in what another process wrote since the last look (unsaved records stay)."""
        pending = list(self._pending)
        if macs != self._macs or not self._trusted:
            self._adopt(records, macs, version, changes)
        self._pending = pending
        self._records = [*records, *pending]
        self._recompute()

    def _recompute(self) -> None:
        last = self._records[-1] if self._records else None
        self._halted = bool(last and last.halted)
        self._reason = last.reason if last and last.halted else ""

    def _view(self) -> _View:
        return _View(self._halted, self._allowed(), self._trusted, self.store_error)

    def _keep_unsaved(self, new: list[HaltRecord], exc: OSError, changes: _Changes) -> None:
        # The in-memory state stands (a halt is never lost while the process lives); a resume
        # that cannot be written comes back as a halt after a restart: safe. A halt that
        # cannot be written is lost on restart: said loudly, counted
        # (exitguard_faults_total{component="halt_store"}) and written again later.
        first = not self._pending
        self._pending.extend(new)
        self._records.extend(new)
        for record in new:
            (changes.halts if record.halted else changes.resumes).append(record)
        self._recompute()
        self.store_error = f"cannot write halt store: {exc.strerror or exc}"
        self.store_failures += 1
        if first and self._pending:
            _log.critical("%s: the %s lives in memory only and is LOST ON RESTART until"
                          " a write succeeds (retried at each entry check)",
                          self.store_error, "halt" if self._halted else "resume")
            changes.store_failure = self.store_error

    def _announce(self, changes: _Changes) -> None:
        for record in changes.halts:
            with logline.hearing() as heard:  # a structured log of the halt replaces the line
                self._notify(self._halt_listeners, record)
            if not heard.reported:
                _log.critical("TRADING HALTED (reduce-only: exits continue): %s", record.reason)
        for record in changes.resumes:
            with logline.hearing() as heard:
                self._notify(self._resume_listeners, record)
            if not heard.reported:
                _log.warning("trading resumed by %s: %s", record.actor, record.reason)
        if changes.store_failure is not None:
            for listener in tuple(self._store_failure_listeners):
                try:
                    listener(changes.store_failure)
                except Exception:
                    _log.exception("halt store listener raised; ignored")

    @staticmethod
    def _notify(listeners: list[HaltListener], record: HaltRecord) -> None:
        for listener in tuple(listeners):
            try:
                listener(record)
            except Exception:
                _log.exception("halt listener raised; ignored")


@dataclass(frozen=True, slots=True)
class _View:
    """The state a write decides on: fresh from the store (or from memory if unreadable)."""

    halted: bool
    allowed: frozenset[str]
    trusted: bool
    error: str | None
