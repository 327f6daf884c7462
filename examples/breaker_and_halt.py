"""The circuit breaker and the reduce-only trading halt on their own, with a halt file.

Run: python examples/breaker_and_halt.py
"""

from __future__ import annotations

import secrets
import tempfile
from pathlib import Path

from exitguard import CircuitBreaker, TradingHalt, TradingHalted
from exitguard.breaker import BreakerAction
from exitguard.errors import HaltResumeError


def main() -> None:
    state = Path(tempfile.mkdtemp())
    halt_file = state / "halt.json"
    # The HMAC key that chains the audit records: a real bot keeps it outside the repository
    # and points EXITGUARD_HALT_KEY_FILE at it (the CLI reads the same variable).
    key_file = state / "halt.key"
    key_file.write_text(secrets.token_hex(32))
    halt = TradingHalt.from_file(halt_file, approvers=["alice", "bob"], key_file=key_file)
    breaker = CircuitBreaker(2, name="jupiter", cooldown=30.0)
    breaker.add_listener(lambda name, old, new, why: print(f"breaker {name}: {old} -> {new}"))

    for _ in range(2):
        if breaker.record_failure() is BreakerAction.HALT_TRADING:
            halt.halt("exit circuit breaker opened")
    print("exit allowed while open?", breaker.should_accept_exit())
    try:
        halt.check_entry()
    except TradingHalted as exc:
        print("entry refused:", exc)

    # The halt survives a restart: a new process reads the same file.
    restarted = TradingHalt.from_file(halt_file, approvers=["alice", "bob"], key_file=key_file)
    print("halted after restart?", restarted.is_halted)
    try:
        restarted.resume("mallory", "looks fine")  # the approvers are stored with the halt
    except HaltResumeError as exc:
        print(exc)
    record = restarted.resume("alice", "RPC provider recovered")
    print(f"resumed by {record.actor}: {record.reason}; history={len(restarted.history)} entries")


if __name__ == "__main__":
    main()
