"""The settings the fault-injection tests share, whichever layer they break.

Core faults (tests/core/test_faults.py) run in virtual time with ``POLICY`` and ``DEADLINE``;
the pager's and telemetry's (tests/alerting/test_pager_faults.py,
tests/telemetry/test_telemetry_faults.py) run on the real clock with ``REAL_POLICY`` and
``REAL_DEADLINE``. Every venue answers at ``PRICE``, the signal price the exits are given.
"""

from __future__ import annotations

from exitguard import RetryPolicy
from exitguard.testing import TxPlan

PRICE = 95.0
DEADLINE = 5.0
POLICY = RetryPolicy(
    max_attempts=3, initial_backoff=0.1, max_backoff=0.5, total_timeout=4.0,
    attempt_timeout=1.0, min_attempt_time=0.1,
)
#: A confirmation that never comes for an order that never lands.
HANG_FOREVER = TxPlan(hang=True, lands_after=None, expires_after=1e9)

REAL_POLICY = RetryPolicy(total_timeout=0.25, attempt_timeout=0.15, min_attempt_time=0.05)
REAL_DEADLINE = 0.3
