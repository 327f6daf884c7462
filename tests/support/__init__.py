"""Helpers the test layers share that are not fixtures: real local servers (``servers``), an
OTLP/HTTP receiver (``otlp_receiver``), the alerting stack (``alerting``) and the bot process
it runs (``e2e_bot``). Fixtures live in ``tests/conftest.py``; doubles a user of exitguard
would want too (ScriptedVenue, FaultyVenue, FakeClock, RecordingHooks) in ``exitguard.testing``.
"""

from __future__ import annotations

from pathlib import Path

#: The repository's root (where pyproject.toml is), for tests that read its files.
REPO = Path(__file__).resolve().parents[2]
