"""Atomic files: state that must survive a crash (halts, pending transactions) and the
generated artefacts (alert rules, Alertmanager config, dashboards).

A temp file beside the target is written, fsynced and renamed over it, so a reader (or a
process restarted after a kill) sees the old content or the new, never half of one. The temp
file is created private (mode 0600) and given its final mode before anything is written, so a
file meant to stay private (a halt record, a config holding a webhook URL) is never readable by
others, not even for a moment.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

#: The mode of state files (halts, pending transactions): readable by their owner only.
PRIVATE = 0o600
#: The mode of generated files meant to be read by other tools (Prometheus, Grafana).
SHARED = 0o644


def atomic_write_text(path: Path, text: str, *, mode: int = PRIVATE) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically; the file gets exactly ``mode``.

    Parent directories are created. ``mode`` is applied as given (the umask does not clear
    bits of it), so the same call gives the same file on every machine.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, payload: Any) -> None:
    """Replace ``path`` with ``payload`` as indented JSON, atomically, readable by its owner."""
    atomic_write_text(path, json.dumps(payload, indent=2), mode=PRIVATE)
