"""Ready-made venues for real exchanges and chains, each behind an optional extra.

Nothing here is imported by the core or by ``import exitguard``: import the adapter you
use, e.g. ``from exitguard.venues.ccxt import CcxtVenue`` (``pip install 'exitguard[ccxt]'``).

- ``ccxt``: any ``ccxt.async_support`` exchange (Binance, Bybit, OKX, Kraken, ...).
- ``ccxt_testing``: a loopback exchange speaking Binance spot's REST dialect, with
  scripted faults, to run a real ccxt client offline (tests, examples, your own bot's tests).
"""
