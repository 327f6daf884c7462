"""Processes the local stack starts, recorded so that exactly they (and nothing else) are stopped.

A pid alone is not an identity: after a crash or a reboot the number may belong to another
program. A :class:`ProcessRecord` keeps the pid with the kernel's start time of the process
(``/proc/PID/stat`` field 22, clock ticks since boot) and its command line; :func:`is_ours`
accepts a live process only when both still match, and :func:`stop` signals only such a
process. Linux's ``/proc`` is the source: elsewhere :func:`require_proc` refuses.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PROC = Path("/proc")


class ProcError(Exception):
    """A process could not be started or inspected."""


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    """One started process: what identifies it, where it listens, where it logs."""

    name: str
    pid: int
    start_time: int  # /proc/PID/stat starttime, in clock ticks since boot
    argv: tuple[str, ...]
    port: int
    url: str
    ready_url: str
    log: str

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["argv"] = list(self.argv)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcessRecord:
        try:
            return cls(
                name=str(data["name"]), pid=int(data["pid"]), start_time=int(data["start_time"]),
                argv=tuple(str(a) for a in data["argv"]), port=int(data["port"]),
                url=str(data["url"]), ready_url=str(data["ready_url"]), log=str(data["log"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a process record ({exc!r}): {data!r}") from None


def require_proc() -> None:
    """The stack identifies its processes through Linux's /proc; refuse without it."""
    if not (PROC / "self" / "stat").is_file():
        raise ProcError("exitguard stack needs Linux's /proc to identify the processes it starts")


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time) of ``pid``, or None when there is no such process."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may contain spaces or ')'.
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[19])


def _cmdline(pid: int) -> tuple[str, ...] | None:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return tuple(part.decode(errors="replace") for part in raw.split(b"\0")[:-1])


def is_ours(record: ProcessRecord) -> bool:
    """True while the process ``record`` describes runs: same pid, start time and command line.

    A zombie (exited, not yet reaped by its parent) no longer runs and does not count.
    """
    for _ in range(40):
        stat = _stat(record.pid)
        if stat is None or stat[0] in ("Z", "X") or stat[1] != record.start_time:
            return False
        cmdline = _cmdline(record.pid)
        if cmdline:
            return cmdline == record.argv
        # Same pid, same start time, no command line yet: the exec is still settling (seen
        # for some milliseconds on a loaded machine). Ask again rather than answer wrongly.
        time.sleep(0.025)
    return False


def pid_in_use(pid: int) -> bool:
    """Whether any live process has ``pid`` (ours or not)."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def start(name: str, argv: Sequence[str], *, port: int, url: str, ready_url: str, log: Path,
          cwd: Path, env: dict[str, str] | None = None) -> tuple[ProcessRecord,
                                                                  subprocess.Popen[bytes]]:
    """Start ``argv`` in its own session (a Ctrl-C in the shell that ran ``up`` does not reach
    it), its output appended to ``log``; returns its record and the Popen."""
    with log.open("ab") as out:
        try:
            popen = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=cwd, env={**os.environ, **(env or {})}, start_new_session=True,
            )
        except OSError as exc:
            raise ProcError(f"{name}: cannot start {argv[0]}: {exc.strerror or exc}") from None
    stat = _stat(popen.pid)
    if stat is None:
        popen.wait(timeout=10)
        raise ProcError(f"{name} exited at once with code {popen.returncode} (see {log})")
    # The command line is the argv given: exec keeps it verbatim, and /proc/PID/cmdline can
    # read empty for a moment right after the exec on a loaded machine.
    record = ProcessRecord(name, popen.pid, stat[1], tuple(argv), port, url, ready_url,
                           str(log))
    return record, popen


def stop(record: ProcessRecord, *, grace: float = 10.0) -> str:
    """Stop the process ``record`` describes, if it is still that process; says what happened.

    SIGTERM, then SIGKILL after ``grace`` seconds. A pid now held by another process (same
    number, another start time or command line) is left alone.
    """
    if not is_ours(record):
        if pid_in_use(record.pid):
            return f"was not running (pid {record.pid} is now another process: left alone)"
        return "was not running"
    try:
        os.kill(record.pid, signal.SIGTERM)
    except ProcessLookupError:
        return "was not running"
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not is_ours(record):
            return f"stopped (pid {record.pid})"
        time.sleep(0.05)
    if is_ours(record):
        try:
            os.kill(record.pid, signal.SIGKILL)
        except ProcessLookupError:
            return f"stopped (pid {record.pid})"
        deadline = time.monotonic() + grace
        while is_ours(record) and time.monotonic() < deadline:
            time.sleep(0.05)
        return f"killed (pid {record.pid}; it ignored SIGTERM for {grace:.0f} s)"
    return f"stopped (pid {record.pid})"
