"""What a halt store must provide (:class:`HaltStore`, the one place that says it), and the
two stores of the core: in memory and in a file.

A store keeps one ordered list of records (JSON objects) and never interprets them: the HMAC
chain, its verification, the approver rule, rollback detection and polling belong to
:class:`exitguard.halt.TradingHalt`. So a new store (Redis, a database) implements five
members and no security logic.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import threading
from collections.abc import Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from .errors import HaltStoreError
from .filestore import atomic_write_json
from .halt_chain import StoredRecord


class HaltStore(Protocol):
    """What a halt store must provide. This is the whole protocol.

    A store keeps one ordered list of records (JSON objects) and never interprets them: the
    chain, its verification and the approver rule belong to :class:`TradingHalt`. It may be
    shared by processes on one or several machines.

    * ``read()``: the stored records, oldest first, or None if nothing was ever stored (a
      missing file). Raises :class:`~exitguard.errors.HaltStoreError` when the store cannot be
      read or does not hold a list of objects (the halt then fails safe: halted).
    * ``write(records)``: replace the whole list atomically (a reader sees the old list or
      the new, never half). Only called inside ``locked()``, with the list just read plus new
      records. Raises ``OSError`` when it cannot write.
    * ``locked()``: a context manager holding an exclusive lock across every process using
      the store, so a read-then-write is never interleaved with another's.
    * ``version()``: a cheap token (no full read) that changes whenever the stored list
      changes; compared for equality only. Called at most once per ``poll_interval``.
    * ``resume_args()``: the ``exitguard halt resume`` options that select this store
      (``("--file", "/abs/path")``), printed in pages; ``()`` when the CLI cannot reach it.
    """

    def read(self) -> list[StoredRecord] | None: ...
    def write(self, records: Sequence[StoredRecord]) -> None: ...
    def locked(self) -> contextlib.AbstractContextManager[None]: ...
    def version(self) -> Hashable: ...
    def resume_args(self) -> tuple[str, ...]: ...


class MemoryHaltStore:
    """Keeps the records in memory only (tests, or bots that accept losing a halt on restart).

    Shared by ``TradingHalt`` objects of one process, it behaves like a file shared by two."""

    def __init__(self) -> None:
        self.records: list[StoredRecord] | None = None
        self._lock = threading.RLock()
        self._version = 0

    def read(self) -> list[StoredRecord] | None:
        return None if self.records is None else [dict(r) for r in self.records]

    def write(self, records: Sequence[StoredRecord]) -> None:
        self.records = [dict(r) for r in records]
        self._version += 1

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with self._lock:
            yield

    def version(self) -> Hashable:
        return self._version

    def resume_args(self) -> tuple[str, ...]:
        return ()


#: The format tag of a halt file; a file without it is not read as a halt file of this version.
FILE_FORMAT = "exitguard-halt/2"


class FileHaltStore:
    """A JSON file (``{"format": ..., "records": [...]}``), written atomically (keeping the
    previous file's owner and mode), locked with ``flock`` on ``<file>.lock``. A missing
    file means "nothing stored"."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._thread_lock = threading.RLock()

    def read(self) -> list[StoredRecord] | None:
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
            if data.get("format") != FILE_FORMAT:
                raise TypeError(f"not a {FILE_FORMAT} file (an older exitguard's halt file?)")
            records = data["records"]
            if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
                raise TypeError("records is not a list of objects")
            return records
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise HaltStoreError(f"halt file {self.path} is corrupt: {exc!r}") from exc

    def write(self, records: Sequence[StoredRecord]) -> None:
        atomic_write_json(self.path, {"format": FILE_FORMAT, "records": list(records)})

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        import fcntl

        with self._thread_lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock_path = f"{self.path}.lock"
            # Read-only is enough for flock, so a lock file made by another user still works.
            fd = os.open(lock_path, os.O_RDONLY | os.O_CREAT, 0o600)
            try:
                _same_owner_as(fd, self.path)
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing releases the lock

    def version(self) -> Hashable:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return ("unreadable", exc.errno)
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def resume_args(self) -> tuple[str, ...]:
        return ("--file", os.path.abspath(self.path))


def _same_owner_as(fd: int, path: Path) -> None:
    """Whoever may open the halt file may open its lock file: a lock file created by root (a
    CLI run with sudo) is given to the halt file's owner and group, with its read bits (the
    lock is taken on a read-only descriptor)."""
    try:
        mine = os.fstat(fd)
        if not path.exists():
            theirs = os.stat(path.parent)
            mode = 0o600
        else:
            theirs = os.stat(path)
            mode = stat.S_IMODE(theirs.st_mode) & 0o644
        if (mine.st_uid, mine.st_gid) != (theirs.st_uid, theirs.st_gid):
            os.fchown(fd, theirs.st_uid, theirs.st_gid)
        if stat.S_IMODE(mine.st_mode) != mode | 0o600:
            os.fchmod(fd, mode | 0o600)
    except OSError:
        pass  # not ours to change (not root, not the owner): the lock works all the same
