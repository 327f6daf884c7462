"""The ``exitguard`` command: demo, simulate, halt, dashboards, alerts (one module each).

Bad arguments and expected runtime errors (a port in use, a plot path that cannot be
written, an unreadable file) print one line, ``exitguard: error: ...``, and exit with 2;
a ``check`` that finds differences, or a refused resume, exits with 1. Heavy or optional
modules (the simulator, telemetry, the artefact generators, rich, matplotlib) are imported
only by the command that runs, so one missing piece never breaks the others and
``exitguard --help`` stays fast.
"""

from __future__ import annotations

from .app import build_parser, main

__all__ = ["build_parser", "main"]
