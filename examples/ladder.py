"""The escalation ladder: limit at 100 bps, then market at 500 bps with a higher fee.

Run: python examples/ladder.py
"""

from __future__ import annotations

from exitguard import EscalationLadder, Position
from exitguard.compat import AdaptiveExitExecutor


def main() -> None:
    executor = AdaptiveExitExecutor(EscalationLadder.default())
    position = Position("pos-1", "SOL", 10.0, 100.0)
    for failures in range(4):
        order = executor.order_for(position, size=10.0, reference_price=95.0,
                                   failed_attempts=failures)
        print(f"after {failures} failures: {order.mode} max {order.max_slippage_bps} bps, "
              f"fee {order.priority_fee}, worst price {order.worst_price:.2f}")


if __name__ == "__main__":
    main()
