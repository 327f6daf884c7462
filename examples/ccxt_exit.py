"""A bot's stop-loss exit through ccxt, offline: the real ``ccxt.async_support.binance``
client against exitguard's loopback Binance spot exchange.

The exchange fills 40% of the limit order and lets the rest rest. The venue cancels the
rest when the order's time is up (``valid_for``), confirms the cancel, and only then does
the guard send the remaining 60%. The exchange's own books show that exactly the position
was sold, by two orders that were never live at the same time.

Run: python examples/ccxt_exit.py   (needs ``pip install 'exitguard[ccxt]'``; a few seconds)
"""

from __future__ import annotations

import asyncio
import sys

try:
    import ccxt.async_support as ccxt
except ImportError:  # pragma: no cover - the example's one prerequisite
    sys.exit("this example needs ccxt: pip install 'exitguard[ccxt]'")

from exitguard import ExitGuard, Position, RetryPolicy
from exitguard.venues.ccxt import CcxtVenue
from exitguard.venues.ccxt_testing import (
    LOOPBACK_KEY,
    LOOPBACK_SECRET,
    BinanceLoopback,
    CreateFault,
)


async def main() -> None:
    async with BinanceLoopback(balances={"BTC": 5.0}) as exchange_server:
        # Your bot's exchange, as configured today (keys, options). The two lines marked
        # "loopback" point it at the local exchange instead of api.binance.com.
        exchange = ccxt.binance({"apiKey": LOOPBACK_KEY, "secret": LOOPBACK_SECRET,
                                 "timeout": 2000})
        exchange_server.configure(exchange)  # loopback
        exchange_server.create_faults.append(CreateFault(fill=0.4))  # loopback: partial fill
        try:
            venue = CcxtVenue(exchange, symbols={"BTC": "BTC/USDT"}, poll_interval=0.1)
            guard = ExitGuard(venue, deadline=10.0, name="btc-bot",
                              policy=RetryPolicy(attempt_timeout=1.0, total_timeout=8.0))
            position = Position("pos-7", "BTC", size=1.0, entry_price=104.0)
            outcome = await guard.exit(position, signal_price=100.0, reason="stop_loss")
        finally:
            await exchange.close()
    print(f"status={outcome.status} filled={outcome.filled_size:g} "
          f"avg_price={outcome.avg_price:.2f} attempts={outcome.attempts}")
    for order in exchange_server.orders:
        print(f"  exchange order {order.order_id} {order.client_order_id} {order.type}"
              f" {order.quantity:g} -> {order.status}, executed {order.executed:g}")
    print(f"exchange ground truth: sold={exchange_server.sold():g} held={position.size:g}")


if __name__ == "__main__":
    asyncio.run(main())
