"""Collecting the log records of exitguard (and of its dependencies) in a test.

Attached to the named logger itself rather than to the root: telemetry's
``configure_logging`` may turn the ``exitguard`` logger's propagation off, which would hide
its records from pytest's ``caplog``. The ``logs`` fixture (tests/conftest.py) attaches one
to ``exitguard`` for the length of a test.
"""

from __future__ import annotations

import logging


class LogRecords(logging.Handler):
    """Collects every record it is handed, whatever logging set-up is active."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def of(self, logger: str, level: int = logging.WARNING) -> list[logging.LogRecord]:
        """The records of ``logger`` and its children at ``level`` or above."""
        return [
            r for r in self.records
            if (r.name == logger or r.name.startswith(logger + ".")) and r.levelno >= level
        ]

    def matching(self, text: str, level: int = logging.WARNING) -> list[logging.LogRecord]:
        """The records at ``level`` or above whose message contains ``text``."""
        return [r for r in self.records if r.levelno >= level and text in r.getMessage()]
