"""Atomic files: state that must survive a crash (halts, pending transactions) and the
generated artefacts (alert rules, Alertmanager config, dashboards).

A temp file beside the target is written, fsynced and renamed over it, so a reader (or a
process restarted after a kill) sees the old content or the new, never half of one. The temp
file is created private (mode 0600) and given its final mode before anything is written, so a
file meant to stay private (a halt record, a config holding a webhook URL) is never readable by
others, not even for a moment. A file that already exists keeps its owner and mode.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

#: The mode of state files (halts, pending transactions): readable by their owner only.
PRIVATE = 0o600
#: The mode of generated files meant to be read by other tools (Prometheus, Grafana).
SHARED = 0o644


def atomic_write_text(path: Path, text: str, *, mode: int = PRIVATE) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically.

    A new file gets exactly ``mode`` (the umask does not clear bits of it), so the same call
    gives the same file on every machine. A file that already exists keeps its owner, group
    and mode: an administrator's ``chmod``/``chown`` survives a rewrite, and a command run as
    root does not take a file away from the bot's user. Parent directories are created.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        old = os.stat(path)
    except FileNotFoundError:
        old = None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        if old is not None:
            _take_owner(fd, old)
            os.fchmod(fd, stat.S_IMODE(old.st_mode))
        else:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _take_owner(fd: int, old: os.stat_result) -> None:
    """Give the temp file the old file's owner and group (before its mode: chown may clear
    set-id bits). Only root may give a file away; anyone else keeps the file as their own."""
    new = os.fstat(fd)
    if (new.st_uid, new.st_gid) == (old.st_uid, old.st_gid):
        return
    try:
        os.fchown(fd, old.st_uid, old.st_gid)
    except PermissionError:
        with contextlib.suppress(PermissionError):  # a member of the old group keeps it
            os.fchown(fd, -1, old.st_gid)


def atomic_write_json(path: Path, payload: Any) -> None:
    """Replace ``path`` with ``payload`` as indented JSON, atomically, readable by its owner."""
    atomic_write_text(path, json.dumps(payload, indent=2), mode=PRIVATE)
