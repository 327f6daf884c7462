"""A guarded exit against an in-memory venue: the first confirmation hangs, the guard
reconciles it instead of selling twice, escalates to a market order and closes in time.

Run: python examples/guarded_exit.py   (virtual time: finishes instantly)
"""

from __future__ import annotations

from exitguard import CircuitBreaker, ExitGuard, Position, RetryPolicy, TradingHalt
from exitguard.testing import ScriptedVenue, TxPlan, run_virtual


async def main() -> None:
    venue = ScriptedVenue(
        [
            TxPlan(hang=True, lands_after=None, expires_after=9.0),  # RPC hangs, tx expires
            TxPlan(confirm_after=1.2),  # the market order lands
        ],
        price=lambda t: 95.0 - 0.25 * t,  # the market keeps falling
    )
    guard = ExitGuard(
        venue,
        policy=RetryPolicy.exit_policy(),
        deadline=30.0,
        breaker=CircuitBreaker(3, name="jupiter"),
        halt=TradingHalt(approvers=["alice"]),
        name="sol-bot",
    )
    position = Position("pos-42", "SOL", size=10.0, entry_price=100.0)
    outcome = await guard.exit(position, signal_price=95.0, reason="stop_loss")
    print(f"status={outcome.status} attempts={outcome.attempts} "
          f"elapsed={outcome.elapsed_s:.2f}s avg_price={outcome.avg_price:.2f} "
          f"loss={outcome.realized_loss_pct:.2f}% slippage={outcome.slippage_bps:.0f}bps")
    for record in outcome.history:
        print(f"  t={record.at:6.2f}s  {record.from_state} -> {record.to_state} {record.detail}")


if __name__ == "__main__":
    run_virtual(main())
