"""The ledger both ways of recording an exit share (``ExitGuard`` and the drop-in tracker)."""

from __future__ import annotations

import pytest

from exitguard import ExitStatus, Fill, Position
from exitguard.ledger import DUST, ExitLedger

POSITION = Position("pos-1", "SOL", 10.0, 100.0)


def test_a_sale_without_a_price_counts_in_the_size_but_leaves_no_figures() -> None:
    """A figure computed from the priced part only would pass for the whole exit's."""
    ledger = ExitLedger(POSITION)
    ledger.add(Fill("tx-1", 4.0, 94.0))
    ledger.add_unpriced(3.0)
    assert ledger.filled == pytest.approx(7.0)
    assert ledger.remaining == pytest.approx(3.0)
    result = ledger.outcome(ExitStatus.FAILED, guard="g", venue="v", attempts=2,
                            elapsed_s=1.0, signal_price=95.0, error_class=None, reason="r",
                            pending_tx_ids=(), history=(), deadline_exceeded=False)
    assert result.filled_size == pytest.approx(7.0)
    assert result.remaining_size == pytest.approx(3.0)
    assert (result.avg_price, result.slippage_bps, result.loss_amplification) == (
        None, None, None)


def test_priced_fills_alone_keep_their_figures_and_dust_closes() -> None:
    ledger = ExitLedger(POSITION)
    ledger.add(Fill("tx-1", 10.0 * (1 - DUST / 2), 94.0))
    assert ledger.remaining == 0.0
    result = ledger.outcome(ExitStatus.CLOSED, guard="g", venue="v", attempts=1,
                            elapsed_s=1.0, signal_price=95.0, error_class=None, reason="r",
                            pending_tx_ids=(), history=(), deadline_exceeded=False)
    assert result.avg_price == pytest.approx(94.0)
    assert result.slippage_bps == pytest.approx((95 - 94) / 95 * 10_000)
